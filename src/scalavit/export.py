"""One width of a slimmable model as a plain, dense timm ``VisionTransformer``.

The dense model reproduces the width exactly: the channels Isolated Activation chose, the block of rows taken from the
fused qkv matrix, and the full model's attention scale, which is folded into the query rows because timm's attention
always scales by head_dim ** -0.5.
"""
import importlib.util
import json
import warnings
from functools import partial
from pathlib import Path
from typing import Any, Optional

import timm
import torch
import safetensors.torch
import torch.nn as nn
from timm.models._hub import save_config_for_hf
from timm.models.vision_transformer import VisionTransformer

from .compiled import check_can_compile, compile_package, export_program
from .files import check_writable_directory, staging_directory
from .model import SlimmableVisionTransformer

TIMM_NORM_EPS = 1e-6  # timm's ViT LayerNorm, the only epsilon a serialised timm config can carry


def dense_model_args(model: SlimmableVisionTransformer, width: float) -> dict[str, Any]:
    """Keyword arguments of timm's ``VisionTransformer`` (or ``VisionTransformerDistilled``) for ``width``."""
    channels = model.channels(width)
    hidden_dim = channels.hidden[1] - channels.hidden[0]
    mlp_ratio = hidden_dim / channels.dim
    if int(channels.dim * mlp_ratio) != hidden_dim:
        raise ValueError(f"width {width}: MLP width {hidden_dim} is not expressible as a timm mlp_ratio of {channels.dim}")
    proj = model.patch_embed.proj
    return dict(
        img_size=model.patch_embed.grid_size[0] * proj.stride[0],
        patch_size=proj.stride[0],
        in_chans=proj.in_channels,
        num_classes=model.num_classes,
        embed_dim=channels.dim,
        depth=model.depth,
        num_heads=model.num_heads,
        mlp_ratio=mlp_ratio,
        qkv_bias=model.blocks[0].attn.qkv.bias is not None,
        global_pool='token',
    )


@torch.no_grad()
def dense_state_dict(model: SlimmableVisionTransformer, width: float) -> dict[str, torch.Tensor]:
    """The weights ``width`` uses, as a dense timm state dict (contiguous copies, timm parameter names)."""
    channels = model.channels(width)
    embed, qkv_rows, hidden = slice(*channels.embed), slice(*channels.qkv), slice(*channels.hidden)
    dim, head_dim_full = channels.dim, model.embed_dim // model.num_heads
    # timm scales scores by (dim / heads) ** -0.5; the slimmable model keeps the full model's scale.
    query_scale = ((dim // model.num_heads) / head_dim_full) ** 0.5

    def rows_and_columns(layer: nn.Linear, rows: slice, columns: slice, prefix: str) -> dict[str, torch.Tensor]:
        out = {f'{prefix}.weight': layer.weight[rows, columns]}
        if layer.bias is not None:
            out[f'{prefix}.bias'] = layer.bias[rows]
        return out

    state = {
        'patch_embed.proj.weight': model.patch_embed.proj.weight[embed],
        'patch_embed.proj.bias': model.patch_embed.proj.bias[embed],
        'cls_token': model.cls_token[..., embed],
        'pos_embed': model.pos_embed[..., embed],
        'norm.weight': model.norm.weight[embed],
        'norm.bias': model.norm.bias[embed],
    }
    if model.dist_token is not None:
        state['dist_token'] = model.dist_token[..., embed]
    for i, block in enumerate(model.blocks):
        prefix = f'blocks.{i}'
        for norm in ('norm1', 'norm2'):
            state[f'{prefix}.{norm}.weight'] = getattr(block, norm).weight[embed]
            state[f'{prefix}.{norm}.bias'] = getattr(block, norm).bias[embed]
        qkv = rows_and_columns(block.attn.qkv, qkv_rows, embed, f'{prefix}.attn.qkv')
        for name, tensor in qkv.items():
            qkv[name] = tensor.clone()
            qkv[name][:dim] *= query_scale
        state.update(qkv)
        state.update(rows_and_columns(block.attn.proj, embed, embed, f'{prefix}.attn.proj'))
        state.update(rows_and_columns(block.mlp.fc1, hidden, embed, f'{prefix}.mlp.fc1'))
        state.update(rows_and_columns(block.mlp.fc2, embed, hidden, f'{prefix}.mlp.fc2'))
    heads = [('head', model.head)] + ([('head_dist', model.head_dist)] if model.distilled else [])
    for name, head in heads:
        if isinstance(head, nn.Linear):
            state.update(rows_and_columns(head, slice(None), embed, name))
    return {name: tensor.detach().contiguous().clone() for name, tensor in state.items()}


# Every DeiT entry point builds any ViT once its architecture arguments are overridden; these two are used because
# they name the right class (VisionTransformer, VisionTransformerDistilled) and are in every timm >= 0.9.
TIMM_ARCHITECTURES = {False: 'deit_tiny_patch16_224', True: 'deit_tiny_distilled_patch16_224'}


def to_timm(model: SlimmableVisionTransformer, width: float, exact_norm: bool = True) -> VisionTransformer:
    """A dense timm model holding exactly the sub-network ``width`` (same logits, fp32, up to rounding).

    ``exact_norm=False`` keeps timm's LayerNorm epsilon (1e-6), which a serialised timm config is limited to, even
    when the slimmable model uses another.
    """
    kwargs = dense_model_args(model, width)
    if exact_norm and model.norm.eps != TIMM_NORM_EPS:
        kwargs['norm_layer'] = partial(nn.LayerNorm, eps=model.norm.eps)
    dense = timm.create_model(TIMM_ARCHITECTURES[model.distilled], **kwargs)
    dense.load_state_dict(dense_state_dict(model, width), strict=True)
    return dense.train(model.training)


FORMATS = ('safetensors', 'onnx', 'pt2', 'aoti', 'torchscript')
ONNX_OPSET = 17


MODEL_FILES = {'safetensors': 'model.safetensors', 'onnx': 'model.onnx', 'pt2': 'model.pt2', 'aoti': 'model_aoti.pt2',
               'torchscript': 'model.pt'}


def check_names_a_folder(output: Path, fmt: str) -> None:
    """An export is a folder (the model file, config.json, export.json): an ``--output`` named like a model file
    (``w50.onnx``) would make a folder of that name, which ONNX Runtime or timm would then fail to open as a file."""
    suffixes = {'.safetensors', '.onnx', '.pt2', '.pt', '.pth', '.bin'}
    if Path(output).suffix.lower() in suffixes:
        folder = Path(output).with_suffix('')
        raise ValueError(f"--output {output} names a file, but an export is a folder holding "
                         f"{MODEL_FILES.get(fmt, 'the model')}, config.json and export.json; give a folder such as "
                         f"--output {folder} (the model is then {folder / MODEL_FILES.get(fmt, 'model')})")


def export_width(model: SlimmableVisionTransformer, width: float, output: Path, fmt: str = 'safetensors',
                 force: bool = False, inputs: Optional[torch.Tensor] = None,
                 checkpoint: Optional[Path] = None) -> dict:
    """Write width ``width`` as a standalone model in ``output`` and check it against the slimmable model.

    safetensors: timm's local-folder format (config.json + model.safetensors), which
    ``timm.create_model('local-dir:DIR', pretrained=True)`` rebuilds with no scalavit import. onnx: model.onnx
    (opset 17, dynamic batch). pt2: model.pt2, a ``torch.export`` program (``torch.export.load``, dynamic batch). aoti:
    model_aoti.pt2, that program compiled by AOTInductor with its weights (``torch._inductor.aoti_load_package``;
    needs a C++ compiler, and runs only on this kind of machine). torchscript (deprecated by PyTorch): model.pt.
    config.json with the preprocessing comes with every format.
    Returns the check on ``inputs`` (random images when None): max abs logit difference and top-1 agreement.
    ``force`` replaces an earlier export in ``output``, never a folder holding anything else or ``checkpoint``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    missing = [name for name in ('onnx', 'onnxruntime') if fmt == 'onnx' and importlib.util.find_spec(name) is None]
    if missing:
        raise ValueError(f"ONNX export needs {' and '.join(missing)}: pip install 'scalavit[onnx]'")
    width = model.grid.snap(width)
    if fmt == 'aoti':
        check_can_compile(next(model.parameters()).device)
    output = Path(output)
    check_export_output(output, force, checkpoint)
    model = model.eval()
    dense = to_timm(model, width, exact_norm=False).eval()
    if inputs is None:
        inputs = torch.randn(64, *model.pretrained_cfg['input_size'], generator=torch.Generator().manual_seed(0))
    # The trace's warnings are about shape checks that a fixed input size makes constant: they concern nobody here,
    # and the export is checked against the model below.
    with staging_directory(output) as staging, warnings.catch_warnings():
        warnings.simplefilter('ignore', torch.jit.TracerWarning)
        _save_timm_config(dense, model, width, staging)
        if fmt == 'safetensors':
            safetensors.torch.save_file(dense.state_dict(), str(staging / 'model.safetensors'))
        elif fmt == 'onnx':
            torch.onnx.export(dense, (inputs[:2],), str(staging / 'model.onnx'), opset_version=ONNX_OPSET,
                              input_names=['images'], output_names=['logits'], dynamo=False,
                              dynamic_axes={'images': {0: 'batch'}, 'logits': {0: 'batch'}})
        elif fmt in ('pt2', 'aoti'):
            program = export_program(dense, tuple(model.pretrained_cfg['input_size']))
            if fmt == 'pt2':
                torch.export.save(program, str(staging / 'model.pt2'))
            else:
                compile_package(program, staging / 'model_aoti.pt2')
        else:
            torch.jit.save(torch.jit.trace(dense, inputs[:2]), str(staging / 'model.pt'))
        check = _check(model, width, staging, fmt, inputs)
        (staging / 'export.json').write_text(json.dumps(check, indent=2) + '\n')
    return check


# What an export writes; ``--force`` replaces a folder holding nothing else.
EXPORT_FILES = {'config.json', 'export.json', 'model.safetensors', 'model.onnx', 'model.pt', 'model.pt2',
                'model_aoti.pt2'}


def check_export_output(output: Path, force: bool, checkpoint: Optional[Path] = None) -> None:
    """Refuse an ``--output`` that would lose something: a file, the checkpoint being read (or a folder holding it),
    a non-empty folder without ``force``, and with ``force`` any folder that is not an earlier export."""
    if checkpoint is not None:
        source = Path(checkpoint).resolve()
        if source == output.resolve() or output.resolve() in source.parents:
            raise ValueError(f"--output {output} is or contains the checkpoint being exported ({checkpoint}); "
                             "choose a folder of its own")
    check_writable_directory(output, '--output', create=False)
    if not output.exists() or not any(output.iterdir()):
        return
    if not force:
        raise FileExistsError(f"--output {output} exists and is not empty; choose another --output, or pass --force "
                              "to replace an earlier export")
    others = sorted(entry.name for entry in output.iterdir() if entry.name not in EXPORT_FILES or entry.is_dir())
    if others or not (output / 'export.json').is_file():
        holds = ', '.join(others[:5]) if others else 'no export.json'
        raise FileExistsError(f"--output {output} is not an earlier export (it holds {holds}); --force only replaces "
                              "an export. Choose another --output")


def _save_timm_config(dense: VisionTransformer, model: SlimmableVisionTransformer, width: float, folder: Path):
    cfg = model.pretrained_cfg
    data_config = {key: cfg[key] for key in ('input_size', 'mean', 'std', 'crop_pct', 'interpolation')}
    model_config = dict(pretrained_cfg=dict(tag=f'scala_width_{width:g}', license='mit'))
    if cfg.get('label_names'):
        model_config['label_names'] = list(cfg['label_names'])
    save_config_for_hf(dense, str(folder / 'config.json'), model_config=model_config, data_config=data_config)


@torch.no_grad()
def _check(model: SlimmableVisionTransformer, width: float, folder: Path, fmt: str, inputs: torch.Tensor) -> dict:
    """Run the written file the way a user would, and compare its logits with the slimmable model's."""
    expected = model(inputs, width)
    if fmt == 'safetensors':
        loaded = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
        logits = loaded(inputs)
    elif fmt == 'onnx':
        import onnxruntime
        session = onnxruntime.InferenceSession(str(folder / 'model.onnx'), providers=['CPUExecutionProvider'])
        logits = torch.from_numpy(session.run(None, {'images': inputs.numpy()})[0])
    elif fmt == 'pt2':
        logits = torch.export.load(str(folder / 'model.pt2')).module()(inputs)
    elif fmt == 'aoti':
        logits = torch._inductor.aoti_load_package(str(folder / 'model_aoti.pt2'))(inputs)
    else:
        logits = torch.jit.load(str(folder / 'model.pt'))(inputs)
    return dict(
        width=width, format=fmt, images=len(inputs),
        max_abs_logit_difference=float((logits - expected).abs().max()),
        top1_agreement=float((logits.argmax(-1) == expected.argmax(-1)).float().mean()),
        norm_eps=model.norm.eps, exported_norm_eps=TIMM_NORM_EPS)
