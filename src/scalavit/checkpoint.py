"""Checkpoints: atomic saving, loading with errors that name what does not fit, random states."""
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch

from .model import SlimmableVisionTransformer


def load_checkpoint(path: str, map_location='cpu') -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / 'last.pt'
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as error:
        raise ValueError(f"{path} is not a readable PyTorch checkpoint ({error})") from error
    if not isinstance(checkpoint, dict) or 'model' not in checkpoint or 'config' not in checkpoint:
        raise ValueError(f"{path} is not a scalavit training checkpoint (expected the keys 'model' and 'config')")
    return checkpoint


def load_weights(model: torch.nn.Module, state_dict: dict, source: str) -> None:
    """Strict loading with a message that names the first parameter that does not fit."""
    own = model.state_dict()
    for name, tensor in state_dict.items():
        if name not in own:
            raise ValueError(f"{source}: parameter {name} does not exist in {type(model).__name__}; "
                             "the checkpoint is of another architecture")
        if own[name].shape != tensor.shape:
            raise ValueError(f"{source}: parameter {name} has shape {tuple(tensor.shape)}, the model expects "
                             f"{tuple(own[name].shape)}; the checkpoint is of another architecture or width")
    missing = [name for name in own if name not in state_dict]
    if missing:
        raise ValueError(f"{source}: parameter {missing[0]} is missing ({len(missing)} in all); "
                         "the checkpoint is of another architecture")
    model.load_state_dict(state_dict)


def build_model_from_checkpoint(checkpoint: dict, source: str) -> SlimmableVisionTransformer:
    model = timm.create_model(checkpoint['config']['model'], **checkpoint['model_kwargs'])
    load_weights(model, checkpoint['model'], source)
    return model


def save_atomically(obj: Any, path: Path) -> None:
    """Write to a temporary file in the same folder, then rename: a crash never leaves half a file."""
    tmp = path.with_name(f'.{path.name}.tmp')
    torch.save(obj, tmp)
    os.replace(tmp, path)


def random_states() -> dict:
    states = dict(python=random.getstate(), numpy=np.random.get_state(), torch=torch.get_rng_state())
    if torch.cuda.is_available():
        states['cuda'] = torch.cuda.get_rng_state_all()
    return states


def set_random_states(states: dict) -> None:
    random.setstate(states['python'])
    np.random.set_state(states['numpy'])
    torch.set_rng_state(states['torch'])
    if 'cuda' in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states['cuda'])
