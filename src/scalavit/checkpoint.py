"""Checkpoints: atomic saving, loading that never runs code from the file, errors that name what does not fit, and
random states.

A checkpoint is data. Every file is read with ``torch.load(weights_only=True)``, which rebuilds only tensors, plain
containers, numbers and strings; a file that needs any other Python object is refused unless the user trusts it
(``--trust-checkpoint``, i.e. ``trusted_checkpoints()``), because unpickling such a file can run any command.
"""
import contextlib
import hashlib
import math
import pickle
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import timm
import torch
from safetensors.torch import load_file

from .adapt import check_shapes
from .files import write_atomically
from .model import SlimmableVisionTransformer


class UntrustedCheckpoint(ValueError):
    """A file that only unpickling arbitrary Python objects (running code) could load."""


# NumPy arrays of numbers: the NumPy random state that scalavit's checkpoints held before it was kept as tensors.
_NUMPY_ARRAY_GLOBALS = [np.dtype, np.ndarray, np.dtypes.UInt32DType, np._core.multiarray._reconstruct]
_trusted = False


@contextlib.contextmanager
def trusted_checkpoints(trusted: bool = True) -> Iterator[None]:
    """Within this block, files are loaded with full unpickling (``--trust-checkpoint``): only for files the user
    trusts, since unpickling can run any code."""
    global _trusted
    before, _trusted = _trusted, trusted
    try:
        yield
    finally:
        _trusted = before


def read_torch_file(path: Path) -> Any:
    """``torch.load`` of a file from anywhere, on the CPU, never running code from it unless trusted."""
    try:
        with torch.serialization.safe_globals(_NUMPY_ARRAY_GLOBALS):
            return torch.load(path, map_location='cpu', weights_only=not _trusted)
    except pickle.UnpicklingError as error:
        if 'Weights only load failed' not in str(error):
            raise ValueError(f"{path} is not a readable PyTorch checkpoint ({error})") from None
        raise UntrustedCheckpoint(
            f"{path} holds Python objects ({_unsafe_globals(path)}) that loading would have to run as code, which a "
            "file from elsewhere must never do; if you trust this file and where it came from, add "
            "--trust-checkpoint") from None
    except Exception as error:
        raise ValueError(f"{path} is not a readable PyTorch checkpoint ({_first_line(error)})") from None


def _unsafe_globals(path: Path) -> str:
    allowed = {f'{g.__module__}.{g.__qualname__}' for g in _NUMPY_ARRAY_GLOBALS}
    try:
        names = [n for n in torch.serialization.get_unsafe_globals_in_checkpoint(path) if n not in allowed]
    except Exception:  # an old (non-zip) file: the names are not listed without unpickling
        return 'objects other than tensors'
    return ', '.join(names[:3]) + (' ...' if len(names) > 3 else '') if names else 'objects other than tensors'


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


@dataclass
class Source:
    """Weights as the user named them, read: the state dict (timm DeiT parameter names) and, for a scalavit training
    checkpoint, the whole checkpoint (configuration, classes, optimizer, ...)."""

    path: Path
    state_dict: dict[str, torch.Tensor]
    checkpoint: Optional[dict] = None


TIMM_FOLDER_FILES = ('model.safetensors', 'pytorch_model.bin')


def source_file(source: str) -> Path:
    """The file that ``source`` names: a file, a run directory's ``last.pt``, or timm's ``local-dir:FOLDER``."""
    if source.startswith('local-dir:'):
        folder = Path(source[len('local-dir:'):])
        found = [folder / name for name in TIMM_FOLDER_FILES if (folder / name).is_file()]
        if not found:
            raise FileNotFoundError(f"{source}: {folder} holds none of {', '.join(TIMM_FOLDER_FILES)}")
        return found[0]
    path = Path(source)
    if path.is_dir():
        path = path / 'last.pt'
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (give a scalavit run or checkpoint, a .pth, a .safetensors "
                                "file or local-dir:FOLDER)")
    return path


def read_source(source: str) -> Source:
    """Any weights a user can name, read as data: a scalavit run or checkpoint, a state dict (bare or under
    ``'model'``, as the authors' and timm's ``.pth`` files hold it), a ``.safetensors`` file, or ``local-dir:``."""
    path = source_file(str(source))
    if path.suffix == '.safetensors':
        try:
            return Source(path, load_file(path))
        except Exception as error:  # safetensors raises its own SafetensorError for a corrupt or truncated file
            raise ValueError(f"{path} is not a readable safetensors file ({_first_line(error)}); export it again or "
                             "give another file") from None
    content = read_torch_file(path)
    if isinstance(content, dict) and {'model', 'config', 'model_kwargs'} <= content.keys():
        return Source(path, content['model'], content)
    state = content.get('model', content) if isinstance(content, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} holds neither a scalavit checkpoint nor a state dict of parameters")
    return Source(path, state)


def load_checkpoint(path: str) -> dict:
    """A scalavit training checkpoint (a run directory means its ``last.pt``)."""
    source = read_source(path)
    if source.checkpoint is None:
        raise ValueError(f"{source.path} is not a scalavit training checkpoint (it holds only weights)")
    return source.checkpoint


def load_weights(model: torch.nn.Module, state_dict: dict, source: str) -> None:
    """Strict loading with a message that names the first parameter that does not fit."""
    check_shapes(state_dict, model, source)
    model.load_state_dict(state_dict)


def build_model_from_checkpoint(checkpoint: dict, source: str) -> SlimmableVisionTransformer:
    """The trained model, with its class names as timm's ``pretrained_cfg['label_names']``."""
    model = timm.create_model(checkpoint['config']['model'], **checkpoint['model_kwargs'])
    load_weights(model, checkpoint['model'], source)
    set_label_names(model, checkpoint.get('classes'))
    return model


def set_label_names(model: torch.nn.Module, classes: Optional[list[str]]) -> None:
    if classes is not None:
        model.pretrained_cfg = dict(model.pretrained_cfg, label_names=list(classes))


def check_same_classes(expected: Optional[list[str]], given: list[str], expected_source: str,
                       given_source: str) -> None:
    """Refuse to pair a model with data (or a teacher) whose classes are others, even when there are as many."""
    if expected is None:
        return
    if list(expected) != list(given):
        differing = [f"{i}: {a!r} vs {b!r}" for i, (a, b) in enumerate(zip(expected, given)) if a != b]
        if len(expected) != len(given):
            differing.insert(0, f"{len(expected)} classes vs {len(given)}")
        raise ValueError(f"{given_source} has other classes than {expected_source}: {'; '.join(differing[:4])}"
                         f"{' ...' if len(differing) > 4 else ''}; use data with the classes it was trained on")


def save_atomically(obj: Any, path: Path) -> None:
    """``torch.save`` that a crash or a power cut never leaves half-written (see ``files``)."""
    write_atomically(path, lambda tmp: torch.save(obj, tmp))


def random_states() -> dict:
    """Python's, NumPy's (as tensors: plain data) and torch's random states."""
    _, keys, position, has_gauss, gauss = np.random.get_state()
    numpy = dict(keys=torch.from_numpy(keys.astype(np.int64)), position=int(position), has_gauss=int(has_gauss),
                 gauss=float(gauss))
    states = dict(python=random.getstate(), numpy=numpy, torch=torch.get_rng_state())
    if torch.cuda.is_available():
        states['cuda'] = torch.cuda.get_rng_state_all()
    return states


def set_random_states(states: dict) -> None:
    random.setstate(states['python'])
    numpy = states['numpy']
    if isinstance(numpy, dict):
        numpy = ('MT19937', numpy['keys'].numpy().astype(np.uint32), numpy['position'], numpy['has_gauss'],
                 numpy['gauss'])
    np.random.set_state(numpy)
    torch.set_rng_state(states['torch'])
    if 'cuda' in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states['cuda'])


def weights_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a model's weights (names, shapes, dtypes and values): which weights a report measured."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f'{name}:{tuple(tensor.shape)}:{tensor.dtype};'.encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b'')
    return digest.hexdigest()


# The reference code's DeiT sizes: embedding width -> (name, heads).
_DEIT_SIZES = {192: ('tiny', 3), 384: ('small', 6), 768: ('base', 12)}


def load_model(path: str, model_name: Optional[str] = None) -> tuple[SlimmableVisionTransformer, dict]:
    """A slimmable model from a scalavit training checkpoint, or from a state dict in the authors' format
    (``{'model': state_dict, ...}`` or a bare state dict with timm DeiT names). Returns the model and the training
    configuration with the checkpoint's ``step`` (empty for an authors' checkpoint)."""
    source = read_source(path)
    if source.checkpoint is not None:
        checkpoint = source.checkpoint
        if model_name and model_name != checkpoint['config']['model']:
            raise ValueError(f"{source.path} holds a {checkpoint['config']['model']}, not a {model_name}")
        model = build_model_from_checkpoint(checkpoint, str(source.path))
        return model, dict(checkpoint['config'], step=checkpoint['step'])
    state = source.state_dict
    shape_args = _shape_args(state, source.path)  # first: it names a missing parameter
    model = timm.create_model(model_name or _infer_architecture(state, source.path), **shape_args,
                              norm_eps=1e-5)  # the authors' checkpoints were trained with 1e-5
    load_weights(model, state, str(source.path))
    return model, {}


def _shape_args(state: dict, path: Path) -> dict:
    for name in ('cls_token', 'pos_embed', 'patch_embed.proj.weight', 'head.weight'):
        if name not in state:
            raise ValueError(f"{path}: parameter {name} is missing; this is not a DeiT state dict")
    proj = state['patch_embed.proj.weight']
    prefix = 2 if 'dist_token' in state else 1
    grid = math.isqrt(state['pos_embed'].shape[1] - prefix)
    return dict(num_classes=state['head.weight'].shape[0], in_chans=proj.shape[1], img_size=grid * proj.shape[-1])


def _infer_architecture(state: dict, path: Path) -> str:
    width, patch = state['cls_token'].shape[-1], state['patch_embed.proj.weight'].shape[-1]
    depth = 1 + max(int(name.split('.')[1]) for name in state if name.startswith('blocks.'))
    if width not in _DEIT_SIZES or patch != 16 or depth != 12:
        raise ValueError(f"{path}: cannot tell the architecture from the shapes (width {width}, patch {patch}, depth "
                         f"{depth}); name it with --model")
    distilled = '_distilled' if 'dist_token' in state else ''
    return f"scala_deit_{_DEIT_SIZES[width][0]}{distilled}_patch16_224"
