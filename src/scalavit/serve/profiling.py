"""The latency profile a server plans with: measured on its device, cached per machine, checked at every start.

A profile depends on the machine (its CPU or GPU, the cores and threads the server may use), the weights, the backend
and the batch sizes; the cache keys it by all of them, so a restart on the same machine reuses it and anything else
measures anew. A cached profile is checked by a few forwards before the server is ready, and the server's speed
estimate starts from what they took: a machine slower than when it was profiled (a co-located job, a replica given
fewer cores) is planned for from the first request. Measuring needs no long run either: a short profile makes the
server ready, and the speed it learns from every batch refines it while it serves.
"""
import hashlib
import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Optional

import torch

from ..evaluate import cpu_name
from ..files import write_text_atomically
from .policy import Profile

log = logging.getLogger('scalavit.serve')

CACHE_VERSION = 1


def default_cache() -> Path:
    """``$XDG_CACHE_HOME/scalavit/profiles``, or ``~/.cache/scalavit/profiles``."""
    return Path(os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache') / 'scalavit' / 'profiles'


def identity(runner, batch_sizes: list[int]) -> dict:
    """What a profile depends on: the machine, the model's weights, the backend and the batch sizes."""
    device = runner.device
    return dict(version=CACHE_VERSION, torch=torch.__version__, python=platform.python_version(),
                device=str(device), device_name=torch.cuda.get_device_name(device) if device.type == 'cuda'
                else cpu_name(), cores=len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity')
                else os.cpu_count(), threads=torch.get_num_threads(), backend=runner.backend,
                weights=runner.weights, widths=list(runner.widths), batch_sizes=list(batch_sizes))


class ProfileCache:
    """One JSON file per identity in ``folder`` (None: no cache)."""

    def __init__(self, folder: Optional[Path]):
        self.folder = folder

    def path(self, key: dict) -> Path:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
        return self.folder / f'{digest}.json'

    def load(self, key: dict) -> Optional[dict]:
        """The cached measurement for ``key``, or None (none, unreadable, or of another identity)."""
        if self.folder is None or not self.path(key).is_file():
            return None
        try:
            saved = json.loads(self.path(key).read_text())
            if saved['identity'] != key:
                return None
            return dict(latency=_cells(saved['p95_s']), median=_cells(saved['median_s']),
                        macs={float(w): int(m) for w, m in saved['macs'].items()}, measured=saved['measured'])
        except (OSError, ValueError, KeyError, TypeError) as error:
            log.warning("the cached profile %s is unreadable (%s); measuring anew", self.path(key), error)
            return None

    def save(self, key: dict, latency: dict, median: dict, macs: dict) -> None:
        if self.folder is None:
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            write_text_atomically(self.path(key), json.dumps(dict(
                identity=key, measured=time.strftime('%Y-%m-%dT%H:%M:%S%z'), p95_s=_table(latency),
                median_s=_table(median), macs={f'{w:g}': m for w, m in macs.items()}), indent=1))
        except OSError as error:  # a read-only home is no reason not to serve
            log.warning("could not cache the profile in %s (%s); the next start measures again", self.folder, error)


def _table(cells: dict[tuple[float, int], float]) -> dict[str, dict[str, float]]:
    widths = sorted({w for w, _ in cells})
    return {f'{w:g}': {str(b): cells[(w, b)] for (v, b) in sorted(cells) if v == w} for w in widths}


def _cells(table: dict[str, dict[str, float]]) -> dict[tuple[float, int], float]:
    return {(float(w), int(b)): float(seconds) for w, row in table.items() for b, seconds in row.items()}


def check_forwards(runner, profile: Profile, repeats: int = 3) -> list[tuple[float, int, float]]:
    """Times the forwards of ``profile.check_cells(repeats)`` now: (width, batch size, seconds) each."""
    timed = []
    for width, batch in profile.check_cells(repeats):
        x = torch.randn(batch, *runner.input_size, device=runner.device)
        with torch.inference_mode():
            start = time.perf_counter()
            runner.forward(x, width)
            if runner.device.type == 'cuda':
                torch.cuda.synchronize(runner.device)
        timed.append((width, batch, time.perf_counter() - start))
    return timed
