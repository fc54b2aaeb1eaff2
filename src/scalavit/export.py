"""One width of a slimmable model as a plain, dense timm ``VisionTransformer``.

The dense model reproduces the width exactly: the channels Isolated Activation chose, the block of rows taken from the
fused qkv matrix, and the full model's attention scale, which is folded into the query rows because timm's attention
always scales by head_dim ** -0.5.
"""
from functools import partial
from typing import Any

import torch
import torch.nn as nn
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import VisionTransformer

from .model import SlimmableVisionTransformer

TIMM_NORM_EPS = 1e-6  # timm's ViT LayerNorm, the only epsilon a serialised timm config can carry


def dense_model_args(model: SlimmableVisionTransformer, width: float) -> dict[str, Any]:
    """Keyword arguments of timm's ``VisionTransformer`` (or ``VisionTransformerDistilled``) for ``width``."""
    channels = model.channels(width)
    hidden_dim = channels.hidden.indices(model.mlp_hidden_dim)
    hidden_dim = hidden_dim[1] - hidden_dim[0]
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
    embed, qkv_rows, hidden = channels.embed, channels.qkv, channels.hidden
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


def to_timm(model: SlimmableVisionTransformer, width: float) -> VisionTransformer:
    """A dense timm model holding exactly the sub-network ``width`` (same logits, fp32, up to rounding)."""
    model_cls = VisionTransformerDistilled if model.distilled else VisionTransformer
    kwargs = dense_model_args(model, width)
    if model.norm.eps != TIMM_NORM_EPS:
        kwargs['norm_layer'] = partial(nn.LayerNorm, eps=model.norm.eps)
    dense = model_cls(**kwargs)
    dense.load_state_dict(dense_state_dict(model, width), strict=True)
    return dense.train(model.training)
