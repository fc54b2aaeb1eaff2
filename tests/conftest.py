import json
import os

import pytest
import torch
from PIL import Image

import scalavit  # noqa: F401  (registers the scala_* models with timm)
from scalavit import SlimmableVisionTransformer
from scalavit.cli import main

# Under pytest-xdist (scripts/test.sh runs one worker per core) each worker, and every process a test starts, gets its
# share of the cores: two workers of two threads each on two cores would spin against each other several-fold.
if 'PYTEST_XDIST_WORKER_COUNT' in os.environ:
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()  # not on macOS
    _threads = max(1, _cores // int(os.environ['PYTEST_XDIST_WORKER_COUNT']))
    os.environ['OMP_NUM_THREADS'] = str(_threads)
    torch.set_num_threads(_threads)


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


FAST = ['--batch-size', '8', '--workers', '0', '--epochs', '2', '--lr', '1e-3', '--full-warmup-epochs', '1']


def make_image_folder(root, classes=3, train_per_class=8, val_per_class=4):
    """Tiny 28x28 grayscale PNGs whose brightness pattern depends on the class."""
    generator = torch.Generator().manual_seed(0)
    for split, count in (('train', train_per_class), ('val', val_per_class)):
        for c in range(classes):
            folder = root / split / f'class{c}'
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = torch.rand(28, 28, generator=generator) * 60
                pixels[:, c * 9:(c + 1) * 9] += 180
                Image.fromarray(pixels.clamp(0, 255).byte().numpy(), 'L').save(folder / f'{i}.png')
    return root


def read_log(run):
    return [json.loads(line) for line in (run / 'log.jsonl').read_text().splitlines()]


@pytest.fixture(scope='session')
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp('evaluate')
    folder = make_image_folder(root / 'data')
    for name, extra in (('scala', []), ('st_half', ['--method', 'separate', '--width', '0.5']),
                        ('st_full', ['--method', 'separate', '--width', '1.0'])):
        assert main(['train', '--data', str(folder), '--output', str(root / name), *FAST, *extra]) == 0
    return root
