"""Scale-out on Ray Serve: `scalavit serve RUN --replicas 2` on a local Ray instance that the test starts (2 replicas
of 1 thread), answering through Ray's proxy; both replicas used, the live page served, one killed and the service
still answering."""
import asyncio
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import serving
from serving import Server

pytest.importorskip('ray.serve')

from scalavit.serve.app import PAGE  # noqa: E402
from scalavit.serve.ray import Scaling, app, deployment_options, parse_arguments  # noqa: E402

pytestmark = pytest.mark.slow  # starts a Ray instance: scripts/test.sh --fast skips it


@pytest.fixture(scope='module')
def labelled_png(trained):
    return serving.labelled_png(trained)


@pytest.fixture(scope='module')
def ray_server(trained):
    # Ray's sockets live in its temporary folder, and a Unix socket's path has at most 107 bytes: a short one
    temp = Path(tempfile.mkdtemp(prefix='scalavit-ray-', dir='/tmp'))
    server = Server(trained / 'scala', '--replicas', '2', '--threads', '1', env={'RAY_TMPDIR': str(temp)},
                    ready_within=300)
    server.temp = temp
    yield server
    # SIGTERM drains the replicas and shuts Ray down: the process ends cleanly and no replica is left
    replicas = replica_pids(server)
    server.process.send_signal(signal.SIGTERM)
    try:
        assert server.process.wait(timeout=90) == 0, ''.join(server.output)
    finally:
        if server.process.poll() is None:
            server.process.kill()
    time.sleep(2)
    assert not [pid for pid in replicas if Path(f'/proc/{pid}').exists()]
    # ours, not Ray's: Ray's proxy logs a traceback when it polls the replica the kill test killed
    ours = [line for line in server.output if not line.lstrip(' \x1b[0123456789m').startswith(
        ('(ProxyActor', '(ServeController', '(raylet)'))]
    assert not [line for line in ours if 'Traceback' in line or 'SIGTERM received' in line], ''.join(server.output)
    shutil.rmtree(temp, ignore_errors=True)


def replica_pids(server: Server) -> list[int]:
    """The processes Ray runs the server's replicas in (titled ray::ServeReplica:APP:DEPLOYMENT)."""
    return [pid for pid, command in serving.descendants(server.process.pid).items() if 'ServeReplica' in command]


def ray_metric(temp: Path, name: str) -> dict[str, float]:
    """A counter from Ray's metrics export (the port Ray wrote in its session folder), by replica."""
    port = next((temp / 'ray' / 'session_latest').glob('metrics_export_port_*')).read_text().strip()
    by_replica = {}
    for family in text_string_to_metric_families(httpx.get(f'http://127.0.0.1:{port}/metrics', timeout=10).text):
        for sample in family.samples:
            if sample.name == name:
                replica = sample.labels['replica']
                by_replica[replica] = by_replica.get(replica, 0) + sample.value
    return by_replica


def burst(url: str, body: bytes, count: int) -> list[httpx.Response]:
    async def send():
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_connections=count)) as client:
            return await asyncio.gather(*(client.post('/predict', content=body, headers={
                'Content-Type': 'image/png', 'X-SLO-Ms': '5000'}) for _ in range(count)))
    return asyncio.run(send())


def test_the_builder_takes_ray_cli_strings_and_refuses_what_it_does_not_know(trained):
    checkpoint, settings, options, scaling = parse_arguments(
        {'checkpoint': str(trained / 'scala'), 'replicas': '3', 'threads': '2', 'slo_ms': '50', 'policy': 'maxacc'})
    assert (settings.slo_ms, settings.policy, options.threads, scaling.replicas) == (50.0, 'maxacc', 2, 3)
    deployment = deployment_options(settings, options, scaling)
    assert deployment['num_replicas'] == 3 and deployment['ray_actor_options']['num_cpus'] == 2
    # a replica takes two batches at a time, Ray's router holds as many and sheds the rest with 503
    assert (deployment['max_ongoing_requests'], deployment['max_queued_requests']) == (64, 64)
    autoscaled = deployment_options(settings, options, Scaling(min_replicas=1, max_replicas=4))
    assert autoscaled['autoscaling_config'] == {'min_replicas': 1, 'max_replicas': 4,
                                                'target_ongoing_requests': settings.max_batch_size}
    assert app({'checkpoint': str(trained / 'scala')}) is not None
    with pytest.raises(ValueError, match='unknown argument'):
        parse_arguments({'checkpoint': 'x', 'slo': '5'})
    with pytest.raises(ValueError, match='give the run to serve'):
        parse_arguments({'replicas': '2'})
    with pytest.raises(ValueError, match='bad argument'):
        parse_arguments({'checkpoint': 'x', 'slo_ms': 'soon'})


def test_requests_through_rays_proxy_use_both_replicas_and_ray_gets_the_metrics(ray_server, labelled_png):
    png, label = labelled_png
    # Ray routes to a replica once it is constructed (its profile measured): the second may be a little later than
    # the first, and Ray exports what the replicas recorded every few seconds
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        answers = [r for _ in range(4) for r in burst(ray_server.url, png, 16)]
        assert all(r.status_code == 200 and r.json()['top5'][0]['label'] == label for r in answers), \
            [(r.status_code, r.text[:200]) for r in answers if r.status_code != 200]
        answered = ray_metric(ray_server.temp, 'ray_scalavit_requests_total')
        if len([count for count in answered.values() if count > 0]) >= 2:
            break
        time.sleep(2)
    assert len([count for count in answered.values() if count > 0]) >= 2, answered


def test_the_live_page_and_what_it_reads_are_answered_through_rays_proxy(ray_server, labelled_png):
    png, label = labelled_png
    page = httpx.get(f'{ray_server.url}/', timeout=30)
    assert page.status_code == 200 and page.text == PAGE and page.headers['content-type'].startswith('text/html')
    stats = httpx.get(f'{ray_server.url}/stats', params={'seconds': 10}, timeout=30).json()
    assert len(stats['seconds']) == 10 and stats['widths'] == [0.25 + i / 16 for i in range(13)]
    assert len(httpx.get(f'{ray_server.url}/widths', timeout=30).json()['profile']) == 13
    every = httpx.post(f'{ray_server.url}/predict/widths', content=png, timeout=60,
                       headers={'Content-Type': 'image/png', 'X-SLO-Ms': '10000'}).json()['widths']
    assert [a['width'] for a in every] == stats['widths'] and every[-1]['top5'][0]['label'] == label


def test_a_killed_replica_is_replaced_and_the_service_keeps_answering(ray_server, labelled_png):
    png, label = labelled_png
    before = replica_pids(ray_server)
    assert len(before) == 2
    os.kill(before[0], signal.SIGKILL)
    answers = [r for _ in range(3) for r in burst(ray_server.url, png, 8)]
    assert sum(r.status_code == 200 for r in answers) >= 20, [r.status_code for r in answers]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (len(replica_pids(ray_server)) == 2
                                               and before[0] not in replica_pids(ray_server)):
        time.sleep(1)
    assert len(replica_pids(ray_server)) == 2 and before[0] not in replica_pids(ray_server)
    answer = httpx.post(f'{ray_server.url}/predict', content=png, headers={'Content-Type': 'image/png'}, timeout=30)
    assert answer.status_code == 200 and answer.json()['top5'][0]['label'] == label
