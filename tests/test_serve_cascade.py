"""A cascade served: SlackFit weighs it against the widths at its expected cost, and the batcher answers each request
of a batch at the stage sure enough of it, once: on a synthetic profile and a fake clock, then in a real server."""
import json
import shutil
from dataclasses import dataclass

import httpx
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from serving import Server
from scalavit.cascade import Cascade
from scalavit.cli import main
from scalavit.serve import Batcher, Profile, SlackFit
from scalavit.serve.policy import CascadePlan, Choice
from scalavit.serve.runner import Runner

MS = 1e-3
WIDTHS, BATCHES = (0.25, 0.5, 0.75, 1.0), (1, 2, 4, 8)
LATENCY = {(w, b): (1 + 9 * w) * (1 + b / 4) * MS for w in WIDTHS for b in BATCHES}  # as in test_serve_policy
ACCURACY = {0.25: 70.0, 0.5: 80.0, 0.75: 79.0, 1.0: 85.0}
PLAN = CascadePlan(widths=(0.25, 1.0), thresholds=(0.8,), reach=(1.0, 0.2), accuracy=84.0)
PROFILE = Profile(LATENCY, ACCURACY, PLAN)


def test_the_cascade_costs_its_first_stage_and_the_share_that_reaches_the_next():
    # 8 requests: width 0.25 at batch 8 (9.75 ms), then 1.6 of them at width 1.0 (batch 2: 15 ms)
    assert PROFILE.cost(PLAN, 8) == pytest.approx(9.75 * MS + 15 * MS)
    # one request: 4.06 ms, and a fifth of one request at width 1.0 (12.5 ms)
    assert PROFILE.cost(PLAN, 1) == pytest.approx(4.0625 * MS + 0.2 * 12.5 * MS)
    assert PROFILE.options == [0.25, 0.5, 0.75, 1.0, PLAN]
    with pytest.raises(ValueError, match='not all profiled widths'):
        Profile(LATENCY, ACCURACY, CascadePlan((0.25, 0.3), (0.5,), (1.0, 0.5), 80.0))


@pytest.mark.parametrize('waiting, arrivals_per_s, expected', [
    (1, 0, (1.0, None)),      # light load: width 1.0 is more accurate than the cascade
    (8, 250, (0.25, PLAN)),   # 1.0 (267/s at batch 8) no longer keeps up with 1.25 x 250; the cascade (323/s) does
                              # and is more accurate than 0.5
    (8, 500, (0.25, None)),   # only width 0.25 (820/s) keeps up
])
def test_slackfit_chooses_the_cascade_when_it_is_the_most_accurate_that_keeps_up(waiting, arrivals_per_s, expected):
    choice = SlackFit().choose(PROFILE, 0.1, waiting, arrival_rate=arrivals_per_s)
    assert (choice.width, choice.cascade) == expected and choice.batch_size == waiting


@dataclass
class Output:
    item: str
    width: float
    confidence: float


def run_recording(calls):
    """A forward whose every output is as sure as its item says at that width: ``name:c0.25:c1.0``."""
    def run(items, width):
        calls.append(([i.split(':')[0] for i in items], width))
        return [Output(i.split(':')[0], width, float(i.split(':')[1 if width == 0.25 else 2])) for i in items]
    return run


class AlwaysTheCascade(SlackFit):
    def choose(self, profile, slack, waiting, arrival_rate=0.0, at_ceiling=False):
        return Choice(0.25, min(waiting, 8), profile.cascade)


def test_a_mixed_batch_answers_each_request_once_at_the_stage_sure_enough_of_it():
    calls = []
    queue = Batcher(run_recording(calls), PROFILE, AlwaysTheCascade(), max_queue=64)
    items = ['sure:0.9:0.5', 'unsure:0.5:0.99', 'edge:0.8:0.1', 'lost:0.1:0.3']
    futures = [queue.submit(item, slo_s=1.0) for item in items]
    queue.start()
    answers = [future.result(timeout=5) for future in futures]
    queue.stop()
    # A threshold is met at or above it; the last stage answers whatever reaches it, however unsure.
    assert [(a.output.item, a.width, a.stage) for a in answers] == [
        ('sure', 0.25, 0), ('unsure', 1.0, 1), ('edge', 0.25, 0), ('lost', 1.0, 1)]
    # One forward of all four at the first stage, then one of the two that went on: nothing ran twice at a width.
    assert calls == [(['sure', 'unsure', 'edge', 'lost'], 0.25), (['unsure', 'lost'], 1.0)]
    assert all(a.compute_s >= 0 and a.queue_s >= 0 for a in answers)
    assert answers[1].batch_size == 2 and answers[0].batch_size == 4


def test_a_request_pinned_to_a_width_never_enters_the_cascade():
    calls = []
    queue = Batcher(run_recording(calls), PROFILE, AlwaysTheCascade(), max_queue=64)
    pinned = queue.submit('pinned:0.1:0.1', slo_s=1.0, width=0.25)
    queue.start()
    answer = pinned.result(timeout=5)
    queue.stop()
    assert (answer.width, answer.stage, calls) == (0.25, None, [(['pinned'], 0.25)])


class FakeClock:
    now = 100.0

    def __call__(self):
        return self.now


def test_when_the_next_stage_would_be_late_the_first_stages_answer_stands():
    clock, calls = FakeClock(), []
    queue = Batcher(run_recording(calls), PROFILE, AlwaysTheCascade(), max_queue=64, clock=clock)
    future = queue.submit('unsure:0.5:0.99', slo_s=0.05)
    batch, dropped = queue.plan(clock.now)
    assert batch.cascade is PLAN and not dropped
    queue._answer(batch, dropped)  # escalated: back in the queue, pinned to width 1.0
    assert not future.done() and len(queue) == 1 and queue.queue.head.width == 1.0
    clock.now += 0.045  # 5 ms left: width 1.0 needs 12.5
    batch, dropped = queue.plan(clock.now)
    queue._answer(batch, dropped)
    answer = future.result(timeout=0)
    assert (answer.output.item, answer.width, answer.stage) == ('unsure', 0.25, 0)
    assert calls == [(['unsure'], 0.25)]


def test_the_escalation_rate_the_controller_plans_with_follows_what_it_sees():
    queue = Batcher(run_recording([]), PROFILE, AlwaysTheCascade(), max_queue=64)
    futures = [queue.submit(f'r{i}:{0.1 if i % 2 else 0.9}:0.9', slo_s=1.0) for i in range(8)]
    queue.start()
    for future in futures:
        future.result(timeout=5)
    queue.stop()
    # Half of 8 went on, against the 20% calibrated: each request moves the rate 1% of the way.
    assert queue.profile.cascade.reach[1] == pytest.approx(0.2 + (1 - 0.99 ** 8) * (0.5 - 0.2))
    assert PROFILE.cascade.reach[1] == 0.2  # the profile given is not changed


def test_the_server_answers_every_request_of_a_mixed_batch_once_with_the_stage_that_answered(trained, tmp_path):
    run = tmp_path / 'run'
    shutil.copytree(trained / 'scala', run)
    assert main(['eval', str(run), '--cascade', '0.25,1.0', '--latency-repeats', '2']) == 0
    runner = Runner(str(run))
    pngs = [path.read_bytes() for path in sorted((trained / 'data' / 'val').glob('*/*.png'))]
    images = torch.stack([runner.preprocess(png) for png in pngs])
    with torch.no_grad():
        sure_at_first = runner.model(images, 0.25).softmax(-1).amax(-1)
    # A threshold halfway in the widest gap near the middle of the first width's confidences: some images are
    # answered at 0.25, the others go on to 1.0. Its top-1 set above every width's, so that SlackFit runs it.
    ordered = sure_at_first.sort().values.tolist()
    gap = max(range(3, len(ordered) - 3), key=lambda i: ordered[i + 1] - ordered[i])
    threshold = (ordered[gap] + ordered[gap + 1]) / 2
    saved = json.loads((run / 'cascade.json').read_text())
    saved['evaluation']['chosen'].update(thresholds=[threshold], top1=101.0)
    (run / 'cascade.json').write_text(json.dumps(saved))
    expected = Cascade(runner.model, [0.25, 1.0], [threshold])(images)

    server = Server(run, '--cascade', '0.25,1', '--slo-ms', '2000')
    try:
        assert httpx.get(f'{server.url}/widths').json()['cascade']['thresholds'] == [threshold]
        assert httpx.get(f'{server.url}/stats').json()['cascade'] == [0.25, 1.0]
        answers = server.burst(pngs) + server.burst(pngs)
        metrics = httpx.get(f'{server.url}/metrics').text
    finally:
        server.stop()
    assert [a.status_code for a in answers] == [200] * len(answers)
    # SlackFit runs the cascade unless a burst on a busy machine makes it choose the fastest width that keeps up
    # (a few answers on a loaded test machine): every answer the cascade gave is the stage expected, and most are
    everything = [a.json() for a in answers]
    labels = runner.model.pretrained_cfg['label_names']
    bodies = []
    for body, logits, width in zip(everything, torch.cat([expected[0]] * 2), torch.cat([expected[1]] * 2).tolist()):
        if body.get('cascade') is None:
            continue
        bodies.append(body)
        assert body['width'] == width and body['cascade'] == dict(stage=1 if width == 0.25 else 2, widths=[0.25, 1.0])
        assert body['top5'][0]['label'] == labels[logits.argmax()]
    assert len(bodies) >= len(everything) / 2
    assert 0 < sum(b['cascade']['stage'] == 1 for b in bodies) < len(bodies)
    counted = {(s.labels['stage'], s.labels['width']): s.value for family in text_string_to_metric_families(metrics)
               if family.name == 'scalavit_cascade_answers' for s in family.samples if s.name.endswith('_total')}
    assert counted == {('1', '0.25'): sum(b['cascade']['stage'] == 1 for b in bodies),
                       ('2', '1'): sum(b['cascade']['stage'] == 2 for b in bodies)}


def test_a_later_stage_runs_only_if_it_leaves_the_other_requests_time():
    clock, calls = FakeClock(), []
    queue = Batcher(run_recording(calls), PROFILE, AlwaysTheCascade(), max_queue=64, clock=clock)
    unsure = queue.submit('unsure:0.5:0.99', slo_s=0.013)
    queue._answer(*queue.plan(clock.now))  # escalated, pinned to width 1.0 (12.5 ms), which fits its 13 ms
    # The next request is due in 15 ms: after width 1.0's 12.5 ms, even width 0.25 (4.06 ms) would be late for it.
    urgent = queue.submit('urgent:0.9:0.9', slo_s=0.015)
    batch, dropped = queue.plan(clock.now)
    queue._answer(batch, dropped)
    assert (unsure.result(timeout=0).width, unsure.result(timeout=0).stage) == (0.25, 0)  # its first answer
    assert [r.item for r in batch.requests] == ['urgent:0.9:0.9'] and batch.width == 0.25 and urgent.done()
    # With time to spare for the others, the later stage runs.
    unsure = queue.submit('unsure:0.5:0.99', slo_s=0.05)
    queue._answer(*queue.plan(clock.now))
    relaxed = queue.submit('relaxed:0.9:0.9', slo_s=0.1)
    batch, _ = queue.plan(clock.now)
    assert (batch.width, [r.item for r in batch.requests]) == (1.0, ['unsure:0.5:0.99']) and not relaxed.done()
