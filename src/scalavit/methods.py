"""What one training step computes, for Scala and for the baselines the paper compares it with.

A method does not call the model itself: it asks ``run(width, loss_fn, last)`` to run one sub-network's forward and
backward (accumulating gradients, so only one graph is alive at a time) and gets back that sub-network's detached
output and its loss. ``last`` marks the final pass of the step, where a distributed trainer synchronises gradients.
The trainer then takes one optimizer step.
"""
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .losses import Logits, full_network_loss, kl_divergence, sub_network_loss, transfer_head
from .widths import WidthGrid

LossFn = Callable[[Logits], torch.Tensor]
Run = Callable[[float, LossFn, bool], tuple[Logits, float]]


@dataclass
class Scala:
    """Scale Coordination: the full network, then two sampled widths and the smallest, each taught by the previous.

    transfer: 'progressive' (l -> m_hi -> m_lo -> s) or 'full' (the full network teaches all three, "w/o PKT").
    sampling: 'stable' (one width from each half of the grid) or 'uniform' (both from all intermediate widths).
    noise_calibration: add ground-truth cross-entropy to the smaller networks' distillation loss.
    full_warmup_epochs: epochs at the start that train only the full network, at half the learning rate.
    always_smallest: the smallest width at every step (constant activation); if False, the third sub-network is drawn
    from every width below the largest, and the three are taught in order of width.
    """

    grid: WidthGrid
    transfer: str = 'progressive'
    sampling: str = 'stable'
    noise_calibration: bool = True
    full_warmup_epochs: int = 10
    always_smallest: bool = True

    def __post_init__(self):
        if self.transfer not in ('progressive', 'full'):
            raise ValueError(f"transfer must be 'progressive' or 'full', got {self.transfer!r}")
        if self.sampling not in ('stable', 'uniform'):
            raise ValueError(f"sampling must be 'stable' or 'uniform', got {self.sampling!r}")
        self.grid.sample(torch.Generator(), self.sampling == 'stable')  # a grid with nothing to sample fails now

    def lr_scale(self, epoch: int) -> float:
        return 0.5 if epoch < self.full_warmup_epochs else 1.0

    def step(self, run: Run, target: torch.Tensor, epoch: int, generator: torch.Generator,
             teacher_logits: Optional[torch.Tensor] = None) -> dict[str, float]:
        warmup = epoch < self.full_warmup_epochs
        full, losses = _run_full(run, self.grid.largest, target, teacher_logits, last=warmup)
        if warmup:
            return losses
        widths = sorted((*self.grid.sample(generator, stable=self.sampling == 'stable'),
                         self.grid.narrow(generator, self.always_smallest)), reverse=True)
        teacher = full
        for name, width in zip(('upper', 'lower', 'smallest'), widths):
            output, losses[f'loss_{name}'] = run(
                width, lambda out: sub_network_loss(out, teacher, target, self.noise_calibration), name == 'smallest')
            losses[f'width_{name}'] = width
            if self.transfer == 'progressive':
                teacher = output
        return losses


@dataclass
class USNet:
    """Universally slimmable networks: the sandwich rule (largest, two random widths, smallest) with in-place
    distillation (the largest learns from labels, every other width only from the largest's output).
    ``always_smallest=False`` draws the third width from every width below the largest instead."""

    grid: WidthGrid
    always_smallest: bool = True

    def lr_scale(self, epoch: int) -> float:
        return 1.0

    def step(self, run: Run, target: torch.Tensor, epoch: int, generator: torch.Generator,
             teacher_logits: Optional[torch.Tensor] = None) -> dict[str, float]:
        full, losses = _run_full(run, self.grid.largest, target, teacher_logits, last=False)
        widths = sorted((*self.grid.sample(generator, stable=False), self.grid.narrow(generator, self.always_smallest)),
                        reverse=True)
        for name, width in zip(('random1', 'random2', 'smallest'), widths):
            _, losses[f'loss_{name}'] = run(
                width, lambda out: kl_divergence(transfer_head(out), transfer_head(full)), name == 'smallest')
            losses[f'width_{name}'] = width
        return losses


@dataclass
class Separate:
    """Separate Training: one ordinary network, trained as DeiT trains (its only width is its full width)."""

    def lr_scale(self, epoch: int) -> float:
        return 1.0

    def step(self, run: Run, target: torch.Tensor, epoch: int, generator: torch.Generator,
             teacher_logits: Optional[torch.Tensor] = None) -> dict[str, float]:
        return _run_full(run, None, target, teacher_logits, last=True)[1]


def _run_full(run: Run, width: Optional[float], target: torch.Tensor, teacher_logits: Optional[torch.Tensor],
              last: bool) -> tuple[Logits, dict[str, float]]:
    output, loss = run(width, lambda out: full_network_loss(out, target, teacher_logits), last)
    return output, {'loss_full': loss}
