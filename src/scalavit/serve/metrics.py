"""The server's Prometheus metrics (``/metrics``): what was answered, how fast, at which width, what was refused;
and the same events second by second for ``/stats`` (``LiveStats``)."""
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .stats import LiveStats

LATENCY_BUCKETS = (.001, .002, .005, .01, .02, .03, .05, .075, .1, .15, .2, .3, .5, 1, 2, 5)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, widths):
        self.registry = r = CollectorRegistry()
        self.requests = Counter('scalavit_requests', 'Inference requests answered, by HTTP status', ['status'],
                                registry=r)
        self.latency = Histogram('scalavit_request_latency_seconds', 'Image ready to answer, answered requests',
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.decode_time = Histogram('scalavit_decode_seconds', 'Decoding and preprocessing an image',
                                     buckets=LATENCY_BUCKETS, registry=r)
        self.queue_time = Histogram('scalavit_queue_seconds', 'Image ready to the start of its batch',
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram('scalavit_batch_size', 'Requests per forward',
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)
        self.width = Histogram('scalavit_width', 'Width that answered each request', buckets=sorted(widths),
                               registry=r)
        self.cascade_answers = Counter('scalavit_cascade_answers', "Requests answered by each stage of the server's "
                                       'cascade (1 the first), with the width of that stage', ['stage', 'width'],
                                       registry=r)
        self.slo_misses = Counter('scalavit_slo_misses', 'Requests not answered within their deadline (refusals, '
                                  'drops and late answers)', registry=r)
        self.refusals = Counter('scalavit_refusals', 'Requests refused or dropped with 503', ['reason'], registry=r)
        self.queue_length = Gauge('scalavit_queue_length', 'Requests waiting for the model', registry=r)
        self.in_progress = Gauge('scalavit_requests_in_progress', 'Inference requests being read, decoded, queued '
                                 'or computed', registry=r)
        self.speed = Gauge('scalavit_speed_factor', 'How many times their profiled median the forwards take now, '
                           'machine-wide (above 1: slower than profiled)', registry=r)
        self.at_ceiling = Gauge('scalavit_at_ceiling', 'Whether the server turned requests away within the last '
                                'second (then an adaptive policy serves the cheapest width)', registry=r)
        self.forward_ratio = Histogram('scalavit_forward_vs_profile', "Each forward's time over its profiled median",
                                       buckets=(0.5, 0.75, 0.9, 1.1, 1.25, 1.5, 2, 3, 5), registry=r)
        self.live = LiveStats()

    def responded(self, status: int) -> None:
        self.requests.labels(str(status)).inc()
        self.live.responded(status)

    def decoded(self, seconds: float) -> None:
        self.decode_time.observe(seconds)

    def on_batch(self, batch, compute_s: float, speed: float) -> None:
        """``speed``: the forward's time over its profiled median."""
        self.batch_size.observe(len(batch.requests))
        self.forward_ratio.observe(speed)
        self.live.batch(len(batch.requests), speed)

    def answered(self, latency_s: float, queue_s: float, width: float, missed: bool, stage=None) -> None:
        """``stage``: the cascade stage that answered (0 the first), or None."""
        if stage is not None:
            self.cascade_answers.labels(str(stage + 1), f'{width:g}').inc()
        self.latency.observe(latency_s)
        self.queue_time.observe(queue_s)
        self.width.observe(width)
        self.live.answered(latency_s, width, missed)
        if missed:
            self.slo_misses.inc()

    def refused(self, reason: str) -> None:
        self.refusals.labels(reason).inc()
        self.slo_misses.inc()
        self.live.refused()

    def exposition(self, queue_length: int, in_progress: int, speed: float, at_ceiling: bool) -> bytes:
        self.queue_length.set(queue_length)
        self.at_ceiling.set(at_ceiling)
        self.in_progress.set(in_progress)
        self.speed.set(speed)
        return generate_latest(self.registry)
