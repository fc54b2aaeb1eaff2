import pytest
import torch

import scalavit  # noqa: F401  (registers the scala_* models with timm)
from scalavit import SlimmableVisionTransformer


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Weights of a trained network's scale (activations neither vanish nor explode), so logits are of order one."""
    generator = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        noise = torch.randn(param.shape, generator=generator)
        if 'norm' in name and name.endswith('weight'):
            param.copy_(1 + 0.2 * noise)
        elif param.dim() >= 2 and name.endswith('weight'):
            param.copy_(noise / param[0].numel() ** 0.5)  # std 1/sqrt(fan_in)
        else:
            param.copy_(0.1 * noise)
    return model


def tiny_model(**kwargs) -> SlimmableVisionTransformer:
    """A small 2-block model on 32x32 images: every code path of the DeiTs, in milliseconds."""
    args = dict(img_size=32, patch_size=8, in_chans=3, num_classes=7, embed_dim=48, depth=2, num_heads=3)
    return randomize(SlimmableVisionTransformer(**dict(args, **kwargs))).eval()


@pytest.fixture
def images():
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
