"""HTTP: FastAPI routes over the batcher, and Prometheus metrics.

The event loop only parses requests and decodes images; the forward runs on the batcher's model thread (torch
releases the GIL), so the server keeps accepting while a batch computes.
"""
import asyncio
import base64
import binascii
import contextlib
import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Optional

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .batcher import Answer, Batch, Batcher, BatchFailed, Missed, Refused, retry_after_header
from .policy import Profile, parse_policy
from .runner import BadImage, Runner

log = logging.getLogger('scalavit.serve')

RAW_TYPES = ('application/octet-stream',)
LATENCY_BUCKETS = (.001, .002, .005, .01, .02, .03, .05, .075, .1, .15, .2, .3, .5, 1, 2, 5)


@dataclass
class Settings:
    slo_ms: float = 100.0
    policy: str = 'slackfit'
    max_batch_size: int = 32
    max_queue: int = 256
    max_body_bytes: int = 10 * 2 ** 20
    profile_repeats: int = 30

    def __post_init__(self):
        for name in ('slo_ms', 'max_batch_size', 'max_queue', 'max_body_bytes', 'profile_repeats'):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")

    @property
    def batch_sizes(self) -> list[int]:
        """1, 2, 4, ... up to --max-batch-size (which is always one of them)."""
        return sorted({2 ** i for i in range(self.max_batch_size.bit_length())} | {self.max_batch_size})


class Metrics:
    def __init__(self, widths):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter('scalavit_requests', 'Requests answered, by HTTP status', ['status'], registry=r)
        self.latency = Histogram('scalavit_request_latency_seconds', 'Arrival to answer, answered requests',
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.queue_time = Histogram('scalavit_queue_seconds', 'Arrival to the start of its batch',
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram('scalavit_batch_size', 'Requests per forward',
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)
        self.width = Histogram('scalavit_width', 'Width that answered each request', buckets=sorted(widths),
                               registry=r)
        self.slo_misses = Counter('scalavit_slo_misses', 'Requests not answered within their deadline (refusals, '
                                  'drops and late answers)', registry=r)
        self.refusals = Counter('scalavit_refusals', 'Requests refused or dropped with 503', ['reason'], registry=r)
        self.queue_length = Gauge('scalavit_queue_length', 'Requests waiting', registry=r)

    def on_batch(self, batch: Batch, compute_s: float) -> None:
        self.batch_size.observe(len(batch.requests))


class Service:
    """The runner, its profile and the batcher, made ready in the background so that liveness answers at once."""

    def __init__(self, runner: Runner, settings: Settings, accuracy: dict[float, float]):
        self.runner, self.settings, self.accuracy = runner, settings, accuracy
        self.metrics = Metrics(runner.widths)
        self.policy = parse_policy(settings.policy, list(runner.widths))
        self.batcher: Optional[Batcher] = None
        self.profile = None
        self.error: Optional[str] = None

    @property
    def ready(self) -> bool:
        return self.batcher is not None

    def prepare(self) -> None:
        try:
            start = time.perf_counter()
            self.runner.prepare()
            self.profile = Profile(self.runner.measure_latency(self.settings.batch_sizes,
                                                               self.settings.profile_repeats), self.accuracy)
            self.batcher = Batcher(self.runner.run, self.profile, self.policy, self.settings.max_queue,
                                   on_batch=self.metrics.on_batch).start()
            log.info("ready: %d widths%s x %d batch sizes prepared and profiled in %.1f s", len(self.profile.widths),
                     f' ({self.runner.backend})', len(self.profile.batch_sizes),
                     time.perf_counter() - start)
        except Exception as error:  # reported by /health/ready; the process stays up to say why
            self.error = f"{type(error).__name__}: {error}"
            log.error("not ready: %s", self.error)

    def widths_json(self) -> dict:
        profile = self.profile
        return dict(
            policy=self.policy.name, backend=self.runner.backend, slo_ms=self.settings.slo_ms,
            widths=list(self.runner.widths),
            batch_sizes=profile.batch_sizes,
            profile=[dict(width=w, top1=profile.accuracy[w],
                          p95_ms={str(b): round(1e3 * profile.latency[(w, b)], 4) for b in profile.batch_sizes})
                     for w in profile.widths])


def error(status: int, message: str, headers: Optional[dict] = None) -> JSONResponse:
    return JSONResponse({'error': message}, status_code=status, headers=headers)


class HTTPProblem(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes ``limit`` bytes (whatever Content-Length claims)."""
    declared = request.headers.get('content-length')
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPProblem(413, f"the body has {declared} bytes, over the limit of {limit} (--max-body-bytes)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPProblem(413, f"the body is over the limit of {limit} bytes (--max-body-bytes)")
        chunks.append(chunk)
    return b''.join(chunks)


async def image_bytes(request: Request, limit: int) -> bytes:
    """The image of a raw body (image/* or application/octet-stream), a multipart form, or base64 in JSON."""
    content_type = request.headers.get('content-type', '').split(';')[0].strip().lower()
    if not (content_type.startswith('image/') or content_type in RAW_TYPES
            or content_type in ('multipart/form-data', 'application/json')):
        raise HTTPProblem(415, f"content type {content_type or '(none)'} is not accepted; send the image as the raw "
                               "body (image/* or application/octet-stream), as multipart/form-data, or as base64 "
                               "in JSON {\"image\": ...}")
    body = await read_body(request, limit)
    if content_type == 'application/json':
        try:
            return base64.b64decode(json.loads(body)['image'], validate=True)
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise HTTPProblem(400, 'the JSON body needs {"image": "<base64 of the image file>"}') from None
    if content_type == 'multipart/form-data':
        request._body = body  # Starlette parses the form from the body already read
        form = await request.form()
        files = [value for value in form.values() if hasattr(value, 'read')]
        if not files:
            raise HTTPProblem(400, 'the form has no file field; send the image as a file, e.g. curl -F file=@x.png')
        return await files[0].read()
    return body


def request_options(request: Request, service: Service) -> tuple[float, Optional[float]]:
    """This request's SLO in seconds (``X-SLO-Ms``) and pinned width (``X-Width``)."""
    slo_ms = service.settings.slo_ms
    if 'x-slo-ms' in request.headers:
        try:
            slo_ms = float(request.headers['x-slo-ms'])
        except ValueError:
            slo_ms = float('nan')
        if not slo_ms > 0:
            raise HTTPProblem(400, f"X-SLO-Ms must be a positive number of milliseconds, got "
                                   f"{request.headers['x-slo-ms']!r}")
    width = None
    if 'x-width' in request.headers:
        grid = service.runner.widths
        try:
            width = service.runner.model.grid.snap(float(request.headers['x-width']))
        except ValueError:
            raise HTTPProblem(400, f"X-Width {request.headers['x-width']!r} is not on the grid; valid widths: "
                                   f"{', '.join(f'{w:g}' for w in grid)}") from None
    return slo_ms / 1e3, width


def create_app(service: Service) -> FastAPI:
    metrics = service.metrics

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        threading.Thread(target=service.prepare, name='scalavit-profile', daemon=True).start()
        yield
        if service.batcher is not None:  # SIGTERM: uvicorn has answered what was in flight; end the model thread
            await asyncio.to_thread(service.batcher.stop)
            service.runner.close()

    app = FastAPI(title='scalavit', lifespan=lifespan)

    @app.get('/health/live')
    def live():
        return {'status': 'live'}

    def not_ready() -> JSONResponse:
        reason = service.error or 'profiling the widths on this device'
        return error(503, f"not ready: {reason}", {'Retry-After': '1'})

    @app.get('/health/ready')
    def ready():
        return {'status': 'ready', 'policy': service.policy.name} if service.ready else not_ready()

    @app.get('/widths')
    def widths():
        return service.widths_json() if service.ready else not_ready()

    @app.get('/metrics')
    def prometheus_metrics():
        metrics.queue_length.set(len(service.batcher) if service.batcher else 0)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post('/predict')
    async def predict(request: Request):
        arrival = time.monotonic()
        response = await answer(request, arrival)
        metrics.requests.labels(str(response.status_code)).inc()
        return response

    async def answer(request: Request, arrival: float) -> Response:
        if not service.ready:
            return not_ready()
        try:
            slo_s, width = request_options(request, service)
            image = service.runner.preprocess(await image_bytes(request, service.settings.max_body_bytes))
        except HTTPProblem as problem:
            return error(problem.status, str(problem))
        except BadImage as bad:
            return error(400, str(bad))
        try:
            future = service.batcher.submit(image, slo_s - (time.monotonic() - arrival), width)
        except Refused as refused:
            metrics.refusals.labels('refused').inc()
            metrics.slo_misses.inc()
            return error(503, f"overloaded: {refused}", {'Retry-After': retry_after_header(refused.retry_after_s)})
        try:
            result: Answer = await asyncio.wrap_future(future)
        except Missed as missed:
            metrics.refusals.labels('missed').inc()
            metrics.slo_misses.inc()
            return error(503, f"overloaded: {missed}", {'Retry-After': '1'})
        except BatchFailed as failed:
            log.error("a batch failed: %s", failed)
            return error(500, f"the model failed on this request's batch ({failed})")
        elapsed = time.monotonic() - arrival
        service.batcher.note_overhead(elapsed - result.queue_s - result.compute_s)
        metrics.latency.observe(elapsed)
        metrics.queue_time.observe(result.queue_s)
        metrics.width.observe(result.width)
        if elapsed > slo_s:
            metrics.slo_misses.inc()
        return JSONResponse(dict(
            top5=[dict(label=label, probability=p) for label, p in result.output],
            width=result.width, batch_size=result.batch_size, queue_ms=round(1e3 * result.queue_s, 3),
            compute_ms=round(1e3 * result.compute_s, 3), slo_ms=round(1e3 * slo_s, 3)))

    return app
