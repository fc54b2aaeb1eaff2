"""How the sub-networks of one training step pull on the weights they share (``scalavit train --grad-stats N``).

Every N steps, each sub-network's own gradient is kept (what its backward pass added to ``.grad``), and the step adds
one row to ``grad_stats.jsonl`` (rewritten whole with the run's log, so a resumed run repeats no row): each
sub-network's gradient norm, and for each pair the cosine similarity of their gradients on the weights both use, with
both norms there, over the whole model and per group of weights (the embedding, each block, the head). A width's
weights are where its gradient is non-zero: its channel slice.
"""
import itertools
import json
import math
from pathlib import Path

import torch

from .files import write_text_atomically


def weight_group(name: str) -> str:
    """'embed', 'block<i>' or 'head': where a parameter sits in the network."""
    if name.startswith('blocks.'):
        return f"block{name.split('.')[1]}"
    return 'head' if name.startswith(('norm', 'fc_norm', 'head')) else 'embed'


class GradientStats:
    """``recording(run, names)`` wraps a step's ``run`` so that each pass's gradient is kept; ``record(step, epoch)``
    then adds the step's row and forgets the gradients; ``save()`` writes every row to ``path``."""

    def __init__(self, model: torch.nn.Module, path: Path, loss_scale=lambda: 1.0):
        self.parameters = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        self.path, self.loss_scale = Path(path), loss_scale
        self.passes: list[tuple[str, float, list[torch.Tensor]]] = []
        self.rows: list[dict] = []

    def resume(self, step: int) -> None:
        """Keep the rows an interrupted run wrote up to its checkpoint's ``step``."""
        if self.path.is_file():
            rows = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
            self.rows = [row for row in rows if row['step'] <= step]

    def recording(self, run, names):
        """``run`` that keeps each pass's own gradient; ``names`` names the passes in order (the methods' loss
        names: 'full', 'upper', ...). Each pass writes into empty ``.grad``s and its gradient is then added to what
        the earlier passes left, the sum autograd would have made: the step is the same with or without the stats."""
        names = iter(names)

        def recorded(width, loss_fn, last):
            earlier = [p.grad for _, p in self.parameters]
            for _, p in self.parameters:
                p.grad = None
            result = run(width, loss_fn, last)
            scale = float(self.loss_scale())
            own = [p.grad.detach() / scale if p.grad is not None else torch.zeros_like(p) for _, p in self.parameters]
            for (_, p), before in zip(self.parameters, earlier):
                if before is not None:
                    p.grad = before if p.grad is None else before + p.grad
            self.passes.append((next(names), width, own))
            return result
        return recorded

    def row(self, step: int, epoch: int) -> dict:
        groups = [weight_group(name) for name, _ in self.parameters]
        row = dict(step=step, epoch=epoch,
                   widths={name: width for name, width, _ in self.passes},
                   norm={name: _norm(grads) for name, _, grads in self.passes}, pairs={})
        for (a, _, grads_a), (b, _, grads_b) in itertools.combinations(self.passes, 2):
            row['pairs'][f'{a}|{b}'] = dict(
                all=_shared(grads_a, grads_b),
                groups={group: _shared([g for g, k in zip(grads_a, groups) if k == group],
                                       [g for g, k in zip(grads_b, groups) if k == group])
                        for group in dict.fromkeys(groups)})
        return row

    def record(self, step: int, epoch: int) -> dict:
        self.rows.append(self.row(step, epoch))
        self.passes = []
        return self.rows[-1]

    def save(self) -> None:
        write_text_atomically(self.path, ''.join(json.dumps(row) + '\n' for row in self.rows))


def _norm(grads: list[torch.Tensor]) -> float:
    return math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads))


def _shared(grads_a: list[torch.Tensor], grads_b: list[torch.Tensor]) -> dict:
    """Cosine similarity of two gradients on the weights both touch, and each one's norm there."""
    dot = norm_a = norm_b = 0.0
    for a, b in zip(grads_a, grads_b):
        both = (a != 0) & (b != 0)
        a, b = a[both].double(), b[both].double()
        dot, norm_a, norm_b = dot + float(a @ b), norm_a + float(a @ a), norm_b + float(b @ b)
    cosine = dot / math.sqrt(norm_a * norm_b) if norm_a > 0 and norm_b > 0 else None  # nothing shared
    return dict(cosine=cosine, norm_a=math.sqrt(norm_a), norm_b=math.sqrt(norm_b))
