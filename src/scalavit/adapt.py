"""Another model's weights made to fit a slimmable ViT, the way timm adapts pretrained weights: another number of
classes re-initialises the classifier(s); another image size or patch grid resamples ``pos_embed``
(``timm.layers.resample_abs_pos_embed``); another number of input channels adapts the patch embedding
(``timm.models.adapt_input_conv``); a distilled model from a non-distilled source starts its distillation token and
head from the class token and head, as DeiT's fine-tuning does. Anything else that does not fit is an error naming the
parameter.

``pretrained_filter`` is timm's ``pretrained_filter_fn`` for every scalavit model (``timm.create_model(name,
pretrained=True, pretrained_cfg_overlay=dict(file=PATH))``); ``scalavit train --init`` (``finetune.py``) uses the same
adaptation.
"""
import logging
from typing import TYPE_CHECKING, Callable

import torch
from timm.layers import resample_abs_pos_embed
from timm.models import adapt_input_conv

if TYPE_CHECKING:
    from .model import SlimmableVisionTransformer

_logger = logging.getLogger(__name__)


def check_shapes(state_dict: dict, model: torch.nn.Module, source: str, optional: tuple[str, ...] = ()) -> None:
    """That ``state_dict`` fits ``model`` exactly, or an error naming the first parameter that does not. Parameters
    whose names start with one of ``optional`` may be missing."""
    own = model.state_dict()
    for name, tensor in state_dict.items():
        if name not in own:
            raise ValueError(f"{source}: parameter {name} does not exist in {type(model).__name__}; "
                             "the checkpoint is of another architecture")
        if own[name].shape != tensor.shape:
            raise ValueError(f"{source}: parameter {name} has shape {tuple(tensor.shape)}, the model expects "
                             f"{tuple(own[name].shape)}; the checkpoint is of another architecture or width")
    missing = [name for name in own if name not in state_dict and not name.startswith(optional or ('\0',))]
    if missing:
        raise ValueError(f"{source}: parameter {missing[0]} is missing ({len(missing)} in all); "
                         "the checkpoint is of another architecture")


def adapt(state: dict[str, torch.Tensor], model: 'SlimmableVisionTransformer', log: Callable[[str], None],
          label: str = '--init') -> dict[str, torch.Tensor]:
    """``state`` made to fit ``model``; the classifiers it cannot give are left out (the model keeps its own). Each
    adaptation is said through ``log``, and errors, prefixed with ``label``."""
    state, own = dict(state), model.state_dict()
    for name in ('cls_token', 'pos_embed', 'patch_embed.proj.weight'):
        if name not in state:
            raise ValueError(f"{label}: parameter {name} is missing from the source; it is not a DeiT/ViT state dict")
    _adapt_distillation(state, own, log, label)
    _adapt_classifiers(state, own, log, label)
    if state['pos_embed'].shape != own['pos_embed'].shape and state['pos_embed'].shape[-1] == own['pos_embed'].shape[-1]:
        old = state['pos_embed'].shape[1] - model.num_prefix_tokens
        state['pos_embed'] = resample_abs_pos_embed(state['pos_embed'], list(model.patch_embed.grid_size),
                                                    num_prefix_tokens=model.num_prefix_tokens)
        log(f"{label}: pos_embed resampled from {old} to {model.patch_embed.num_patches} patches "
            f"({'x'.join(map(str, model.patch_embed.grid_size))})")
    weight, own_weight = state['patch_embed.proj.weight'], own['patch_embed.proj.weight']
    if weight.shape[1] != own_weight.shape[1] and weight.shape[0] == own_weight.shape[0]:
        state['patch_embed.proj.weight'] = adapt_input_conv(own_weight.shape[1], weight, base_chans=weight.shape[1])
        log(f"{label}: patch embedding adapted from {weight.shape[1]} to {own_weight.shape[1]} input channels")
    check_shapes(state, model, label, optional=('head',))  # a classifier the source cannot give stays new
    return state


def _adapt_distillation(state: dict, own: dict, log: Callable[[str], None], label: str) -> None:
    if 'dist_token' in own and 'dist_token' not in state:
        pos = state['pos_embed']
        state['dist_token'] = state['cls_token'].clone()
        state['pos_embed'] = torch.cat([pos[:, :1], pos[:, :1], pos[:, 1:]], dim=1)
        for part in ('weight', 'bias'):
            if f'head.{part}' in state:
                state[f'head_dist.{part}'] = state[f'head.{part}'].clone()
        log(f"{label}: a distilled model from a non-distilled source: dist_token, its position embedding and head_dist "
            "start as copies of the class token's and the head's (DeiT)")
    elif 'dist_token' in state and 'dist_token' not in own:
        pos = state.pop('pos_embed')
        state['pos_embed'] = torch.cat([pos[:, :1], pos[:, 2:]], dim=1)
        for name in ('dist_token', 'head_dist.weight', 'head_dist.bias'):
            state.pop(name, None)
        log(f"{label}: the source's distillation token and head are dropped (the model is not distilled)")


def _adapt_classifiers(state: dict, own: dict, log: Callable[[str], None], label: str) -> None:
    for head in ('head', 'head_dist'):
        weight = state.get(f'{head}.weight')
        if weight is not None and (f'{head}.weight' not in own or weight.shape != own[f'{head}.weight'].shape):
            state.pop(f'{head}.weight'), state.pop(f'{head}.bias', None)
            classes = own[f'{head}.weight'].shape[0] if f'{head}.weight' in own else 0
            log(f"{label}: {head} re-initialised for {classes} classes (the source has {weight.shape[0]})")


def pretrained_filter(state: dict[str, torch.Tensor], model: 'SlimmableVisionTransformer') -> dict[str, torch.Tensor]:
    """timm's ``pretrained_filter_fn``: ``timm.create_model(name, pretrained=True,
    pretrained_cfg_overlay=dict(file=PATH))`` takes the adaptations of ``--init``; a classifier the file cannot give
    keeps the model's initialisation."""
    adapted = adapt(state, model, log=_logger.info, label=f"pretrained {model.pretrained_cfg.get('file', 'weights')}")
    own = model.state_dict()
    return dict(adapted, **{name: own[name] for name in own if name not in adapted})
