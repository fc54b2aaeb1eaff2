"""`scalavit serve` as users run it: a real server in its own process on a loopback port, real HTTP requests."""
import asyncio
import base64
import json
import re
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import serving
from serving import Server
from scalavit.cli import build_parser
from scalavit.serve.app import create_app
from scalavit.serve.service import Service, Settings
from scalavit.serve.runner import Runner


@pytest.fixture(scope='module')
def labelled_png(trained):
    return serving.labelled_png(trained)


@pytest.fixture(scope='module')
def server(trained):
    running = Server(trained / 'scala', '--max-body-bytes', '4096')
    yield running
    running.stop()


def test_an_image_gets_its_class_sent_raw_as_a_form_or_as_base64(server, labelled_png):
    png, label = labelled_png
    answers = [server.post(png),
               httpx.post(f'{server.url}/predict', files={'file': ('x.png', png, 'image/png')}, timeout=30),
               httpx.post(f'{server.url}/predict', json={'image': base64.b64encode(png).decode()}, timeout=30)]
    for response in answers:
        assert response.status_code == 200, response.text
        body = response.json()
        assert body['top5'][0]['label'] == label and len(body['top5']) == 3
        assert sum(entry['probability'] for entry in body['top5']) == pytest.approx(1, abs=1e-4)
        assert body['width'] in [0.25 + i / 16 for i in range(13)] and body['batch_size'] >= 1
        assert body['queue_ms'] >= 0 and body['compute_ms'] > 0 and body['slo_ms'] == 100


def test_a_pinned_width_answers_at_that_width(server, labelled_png):
    assert server.post(labelled_png[0], **{'X-Width': '0.375'}).json()['width'] == 0.375


def test_widths_and_health(server):
    assert httpx.get(f'{server.url}/health/live').json() == {'status': 'live'}
    widths = httpx.get(f'{server.url}/widths').json()
    assert widths['policy'] == 'slackfit' and widths['batch_sizes'] == [1, 2, 4, 8]
    assert len(widths['profile']) == 13 and all(len(row['p95_ms']) == 4 for row in widths['profile'])


def test_each_bad_input_gets_its_status_and_a_message(server, labelled_png):
    png = labelled_png[0]
    cases = [
        (server.post(b'this is not an image'), 400, 'not a readable image'),
        (server.post(png[:len(png) // 2]), 400, 'not a readable image'),
        (server.post(png + bytes(5000)), 413, 'over the limit of 4096'),
        (server.post(png, content_type='text/plain'), 415, 'content type text/plain is not accepted'),
        (server.post(png, **{'X-Width': '0.3'}), 400, 'not on the grid; valid widths: 0.25, 0.3125'),
        (server.post(png, **{'X-SLO-Ms': 'soon'}), 400, 'X-SLO-Ms must be a positive number'),
        (server.post(b'{"img": 1}', content_type='application/json'), 400, '{"image": "<base64'),
    ]
    for response, status, message in cases:
        assert response.status_code == status and message in response.json()['error'], response.text
    assert server.post(png).status_code == 200  # and it goes on


def test_overload_is_refused_at_once_and_the_server_stays_up(server, labelled_png):
    png = labelled_png[0]
    hopeless = server.post(png, **{'X-SLO-Ms': '0.01'})
    assert hopeless.status_code == 503 and int(hopeless.headers['Retry-After']) >= 1
    # 150 at once with 3 ms each: more than any machine's profile lets the queue answer in time (the batcher admits
    # what its measured profile says can finish), so some are refused however fast the machine
    burst = server.burst([png] * 150, **{'X-SLO-Ms': '3'})
    statuses = [r.status_code for r in burst]
    assert set(statuses) <= {200, 503} and 503 in statuses
    assert httpx.get(f'{server.url}/health/live').status_code == 200
    # What the burst taught the controller fades within seconds; a client that honours Retry-After is answered.
    for _ in range(5):
        answer = server.post(png)
        if answer.status_code != 503:
            break
        time.sleep(int(answer.headers['Retry-After']))
    assert answer.status_code == 200, answer.text


def test_concurrent_requests_are_batched(server, labelled_png):
    answers = server.burst([labelled_png[0]] * 32, **{'X-SLO-Ms': '5000'})
    assert all(r.status_code == 200 for r in answers)
    assert max(r.json()['batch_size'] for r in answers) > 1


def test_one_image_is_answered_at_every_width_side_by_side(server, labelled_png):
    png, label = labelled_png
    answer = httpx.post(f'{server.url}/predict/widths', content=png, timeout=60,
                        headers={'Content-Type': 'image/png', 'X-SLO-Ms': '20000'})
    assert answer.status_code == 200, answer.text
    rows = answer.json()['widths']
    widths = httpx.get(f'{server.url}/widths').json()['widths']
    assert [row['width'] for row in rows] == widths and all('top5' in row for row in rows)
    assert [row['macs'] for row in rows] == sorted(row['macs'] for row in rows) and rows[0]['macs'] > 0
    for row in (rows[0], rows[-1]):  # each width answers as a request pinned to it does
        pinned = server.post(png, **{'X-Width': str(row['width'])}).json()
        assert pinned['width'] == row['width']
        assert [t['label'] for t in pinned['top5']] == [t['label'] for t in row['top5']]
    assert rows[-1]['top5'][0]['label'] == label
    bad = httpx.post(f'{server.url}/predict/widths', content=b'not an image', headers={'Content-Type': 'image/png'})
    assert bad.status_code == 400 and 'not a readable image' in bad.json()['error']


def test_stats_show_the_last_seconds_of_requests(server, labelled_png):
    def totals():
        seconds = httpx.get(f'{server.url}/stats', params={'seconds': 300}).json()['seconds']
        return {key: sum(s[key] for s in seconds) for key in ('offered', 'answered')}

    before = totals()
    answers = [server.post(labelled_png[0], **{'X-Width': '0.25'}) for _ in range(3)]
    assert [a.status_code for a in answers] == [200] * 3
    after = totals()
    assert (after['offered'] - before['offered'], after['answered'] - before['answered']) == (3, 3)
    body = httpx.get(f'{server.url}/stats', params={'seconds': 5}).json()
    assert len(body['seconds']) == 5 and body['slo_ms'] == 100 and body['widths'][0] == 0.25
    assert httpx.get(f'{server.url}/stats', params={'seconds': 0}).json()['error'].startswith('seconds must be')


def test_the_grafana_dashboard_asks_only_for_metrics_the_server_exports(server, labelled_png):
    """docs/grafana-dashboard.json is imported as is: every series its queries name is one /metrics has."""
    assert server.post(labelled_png[0]).status_code == 200  # labelled series appear once they have counted
    assert server.post(labelled_png[0], **{'X-SLO-Ms': '0.01'}).status_code == 503
    dashboard = json.loads((Path(__file__).parents[1] / 'docs' / 'grafana-dashboard.json').read_text())
    exprs = [target['expr'] for panel in dashboard['panels'] for target in panel['targets']]
    named = {name for expr in exprs for name in re.findall(r'scalavit_[a-z_]+', expr)}
    exported = {sample.name for family in text_string_to_metric_families(httpx.get(f'{server.url}/metrics').text)
                for sample in family.samples}
    assert named and named <= exported, named - exported
    assert len({panel['id'] for panel in dashboard['panels']}) == len(dashboard['panels'])


def test_metrics_parse_and_count_what_happened(server, labelled_png):
    def scrape():
        families = {f.name: f for f in text_string_to_metric_families(httpx.get(f'{server.url}/metrics').text)}
        counts = {s.labels['status']: s.value for s in families['scalavit_requests'].samples
                  if s.name == 'scalavit_requests_total'}
        return families, counts

    _, before = scrape()
    assert server.post(labelled_png[0]).status_code == 200 and server.post(b'garbage').status_code == 400
    families, after = scrape()
    assert after.get('200', 0) - before.get('200', 0) == 1 and after.get('400', 0) - before.get('400', 0) == 1
    for name in ('scalavit_request_latency_seconds', 'scalavit_queue_seconds', 'scalavit_batch_size',
                 'scalavit_width', 'scalavit_slo_misses', 'scalavit_refusals', 'scalavit_queue_length'):
        assert name in families, name


def test_sigterm_answers_what_is_queued_then_exits(trained, labelled_png):
    server = Server(trained / 'scala', '--policy', 'fixed:1')

    async def burst_then_terminate():
        async def post(client):
            response = await client.post('/predict', content=labelled_png[0], headers={
                'Content-Type': 'image/png', 'X-SLO-Ms': '20000'})
            return response, time.monotonic()

        async with httpx.AsyncClient(base_url=server.url, timeout=60,
                                     limits=httpx.Limits(max_connections=64)) as client:
            sent = [asyncio.create_task(post(client)) for _ in range(64)]
            await asyncio.wait(sent, return_when=asyncio.FIRST_COMPLETED)  # the model is busy, the rest queued
            server.process.send_signal(signal.SIGTERM)
            return time.monotonic(), await asyncio.gather(*sent)

    try:
        signalled, answers = asyncio.run(burst_then_terminate())
        assert [response.status_code for response, _ in answers] == [200] * 64
        assert sum(done > signalled for _, done in answers) > 0  # answered after the signal
        # uvicorn ends by re-raising the signal once it has drained: the exit status says SIGTERM, as it should
        assert server.process.wait(timeout=60) in (0, -signal.SIGTERM)
    finally:
        server.stop()


def test_the_default_host_is_loopback():
    assert build_parser().parse_args(['serve', 'run']).host == '127.0.0.1'


def test_a_failing_forward_answers_500_and_the_next_request_is_served(trained, labelled_png, monkeypatch):
    from fastapi.testclient import TestClient

    runner = Runner(str(trained / 'scala'))
    service = Service(runner, Settings(profile_repeats=2, max_batch_size=2, use_profile_cache=False), runner.accuracies(None))
    real_run = runner.run
    with TestClient(create_app(service)) as client:
        while client.get('/health/ready').status_code != 200:
            time.sleep(0.05)
        monkeypatch.setattr(runner, 'run', lambda images, width: 1 / 0)
        service.batcher.run = runner.run
        failed = client.post('/predict', content=labelled_png[0], headers={'Content-Type': 'image/png'})
        assert failed.status_code == 500 and 'ZeroDivisionError' in failed.json()['error']
        service.batcher.run = real_run
        assert client.post('/predict', content=labelled_png[0], headers={'Content-Type': 'image/png'}).json()[
            'top5'][0]['label'] == labelled_png[1]


def test_a_stuck_model_thread_makes_the_server_unready_and_requests_end_by_their_deadline(trained, labelled_png):
    from fastapi.testclient import TestClient

    runner = Runner(str(trained / 'scala'))
    service = Service(runner, Settings(profile_repeats=2, max_batch_size=2, stall_s=0.5, use_profile_cache=False), runner.accuracies(None))
    release = threading.Event()
    with TestClient(create_app(service)) as client:
        while client.get('/health/ready').status_code != 200:
            time.sleep(0.05)
        real_run = service.batcher.run
        service.batcher.run = lambda images, width: release.wait(30) and real_run(images, width)
        start = time.monotonic()
        stuck = client.post('/predict', content=labelled_png[0], headers={'Content-Type': 'image/png',
                                                                          'X-SLO-Ms': '200'})
        waited = time.monotonic() - start
        assert stuck.status_code == 503 and 'did not answer within' in stuck.json()['error']
        assert waited < 0.2 + service.stall_s + 5  # by its deadline and the stall limit, not forever
        ready = client.get('/health/ready')
        assert ready.status_code == 503 and 'model thread' in ready.json()['error']
        assert client.get('/v2/health/ready').status_code == 503
        assert client.get('/health/live').status_code == 200
        stats = client.get('/stats', params={'seconds': 30})  # from its own records: it never waits on the model
        assert stats.status_code == 200 and sum(s['refused'] for s in stats.json()['seconds']) >= 1
        release.set()
        service.batcher.run = real_run
        while client.get('/health/ready').status_code != 200:
            time.sleep(0.05)
        assert client.post('/predict', content=labelled_png[0], headers={'Content-Type': 'image/png'}).json()[
            'top5'][0]['label'] == labelled_png[1]
