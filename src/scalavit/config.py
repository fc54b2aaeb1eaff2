"""What a training run is asked to do (``TrainConfig``), checked whole before any data is read or any step taken;
and the YAML files (``--config``) that set it, read by each option's type."""
import dataclasses
import time
import typing
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Optional

import torch
import yaml

from .finetune import check_source
from .model import FASHION_MODEL, check_device, check_slimmable_model_name
from .widths import WidthGrid


@dataclass
class TrainConfig:
    """Every option of ``scalavit train``; the defaults are scaled for the built-in Fashion-MNIST (see README)."""

    method: str = 'scala'  # scala | usnet | separate
    model: str = FASHION_MODEL
    data: str = 'fashion-mnist'
    output: Optional[str] = None  # default: runs/<method>-<date>-<time>
    epochs: int = 7
    max_steps: Optional[int] = None
    batch_size: int = 128
    lr: float = 2e-3
    min_lr: float = 1e-5
    warmup_epochs: int = 1
    weight_decay: float = 0.05
    clip_grad: Optional[float] = None
    # the width grid and the method's switches
    smallest: float = 0.25
    largest: float = 1.0
    granularity: float = 1 / 16
    width: float = 1.0  # separate: the width of the one model
    isolated_activation: bool = True
    transfer: str = 'progressive'
    sampling: str = 'stable'
    noise_calibration: bool = True
    always_smallest: bool = True  # scala, usnet: train the smallest width at every step (constant activation)
    full_warmup_epochs: int = 1
    teacher: Optional[str] = None
    # fine-tuning
    init: Optional[str] = None  # weights to start from (see finetune.py)
    freeze_backbone: bool = False
    layer_decay: Optional[float] = None
    # DeiT's recipe, from timm
    mixup: float = 0.2
    cutmix: float = 0.0
    smoothing: float = 0.1
    auto_augment: Optional[str] = None
    reprob: float = 0.1
    crop_scale: tuple[float, float] = (1.0, 1.0)
    hflip: float = 0.0
    drop_path: float = 0.0
    # running
    device: str = 'cuda' if torch.cuda.is_available() else 'cpu'
    amp: str = 'none'  # none | fp16 | bf16 (CUDA only)
    compile: bool = False  # torch.compile the training forward and backward, one graph per width
    compile_mode: str = 'default'  # default | reduce-overhead (each width's passes replayed as CUDA graphs; CUDA only)
    compile_regional: bool = False  # compile each transformer block, not the whole model: far shorter compilation
    grad_stats: Optional[int] = None  # every N steps, the sub-networks' gradients compared (grad_stats.jsonl)
    workers: int = 1
    seed: int = 0
    eval_widths: Optional[list[float]] = None  # evaluated after every epoch; every width after the last one

    def __post_init__(self):
        """Every option is checked here, before any data is read or any step is taken."""
        choices = dict(method=('scala', 'usnet', 'separate'), amp=('none', 'fp16', 'bf16'),
                       transfer=('progressive', 'full'), sampling=('stable', 'uniform'),
                       compile_mode=('default', 'reduce-overhead'))
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}, "
                                 f"got {getattr(self, name)!r}")
        if self.auto_augment == 'none':
            self.auto_augment = None
        check_slimmable_model_name(self.model)
        check_device(self.device)
        if self.init is not None:
            check_source(self.init)
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise ValueError(f"--layer-decay must be in (0, 1], got {self.layer_decay}")
        if self.amp != 'none' and not self.device.startswith('cuda'):
            raise ValueError(f"--amp {self.amp} needs a CUDA device (this run is on {self.device}): mixed precision "
                             "on a CPU is far slower than fp32. Use --amp none")
        self._check_compile_options()
        self._check_ranges()
        if self.batch_size < 2 or (self.batch_size % 2 and (self.mixup > 0 or self.cutmix > 0)):
            raise ValueError(f"--batch-size {self.batch_size}: Mixup/CutMix need an even batch size of at least 2")
        self.crop_scale = tuple(self.crop_scale)
        grid = WidthGrid(self.smallest, self.largest, self.granularity)
        if self.method == 'separate':
            grid.snap(self.width)
            grid = WidthGrid(1.0, 1.0)  # an ordinary model: its own width is its only one
        for width in self.eval_widths or ():
            try:
                grid.snap(width)
            except ValueError:
                raise ValueError(f"--eval-widths {width:g} is not a width of the model trained here; choose among "
                                 f"{', '.join(f'{w:g}' for w in grid.widths)}") from None
        if self.output is None:
            self.output = f"runs/{self.method}-{time.strftime('%Y%m%d-%H%M%S')}"

    def _check_compile_options(self):
        if not self.compile and (self.compile_mode != 'default' or self.compile_regional):
            raise ValueError("--compile-mode and --compile-regional say how --compile compiles; add --compile")
        if self.compile_mode == 'reduce-overhead' and not self.device.startswith('cuda'):
            raise ValueError(f"--compile-mode reduce-overhead replays CUDA graphs and needs a CUDA device (this run "
                             f"is on {self.device}); use --compile-mode default")

    def _check_ranges(self):
        at_least = dict(epochs=1, max_steps=1, warmup_epochs=0, full_warmup_epochs=0, workers=0, grad_stats=1)
        for name, low in at_least.items():
            value = getattr(self, name)
            if value is not None and value < low:
                raise ValueError(f"--{name.replace('_', '-')} must be at least {low}, got {value}")
        positive = dict(lr=self.lr, clip_grad=self.clip_grad)
        for name, value in positive.items():
            if value is not None and not value > 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {value}")
        fractions = dict(min_lr=self.min_lr, weight_decay=self.weight_decay, smoothing=self.smoothing,
                         reprob=self.reprob, hflip=self.hflip, drop_path=self.drop_path)
        for name, value in fractions.items():
            if not 0 <= value < 1 or (name == 'reprob' and value == 1):
                raise ValueError(f"--{name.replace('_', '-')} must be in [0, 1), got {value}")
        if self.mixup < 0 or self.cutmix < 0:
            raise ValueError(f"--mixup and --cutmix must be 0 (off) or positive, got {self.mixup} and {self.cutmix}")
        low, high = self.crop_scale
        if not 0 < low <= high <= 1:
            raise ValueError(f"--crop-scale needs 0 < low <= high <= 1, got {low} {high}")


def option_kind(field: dataclasses.Field) -> tuple[Any, bool]:
    """(the type of a ``TrainConfig`` field with Optional removed, whether it may be None)."""
    hint = typing.get_type_hints(TrainConfig)[field.name]
    optional = typing.get_origin(hint) is typing.Union
    return (next(a for a in typing.get_args(hint) if a is not type(None)) if optional else hint), optional


def parse_number(text: str) -> float:
    """A float or a fraction such as 1/16."""
    return float(Fraction(text.strip()))


_KIND_NAMES = {int: 'a whole number', float: 'a number (or a fraction such as 1/16)', bool: 'true or false',
               str: 'a string'}


def _convert(value: Any, kind: Any) -> Any:
    if typing.get_origin(kind) in (tuple, list):
        if not isinstance(value, (list, tuple)) or (typing.get_origin(kind) is tuple and len(value) != 2):
            raise ValueError
        return [_convert(item, float) for item in value]
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError
        return value
    if isinstance(value, bool):
        raise ValueError
    if kind is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return int(value) if isinstance(value, int) else int(str(value).strip())
    if kind is float:
        return float(value) if isinstance(value, (int, float)) else parse_number(str(value))
    return str(value)


def read_config_file(path: Path) -> dict:
    """The options a YAML file sets, each converted to its option's type (so ``lr: 5e-4``, which YAML reads as a
    string, is the number 0.0005); a bad file, key or value is a one-line error naming the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--config {path}: no such file")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, 'problem_mark', None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ''
        problem = getattr(error, 'problem', None) or 'not valid YAML'
        raise ValueError(f"--config {path} is not valid YAML{where}: {problem}") from None
    if not isinstance(values, dict):
        raise ValueError(f"--config {path}: expected a mapping of option names to values, got {type(values).__name__}")
    values = {str(key).replace('-', '_'): value for key, value in values.items()}
    fields = {field.name: field for field in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"--config {path}: unknown option(s) {', '.join(unknown)}; see `scalavit train --help`")
    converted = {}
    for key, value in values.items():
        kind, optional = option_kind(fields[key])
        if value is None and optional:
            converted[key] = None
            continue
        try:
            converted[key] = _convert(value, kind)
        except (ValueError, TypeError, ZeroDivisionError):
            expected = _KIND_NAMES.get(kind, 'a list of numbers')
            raise ValueError(f"--config {path}: {key} must be {expected}, got {value!r}") from None
    return converted
