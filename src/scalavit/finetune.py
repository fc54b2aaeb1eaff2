"""Starting a model from another's weights (``scalavit train --init SOURCE``): a scalavit run or checkpoint, an
authors'-format or timm DeiT ``.pth``, a ``.safetensors`` file, or a timm ``local-dir:`` folder.

What differs between the source and the model is adapted the way timm adapts pretrained weights, one log line each:
another number of classes re-initialises the classifier(s); another image size or patch grid resamples ``pos_embed``
(``timm.layers.resample_abs_pos_embed``); another number of input channels adapts the patch embedding
(``timm.models.adapt_input_conv``); a distilled model from a non-distilled source starts its distillation token and
head from the class token and head, as DeiT's fine-tuning does. Anything else that does not fit is an error naming the
parameter.
"""
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file
from timm.layers import resample_abs_pos_embed
from timm.models import adapt_input_conv

from .checkpoint import read_torch_file
from .model import SlimmableVisionTransformer

# The paper's Table 8: a pretrained DeiT-S fine-tuned into a slimmable model, against Scala trained from scratch.
NOT_SLIMMABLE_WARNING = (
    "if this source is a plain (not slimmable) DeiT, expect its narrow widths to lag: the paper's Table 8 fine-tunes "
    "a pretrained DeiT-S into a slimmable one and gets 23.4 / 52.3 / 65.4 / 74.0 at r = 0.25 / 0.5 / 0.75 / 1, against "
    "58.7 / 68.3 / 73.3 / 76.1 for Scala trained from scratch")
_TIMM_FOLDER_FILES = ('model.safetensors', 'pytorch_model.bin')


def check_source(source: str) -> None:
    """That ``--init`` names something that exists (before any data is read)."""
    _source_file(source)


def read_source(source: str) -> tuple[dict[str, torch.Tensor], bool]:
    """The source's state dict (timm DeiT parameter names) and whether it is known to be slimmable (a scalavit
    checkpoint)."""
    path = _source_file(source)
    if path.suffix == '.safetensors':
        try:
            return load_file(path), False
        except Exception as error:  # safetensors raises its own SafetensorError for a corrupt or truncated file
            raise ValueError(f"--init {source}: {path} is not a readable safetensors file ({error}); export it "
                             "again or give another file") from None
    try:
        checkpoint = read_torch_file(path)
    except ValueError as error:
        raise type(error)(f"--init {source}: {error}") from None
    if isinstance(checkpoint, dict) and 'config' in checkpoint and 'model_kwargs' in checkpoint:
        return checkpoint['model'], True
    state = checkpoint.get('model', checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"--init {source}: {path} holds neither a scalavit checkpoint nor a state dict")
    return state, False


def _source_file(source: str) -> Path:
    if source.startswith('local-dir:'):
        folder = Path(source[len('local-dir:'):])
        found = [folder / name for name in _TIMM_FOLDER_FILES if (folder / name).is_file()]
        if not found:
            raise FileNotFoundError(f"--init {source}: {folder} holds none of {', '.join(_TIMM_FOLDER_FILES)}")
        return found[0]
    path = Path(source)
    if path.is_dir():
        path = path / 'last.pt'
    if not path.is_file():
        raise FileNotFoundError(f"--init {source}: no such file (give a scalavit run or checkpoint, a .pth, a "
                                ".safetensors file or local-dir:FOLDER)")
    return path


def adapt(state: dict[str, torch.Tensor], model: SlimmableVisionTransformer,
          log: Callable[[str], None]) -> dict[str, torch.Tensor]:
    """``state`` made to fit ``model``; the classifiers it cannot give are left out (the model keeps its own)."""
    state, own = dict(state), model.state_dict()
    for name in ('cls_token', 'pos_embed', 'patch_embed.proj.weight'):
        if name not in state:
            raise ValueError(f"--init: parameter {name} is missing from the source; it is not a DeiT/ViT state dict")
    _adapt_distillation(state, own, log)
    _adapt_classifiers(state, own, log)
    if state['pos_embed'].shape != own['pos_embed'].shape and state['pos_embed'].shape[-1] == own['pos_embed'].shape[-1]:
        old = state['pos_embed'].shape[1] - model.num_prefix_tokens
        state['pos_embed'] = resample_abs_pos_embed(state['pos_embed'], list(model.patch_embed.grid_size),
                                                    num_prefix_tokens=model.num_prefix_tokens)
        log(f"--init: pos_embed resampled from {old} to {model.patch_embed.num_patches} patches "
            f"({'x'.join(map(str, model.patch_embed.grid_size))})")
    weight, own_weight = state['patch_embed.proj.weight'], own['patch_embed.proj.weight']
    if weight.shape[1] != own_weight.shape[1] and weight.shape[0] == own_weight.shape[0]:
        state['patch_embed.proj.weight'] = adapt_input_conv(own_weight.shape[1], weight, base_chans=weight.shape[1])
        log(f"--init: patch embedding adapted from {weight.shape[1]} to {own_weight.shape[1]} input channels")
    for name, tensor in state.items():
        if name not in own:
            raise ValueError(f"--init: parameter {name} of the source does not exist in {type(model).__name__}; "
                             "the source is of another architecture")
        if tensor.shape != own[name].shape:
            raise ValueError(f"--init: parameter {name} has shape {tuple(tensor.shape)} in the source, the model "
                             f"{tuple(own[name].shape)}; the source is of another architecture or size")
    missing = [name for name in own if name not in state and not name.startswith('head')]
    if missing:
        raise ValueError(f"--init: parameter {missing[0]} is missing from the source ({len(missing)} in all)")
    return state


def _adapt_distillation(state: dict, own: dict, log: Callable[[str], None]) -> None:
    if 'dist_token' in own and 'dist_token' not in state:
        pos = state['pos_embed']
        state['dist_token'] = state['cls_token'].clone()
        state['pos_embed'] = torch.cat([pos[:, :1], pos[:, :1], pos[:, 1:]], dim=1)
        for part in ('weight', 'bias'):
            if f'head.{part}' in state:
                state[f'head_dist.{part}'] = state[f'head.{part}'].clone()
        log("--init: a distilled model from a non-distilled source: dist_token, its position embedding and head_dist "
            "start as copies of the class token's and the head's (DeiT)")
    elif 'dist_token' in state and 'dist_token' not in own:
        pos = state.pop('pos_embed')
        state['pos_embed'] = torch.cat([pos[:, :1], pos[:, 2:]], dim=1)
        for name in ('dist_token', 'head_dist.weight', 'head_dist.bias'):
            state.pop(name, None)
        log("--init: the source's distillation token and head are dropped (the model is not distilled)")


def _adapt_classifiers(state: dict, own: dict, log: Callable[[str], None]) -> None:
    for head in ('head', 'head_dist'):
        weight = state.get(f'{head}.weight')
        if weight is not None and (f'{head}.weight' not in own or weight.shape != own[f'{head}.weight'].shape):
            state.pop(f'{head}.weight'), state.pop(f'{head}.bias', None)
            classes = own[f'{head}.weight'].shape[0] if f'{head}.weight' in own else 0
            log(f"--init: {head} re-initialised for {classes} classes (the source has {weight.shape[0]})")


def initialize(model: SlimmableVisionTransformer, source: str, log: Callable[[str], None] = print) -> None:
    """Load ``source`` into ``model``, adapted; the classifiers the source cannot give keep their initialisation."""
    state, slimmable = read_source(source)
    if not slimmable:
        log(f"--init {source}: {NOT_SLIMMABLE_WARNING}")
    model.load_state_dict(adapt(state, model, log), strict=False)
