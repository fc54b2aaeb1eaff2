"""The slimmable Vision Transformer: one DeiT whose every width on a grid is a sub-network of its own.

Parameters carry timm's DeiT names, so timm ``deit_*`` state dicts and the authors' Scala checkpoints load as they
are. ``model(x, width=r)`` runs the sub-network of width ratio r: every layer is sliced to int(r * D) channels (the
MLP to int(r * 4D)); the number of heads and the attention scale stay those of the full model.
"""
from typing import Optional, Union

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import FeatureGetterNet, feature_take_indices
from timm.models._manipulate import checkpoint

from .adapt import pretrained_filter
from .widths import Channels, WidthGrid, check_is_number, grid_index, scaled, select_channels


class SlicedLinear(nn.Linear):
    """A linear layer run on a block of its rows (outputs) and columns (inputs), each a ``(start, stop)`` range."""

    def forward(self, x: torch.Tensor, rows: tuple[int, int], columns: tuple[int, int]) -> torch.Tensor:
        bias = self.bias
        if bias is not None:
            bias = bias[rows[0]:rows[1]]
        return F.linear(x, self.weight[rows[0]:rows[1], columns[0]:columns[1]], bias)


class SlicedLayerNorm(nn.LayerNorm):
    """A LayerNorm over a ``(start, stop)`` range of its channels."""

    def forward(self, x: torch.Tensor, channels: tuple[int, int]) -> torch.Tensor:
        start, stop = channels
        return F.layer_norm(x, [stop - start], self.weight[start:stop], self.bias[start:stop], self.eps)


# The two Python-side decisions of a forward, each a leaf for torch.fx (torch.fx.wrap): traced, they run as they are
# in eager mode, on the real input and width, so a traced model gives the same errors as the eager one.

def _checked_input(x: torch.Tensor, in_chans: int, img_size: tuple[int, int]) -> torch.Tensor:
    """timm's fixed-size check: a larger image would otherwise be cropped silently by the strided convolution."""
    if x.dim() != 4 or x.shape[1] != in_chans or x.shape[2] != img_size[0] or x.shape[3] != img_size[1]:
        raise AssertionError(
            f"input of shape {list(x.shape)} does not fit the model, which takes images of {in_chans}x{img_size[0]}x"
            f"{img_size[1]} (batch, channels, height, width); resize them with the model's data config "
            "(timm.data.resolve_data_config)")
    return x


def _channels_of(widths: list[float], table: list[Channels], width: Optional[float]) -> Channels:
    """The channels ``width`` uses (default: the largest width). Off-grid widths raise ``ValueError``."""
    if width is None:
        return table[-1]
    if not torch.jit.is_scripting():
        check_is_number(width, widths)
    return table[grid_index(widths, width)]


torch.fx.wrap('_checked_input')
torch.fx.wrap('_channels_of')


class PatchEmbed(nn.Module):
    """Image to patch tokens; the convolution's output channels are sliced, its input channels kept."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        self.img_size = (img_size, img_size)
        self.grid_size = (img_size // patch_size, img_size // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor, channels: Channels) -> torch.Tensor:
        x = _checked_input(x, self.proj.in_channels, self.img_size)
        start, stop = channels.embed
        bias = self.proj.bias
        if bias is not None:
            bias = bias[start:stop]
        x = F.conv2d(x, self.proj.weight[start:stop], bias, stride=self.proj.stride)
        return x.flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5  # the full model's, at every width (reference code)
        self.attn_drop = attn_drop
        self.qkv = SlicedLinear(dim, dim * 3, bias=qkv_bias)
        self.proj = SlicedLinear(dim, dim)

    def forward(self, x: torch.Tensor, channels: Channels) -> torch.Tensor:
        B, N, C = x.shape
        # One contiguous block of 3C rows of the fused matrix, split into q, k, v afterwards (reference code).
        qkv = self.qkv(x, channels.qkv, channels.embed)
        q, k, v = qkv.reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attn_drop if self.training else 0., scale=self.scale)
        x = x.transpose(1, 2).reshape(B, N, C)
        return self.proj(x, channels.embed, channels.embed)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = SlicedLinear(dim, hidden_dim)
        self.fc2 = SlicedLinear(hidden_dim, dim)

    def forward(self, x: torch.Tensor, channels: Channels) -> torch.Tensor:
        x = F.gelu(self.fc1(x, channels.hidden, channels.embed))
        return self.fc2(x, channels.embed, channels.hidden)


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, norm_eps: float,
                 attn_drop: float = 0., drop_path: float = 0.):
        super().__init__()
        self.norm1 = SlicedLayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = SlicedLayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor, channels: Channels) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x, channels.embed), channels))
        x = x + self.drop_path2(self.mlp(self.norm2(x, channels.embed), channels))
        return x


class SlimmableVisionTransformer(nn.Module):
    """A DeiT (optionally distilled) that runs at any width ratio on its grid: ``model(x, width=r)``.

    Args:
        smallest, largest, granularity: the width grid (SPEC section 2).
        isolated_activation: the smallest and largest widths take the first channels, the others the last ones
            (Scala); False: every width takes the first channels (US-Net, the "w/o IA" ablation).
        norm_eps: LayerNorm epsilon. 1e-6 (timm's) makes every width export exactly to a timm model; 1e-5 is what the
            reference code's sliced norms use and what the authors' checkpoints were trained with.
        distilled: add DeiT's distillation token and head.
    """
    # Each width's channels, computed once: what a traced or scripted forward looks up (TorchScript reads the types).
    grid_widths: list[float]
    channel_table: list[Channels]
    __jit_unused_properties__ = ['widths']

    def __init__(
            self,
            img_size: int = 224,
            patch_size: int = 16,
            in_chans: int = 3,
            num_classes: int = 1000,
            embed_dim: int = 384,
            depth: int = 12,
            num_heads: int = 6,
            mlp_ratio: float = 4.,
            qkv_bias: bool = True,
            distilled: bool = False,
            smallest: float = 0.25,
            largest: float = 1.0,
            granularity: float = 1 / 16,
            isolated_activation: bool = True,
            norm_eps: float = 1e-6,
            drop_rate: float = 0.,
            attn_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            device=None,
            dtype=None,
    ):
        super().__init__()
        img_size = img_size[0] if isinstance(img_size, (tuple, list)) else img_size
        self.grid = WidthGrid(smallest, largest, granularity)
        self.isolated_activation = isolated_activation
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.embed_dim = self.num_features = self.head_hidden_size = embed_dim
        self.depth = depth
        self.num_heads = num_heads
        self.mlp_hidden_dim = int(embed_dim * mlp_ratio)
        self.distilled = distilled
        self.num_prefix_tokens = 2 if distilled else 1
        self.grad_checkpointing = False
        self._check_heads_divide_widths()
        self.grid_widths = list(self.grid.widths)
        self.channel_table = [select_channels(self.grid, w, embed_dim, self.mlp_hidden_dim, isolated_activation)
                              for w in self.grid_widths]

        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if distilled else None
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + self.num_prefix_tokens, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        drop_path_rates = torch.linspace(0, drop_path_rate, depth, device='cpu').tolist()
        self.blocks = nn.ModuleList([
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, norm_eps, attn_drop_rate, drop_path_rates[i])
            for i in range(depth)
        ])
        self.feature_info = [dict(module=f'blocks.{i}', num_chs=embed_dim, reduction=patch_size) for i in range(depth)]
        self.norm = SlicedLayerNorm(embed_dim, eps=norm_eps)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        if distilled:
            self.head_dist = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights()
        if device is not None or dtype is not None:  # timm's factory arguments
            self.to(device=device, dtype=dtype)

    def _check_heads_divide_widths(self):
        for width in self.grid.widths:
            dim = scaled(self.embed_dim, width)
            if dim == 0 or dim % self.num_heads:
                raise ValueError(
                    f"width {width} of embed_dim {self.embed_dim} gives {dim} channels, which do not split into "
                    f"{self.num_heads} heads; choose a grid (smallest, largest, granularity) whose every width times "
                    f"{self.embed_dim} is a positive multiple of {self.num_heads}")

    def init_weights(self):
        """timm's ViT initialisation: truncated normal (std .02) linears and position embedding, tiny class token."""
        trunc_normal_(self.pos_embed, std=.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.dist_token is not None:
            trunc_normal_(self.dist_token, std=.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    @property
    def widths(self) -> tuple[float, ...]:
        return self.grid.widths

    def channels(self, width: Optional[float] = None) -> Channels:
        """The channels ``width`` uses (default: the largest width). Off-grid widths raise ``ValueError``."""
        return _channels_of(self.grid_widths, self.channel_table, width)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {'pos_embed', 'cls_token', 'dist_token'}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """timm's parameter groups (layer-wise learning-rate decay): the embeddings, then one group per block."""
        return dict(stem=r'^cls_token|dist_token|pos_embed|patch_embed',
                    blocks=[(r'^blocks\.(\d+)', None), (r'^norm', (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass instead of keeping them (timm's interface)."""
        self.grad_checkpointing = enable

    def get_classifier(self):
        return (self.head, self.head_dist) if self.distilled else self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """New classifiers of ``num_classes`` outputs, read at every width's channels (0: none, the model then
        answers its pre-logits features). Pooling is by the class token only."""
        if global_pool not in (None, 'token'):
            raise ValueError(f"global_pool {global_pool!r}: this model pools by its class token only ('token')")
        self.num_classes = num_classes
        like = dict(device=self.cls_token.device, dtype=self.cls_token.dtype)
        self.head = nn.Linear(self.embed_dim, num_classes, **like) if num_classes > 0 else nn.Identity()
        if self.distilled:
            self.head_dist = nn.Linear(self.embed_dim, num_classes, **like) if num_classes > 0 else nn.Identity()
        self.train(self.training)  # the new heads in the mode of the rest

    def forward_features(self, x: torch.Tensor, width: Optional[float] = None) -> torch.Tensor:
        return self._features(x, self.channels(width))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False, width: Optional[float] = None):
        return self._head(x, self.channels(width), pre_logits)

    def forward(self, x: torch.Tensor, width: Optional[float] = None):
        channels = self.channels(width)
        return self._head(self._features(x, channels), channels)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, list[int]]] = None,
            return_prefix_tokens: bool = False,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
            width: Optional[float] = None,
    ):
        """timm's ``forward_intermediates`` at ``width``: the outputs of the blocks in ``indices`` (the last n if an
        int, all if None) as NCHW maps of the width's channels (or NLC tokens), and the final features unless
        ``intermediates_only``."""
        if output_fmt not in ('NCHW', 'NLC'):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        channels = self.channels(width)
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        x = self._embed(x, channels)
        blocks = self.blocks if not stop_early else self.blocks[:max_index + 1]
        intermediates = []
        for i, block in enumerate(blocks):
            x = checkpoint(block, x, channels) if self.grad_checkpointing else block(x, channels)
            if i in take_indices:
                intermediates.append(self._final_norm(x, channels) if norm else x)
        prefix_tokens = [y[:, :self.num_prefix_tokens] for y in intermediates]
        intermediates = [y[:, self.num_prefix_tokens:] for y in intermediates]
        if output_fmt == 'NCHW':
            H, W = self.patch_embed.grid_size
            intermediates = [y.reshape(y.shape[0], H, W, -1).permute(0, 3, 1, 2).contiguous() for y in intermediates]
        if return_prefix_tokens:
            intermediates = list(zip(intermediates, prefix_tokens))
        if intermediates_only:
            return intermediates
        return self._final_norm(x, channels), intermediates

    def prune_intermediate_layers(self, indices: Union[int, list[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the blocks after the last of ``indices`` (and the final norm and the classifier if asked)."""
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[:max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0)
        return take_indices

    def _embed(self, x: torch.Tensor, channels: Channels) -> torch.Tensor:
        x = self.patch_embed(x, channels)
        start, stop = channels.embed
        prefix = [self.cls_token[..., start:stop].expand(x.shape[0], -1, -1)]
        if self.dist_token is not None:
            prefix.append(self.dist_token[..., start:stop].expand(x.shape[0], -1, -1))
        x = torch.cat(prefix + [x], dim=1) + self.pos_embed[..., start:stop]
        return self.pos_drop(x)

    def _final_norm(self, x: torch.Tensor, channels: Channels) -> torch.Tensor:
        if isinstance(self.norm, nn.Identity):
            return x
        return self.norm(x, channels.embed)

    def _features(self, x: torch.Tensor, channels: Channels) -> torch.Tensor:
        x = self._embed(x, channels)
        for block in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(block, x, channels)
            else:
                x = block(x, channels)
        return self._final_norm(x, channels)

    def _head(self, x: torch.Tensor, channels: Channels, pre_logits: bool = False):
        """Class logits; a distilled model gives (class, distillation) logits in training, their mean in eval (and,
        as timm's distilled DeiT, always when scripted)."""
        x_cls = self.head_drop(x[:, 0])
        if self.dist_token is None:
            return x_cls if pre_logits else self._classify(x_cls, channels.embed)
        x_dist = self.head_drop(x[:, 1])
        if pre_logits:
            return (x_cls + x_dist) / 2
        x_cls, x_dist = self._classify(x_cls, channels.embed), self._classify_distillation(x_dist, channels.embed)
        if self.training and not torch.jit.is_scripting():
            return x_cls, x_dist
        return (x_cls + x_dist) / 2

    # A classifier reads the width's feature columns and keeps all of its outputs and its whole bias.

    def _classify(self, x: torch.Tensor, columns: tuple[int, int]) -> torch.Tensor:
        if isinstance(self.head, nn.Identity):
            return x
        return F.linear(x, self.head.weight[:, columns[0]:columns[1]], self.head.bias)

    def _classify_distillation(self, x: torch.Tensor, columns: tuple[int, int]) -> torch.Tensor:
        if isinstance(self.head_dist, nn.Identity):
            return x
        return F.linear(x, self.head_dist.weight[:, columns[0]:columns[1]], self.head_dist.bias)


# The built-in default: 28x28 grayscale images, 10 classes (Fashion-MNIST); sized by measurement, see the README.
FASHION_MODEL = 'scala_vit_mini_patch7_28'
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)


def _cfg(**kwargs) -> dict:
    return {
        'url': '', 'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': None,
        'crop_pct': .9, 'interpolation': 'bicubic', 'fixed_input_size': True,
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'patch_embed.proj', 'classifier': 'head', 'license': 'mit',
        **kwargs,
    }


_DISTILLED = dict(classifier=('head', 'head_dist'))
_FASHION = dict(num_classes=10, input_size=(1, 28, 28), crop_pct=1.0, interpolation='bilinear',
                mean=FASHION_MNIST_MEAN, std=FASHION_MNIST_STD)
default_cfgs = generate_default_cfgs({
    'scala_deit_tiny_patch16_224': _cfg(),
    'scala_deit_small_patch16_224': _cfg(),
    'scala_deit_base_patch16_224': _cfg(),
    'scala_deit_tiny_distilled_patch16_224': _cfg(**_DISTILLED),
    'scala_deit_small_distilled_patch16_224': _cfg(**_DISTILLED),
    'scala_deit_base_distilled_patch16_224': _cfg(**_DISTILLED),
    FASHION_MODEL: _cfg(**_FASHION),
    'scala_vit_tiny_patch7_56': _cfg(**dict(_FASHION, input_size=(1, 56, 56))),
    'scala_vit_mini_distilled_patch7_28': _cfg(**_FASHION, **_DISTILLED),
    'scala_vit_mini_deep_patch7_28': _cfg(**_FASHION),
    'scala_vit_mini_deep_distilled_patch7_28': _cfg(**_FASHION, **_DISTILLED),
})


def check_slimmable_model_name(name: str) -> None:
    """A clear error for a model name that is not one of ours (a typo, or a plain timm ViT)."""
    ours = timm.list_models('scala_*')
    if name in ours:
        return
    if timm.is_model(name):
        equivalent = f'scala_{name}'
        hint = f"; its slimmable equivalent is {equivalent}" if equivalent in ours else ''
        raise ValueError(f"--model {name} is a timm model but not a slimmable one{hint}. Slimmable models: "
                         f"{', '.join(ours)}")
    raise ValueError(f"--model {name} is not a known model; slimmable models: {', '.join(ours)}")


def check_device(device: str) -> torch.device:
    """``device`` as a torch device, refused when it is not there (CUDA asked for on a machine without it)."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {device} is not a device name; use cpu, cuda or cuda:N") from None
    if parsed.type == 'cuda' and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA device is available here (torch.cuda.is_available() is "
                         "False); use --device cpu")
    if parsed.type == 'cuda' and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return parsed


class SlimmableFeatures(FeatureGetterNet):
    """timm's ``features_only=True`` backbone, with the width still the forward's argument: ``features(x, width=r)``
    gives the chosen blocks' NCHW maps of int(r * embed_dim) channels (``feature_info`` lists the full width's)."""

    def forward(self, x: torch.Tensor, width: Optional[float] = None) -> list[torch.Tensor]:
        return self.model.forward_intermediates(x, indices=self.out_indices, norm=self.norm,
                                                output_fmt=self.output_fmt, intermediates_only=True, width=width)


def _create(variant: str, pretrained: bool = False, **kwargs) -> SlimmableVisionTransformer:
    """Weights load only from a local file: ``pretrained=True, pretrained_cfg_overlay=dict(file=PATH,
    num_classes=N)`` (N: the file's classes), any file ``--init`` takes, adapted as ``--init`` adapts it."""
    feature_cfg = dict(out_indices=kwargs.pop('out_indices', 3), feature_cls=SlimmableFeatures)
    return build_model_with_cfg(SlimmableVisionTransformer, variant, pretrained, feature_cfg=feature_cfg,
                                pretrained_filter_fn=_pretrained_filter, **kwargs)


def _pretrained_filter(state: dict, model: SlimmableVisionTransformer) -> dict:
    return pretrained_filter(state, model)


@register_model
def scala_deit_tiny_patch16_224(pretrained: bool = False, **kwargs) -> SlimmableVisionTransformer:
    model_args = dict(patch_size=16, embed_dim=192, depth=12, num_heads=3)
    return _create('scala_deit_tiny_patch16_224', pretrained, **dict(model_args, **kwargs))


@register_model
def scala_deit_small_patch16_224(pretrained: bool = False, **kwargs) -> SlimmableVisionTransformer:
    model_args = dict(patch_size=16, embed_dim=384, depth=12, num_heads=6)
    return _create('scala_deit_small_patch16_224', pretrained, **dict(model_args, **kwargs))


@register_model
def scala_deit_base_patch16_224(pretrained: bool = False, **kwargs) -> SlimmableVisionTransformer:
    model_args = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12)
    return _create('scala_deit_base_patch16_224', pretrained, **dict(model_args, **kwargs))


@register_model
def scala_deit_tiny_distilled_patch16_224(pretrained: bool = False, **kwargs) -> SlimmableVisionTransformer:
    model_args = dict(patch_size=16, embed_dim=192, depth=12, num_heads=3, distilled=True)
    return _create('scala_deit_tiny_distilled_patch16_224', pretrained, **dict(model_args, **kwargs))


@register_model
def scala_deit_small_distilled_patch16_224(pretrained: bool = False, **kwargs) -> SlimmableVisionTransformer:
    model_args = dict(patch_size=16, embed_dim=384, depth=12, num_heads=6, distilled=True)
    return _create('scala_deit_small_distilled_patch16_224', pretrained, **dict(model_args, **kwargs))


@register_model
def scala_deit_base_distilled_patch16_224(pretrained: bool = False, **kwargs) -> SlimmableVisionTransformer:
    model_args = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12, distilled=True)
    return _create('scala_deit_base_distilled_patch16_224', pretrained, **dict(model_args, **kwargs))


@register_model
def scala_vit_mini_patch7_28(pretrained: bool = False, **kwargs) -> SlimmableVisionTransformer:
    """For 28x28 grayscale images: 16 patches of 7x7, width 96, 3 heads, depth 4."""
    model_args = dict(patch_size=7, embed_dim=96, depth=4, num_heads=3)
    return _create('scala_vit_mini_patch7_28', pretrained, **dict(model_args, **kwargs))


@register_model
def scala_vit_mini_distilled_patch7_28(pretrained: bool = False, **kwargs) -> SlimmableVisionTransformer:
    """The default 28x28 model with DeiT's distillation token and head."""
    model_args = dict(patch_size=7, embed_dim=96, depth=4, num_heads=3, distilled=True)
    return _create('scala_vit_mini_distilled_patch7_28', pretrained, **dict(model_args, **kwargs))


@register_model
def scala_vit_mini_deep_patch7_28(pretrained: bool = False, **kwargs) -> SlimmableVisionTransformer:
    """The default 28x28 model twice as deep (8 blocks): the capacity axis of the studies (docs/regime.md)."""
    model_args = dict(patch_size=7, embed_dim=96, depth=8, num_heads=3)
    return _create('scala_vit_mini_deep_patch7_28', pretrained, **dict(model_args, **kwargs))


@register_model
def scala_vit_mini_deep_distilled_patch7_28(pretrained: bool = False, **kwargs) -> SlimmableVisionTransformer:
    """The deep 28x28 model with DeiT's distillation token and head."""
    model_args = dict(patch_size=7, embed_dim=96, depth=8, num_heads=3, distilled=True)
    return _create('scala_vit_mini_deep_distilled_patch7_28', pretrained, **dict(model_args, **kwargs))


@register_model
def scala_vit_tiny_patch7_56(pretrained: bool = False, **kwargs) -> SlimmableVisionTransformer:
    """DeiT-Tiny's width and depth (192, 3 heads, 12 blocks) on 56x56 grayscale images (Fashion-MNIST upsampled):
    the serving benchmark's model, heavy enough that compute, not HTTP, limits the server (docs/serving.md)."""
    model_args = dict(patch_size=7, embed_dim=192, depth=12, num_heads=3)
    return _create('scala_vit_tiny_patch7_56', pretrained, **dict(model_args, **kwargs))
