"""Scale-out on Ray Serve: each replica holds one model with its own SlackFit batcher behind the same FastAPI app as
``scalavit serve``; Ray's proxy spreads requests over the replicas and its autoscaler adds them on ongoing requests.

``app`` is an application builder, so Ray's own CLI and config files run it::

    serve run scalavit.serve.ray:app checkpoint=RUN replicas=2 threads=1
    serve run scalavit.serve.ray:app checkpoint=RUN min_replicas=1 max_replicas=4 slo_ms=50

Its arguments are those of ``scalavit serve`` with underscores (``slo_ms``, ``max_batch_size``, ``policy``, ``device``,
``backend`` = eager, compiled or onnxruntime, ...), plus ``replicas`` or ``min_replicas``/``max_replicas``. Each is
parsed as its type says, whether it arrives as a string or typed: ``trust_checkpoint=false`` (or 0, no, off) is False,
and a value that names nothing of its type is refused in one line. A replica
profiles its device in its constructor, so Ray routes to it only once it can answer; its health check is the
server's readiness (a dead or stuck model thread gets it replaced); on scale-down it drains what it holds; its metrics
go to Ray's metrics as well as its own ``/metrics``.
"""
import dataclasses
import logging
import os
from typing import Any, Literal, Optional

import torch
from pydantic import NonNegativeInt, PositiveFloat, PositiveInt, TypeAdapter, ValidationError
from ray import serve
from ray.serve import metrics as ray_metrics

from ..checkpoint import trusted_checkpoints
from .app import create_app
from .metrics import LATENCY_BUCKETS, Metrics
from .runner import Runner
from .service import Service, Settings

log = logging.getLogger('scalavit.serve')

@dataclasses.dataclass(frozen=True)
class ReplicaOptions:
    """What a replica needs beyond the server's ``Settings``. Parsed as pydantic parses a config file's values: a
    ``serve run`` string becomes the type it names ('false', '0', 'no' and 'off' are False), and a string that names
    no value of the type is refused."""

    device: str = 'cpu'
    model: Optional[str] = None
    backend: Literal['eager', 'compiled', 'onnxruntime'] = 'eager'
    compile_cache: Optional[str] = None
    data: Optional[str] = None
    threads: Optional[PositiveInt] = None
    drain_timeout: PositiveFloat = 10.0
    trust_checkpoint: bool = False


@dataclasses.dataclass(frozen=True)
class Scaling:
    """A fixed number of replicas, or an autoscaled range (``min_replicas`` may be 0)."""

    replicas: Optional[PositiveInt] = None
    min_replicas: Optional[NonNegativeInt] = None
    max_replicas: Optional[PositiveInt] = None

    def __post_init__(self):
        if self.replicas is not None and (self.min_replicas is not None or self.max_replicas is not None):
            raise ValueError("give replicas, or min_replicas and max_replicas, not both")
        if (self.min_replicas or 0) > (self.max_replicas or self.min_replicas or 1):
            raise ValueError(f"min_replicas {self.min_replicas} is above max_replicas {self.max_replicas}")

    @property
    def autoscaled(self) -> bool:
        return self.min_replicas is not None or self.max_replicas is not None


class RayMetrics(Metrics):
    """The server's metrics, recorded in Ray's metrics too (tagged by Ray with the deployment and replica)."""

    def __init__(self, widths):
        super().__init__(widths)
        seconds = list(LATENCY_BUCKETS)
        self.ray_requests = ray_metrics.Counter('scalavit_requests', 'Inference requests answered, by HTTP status',
                                                tag_keys=('status',))
        self.ray_latency = ray_metrics.Histogram('scalavit_request_latency_seconds', 'Image ready to answer',
                                                 boundaries=seconds)
        self.ray_decode = ray_metrics.Histogram('scalavit_decode_seconds', 'Decoding and preprocessing an image',
                                                boundaries=seconds)
        self.ray_width = ray_metrics.Histogram('scalavit_width', 'Width that answered each request',
                                               boundaries=sorted(widths))
        self.ray_batch = ray_metrics.Histogram('scalavit_batch_size', 'Requests per forward',
                                               boundaries=[1, 2, 4, 8, 16, 32, 64, 128])
        self.ray_misses = ray_metrics.Counter('scalavit_slo_misses', 'Requests not answered within their deadline')
        self.ray_refusals = ray_metrics.Counter('scalavit_refusals', 'Requests refused or dropped with 503',
                                                tag_keys=('reason',))

    def responded(self, status: int) -> None:
        super().responded(status)
        self.ray_requests.inc(tags={'status': str(status)})

    def decoded(self, seconds: float) -> None:
        super().decoded(seconds)
        self.ray_decode.observe(seconds)

    def on_batch(self, batch, compute_s: float, speed: float) -> None:
        super().on_batch(batch, compute_s, speed)
        self.ray_batch.observe(len(batch.requests))

    def answered(self, latency_s: float, queue_s: float, width: float, missed: bool, stage=None) -> None:
        super().answered(latency_s, queue_s, width, missed, stage)
        self.ray_latency.observe(latency_s)
        self.ray_width.observe(width)
        if missed:
            self.ray_misses.inc()

    def refused(self, reason: str) -> None:
        super().refused(reason)
        self.ray_refusals.inc(tags={'reason': reason})
        self.ray_misses.inc()


@serve.ingress()
class ScalaVitReplica:
    """One replica: the model, profiled on this replica's device before Ray sends it a request."""

    def __init__(self, checkpoint: str, settings: Settings, options: ReplicaOptions):
        if options.threads:
            torch.set_num_threads(options.threads)
        logging.basicConfig(format='scalavit serve: %(message)s', level=logging.INFO)
        with trusted_checkpoints(options.trust_checkpoint):
            runner = Runner(checkpoint, options.device, options.model, backend=options.backend,
                            compile_cache=options.compile_cache)
            accuracies = runner.accuracies(options.data)
        self.drain_timeout = options.drain_timeout
        self.service = Service(runner, settings, accuracies, RayMetrics(runner.widths))
        self.service.prepare()
        if self.service.error:
            raise RuntimeError(f"the replica could not prepare its model: {self.service.error}")

    def __serve_build_asgi_app__(self):
        return create_app(self.service, self.drain_timeout)

    def check_health(self) -> None:
        """Ray's health check: a replica whose model thread died or is stuck is replaced."""
        reason = self.service.not_ready()
        if reason is not None:
            raise RuntimeError(f"not ready: {reason}")


def parse_arguments(args: dict[str, Any]) -> tuple[str, Settings, ReplicaOptions, Scaling]:
    """The checkpoint, the server's settings, the runner's options and the deployment's scaling, from the builder's
    arguments (strings from ``serve run``, or typed values from a config file or Python)."""
    args = dict(args)
    if 'checkpoint' not in args:
        raise ValueError("give the run to serve: serve run scalavit.serve.ray:app checkpoint=RUN [replicas=N]")
    checkpoint = str(args.pop('checkpoint'))
    groups = {kind: {f.name for f in dataclasses.fields(kind)} for kind in (Settings, ReplicaOptions, Scaling)}
    known = set().union(*groups.values())
    unknown = sorted(set(args) - known)
    if unknown:
        raise ValueError(f"unknown argument(s) {', '.join(unknown)}; known: checkpoint, {', '.join(sorted(known))}")
    try:
        settings, options, scaling = (TypeAdapter(kind).validate_python({k: v for k, v in args.items() if k in names})
                                      for kind, names in groups.items())
    except ValidationError as error:
        problems = '; '.join(f"{e['loc'][0]}={e['input']!r}: {e['msg']}" if e['loc'] else
                             e['msg'].removeprefix('Value error, ') for e in error.errors())
        raise ValueError(f"bad argument: {problems}") from None
    except (ValueError, TypeError) as error:
        raise ValueError(f"bad argument: {' '.join(str(error).split())}") from None
    return checkpoint, settings, options, scaling


def deployment_options(settings: Settings, options: ReplicaOptions, scaling: Scaling) -> dict[str, Any]:
    """Ray's options for the replicas: how many (fixed or autoscaled on ongoing requests), their CPUs, and limits
    that leave admission to each replica's own batcher."""
    if scaling.autoscaled:
        low = 1 if scaling.min_replicas is None else scaling.min_replicas
        high = scaling.max_replicas or max(low, 1)
        replicas = {'autoscaling_config': {'min_replicas': low, 'max_replicas': high,
                                           'target_ongoing_requests': settings.max_batch_size}}
    else:
        replicas = {'num_replicas': scaling.replicas or 1}
    cpus = options.threads or 1
    # A replica takes two batches' worth at a time; Ray's router holds as many again (a burst arriving at once
    # counts there until it is spread) for whichever replica frees first, and answers 503 with Retry-After beyond.
    # Requests queued inside a replica's actor would wait there unseen by its deadlines (the replica's clock starts
    # when its handler runs), and under overload the replicas would spend their CPU on answers already too late.
    return dict(name='scalavit', **replicas, max_ongoing_requests=2 * settings.max_batch_size,
                max_queued_requests=2 * settings.max_batch_size,
                backpressure_config={'status_code': 503, 'retry_after_s': 1},
                ray_actor_options={'num_cpus': cpus, 'num_gpus': 1 if options.device.startswith('cuda') else 0},
                graceful_shutdown_timeout_s=2 * options.drain_timeout, health_check_period_s=5.0)


def app(args: dict[str, Any]) -> serve.Application:
    """The application builder: ``serve run scalavit.serve.ray:app checkpoint=RUN replicas=2``."""
    checkpoint, settings, options, scaling = parse_arguments(args)
    deployment = serve.deployment(ScalaVitReplica).options(**deployment_options(settings, options, scaling))
    return deployment.bind(checkpoint, settings, options)


def run_local(args: dict[str, Any], host: str, port: int, cpus: Optional[int] = None) -> None:
    """``scalavit serve RUN --replicas N``: the same application on a Ray instance of this machine, until SIGTERM or
    Ctrl-C, then drained and shut down."""
    import signal
    import ray

    application = app(args)  # its arguments checked before Ray starts
    # Ray runs its workers at nice 15, behind anything else on the machine; replicas answer under deadlines.
    os.environ.setdefault('RAY_worker_niceness', '0')
    ray.init(num_cpus=cpus, include_dashboard=False, logging_level=logging.WARNING)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM drains as Ctrl-C does (after Ray's own)
    quiet = {'log_level': 'WARNING', 'enable_access_log': False}
    try:
        serve.start(http_options={'host': host, 'port': port}, logging_config=quiet)
        serve.run(application, name='scalavit', route_prefix='/', logging_config=quiet)
        print(f"scalavit serve: on http://{host}:{port} through Ray Serve's proxy; ready when /health/ready answers "
              "200 (Ctrl-C or SIGTERM to stop)", flush=True)
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
        ray.shutdown()
