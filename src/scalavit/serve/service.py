"""One inference request, whatever protocol carried it: admitted within a bound, decoded off the event loop (its deadline
counted from when it asked to be decoded), queued for the model thread, and awaited with a deadline of its own.

``Service`` holds the runner, its latency profile and the batcher, made ready in the background so that liveness
answers at once; the HTTP routes (``app``, ``v2``) only parse and format.
"""
import asyncio
import contextlib
import logging
import math
import os
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator, Optional, TypeVar

from PIL import Image

from ..images import BadImage, ImageTooLarge, UnsupportedImage
from .batcher import Answer, Batcher, BatchFailed, Missed, Refused, retry_after_header
from .metrics import Metrics
from .policy import CascadePlan, Profile, SlackFit, parse_policy
from .profiling import ProfileCache, check_forwards, default_cache, identity

log = logging.getLogger('scalavit.serve')

T = TypeVar('T')
MAX_SLO_MS = 60_000.0  # a deadline further off than a minute is no deadline; it would also hold the request that long


@dataclass
class Settings:
    slo_ms: float = 100.0
    policy: str = 'slackfit'
    max_batch_size: int = 32
    max_queue: int = 256
    max_body_bytes: int = 10 * 2 ** 20
    profile_repeats: int = 5
    max_pixels: int = 25_000_000
    decode_threads: int = 0  # 0: one per core this process may use
    stall_s: float = 10.0  # the model thread not seen for this long (beyond its slowest forward) is not ready
    served_model_name: str = 'scalavit'  # the model's name in the Open Inference Protocol
    profile_cache: str = ''  # the folder of cached profiles ('': profiling.default_cache())
    use_profile_cache: bool = True  # False: measure at every start, cache nothing
    # Python's GIL switch interval in this process. The model thread wants the GIL back after every kernel; with
    # Python's default of 5 ms it may wait that long each time while the event loop runs, which under load made
    # small forwards take several times their profile.
    switch_interval_ms: float = 0.5

    def __post_init__(self):
        for name in ('slo_ms', 'max_batch_size', 'max_queue', 'max_body_bytes', 'profile_repeats', 'max_pixels',
                     'stall_s', 'switch_interval_ms'):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if not self.slo_ms <= MAX_SLO_MS:
            raise ValueError(f"--slo-ms must be at most {MAX_SLO_MS:g}, got {self.slo_ms:g}")
        if not self.served_model_name.replace('-', '').replace('_', '').replace('.', '').isalnum():
            raise ValueError(f"--served-model-name {self.served_model_name!r}: use letters, digits, '-', '_' and '.'")
        if self.decode_threads < 0:
            raise ValueError(f"--decode-threads must be 0 (one per core) or more, got {self.decode_threads}")

    @property
    def batch_sizes(self) -> list[int]:
        """1, 2, 4, ... up to --max-batch-size (which is always one of them)."""
        return sorted({2 ** i for i in range(self.max_batch_size.bit_length())} | {self.max_batch_size})

    @property
    def max_in_progress(self) -> int:
        """Inference requests held at once, from their first byte to their answer: the queue, a batch in the
        forward, and as many again being read or decoded. Beyond it a request is refused before its body is read."""
        return 2 * (self.max_queue + self.max_batch_size)


class Problem(Exception):
    """A request answered with an error: its HTTP status, one line saying what to do, and when to retry."""

    def __init__(self, status: int, message: str, retry_after_s: Optional[float] = None):
        super().__init__(message)
        self.status, self.retry_after_s = status, retry_after_s

    @property
    def headers(self) -> dict[str, str]:
        return {} if self.retry_after_s is None else {'Retry-After': retry_after_header(self.retry_after_s)}


@dataclass
class Served:
    output: Any  # the runner's top-k (label, probability) pairs
    width: float
    batch_size: int
    decode_s: float
    queue_s: float
    compute_s: float
    slo_s: float
    stage: Optional[int] = None  # the cascade stage that answered (0 the first), None outside a cascade


async def read_body(request, limit: int) -> bytes:
    """The body of a Starlette request, refused with 413 as soon as it passes ``limit`` bytes (whatever
    Content-Length claims)."""
    declared = request.headers.get('content-length', '')
    if declared.isascii() and declared.isdigit() and (len(declared) > 18 or int(declared) > limit):
        raise Problem(413, f"the body has {declared} bytes, over the limit of {limit} (--max-body-bytes)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Problem(413, f"the body is over the limit of {limit} bytes (--max-body-bytes)")
        chunks.append(chunk)
    return b''.join(chunks)


async def unless_disconnected(request, work: Awaitable[T]) -> T:
    """``work`` (the answer to a request whose body has been read), given up as soon as its client disconnects:
    its place in the decoding pool and in the model's queue go to the others."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnect(request))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
    if not task.done():
        task.cancel()
        log.debug("a client went away while waiting for its answer; its work is given up")
        raise Problem(400, 'the client went away before its answer')
    return task.result()


async def _disconnect(request) -> None:
    """Returns once the client of ``request`` (whose body was read) has gone."""
    while (await request.receive())['type'] != 'http.disconnect':
        pass


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1


class Service:
    def __init__(self, runner, settings: Settings, accuracy: dict[float, float], metrics: Optional[Metrics] = None,
                 cascade: Optional[CascadePlan] = None):
        self.runner, self.settings, self.accuracy, self.cascade = runner, settings, accuracy, cascade
        self.metrics = metrics or Metrics(runner.widths)
        self.policy = parse_policy(settings.policy, list(runner.widths))
        if cascade is not None and not isinstance(self.policy, SlackFit):
            raise ValueError(f"--cascade is one more choice for the slackfit policy; --policy {settings.policy} "
                             "never chooses it")
        self.batcher: Optional[Batcher] = None
        self.profile: Optional[Profile] = None
        self.error: Optional[str] = None
        self.macs: dict[float, int] = {}  # each width's, once prepared
        self.in_progress = 0
        self.decoder = ThreadPoolExecutor(settings.decode_threads or usable_cores(), 'scalavit-decode')
        # The server enforces its own --max-pixels; Pillow's warning about larger images would only repeat it.
        Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, settings.max_pixels)
        warnings.filterwarnings('ignore', category=Image.DecompressionBombWarning)

    # Readiness

    def start(self) -> None:
        """Prepares in the background, unless done already: liveness answers at once, readiness once the profile
        is measured."""
        if self.batcher is None and self.error is None:
            sys.setswitchinterval(self.settings.switch_interval_ms / 1e3)
            threading.Thread(target=self.prepare, name='scalavit-profile', daemon=True).start()

    def prepare(self) -> None:
        try:
            start = time.perf_counter()
            self.runner.prepare()
            latency, median, source = self._measured_profile()
            self.profile = Profile(latency, self.accuracy, self.cascade, median)
            batcher = Batcher(self.runner.run, self.profile, self.policy, self.settings.max_queue,
                              on_batch=self._on_batch)
            checked = check_forwards(self.runner, self.profile)
            for width, batch, seconds in checked:  # the machine as it is now, before the first request
                batcher.speed.observe(width, batch, seconds)
            self.batcher = batcher.start()
            log.info("ready in %.1f s: %d widths (%s) x %d batch sizes %s; this machine runs at %.2fx that profile "
                     "now", time.perf_counter() - start, len(self.profile.widths), self.runner.backend,
                     len(self.profile.batch_sizes), source, batcher.slowdown())
        except Exception as error:  # reported by /health/ready; the process stays up to say why
            self.error = f"{type(error).__name__}: {error}"
            log.error("not ready: %s", self.error)

    def _measured_profile(self) -> tuple[dict, dict, str]:
        """The latency profile's p95 and median of every (width, batch size), and where they come from: this
        machine's cache, or measured now (and cached). The MACs too (counted before the model thread starts: the
        flop counter hooks every module of the process while it runs)."""
        folder = Path(self.settings.profile_cache) if self.settings.profile_cache else default_cache()
        cache = ProfileCache(folder if self.settings.use_profile_cache else None)
        key = identity(self.runner, self.settings.batch_sizes)
        cached = cache.load(key)
        if cached is not None:
            self.macs = cached['macs']
            return cached['latency'], cached['median'], f"from the cache ({cache.path(key)}, {cached['measured']})"
        self.macs = self.runner.macs()
        latency, median = self.runner.measure_latency(self.settings.batch_sizes, self.settings.profile_repeats)
        cache.save(key, latency, median, self.macs)
        return latency, median, f"profiled ({self.settings.profile_repeats} calls each)"

    def _on_batch(self, batch, compute_s: float) -> None:
        self.metrics.on_batch(batch, compute_s, compute_s / self.profile.typical(batch.width, len(batch.requests)))

    @property
    def stall_s(self) -> float:
        """How long the model thread may go unseen: --stall-s beyond four times the slowest profiled forward."""
        return self.settings.stall_s + 4 * max(self.profile.latency.values())

    def not_ready(self) -> Optional[str]:
        """Why this server cannot answer now, or None when its model thread is alive and was seen recently."""
        if self.error:
            return self.error
        if self.batcher is None:
            return 'profiling the widths on this device'
        if not self.batcher.healthy(self.stall_s):
            return f'the model thread has stopped or not been seen for {self.stall_s:.1f} s'
        return None

    def close(self, timeout_s: Optional[float] = None) -> None:
        """Answers what is queued (within ``timeout_s``), then unloads the model's compiled or exported widths."""
        if self.batcher is not None and not self.batcher.stop(timeout_s):
            log.error("the model thread had not answered the queue within %g s; exiting without it", timeout_s)
        self.decoder.shutdown(wait=False, cancel_futures=True)
        self.runner.close()

    # One request

    @contextlib.contextmanager
    def admitted(self) -> Iterator[None]:
        """Holds one of the places of requests in progress, or refuses with 503 at once (before the body is read)."""
        if self.not_ready() is not None:
            raise Problem(503, f"not ready: {self.not_ready()}", 1.0)
        if self.in_progress >= self.settings.max_in_progress:
            self.metrics.refused('in_progress')
            self.batcher.turned_away()
            raise Problem(503, f"overloaded: {self.in_progress} requests in progress; try again shortly", 1.0)
        self.in_progress += 1
        try:
            yield
        finally:
            self.in_progress -= 1

    def slo_s(self, milliseconds: Optional[str | float], source: str = 'X-SLO-Ms') -> float:
        """A request's SLO in seconds from its header or parameter ``source`` (None: --slo-ms)."""
        if milliseconds is None:
            return self.settings.slo_ms / 1e3
        try:
            value = float(milliseconds)
        except (TypeError, ValueError, OverflowError):  # OverflowError: a JSON integer of 400 digits
            value = math.nan
        if not 0 < value <= MAX_SLO_MS:
            raise Problem(400, f"{source} must be a positive number of milliseconds, at most {MAX_SLO_MS:g}; got "
                               f"{str(milliseconds)[:40]!r}")
        return value / 1e3

    def width(self, value: Optional[str | float], source: str = 'X-Width') -> Optional[float]:
        """A pinned width from a header or parameter ``source`` (None: the policy chooses), on the grid."""
        if value is None:
            return None
        try:
            return self.runner.model.grid.snap(float(value))
        except (TypeError, ValueError, OverflowError):
            raise Problem(400, f"{source} {str(value)[:40]!r} is not on the grid; valid widths: "
                               f"{', '.join(f'{w:g}' for w in self.runner.widths)}") from None

    async def infer(self, prepare: Callable[[], Any], slo_s: float, width: Optional[float]) -> Served:
        """``prepare()`` (run in the decoding pool) makes the model's input; the answer is due ``slo_s`` after it
        was handed to the pool."""
        item, start, ready = await self._decode(prepare, slo_s)
        return await self._served(item, start, ready, slo_s, width)

    async def infer_at_every_width(self, prepare: Callable[[], Any], slo_s: float) -> list[Served | Problem]:
        """One image answered at every width of the grid, each a request of its own pinned to its width (the
        batcher refuses those that cannot be answered in time), decoded once."""
        item, start, ready = await self._decode(prepare, slo_s)
        return await asyncio.gather(*(self._served(item, start, ready, slo_s, w) for w in self.runner.widths),
                                    return_exceptions=True)

    async def _decode(self, prepare: Callable[[], Any], slo_s: float) -> tuple[Any, float, float]:
        """``prepare()`` in the decoding pool, unless it waited there longer than the SLO: decoding it then would
        only make the images queued behind it late too. (A request that ends before its turn, cancelled or gone,
        takes its place in the pool's queue with it.)"""
        start = time.monotonic()

        def in_time():
            if time.monotonic() - start > slo_s:
                raise Problem(503, f"overloaded: the image waited over {1e3 * slo_s:g} ms to be decoded; try again "
                                   "shortly", 1.0)
            return prepare()
        try:
            item = await asyncio.get_running_loop().run_in_executor(self.decoder, in_time)
        except Problem:
            self.metrics.refused('decode_queue')
            raise
        except ImageTooLarge as error:
            raise Problem(413, str(error)) from None
        except UnsupportedImage as error:
            raise Problem(415, str(error)) from None
        except BadImage as error:
            raise Problem(400, str(error)) from None
        ready = time.monotonic()
        self.metrics.decoded(ready - start)
        return item, start, ready

    async def _served(self, item: Any, start: float, ready: float, slo_s: float, width: Optional[float]) -> Served:
        """The request's deadline is ``slo_s`` from ``start``, when it asked to be decoded: the time it waited
        for the decoding pool and took there is the client's too, so the batcher plans with what is left."""
        left_s = slo_s - (ready - start)
        if left_s <= 0:
            self.metrics.refused('decode_queue')
            raise Problem(503, f"overloaded: decoding the image took the whole SLO ({1e3 * slo_s:g} ms); try again "
                               "shortly", 1.0)
        answer = await self._answer(item, left_s, width)
        elapsed = time.monotonic() - ready
        self.batcher.note_overhead(elapsed - answer.queue_s - answer.compute_s)
        self.metrics.answered(time.monotonic() - start, answer.queue_s, answer.width,
                              missed=elapsed > left_s, stage=answer.stage)
        return Served(answer.output, answer.width, answer.batch_size, ready - start, answer.queue_s,
                      answer.compute_s, slo_s, answer.stage)

    async def _answer(self, item: Any, slo_s: float, width: Optional[float]) -> Answer:
        try:
            future = self.batcher.submit(item, slo_s, width)
        except Refused as refused:
            self.metrics.refused('refused')
            raise Problem(503, f"overloaded: {refused}", refused.retry_after_s) from None
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), slo_s + self.stall_s)
        except Missed as missed:
            self.metrics.refused('missed')
            raise Problem(503, f"overloaded: {missed}", 1.0) from None
        except BatchFailed as failed:
            log.error("a batch failed: %s", failed)
            raise Problem(500, f"the model failed on this request's batch ({failed})") from None
        except asyncio.TimeoutError:
            log.error("the model thread did not answer a request within %.1f s", slo_s + self.stall_s)
            self.metrics.refused('stalled')
            raise Problem(503, f"the model did not answer within {slo_s + self.stall_s:.1f} s; this server is not "
                               "ready (see /health/ready)", 1.0) from None

    def widths_json(self) -> dict:
        """The profile as measured (``p95_ms``, ``median_ms``), each (width, batch size) as it ran lately
        (``observed_ms``, null where it has not run), and the p95 the controller plans with now (``planned_ms``:
        the profile corrected by what it observed, times the machine's ``speed``)."""
        planned = self.batcher.profile  # with the cascade's escalation as observed so far
        measured, speed = self.profile, self.batcher.slowdown()
        observed = self.batcher.speed.observed()

        def ms(seconds):
            return None if seconds is None else round(1e3 * seconds, 4)
        return dict(
            policy=self.policy.name, backend=self.runner.backend, slo_ms=self.settings.slo_ms,
            widths=list(self.runner.widths), batch_sizes=measured.batch_sizes, speed=round(speed, 4),
            reserve_ms=ms(self.batcher.reserve_s()), cheapest=planned.cheapest,
            profile=[dict(width=w, top1=measured.accuracy[w],
                          p95_ms={str(b): ms(measured.latency[(w, b)]) for b in measured.batch_sizes},
                          median_ms={str(b): ms(measured.typical(w, b)) for b in measured.batch_sizes},
                          observed_ms={str(b): ms(observed.get((w, b))) for b in measured.batch_sizes},
                          planned_ms={str(b): ms(speed * planned.latency[(w, b)]) for b in measured.batch_sizes})
                     for w in measured.widths],
            cascade=None if planned.cascade is None else self.cascade_json(planned))

    def cascade_json(self, profile: Profile) -> dict:
        plan = profile.cascade
        return dict(widths=list(plan.widths), thresholds=list(plan.thresholds), confidence=self.runner.confidence_name,
                    top1=plan.accuracy, reach=[round(share, 4) for share in plan.reach],
                    expected_ms={str(b): round(1e3 * profile.cost(plan, b), 4) for b in profile.batch_sizes})
