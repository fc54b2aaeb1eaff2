"""HTTP: FastAPI routes over the service (``/predict``, health, ``/widths``, ``/metrics``, and the Open Inference
Protocol under ``/v2``), with every error answered as ``{"error": "..."}``.

The event loop only reads requests and writes answers: images are decoded in the service's pool and the forward runs
on the batcher's model thread, so health checks answer while both work.
"""
import base64
import binascii
import contextlib
import json
import logging
from pathlib import Path
from typing import Any, Callable, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from .service import Problem, Served, Service, read_body, unless_disconnected
from .stats import WINDOW_S

# One self-contained file (no library, nothing fetched from elsewhere), read once.
PAGE = (Path(__file__).parent / 'page.html').read_text()
from .v2 import v2_router

log = logging.getLogger('scalavit.serve')

RAW_TYPES = ('application/octet-stream',)
FORM_TYPES = ('multipart/form-data',)


def error(status: int, message: str, headers: Optional[dict] = None) -> JSONResponse:
    return JSONResponse({'error': message}, status_code=status, headers=headers)


def is_inference(path: str) -> bool:
    return path in ('/predict', '/predict/widths') or path.startswith('/v2/models/') and path.endswith('/infer')


class CountAnswers:
    """Counts the status of every inference request's answer in the metrics, whatever answered it: the route, the
    one error handler, the framework (404, 405), or an unforeseen error (500)."""

    def __init__(self, app, metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope['type'] != 'http' or not is_inference(scope['path']):
            return await self.app(scope, receive, send)
        started = False

        async def counting(message):
            nonlocal started
            if message['type'] == 'http.response.start':
                started = True
                self.metrics.responded(message['status'])
            await send(message)
        try:
            await self.app(scope, receive, counting)
        except Exception:
            if not started:  # answered 500 by the outermost handler, past this middleware
                self.metrics.responded(500)
            raise


def content_type(request: Request) -> str:
    return request.headers.get('content-type', '').split(';')[0].strip().lower()


async def image_file(request: Request, limit: int) -> bytes:
    """The body of a raw image (image/* or application/octet-stream) or of JSON, or the file of a multipart form."""
    kind = content_type(request)
    if not (kind.startswith('image/') or kind in RAW_TYPES + FORM_TYPES + ('application/json',)):
        raise Problem(415, f"content type {kind or '(none)'} is not accepted; send the image as the raw body "
                           "(image/* or application/octet-stream), as multipart/form-data, or as base64 in JSON "
                           "{\"image\": ...}")
    body = await read_body(request, limit)
    if kind not in FORM_TYPES:
        return body
    request._body = body  # Starlette parses the form from the body already read
    try:
        form = await request.form(max_files=1, max_fields=16)
    except HTTPException as bad:  # python-multipart's words for a malformed form
        raise Problem(400, f"the multipart form is malformed: {bad.detail}") from None
    files = [value for value in form.values() if hasattr(value, 'read')]
    if not files:
        raise Problem(400, 'the form has no file field; send the image as a file, e.g. curl -F file=@x.png')
    return await files[0].read()


def from_json(body: bytes) -> bytes:
    """The image of ``{"image": "<base64>"}`` (parsed in the decoding pool: a large body takes a while)."""
    try:
        return base64.b64decode(json.loads(body)['image'], validate=True)
    except (ValueError, KeyError, TypeError, binascii.Error, RecursionError):
        raise Problem(400, 'the JSON body needs {"image": "<base64 of the image file>"}') from None


def prediction(served: Served, cascade_widths: Optional[tuple[float, ...]] = None) -> dict:
    """The answer's JSON; ``cascade`` says which stage of the server's cascade answered (1 the first), or is null
    when the request ran at one width."""
    cascade = None if served.stage is None else dict(stage=served.stage + 1, widths=list(cascade_widths))
    return dict(top5=[dict(label=label, probability=p) for label, p in served.output.top],
                width=served.width, batch_size=served.batch_size, cascade=cascade,
                decode_ms=round(1e3 * served.decode_s, 3), queue_ms=round(1e3 * served.queue_s, 3),
                compute_ms=round(1e3 * served.compute_s, 3), slo_ms=round(1e3 * served.slo_s, 3))


def create_app(service: Service, drain_timeout_s: Optional[float] = None) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        yield
        # SIGTERM: the server has answered what was in flight (or given up after --drain-timeout); now the queue
        service.close(drain_timeout_s)

    app = FastAPI(title='scalavit', lifespan=lifespan)
    app.include_router(v2_router(service))
    add_error_handlers(app)
    app.add_middleware(CountAnswers, metrics=service.metrics)

    @app.get('/', response_class=HTMLResponse)
    async def page():
        """The live page: the last seconds from /stats, an image tried at every width, the profile."""
        return PAGE

    @app.get('/health/live')
    async def live():
        return {'status': 'live'}

    @app.get('/health/ready')
    async def ready():
        reason = service.not_ready()
        if reason is not None:
            return error(503, f"not ready: {reason}", {'Retry-After': '1'})
        return {'status': 'ready', 'policy': service.policy.name}

    @app.get('/widths')
    async def widths():
        if service.batcher is None:
            return error(503, f"not ready: {service.not_ready()}", {'Retry-After': '1'})
        return service.widths_json()

    @app.get('/metrics')
    async def metrics():
        batcher = service.batcher
        return Response(service.metrics.exposition(len(batcher or ()), service.in_progress,
                                                   batcher.slowdown() if batcher else 1.0,
                                                   batcher is not None and batcher.at_ceiling()),
                        media_type=service.metrics.content_type)

    @app.get('/stats')
    async def stats(seconds: int = 60):
        """The last ``seconds`` (at most 300), second by second: offered, answered, refused and late requests,
        latency percentiles, the widths and batch sizes that ran; never waits on the model."""
        if not 1 <= seconds <= WINDOW_S:
            return error(400, f"seconds must be from 1 to {WINDOW_S}, got {seconds}")
        return {'slo_ms': service.settings.slo_ms, 'policy': service.policy.name, 'widths': list(service.runner.widths),
                'cascade': None if service.cascade is None else list(service.cascade.widths),
                'queue_length': len(service.batcher or ()), 'in_progress': service.in_progress,
                'seconds': service.metrics.live.snapshot(seconds)}

    @app.post('/predict')
    async def predict(request: Request):
        return prediction(await answer(request), service.cascade and service.cascade.widths)

    @app.post('/predict/widths')
    async def predict_at_every_width(request: Request):
        """The image answered at every width of the grid, side by side (each width a request of its own)."""
        with service.admitted():
            slo_s = service.slo_s(request.headers.get('x-slo-ms'))
            answers = await service.infer_at_every_width(await preparer(request), slo_s)
        return {'widths': [at_width(w, a, service.macs[w]) for w, a in zip(service.runner.widths, answers)]}

    def at_width(width: float, answer, macs: int) -> dict:
        if isinstance(answer, Problem):
            return dict(width=width, macs=macs, error=str(answer))
        if isinstance(answer, BaseException):
            raise answer
        return dict(prediction(answer), macs=macs)

    async def preparer(request: Request) -> Callable[[], Any]:
        data = await image_file(request, service.settings.max_body_bytes)
        parse = from_json if content_type(request) == 'application/json' else bytes
        return lambda: service.runner.preprocess(parse(data), service.settings.max_pixels)

    async def answer(request: Request) -> Served:
        with service.admitted():
            slo_s = service.slo_s(request.headers.get('x-slo-ms'))
            width = service.width(request.headers.get('x-width'))
            prepare = await preparer(request)
            return await unless_disconnected(request, service.infer(prepare, slo_s, width))

    return app


def add_error_handlers(app: FastAPI) -> None:
    """Every error as ``{"error": ...}``: the framework's own (404, 405, a malformed form), a client gone mid-body,
    and anything unforeseen (500, with its traceback in the log: that is a bug of ours)."""

    @app.exception_handler(Problem)
    async def refused(request: Request, problem: Problem):
        return error(problem.status, str(problem), problem.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, problem: HTTPException):
        return error(problem.status_code, str(problem.detail), getattr(problem, 'headers', None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, problem: RequestValidationError):
        return error(400, f"the request is not valid: {problem.errors()[:1]}")

    @app.exception_handler(ClientDisconnect)
    async def gone(request: Request, problem: ClientDisconnect):
        log.debug("a client went away before its body was read")
        return error(400, 'the client went away before sending its whole body')

    @app.exception_handler(Exception)
    async def unforeseen(request: Request, problem: Exception):
        log.exception("an unforeseen error answering %s %s", request.method, request.url.path)
        return error(500, f"internal error ({type(problem).__name__}); the server goes on")
