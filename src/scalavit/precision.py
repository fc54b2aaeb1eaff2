"""Precision, the second knob beside width: a dense width in fp32, bf16 or int8 on the CPU, and the processor units
that make the last two fast (measure a precision's speed on the machine at hand; never assume it).

- ``fp32``: the width as it is.
- ``bf16``: the same weights under CPU autocast (matrix products in bfloat16; fast only with AVX-512 BF16 or AMX).
- ``int8``: a copy whose linear layers take int8 weights and quantize their activations per token as they come
  (torchao's ``Int8DynamicActivationInt8WeightConfig``; fast only with VNNI, and only where the layers are large
  enough for the quantization to pay for itself).
"""
import copy
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

PRECISIONS = ('fp32', 'bf16', 'int8')
# /proc/cpuinfo flags of the units that run bf16 and int8 matrix products natively
FAST_UNITS = {'bf16': ('avx512_bf16', 'amx_bf16'), 'int8': ('avx512_vnni', 'avx_vnni', 'amx_int8')}


def check_precision(name: str) -> str:
    if name not in PRECISIONS:
        raise ValueError(f"precision {name!r}: choose among {', '.join(PRECISIONS)}")
    return name


def cpu_flags(cpuinfo: Path = Path('/proc/cpuinfo')) -> set[str]:
    """The processor's feature flags (empty where the system does not say)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    return {flag for line in text.splitlines() if line.startswith('flags') for flag in line.split(':', 1)[1].split()}


def fast_units(precision: str, flags: set[str]) -> list[str]:
    """The units among ``flags`` that run ``precision`` natively (fp32 needs none)."""
    return [unit for unit in FAST_UNITS.get(check_precision(precision), ()) if unit in flags]


class Autocast(nn.Module):
    """``module`` run under CPU autocast to bfloat16, answering in float32 as the others do."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast('cpu', dtype=torch.bfloat16):
            return self.module(x).float()


def at_precision(dense: nn.Module, precision: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """``dense`` (one width as a plain model, in eval mode) answering in ``precision``; ``dense`` itself is left as
    it is."""
    if check_precision(precision) == 'fp32':
        return dense
    if precision == 'bf16':
        return Autocast(dense)
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    quantized = copy.deepcopy(dense)
    quantize_(quantized, Int8DynamicActivationInt8WeightConfig())
    return quantized
