"""Starting a model from another's weights (``scalavit train --init SOURCE``): a scalavit run or checkpoint, an
authors'-format or timm DeiT ``.pth``, a ``.safetensors`` file, or a timm ``local-dir:`` folder.

What differs between the source and the model is adapted the way timm adapts pretrained weights (``adapt.py``), one
log line each.
"""
from typing import Callable

from .adapt import adapt
from .checkpoint import read_source, source_file
from .model import SlimmableVisionTransformer

# The paper's Table 8: a pretrained DeiT-S fine-tuned into a slimmable model, against Scala trained from scratch.
NOT_SLIMMABLE_WARNING = (
    "if this source is a plain (not slimmable) DeiT, expect its narrow widths to lag: the paper's Table 8 fine-tunes "
    "a pretrained DeiT-S into a slimmable one and gets 23.4 / 52.3 / 65.4 / 74.0 at r = 0.25 / 0.5 / 0.75 / 1, against "
    "58.7 / 68.3 / 73.3 / 76.1 for Scala trained from scratch")


def check_source(source: str) -> None:
    """That ``--init`` names something that exists (before any data is read)."""
    try:
        source_file(source)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"--init {source}: {error}") from None


def initialize(model: SlimmableVisionTransformer, source: str, log: Callable[[str], None] = print) -> None:
    """Load ``source`` into ``model``, adapted; the classifiers the source cannot give keep their initialisation."""
    try:
        read = read_source(source)
    except (ValueError, FileNotFoundError) as error:
        raise type(error)(f"--init {source}: {error}") from None
    state, slimmable = read.state_dict, read.checkpoint is not None
    if not slimmable:
        log(f"--init {source}: {NOT_SLIMMABLE_WARNING}")
    model.load_state_dict(adapt(state, model, log), strict=False)
