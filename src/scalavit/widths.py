"""The width grid, and which channels each width uses (Isolated Activation)."""
import numbers
from dataclasses import dataclass
from typing import NamedTuple

import torch

# Widths are multiples of the granularity; comparing them with this tolerance absorbs float noise such as 0.1 + 0.2.
_TOLERANCE = 1e-6


@dataclass(frozen=True)
class WidthGrid:
    """The width ratios a slimmable network is trained for: ``smallest``, ``smallest + granularity``, ... ``largest``."""

    smallest: float = 0.25
    largest: float = 1.0
    granularity: float = 1 / 16

    def __post_init__(self):
        if not 0 < self.smallest <= self.largest <= 1:
            raise ValueError(
                f"width grid needs 0 < smallest <= largest <= 1, got smallest={self.smallest}, largest={self.largest}")
        if self.granularity <= 0:
            raise ValueError(f"granularity must be positive, got {self.granularity}")
        steps = (self.largest - self.smallest) / self.granularity
        if abs(steps - round(steps)) > _TOLERANCE:
            raise ValueError(
                f"largest - smallest ({self.largest} - {self.smallest}) is not a whole number of granularity steps "
                f"({self.granularity}); choose a granularity that divides it, e.g. 1/16, 1/8 or 1/4")

    @property
    def widths(self) -> tuple[float, ...]:
        steps = round((self.largest - self.smallest) / self.granularity)
        return tuple(round(self.smallest + i * self.granularity, 10) for i in range(steps + 1))

    def snap(self, width: float) -> float:
        """The grid width equal to ``width``; a width off the grid raises ``ValueError``."""
        widths = list(self.widths)
        check_is_number(width, widths)
        return widths[grid_index(widths, width)]

    def is_extreme(self, width: float) -> bool:
        return abs(width - self.smallest) <= _TOLERANCE or abs(width - self.largest) <= _TOLERANCE

    @property
    def intermediate(self) -> tuple[float, ...]:
        return self.widths[1:-1]

    def stable_bins(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Stable Sampling's bins, split at the middle m = (s + l) / 2 as the reference code does: [m, l) and (s, m).

        A grid with a single intermediate width (granularity (l - s) / 2) uses it in both bins.
        """
        middle = (self.smallest + self.largest) / 2
        upper = tuple(w for w in self.intermediate if w >= middle - _TOLERANCE)
        lower = tuple(w for w in self.intermediate if w < middle - _TOLERANCE)
        if not self.intermediate:
            raise ValueError(f"grid {list(self.widths)} has no intermediate width to sample; use a finer granularity")
        return upper or lower, lower or upper

    def sample(self, generator: torch.Generator, stable: bool = True) -> tuple[float, float]:
        """Two intermediate widths, larger first: one from each Stable Sampling bin, or both uniformly ("w/o SS")."""
        if stable:
            upper, lower = self.stable_bins()
        else:
            upper = lower = self.intermediate
        high, low = (_draw(bin_, generator) for bin_ in (upper, lower))
        return max(high, low), min(high, low)

    def narrow(self, generator: torch.Generator, always_smallest: bool = True) -> float:
        """The step's narrowest sub-network: the smallest width (the sandwich rule's constant activation), or, when
        not ``always_smallest``, a width drawn uniformly from every width below the largest, the smallest among them."""
        return self.smallest if always_smallest else _draw(self.widths[:-1], generator)


def _draw(widths: tuple[float, ...], generator: torch.Generator) -> float:
    return widths[int(torch.randint(len(widths), (1,), generator=generator))]


def check_is_number(width, widths: list[float]) -> None:
    if isinstance(width, bool) or not isinstance(width, numbers.Real):
        raise TypeError(f"width must be a number on the grid {widths}, got {type(width).__name__} {width!r}")


def grid_index(widths: list[float], width: float, tolerance: float = _TOLERANCE) -> int:
    """Where ``width`` is in ``widths`` (ValueError when off the grid); TorchScript compiles it."""
    for i, candidate in enumerate(widths):
        if abs(candidate - width) <= tolerance:
            return i
    raise ValueError(f"width {width} is not on this model's grid; valid widths are {widths}. "
                     "Off-grid widths were never trained and give near-chance accuracy.")


class Channels(NamedTuple):
    """The channels one width uses in each sliced dimension of the network, as ``(start, stop)`` index ranges: plain
    integers, so that a traced or scripted forward slices with them (``slice(*channels.embed)`` in Python)."""

    embed: tuple[int, int]  # of the embedding width D: tokens, norms, attention and MLP outputs, the head's inputs
    qkv: tuple[int, int]  # one block of rows of the fused [3D, D] qkv matrix
    hidden: tuple[int, int]  # of the MLP's hidden width
    dim: int  # number of embedding channels, int(r * D)


def scaled(size: int, width: float) -> int:
    """int(width * size), robust to float noise (0.29 * 100 is 28.999999999999996)."""
    return int(width * size + _TOLERANCE)


def _take(count: int, size: int, from_end: bool) -> tuple[int, int]:
    return (size - count, size) if from_end else (0, count)


def select_channels(grid: WidthGrid, width: float, embed_dim: int, hidden_dim: int,
                    isolated_activation: bool = True) -> Channels:
    """The channels width ``width`` uses, following the reference code's Isolated Activation.

    With isolated activation the smallest and largest widths take the first channels of every sliced dimension and
    every intermediate width takes the last ones, so the smallest network shares no weights with the intermediate
    ones. Without it every width takes the first channels (US-Net).
    """
    from_end = isolated_activation and not grid.is_extreme(width)
    dim = scaled(embed_dim, width)
    return Channels(
        embed=_take(dim, embed_dim, from_end),
        qkv=_take(3 * dim, 3 * embed_dim, from_end),
        hidden=_take(scaled(hidden_dim, width), hidden_dim, from_end),
        dim=dim,
    )
