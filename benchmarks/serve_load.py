"""Adaptive-width serving under changing load: `scalavit serve` with SlackFit against fixed-width serving.

The full width's capacity is what it answers one request at a time (1 / its profiled p95 at batch 1): with a latency
SLO and a queue that is usually short, that is the rate fixed-width serving is built for. The server runs in its own process; this process drives it open-loop (asyncio, with aiohttp's client: httpx's costs
about 1 ms of CPU a request here and fell behind its own schedule at 300 req/s) with a precomputed schedule:
Poisson arrivals at 0.5x the full width's capacity (from the server's own profile), then 4x, then 0.5x again, then a
bursty phase (gamma inter-arrival times with CV^2 = 4, at 1x on average). Each request is a real Fashion-MNIST test
image, so the accuracy of what was served is measured from the answers. Latency counts from each request's scheduled
send time (no coordinated omission); how late the client sent is reported, and a run where it fell behind is flagged.

The same schedule runs against every policy, in rotated order, ``--repeats`` times; the doc reports the median and the
spread over repeats. A policy ``slackfit+cascade:0.625,1`` is SlackFit with that cascade as one more choice
(`scalavit serve --cascade 0.625,1`), on the same schedule as SlackFit alone; ``fixed:0.25+switch:5`` runs its server
with `--switch-interval-ms 5` (Python's default GIL switch interval) to compare with the server's own. ``--screenshot PNG`` runs the first policy
once more, unmeasured, and photographs the server's live page (headless Chromium) at the end of the 4x phase. With ``--backends eager compiled onnxruntime`` every policy also runs on each backend of the
server (`scalavit serve --compile`, `--onnxruntime`), on the same schedule: the full width's capacity is then the first
backend's, so every backend meets the same offered load.

    python benchmarks/serve_load.py --checkpoint runs/serve-model                  # writes docs/serving.md
    python benchmarks/serve_load.py --ceiling --checkpoint runs/ceiling            # the request ceiling, cheapest width
    python benchmarks/serve_load.py --checkpoint RUN --backends eager compiled --output docs/serving_backends.md
    python benchmarks/serve_load.py --quick --checkpoint RUN --output /tmp/serving.md  # the pipeline in seconds
    python benchmarks/serve_load.py --checkpoint RUN --policies slackfit slackfit+cascade:0.625,1 \
        --output docs/serving_cascade.md --screenshot docs/serving_page.png
"""
import argparse
import asyncio
import collections
import io
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import httpx
import numpy as np
from PIL import Image

from scalavit.data import read_fashion_mnist
from scalavit.evaluate import cpu_name
from scalavit.files import write_atomically, write_text_atomically
from scalavit.serve.policy import Fixed, SlackFit
from scalavit.serve.simulator import fluid_bound, served_profile, simulate, summarise as simulated
from scalavit.serve.traces import Phase, Slowdown, Trace, flash_crowd, project_load

LATE_SEND_MS = 5.0  # a client that sends its p99 request later than this behind schedule has fallen behind
BACKEND_OPTIONS = {'eager': [], 'compiled': ['--compile'], 'onnxruntime': ['--onnxruntime']}


def policy_options(policy: str) -> list[str]:
    """``slackfit+cascade:W1,W2``: SlackFit with that cascade as one more choice; ``POLICY+switch:MS``: the server's
    GIL switch interval (`--switch-interval-ms`) for this run; any other: `--policy` as it is."""
    policy, *extras = policy.split('+')
    options = ['--policy', policy]
    for extra in extras:
        kind, _, value = extra.partition(':')
        if kind not in ('cascade', 'switch') or not value:
            raise ValueError(f"policy {policy}+{extra}: add +cascade:W1,W2 or +switch:MS")
        options += ['--cascade' if kind == 'cascade' else '--switch-interval-ms', value]
    return options


def deployment_options(deployment: str) -> list[str]:
    """``plain``: one `scalavit serve` process; ``ray:N``: N replicas on Ray Serve behind its proxy."""
    if deployment == 'plain':
        return []
    kind, _, replicas = deployment.partition(':')
    if kind != 'ray' or not replicas.isdigit():
        raise ValueError(f"--deployments {deployment!r}: plain or ray:N")
    return ['--replicas', replicas]


# The schedule and the images


def build_trace(name: str, full: float, seconds: float, flash_peak: float) -> Trace:
    """``load``: 0.5x, 4x and 0.5x the full width's capacity, then gamma bursts at 1x; ``flash``: quiet (0.3x), then
    within a fifth of a second ``flash_peak`` times it (about the smallest width's ceiling on this machine, server and
    client together), held for 1.5 phases, then quiet again."""
    if name == 'load':
        return project_load(full, None, seconds)
    if name == 'flash':
        return flash_crowd(full, flash_peak * full, peak=1.0, seconds=seconds)
    raise ValueError(f"--trace {name!r}: load or flash")


def phase_spans(trace: Trace) -> dict[str, tuple[float, float]]:
    """Each phase name's first start and last end, in seconds from the start."""
    spans, start = {}, 0.0
    for phase in trace.phases:
        first = spans.get(phase.name, (start, start))[0]
        spans[phase.name] = (first, start + phase.seconds)
        start += phase.seconds
    return spans


def interfere(trace: Trace, phase: str, cores: int) -> list[subprocess.Popen]:
    """A co-located job: ``cores`` processes that each burn a core through ``phase`` (started now, with the
    schedule), as another tenant's job on the machine would."""
    begin, end = phase_spans(trace)[phase]
    burn = (f"import time; time.sleep({begin}); end = time.monotonic() + {end - begin}\n"
            "while time.monotonic() < end: pass")
    return [subprocess.Popen([sys.executable, '-c', burn]) for _ in range(cores)]


def test_images(count: int) -> tuple[list[bytes], list[str]]:
    """PNG files of the first Fashion-MNIST test images and their class names."""
    from scalavit.data import FashionMNIST
    images, labels = read_fashion_mnist('test')
    pngs = []
    for pixels in images[:count]:
        buffer = io.BytesIO()
        Image.fromarray(pixels.numpy(), 'L').save(buffer, format='PNG')
        pngs.append(buffer.getvalue())
    return pngs, [FashionMNIST.classes[int(label)] for label in labels[:count]]


# The server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


class Server:
    """`scalavit serve` in its own process, until ``stop``."""

    def __init__(self, checkpoint: str, policy: str, slo_ms: float, extra: list[str]):
        self.port = free_port()
        self.url = f'http://127.0.0.1:{self.port}'
        command = [sys.executable, '-m', 'scalavit', 'serve', checkpoint, '--port', str(self.port),
                   *policy_options(policy), '--slo-ms', str(slo_ms), *extra]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        # Read all along: a server whose stderr pipe fills up blocks on its next write, mid-run or at exit.
        self.stderr = collections.deque(maxlen=50)
        reader = threading.Thread(target=self.stderr.extend, args=(self.process.stderr,), daemon=True)
        reader.start()
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                reader.join(timeout=10)  # until the pipe's last lines are read
                raise RuntimeError(f"the server exited: {''.join(self.stderr)[-2000:]}")
            try:
                if httpx.get(f'{self.url}/health/ready', timeout=2).status_code == 200:
                    self.profile = httpx.get(f'{self.url}/widths').json()
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        self.stop()
        raise TimeoutError('the server did not become ready in 10 minutes')

    def cpu_seconds(self) -> float:
        """CPU time used so far by the server and every process under it (Ray's processes too)."""
        parents, times = {}, {}
        for entry in Path('/proc').iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / 'stat').read_text().rsplit(')', 1)[1].split()
                except OSError:
                    continue
                parents[int(entry.name)] = int(fields[1])
                times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')
        tree, grown = {self.process.pid}, True
        while grown:
            below = {pid for pid, parent in parents.items() if parent in tree} - tree
            tree, grown = tree | below, bool(below)
        return sum(times.get(pid, 0.0) for pid in tree)

    def capacity(self, width: float, batched: bool = False) -> float:
        """Requests a second ``width`` answers one at a time (1 / its p95 at batch 1), or ``batched`` at its best
        profiled batch size."""
        row = next(r for r in self.profile['profile'] if r['width'] == width)
        rates = {int(b): int(b) / (ms / 1e3) for b, ms in row['p95_ms'].items()}
        return max(rates.values()) if batched else rates[1]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# The open-loop client


@dataclass
class Outcome:
    scheduled: float
    sent: float = 0.0
    done: float = 0.0
    status: int = 0  # 0: no answer (connection error or client timeout)
    width: float = float('nan')
    batch_size: int = 0
    correct: bool = False
    stage: int = 0  # the cascade stage that answered (1 the first), 0 outside a cascade


async def drive(url: str, times: np.ndarray, images: list[bytes], labels: list[str], timeout_s: float) -> list[Outcome]:
    """Send request i at times[i] whatever happened to the others, and record what came back."""
    outcomes = [Outcome(float(t)) for t in times]
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
    async with aiohttp.ClientSession(url, connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
        async def one(i: int, start: float):
            outcome = outcomes[i]
            outcome.sent = time.perf_counter() - start
            try:
                async with session.post('/predict', data=images[i % len(images)],
                                        headers={'Content-Type': 'image/png'}) as response:
                    outcome.status = response.status
                    if response.status == 200:
                        body = await response.json()
                        outcome.width, outcome.batch_size = body['width'], body['batch_size']
                        outcome.stage = (body.get('cascade') or {}).get('stage', 0)
                        outcome.correct = body['top5'][0]['label'] == labels[i % len(labels)]
                    else:
                        await response.read()
            except (aiohttp.ClientError, asyncio.TimeoutError):
                outcome.status = 0
            outcome.done = time.perf_counter() - start

        tasks = []
        start = time.perf_counter()
        for i, t in enumerate(times):
            delay = t - (time.perf_counter() - start)
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i, start)))
        await asyncio.gather(*tasks)
    return outcomes


def photograph_live_page(url: str, at_s: float, output: Path, image: bytes) -> threading.Thread:
    """In a thread: opens the server's live page in headless Chromium (1280x1000) a little before ``at_s`` seconds
    from now, tries ``image`` in its try-it panel, and saves a screenshot at ``at_s`` to ``output``."""
    from selenium import webdriver
    from selenium.webdriver.common.by import By

    start = time.monotonic()

    def photograph():
        time.sleep(max(0.0, at_s - 12))
        options = webdriver.ChromeOptions()
        for flag in ('--headless=new', '--no-sandbox', '--disable-dev-shm-usage', '--window-size=1280,1000'):
            options.add_argument(flag)
        options.binary_location = shutil.which('chromium')
        driver = webdriver.Chrome(service=webdriver.ChromeService(shutil.which('chromedriver')), options=options)
        try:
            driver.get(f'{url}/')
            time.sleep(max(0.0, at_s - 6 - (time.monotonic() - start)))
            with tempfile.NamedTemporaryFile(suffix='.png') as upload:
                upload.write(image)
                upload.flush()
                driver.find_element(By.ID, 'image').send_keys(upload.name)
                time.sleep(max(0.0, at_s - (time.monotonic() - start)))
                shot = driver.get_screenshot_as_png()
        finally:
            driver.quit()
        write_atomically(output, lambda path: Path(path).write_bytes(shot))

    thread = threading.Thread(target=photograph, daemon=True)
    thread.start()
    return thread


# Figures


def summarise(outcomes: list[Outcome], phases: list[str], slo_s: float, trace: Trace) -> dict:
    def figures(selected: list[Outcome], duration: float) -> dict:
        answered = [o for o in selected if o.status == 200]
        latencies = sorted(1e3 * (o.done - o.scheduled) for o in answered)
        met = [o for o in answered if o.done - o.scheduled <= slo_s]

        def pct(q):
            return round(float(np.percentile(latencies, q)), 2) if latencies else None
        return dict(
            offered=len(selected), answered=len(answered), refused=sum(o.status == 503 for o in selected),
            errors=sum(o.status not in (200, 503) for o in selected),
            attainment=round(len(met) / max(len(selected), 1), 4),
            p50_ms=pct(50), p95_ms=pct(95), p99_ms=pct(99),
            goodput=round(len(met) / duration, 1),
            accuracy=round(100 * sum(o.correct for o in answered) / len(answered), 2) if answered else None,
            mean_width=round(float(np.mean([o.width for o in answered])), 4) if answered else None,
            cascaded=round(sum(o.stage > 0 for o in answered) / len(answered), 4) if answered else None,
            escalated=round(sum(o.stage > 1 for o in answered) / len(answered), 4) if answered else None)

    result = figures(outcomes, trace.seconds)
    result['phases'] = {name: figures([o for o, p in zip(outcomes, phases) if p == name], end - begin)
                        for name, (begin, end) in phase_spans(trace).items()}
    lateness = [1e3 * (o.sent - o.scheduled) for o in outcomes]
    result['client_late_p99_ms'] = round(float(np.percentile(lateness, 99)), 2)
    result['client_fell_behind'] = result['client_late_p99_ms'] > LATE_SEND_MS
    return result


def timeline(outcomes: list[Outcome], seconds_total: float, slo_s: float) -> dict:
    """Per second: offered requests, mean width answered, p95 latency (ms) of the answered ones."""
    rows = dict(offered=[], width=[], p95_ms=[])
    for second in range(int(np.ceil(seconds_total))):
        here = [o for o in outcomes if second <= o.scheduled < second + 1]
        answered = [o for o in here if o.status == 200]
        rows['offered'].append(len(here))
        rows['width'].append(float(np.mean([o.width for o in answered])) if answered else float('nan'))
        rows['p95_ms'].append(float(np.percentile([1e3 * (o.done - o.scheduled) for o in answered], 95))
                              if answered else float('nan'))
    return rows


def plot(results: dict, timelines: dict, slo_ms: float, trace: Trace, output: Path) -> list[str]:
    """Two figures beside ``output``, named after it (docs/serving.md: serving_timeline.png, ...)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    names = list(timelines)
    figure, axes = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    first = timelines[names[0]]
    axes[0].plot(first['offered'], color='black')
    axes[0].set_ylabel('offered (req/s)')
    for name in names:
        axes[1].plot(timelines[name]['width'], label=name)
        axes[2].plot(timelines[name]['p95_ms'], label=name)
    axes[1].set_ylabel('mean width served')
    axes[2].set_ylabel('p95 latency (ms)')
    axes[2].axhline(slo_ms, color='red', linestyle='--', linewidth=1, label='SLO')
    axes[2].set_yscale('log')
    axes[2].set_xlabel('seconds')
    for ax in axes:
        for begin, _ in list(phase_spans(trace).values())[1:]:
            ax.axvline(begin, color='grey', linewidth=0.5)
    axes[1].legend(fontsize=8)
    figure.tight_layout()
    files = [f'{output.stem}_timeline.png', f'{output.stem}_attainment_accuracy.png']
    figure.savefig(output.parent / files[0], dpi=110)
    plt.close(figure)

    figure, ax = plt.subplots(figsize=(6, 4.4))
    for name in names:
        runs = results[name]
        ax.scatter([100 * r['attainment'] for r in runs], [r['accuracy'] for r in runs], label=name)
    ax.set_xlabel('SLO attainment over all offered requests (%)')
    ax.set_ylabel('accuracy of the answered requests (%)')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(output.parent / files[1], dpi=110)
    plt.close(figure)
    return files


# The ceiling


def ceiling(args, images, labels) -> None:
    """Answered requests a second at the cheapest width, at rising constant offered rates: what HTTP, decoding and
    the client cost on this machine when the model costs next to nothing. Written to serving_ceiling.md."""
    server = Server(args.checkpoint, f'fixed:{args.smallest:g}', args.slo_ms, args.server_options)
    lines = [f"{'offered/s':>10} {'answered/s':>11} {'attainment':>11} {'p99 ms':>8} {'client late p99 ms':>19}"]
    try:
        head = (f"cheapest width {args.smallest:g} of {args.checkpoint}: profiled capacity "
                f"{server.capacity(args.smallest, batched=True):.0f} req/s batched "
                f"(full width {server.capacity(1.0, batched=True):.0f})")
        print(head + '\n' + lines[0], flush=True)
        for rate in args.rates:
            times = np.cumsum(np.random.default_rng(0).exponential(1 / rate, int(rate * args.seconds)))
            outcomes = asyncio.run(drive(server.url, times, images, labels, timeout_s=10))
            constant = Trace('constant', (Phase('low', args.seconds, rate),))
            s = summarise(outcomes, ['low'] * len(outcomes), args.slo_ms / 1e3, constant)
            answered = s['answered'] / max(o.done for o in outcomes)
            lines.append(f"{rate:>10.0f} {answered:>11.0f} {s['attainment']:>11.3f} {s['p99_ms'] or 0:>8.1f} "
                         f"{s['client_late_p99_ms']:>19.1f}")
            print(lines[-1], flush=True)
    finally:
        server.stop()
    command = 'python benchmarks/serve_load.py ' + ' '.join(sys.argv[1:])
    page = (f"# The request ceiling of `scalavit serve` on this machine\n\nCommand: `{command}`\n\nMachine: "
            f"{cpu_name()}, {os.cpu_count()} cores; server and client on the same machine; SLO {args.slo_ms:g} ms; "
            f"{args.seconds:g} s of Poisson arrivals per rate.\n\n{head}\n\n```\n" + '\n'.join(lines) + '\n```\n')
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(args.output.with_name('serving_ceiling.md'), page)


# The study


def contenders(policies: list[str], backends: list[str],
               deployments: list[str] = ('plain',)) -> dict[str, tuple[str, str, str]]:
    """The runs of the study by name: each policy on each backend and deployment, named by the policy alone where
    there is one of each."""
    def name(policy, backend, deployment):
        return ' on '.join([policy] + ([backend] if len(backends) > 1 else [])
                           + ([deployment] if len(deployments) > 1 else []))
    return {name(p, b, d): (p, b, d) for d in deployments for b in backends for p in policies}


def run_study(args, images, labels) -> None:
    names = phase_spans(build_trace(args.trace, 1.0, args.seconds, args.flash_peak))
    if args.interference and args.interference not in names:
        raise SystemExit(f"--interference {args.interference!r}: not a phase of --trace {args.trace} "
                         f"({', '.join(names)})")
    probe = Server(args.checkpoint, 'slackfit', args.slo_ms, args.server_options + BACKEND_OPTIONS[args.backends[0]])
    profiled, smallest = probe.capacity(1.0), min(r['width'] for r in probe.profile['profile'])
    batched = probe.capacity(1.0, batched=True)
    probe.stop()
    capacity = args.full_rate or profiled  # the profile's figure moves from one start to the next
    policies = args.policies or (['slackfit', f'fixed:{smallest:g}'] if args.quick else
                                 ['slackfit', 'maxacc', 'fixed:1', f'fixed:{smallest:g}'])
    runs = contenders(policies, args.backends, args.deployments)
    names = list(runs)
    trace = build_trace(args.trace, capacity, args.seconds, args.flash_peak)
    times, phases = trace.arrivals(args.seed)
    print(f"full width capacity {capacity:.0f} req/s one at a time ({'--full-rate; ' if args.full_rate else ''}"
          f"profile {profiled:.0f}, {batched:.0f} batched); {len(times)} requests over {trace.seconds:.0f} s "
          f"({args.trace}{', a co-located job in ' + args.interference if args.interference else ''}); runs "
          f"{', '.join(names)}; {args.repeats} repeat(s)", flush=True)
    results, timelines = {name: [] for name in names}, {}
    started = time.time()
    for repeat in range(args.repeats):
        for name in names[repeat % len(names):] + names[:repeat % len(names)]:
            policy, backend, deployment = runs[name]
            server = Server(args.checkpoint, policy, args.slo_ms, args.server_options + BACKEND_OPTIONS[backend]
                            + deployment_options(deployment))
            jobs = []
            try:
                cpu_before = server.cpu_seconds()
                jobs = interfere(trace, args.interference, args.interference_cores) if args.interference else []
                outcomes = asyncio.run(drive(server.url, times, images, labels, timeout_s=30))
                cpu_used = server.cpu_seconds() - cpu_before
            finally:
                for job in jobs:
                    job.kill()
                    job.wait()
                server.stop()
            summary = summarise(outcomes, phases, args.slo_ms / 1e3, trace)
            summary['server_cpu_ms_per_request'] = round(1e3 * cpu_used / max(len(outcomes), 1), 2)
            results[name].append(summary)
            timelines.setdefault(name, timeline(outcomes, trace.seconds, args.slo_ms / 1e3))
            print(f"[{repeat + 1}/{args.repeats}] {name:>12}: attainment {summary['attainment']:.4f}, accuracy "
                  f"{summary['accuracy']}, mean width {summary['mean_width']}, p99 {summary['p99_ms']} ms, server "
                  f"CPU {summary['server_cpu_ms_per_request']} ms a request"
                  f"{'  (client fell behind)' if summary['client_fell_behind'] else ''}", flush=True)
    if args.screenshot:
        screenshot(args, runs[names[0]], trace, times, images, labels)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    raw = dict(capacity=capacity, profiled_capacity=profiled, batched_capacity=batched, policies=names,
               backends=args.backends, deployments=args.deployments, results=results, seconds=args.seconds,
               slo_ms=args.slo_ms, trace=args.trace, phases=list(dict.fromkeys(phases)),
               interference=args.interference, simulated=simulate_beside(args, probe.profile, trace, names))
    data = args.output.parent / 'data'  # the measurements beside the pages, apart from them
    data.mkdir(exist_ok=True)
    write_text_atomically(data / f'{args.output.stem}.json', json.dumps(raw, indent=1) + '\n')
    write_text_atomically(data / f'{args.output.stem}_profile.json', json.dumps(probe.profile, indent=1) + '\n')
    figures = plot(results, timelines, args.slo_ms, trace, args.output)
    write_text_atomically(args.output, document(args, raw, figures, time.time() - started, len(times)))
    print(f"wrote {args.output}")


def simulate_beside(args, served: dict, trace: Trace, names: list[str]) -> dict:
    """The same trace on the simulator, with the probe server's profile (its /widths) and accuracies, each plain
    eager policy that ran (slackfit and fixed:R) with the co-located job as ``--sim-interference`` times slower
    forwards through its phase; and the fluid bound on accuracy per offered request."""
    profile = served_profile(served)
    if args.interference:
        begin, end = phase_spans(trace)[args.interference]
        slowdown = Slowdown('co-located job', ((begin - 1e-3, 1.0), (begin, args.sim_interference),
                                               (end, args.sim_interference), (end + 1e-3, 1.0)))
    else:
        slowdown = Slowdown('steady', ((0.0, 1.0),))
    policies = {name: SlackFit() if name == 'slackfit' else Fixed(float(name.split(':')[1]))
                for name in names if name == 'slackfit' or name.startswith('fixed:') and '+' not in name}
    results = {name: simulated(simulate(profile, policy, trace, slowdown, args.slo_ms / 1e3, args.seed),
                               profile.accuracy) for name, policy in policies.items()}
    return dict(results=results, bound=fluid_bound(profile, trace, slowdown, args.seed),
                slowdown=args.sim_interference if args.interference else 1.0)


def screenshot(args, run: tuple[str, str, str], trace: Trace, times: np.ndarray, images: list[bytes],
               labels: list[str]) -> None:
    """The first run once more, unmeasured, with its live page photographed at the end of the busiest phase."""
    policy, backend, deployment = run
    server = Server(args.checkpoint, policy, args.slo_ms, args.server_options + BACKEND_OPTIONS[backend]
                    + deployment_options(deployment))
    try:
        seconds = min(float(times[-1]), max(phase_spans(trace).values(), key=lambda span: span[1] - span[0])[1] - 1)
        thread = photograph_live_page(server.url, seconds, args.screenshot, images[0])
        asyncio.run(drive(server.url, times[times < seconds + 1], images, labels, timeout_s=30))
        thread.join(timeout=60)
    finally:
        server.stop()
    print(f"wrote {args.screenshot} ({policy}, at {seconds:.0f} s)", flush=True)


def spread(values: list) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return '-'
    median = statistics.median(values)
    return f"{median:g}" if len(values) == 1 else f"{median:g} ({min(values):g}-{max(values):g})"


def describe(args, raw: dict) -> str:
    """The schedule in words."""
    full = (f"the full width's capacity of {raw['capacity']:.0f} req/s one at a time "
            f"({'set by --full-rate; ' if args.full_rate else ''}profiled at {raw['profiled_capacity']:.0f} at this "
            f"start on {raw['backends'][0]}, {raw['batched_capacity']:.0f} batched)")
    if raw['trace'] == 'flash':
        text = (f"{3.5 * args.seconds + 0.2:.0f} s: quiet at 0.3x {full} for {args.seconds:g} s, then within 0.2 s a "
                f"flash crowd at {args.flash_peak:g}x for {1.5 * args.seconds:g} s, then quiet again")
    else:
        text = (f"{4 * args.seconds:.0f} s (phases of {args.seconds:g} s: low 0.5x, high 4x, low 0.5x of {full}, then "
                f"bursty at 1x with CV^2 = 4)")
    if raw.get('interference'):
        text += (f"; a co-located job ({args.interference_cores} process(es) burning a core each) through the "
                 f"{raw['interference']} phase")
    return text


def simulated_beside(raw: dict) -> list[str]:
    """The simulator's figures on the same trace, beside the real server's medians."""
    sim = raw.get('simulated')
    if not sim or not sim['results']:
        return []
    lines = ['', f"The same trace on the simulator (`scalavit.serve.simulator`, the probe server's profile and "
             f"accuracy table, forwards {sim['slowdown']:g}x slower through the co-located job's phase), beside "
             "the real server's medians. Accuracy there is the table's top-1 of the widths that answered; the fluid "
             f"bound on accuracy per offered request is {sim['bound']['overall']:.2f} over the schedule "
             f"({', '.join(f'{k} {v:.2f}' for k, v in sim['bound']['phases'].items())}).", '',
             '| policy | attainment real / simulated | accuracy per offered request, simulated | gap to the bound | '
             'by phase: attainment real / simulated |', '|---|---|---|---|---|']
    for name, figures in sim['results'].items():
        real = raw['results'][name]
        per_offered = figures['overall']['accuracy_per_offered']
        phases = '; '.join(f"{phase} {spread([r['phases'][phase]['attainment'] for r in real])} / "
                           f"{figures['phases'][phase]['attainment']:.4f}" for phase in raw['phases'])
        lines.append(f"| {name} | {spread([r['attainment'] for r in real])} / {figures['overall']['attainment']:.4f} "
                     f"| {per_offered:.2f} | {sim['bound']['overall'] - per_offered:.2f} | {phases} |")
    return lines


def document(args, raw: dict, figures: list[str], elapsed: float, requests: int) -> str:
    policies, results = raw['policies'], raw['results']
    command = 'python benchmarks/serve_load.py ' + ' '.join(sys.argv[1:])
    if len(raw.get('deployments', ['plain'])) > 1:
        title = "one server process against Ray Serve's replicas"
    elif any('+cascade:' in p for p in policies):
        title = 'SlackFit with and without a cascade'
    else:
        title = 'SlackFit against fixed-width serving'
    lines = [f'# Serving under changing load: {title}', '',
        f'Command: `{command}`', '',
        f'Machine: {cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}; server and client on '
        f'the same machine. Checkpoint `{args.checkpoint}`; SLO {args.slo_ms:g} ms; {requests} requests over '
        f"{describe(args, raw)}; server backend(s) {', '.join(raw['backends'])}; "
        f'{args.repeats} repeat(s), runs in rotated order; {elapsed / 60:.1f} min in all.', '',
        'Figures are the median over repeats with the range in brackets. Attainment counts every offered request '
        '(refusals, drops and timeouts are misses); latencies are of answered requests, from the scheduled send '
        'time; accuracy is measured on the answers; server CPU is the CPU time of the server and every process under '
        'it (Ray\'s included) while the schedule ran, over the requests offered.', '',
        '| policy | SLO attainment | p50 ms | p95 ms | p99 ms | goodput req/s | accuracy % | mean width | '
        'client late p99 ms | server CPU ms a request |', '|---|---|---|---|---|---|---|---|---|---|']
    for p in policies:
        rs = results[p]
        lines.append(f"| {p} | {spread([r['attainment'] for r in rs])} | {spread([r['p50_ms'] for r in rs])} | "
                     f"{spread([r['p95_ms'] for r in rs])} | {spread([r['p99_ms'] for r in rs])} | "
                     f"{spread([r['goodput'] for r in rs])} | {spread([r['accuracy'] for r in rs])} | "
                     f"{spread([r['mean_width'] for r in rs])} | {spread([r['client_late_p99_ms'] for r in rs])} | "
                     f"{spread([r.get('server_cpu_ms_per_request') for r in rs])} |")
    lines += ['', 'By phase (attainment / accuracy % / mean width):', '',
              '| policy | ' + ' | '.join(raw['phases']) + ' |',
              '|---|' + '---|' * len(raw['phases'])]
    for p in policies:
        cells = []
        for name in raw['phases']:
            rs = [r['phases'][name] for r in results[p]]
            cells.append(f"{spread([r['attainment'] for r in rs])} / {spread([r['accuracy'] for r in rs])} / "
                         f"{spread([r['mean_width'] for r in rs])}")
        lines.append(f"| {p} | " + ' | '.join(cells) + ' |')
    lines += simulated_beside(raw)
    lines += deployment_ratios(raw)
    lines += cascade_differences(raw)
    behind = [p for p in policies if any(r['client_fell_behind'] for r in results[p])]
    lines += ['', f"Client fell behind (p99 send lateness over {LATE_SEND_MS:g} ms) in: "
                  f"{', '.join(behind) if behind else 'no run'}.", '']
    lines += [f'![{name}]({name})' for name in figures]
    return '\n'.join(lines) + '\n'


def cascade_differences(raw: dict) -> list[str]:
    """Each cascade run against SlackFit alone, repeat by repeat: accuracy (points) and attainment differences over
    the whole schedule and by phase, and the share of answers the cascade ran and escalated."""
    base = 'slackfit'
    others = [p for p in raw['policies'] if p.startswith(base + '+cascade:')]
    if base not in raw['policies'] or not others:
        return []
    lines = ['', f'Cascades against {base} alone on the same schedule (difference per repeat; median, range). '
             'Accuracy in points; in brackets after each phase, the share of its answers the cascade ran, then the '
             'share escalated to a later stage:', '',
             '| run | | whole schedule | ' + ' | '.join(raw['phases']) + ' |',
             '|---|---|---|' + '---|' * len(raw['phases'])]
    for other in others:
        pairs = list(zip(raw['results'][other], raw['results'][base]))

        def difference(key: str, phase=None) -> str:
            pick = (lambda r: r) if phase is None else (lambda r: r['phases'][phase])
            return spread([round(pick(a)[key] - pick(b)[key], 4) for a, b in pairs
                           if pick(a)[key] is not None and pick(b)[key] is not None])

        shares = [f" ({spread([r['phases'][n]['cascaded'] for r in raw['results'][other]])}, "
                  f"{spread([r['phases'][n]['escalated'] for r in raw['results'][other]])})" for n in raw['phases']]
        lines.append(f"| {other} | accuracy | {difference('accuracy')} | "
                     + ' | '.join(difference('accuracy', n) + share for n, share in zip(raw['phases'], shares)) + ' |')
        lines.append(f"| | attainment | {difference('attainment')} | "
                     + ' | '.join(difference('attainment', n) for n in raw['phases']) + ' |')
    return lines


def deployment_ratios(raw: dict) -> list[str]:
    """Each Ray deployment's attainment and p99 over the plain server's, same policy and backend, repeat by repeat
    (the runs of a repeat share their minutes of the machine's noise)."""
    deployments = raw.get('deployments', ['plain'])
    if len(deployments) < 2 or 'plain' not in deployments:
        return []
    lines = ['', 'Against the plain server on the same schedule (ratio per repeat; median, range):', '',
             '| run | attainment ratio | p99 ratio |', '|---|---|---|']
    for name in raw['policies']:
        if not name.endswith(' on plain'):
            continue
        for deployment in deployments:
            other = name.removesuffix(' on plain') + f' on {deployment}'
            if deployment == 'plain' or other not in raw['results']:
                continue
            pairs = list(zip(raw['results'][other], raw['results'][name]))
            attainment = [round(a['attainment'] / b['attainment'], 4) for a, b in pairs if b['attainment']]
            p99 = [round(a['p99_ms'] / b['p99_ms'], 3) for a, b in pairs if a['p99_ms'] and b['p99_ms']]
            lines.append(f"| {other} | {spread(attainment)} | {spread(p99)} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--checkpoint', required=True, help='the scalavit run to serve')
    parser.add_argument('--slo-ms', type=float, default=100.0)
    parser.add_argument('--seconds', type=float, default=30.0, help='length of each phase')
    parser.add_argument('--trace', choices=['load', 'flash'], default='load',
                        help="load: 0.5x, 4x, 0.5x the full width's capacity, then gamma bursts at 1x; flash: from "
                             "quiet (0.3x) to --flash-peak times it within a fifth of a second, then quiet")
    parser.add_argument('--flash-peak', type=float, default=6.0,
                        help="the flash crowd's rate, in multiples of the full width's capacity (6: about the "
                             "smallest width's ceiling for the benchmark model here, client and server together)")
    parser.add_argument('--interference', metavar='PHASE',
                        help='a co-located job through this phase: processes that each burn a core')
    parser.add_argument('--interference-cores', type=int, default=1)
    parser.add_argument('--sim-interference', type=float, default=1.5,
                        help='how much slower the simulator makes forwards through that phase (for the figures '
                             'beside the real ones)')
    parser.add_argument('--full-rate', type=float, help="the full width's capacity the phases are multiples of, in "
                        "req/s (default: 1 / its profiled p95 at batch 1, which varies between starts)")
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--policies', nargs='+', help='default: slackfit maxacc fixed:1 fixed:<smallest>')
    parser.add_argument('--backends', nargs='+', choices=list(BACKEND_OPTIONS), default=['eager'],
                        help="the server's backends to run every policy on (the first sets the capacity)")
    parser.add_argument('--deployments', nargs='+', default=['plain'],
                        help="plain (one server process) and/or ray:N (N replicas on Ray Serve behind its proxy); "
                             "the first run's profile sets the load")
    parser.add_argument('--server-options', type=shlex.split, default=['--threads', '1', '--max-batch-size', '16'],
                        help="passed to `scalavit serve`, e.g. --server-options='--threads 1 --max-batch-size 16'")
    parser.add_argument('--images', type=int, default=2000, help='test images to cycle through')
    parser.add_argument('--output', type=Path, default=Path('docs/serving.md'))
    parser.add_argument('--ceiling', action='store_true', help='measure the request ceiling at the cheapest width')
    parser.add_argument('--smallest', type=float, default=0.25)
    parser.add_argument('--rates', type=float, nargs='+', default=[100, 200, 400, 800, 1200])
    parser.add_argument('--quick', action='store_true', help='the whole pipeline in seconds (the test suite)')
    parser.add_argument('--screenshot', type=Path, help="a PNG of the server's live page under the first policy's "
                        "load, at the end of the 4x phase (headless Chromium; one more run, unmeasured)")
    args = parser.parse_args()
    try:
        import uvloop  # the client's event loop costs half as much CPU with it, leaving more to the server
        uvloop.install()
    except ImportError:
        pass
    if args.quick:
        args.seconds, args.repeats, args.images = 1.0, 1, 50
        args.server_options = ['--threads', '1', '--max-batch-size', '4', '--profile-repeats', '3']
    images, labels = test_images(args.images)
    (ceiling if args.ceiling else run_study)(args, images, labels)


if __name__ == '__main__':
    main()
