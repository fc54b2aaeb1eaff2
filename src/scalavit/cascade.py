"""Confidence cascades over the widths of one slimmable model: easy images answered at a small width.

A cascade is grid widths ``r1 < r2 < ... < rk`` and a threshold for each step but the last. Every image runs at
``r1``; one whose confidence reaches the step's threshold is answered there, the others run at the next width. A
wider sub-network mixes all of its channels in every layer, so nothing of a narrower pass carries over: each later
stage computes again from the image, and an escalated image costs the MACs of every stage it ran.
"""
import itertools
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from .model import SlimmableVisionTransformer


def top1_probability(logits: torch.Tensor) -> torch.Tensor:
    return logits.softmax(-1).amax(-1)


def margin(logits: torch.Tensor) -> torch.Tensor:
    """The top-1 probability minus the top-2 one."""
    top2 = logits.softmax(-1).topk(2, dim=-1).values
    return top2[:, 0] - top2[:, 1]


def certainty(logits: torch.Tensor) -> torch.Tensor:
    """1 - entropy / log(classes): 1 for a one-hot prediction, 0 for a uniform one."""
    log_p = logits.log_softmax(-1)
    entropy = -(log_p.exp() * log_p).sum(-1)
    return (1 - entropy / math.log(logits.shape[-1])).clamp(0, 1)


CONFIDENCES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    'probability': top1_probability, 'margin': margin, 'entropy': certainty}


def cascade_widths(grid, widths: list[float]) -> list[float]:
    """``widths`` as grid widths, checked: two or more, increasing (ValueError naming the problem otherwise)."""
    widths = [grid.snap(w) for w in widths]  # a width off the grid raises ValueError naming the grid
    if len(widths) < 2 or any(a >= b for a, b in zip(widths, widths[1:])):
        raise ValueError(f"a cascade needs two or more widths in increasing order, got {widths}")
    return widths


class Cascade(nn.Module):
    """``Cascade(model, widths, thresholds)(x)`` gives the logits of each image and the width that answered it.

    ``confidence``: 'probability' (the top-1 softmax probability, the default), 'margin' (top-1 minus top-2) or
    'entropy' (1 - entropy / log(classes)); each is in [0, 1], higher meaning surer.
    """

    def __init__(self, model: SlimmableVisionTransformer, widths: list[float], thresholds: list[float],
                 confidence: str = 'probability'):
        super().__init__()
        widths = cascade_widths(model.grid, widths)
        if len(thresholds) != len(widths) - 1:
            raise ValueError(f"a cascade of {len(widths)} widths needs {len(widths) - 1} threshold(s) (one for each "
                             f"step but the last), got {len(thresholds)}")
        if not all(isinstance(t, (int, float)) and math.isfinite(t) for t in thresholds):
            raise ValueError(f"thresholds must be finite numbers, got {thresholds}")
        if confidence not in CONFIDENCES:
            raise ValueError(f"confidence must be one of {', '.join(CONFIDENCES)}, got {confidence!r}")
        self.model, self.widths, self.thresholds = model, widths, [float(t) for t in thresholds]
        self.confidence = CONFIDENCES[confidence]

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = answered_at = None
        waiting = torch.arange(len(x), device=x.device)
        for step, width in enumerate(self.widths):
            output = self.model(x[waiting], width)
            if logits is None:
                logits = output.new_empty(len(x), output.shape[-1])
                answered_at = torch.empty(len(x), device=x.device)
            if step == len(self.widths) - 1:  # the last stage answers whatever is left
                sure = torch.ones_like(waiting, dtype=torch.bool)
            else:
                sure = self.confidence(output) >= self.thresholds[step]
            logits[waiting[sure]] = output[sure]
            answered_at[waiting[sure]] = width
            waiting = waiting[~sure]
            if len(waiting) == 0:
                break
        return logits, answered_at

    def macs(self, answered_at: torch.Tensor, macs_per_width: dict[float, int]) -> torch.Tensor:
        """The MACs each image cost: those of every stage it ran, up to the one that answered it (``macs_per_width``
        as ``evaluate.count_macs`` gives them)."""
        spent, total = {}, 0
        for width in self.widths:
            total += macs_per_width[width]
            spent[width] = total
        return torch.tensor([spent[width] for width in answered_at.tolist()], dtype=torch.float64)


ESCALATE_ALL = 1.01  # above every confidence: every image goes on to the last width


@dataclass
class StageOutputs:
    """Every cascade width run on every image of a set: the confidence and the correctness of each (width, image),
    from which any thresholds' outcome follows without running the model again."""

    widths: list[float]
    confidence: torch.Tensor  # [widths, images]
    correct: torch.Tensor     # [widths, images], bool

    def answered_stage(self, thresholds: list[float]) -> torch.Tensor:
        """The stage (index into ``widths``) that answers each image."""
        stage = torch.full((self.confidence.shape[1],), len(self.widths) - 1)
        for step in reversed(range(len(self.widths) - 1)):
            stage = torch.where(self.confidence[step] >= thresholds[step], step, stage)
        return stage

    def score(self, thresholds: list[float], macs_per_width: dict[float, int]) -> dict:
        """Top-1 (%), mean MACs per image, and the fraction of the images each stage answered."""
        stage = self.answered_stage(thresholds)
        correct = self.correct.gather(0, stage[None]).squeeze(0)
        cumulative = torch.tensor(list(itertools.accumulate(macs_per_width[w] for w in self.widths)),
                                  dtype=torch.float64)
        return dict(thresholds=list(thresholds), top1=round(100 * float(correct.double().mean()), 2),
                    mean_macs=round(float(cumulative[stage].mean())),
                    answered=[round(float((stage == i).double().mean()), 4) for i in range(len(self.widths))])


def collect(model: SlimmableVisionTransformer, batches, widths: list[float], confidence: str = 'probability',
            device: torch.device = torch.device('cpu')) -> StageOutputs:
    """``StageOutputs`` of ``widths`` over ``batches`` of (images, targets, ...)."""
    measure = CONFIDENCES[confidence]
    confidences, corrects = [[] for _ in widths], [[] for _ in widths]
    with torch.no_grad():
        for images, targets, *_ in batches:
            if images is None:
                continue
            images, targets = images.to(device), targets.to(device)
            for i, width in enumerate(widths):
                logits = model(images, width)
                confidences[i].append(measure(logits).cpu())
                corrects[i].append((logits.argmax(-1) == targets).cpu())
    return StageOutputs(list(widths), torch.stack([torch.cat(c) for c in confidences]),
                        torch.stack([torch.cat(c) for c in corrects]))


def sweep(stages: StageOutputs, points: int = 40) -> list[float]:
    """Thresholds to try, the same at every step: 0 (everything answered at the first width), the first width's
    confidences at ``points`` evenly spaced quantiles (so that each lets on another share of the images), and
    ``ESCALATE_ALL``."""
    levels = torch.linspace(0, 1, points + 1, dtype=torch.float64)
    quantiles = torch.quantile(stages.confidence[0].double(), levels, interpolation='lower')  # values that occur
    return sorted({0.0, ESCALATE_ALL, *quantiles.tolist()})


def calibrate(stages: StageOutputs, macs_per_width: dict[float, int], within_points: float) -> dict:
    """The cheapest thresholds of ``sweep(stages)`` whose top-1 on ``stages`` is within ``within_points`` of the
    last width's; its score there."""
    scores = [stages.score([t] * (len(stages.widths) - 1), macs_per_width) for t in sweep(stages)]
    target = scores[-1]['top1'] - within_points  # the last threshold escalates every image
    fitting = [s for s in scores if s['top1'] >= target - 1e-9]
    return min(fitting, key=lambda s: (s['mean_macs'], -s['top1']))
