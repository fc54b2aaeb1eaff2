"""The controller and the batcher on a synthetic profile and a fake clock: no torch, no HTTP."""
import contextlib
import threading
import time

import pytest

from scalavit.serve import BatchFailed, Batcher, Fixed, MaxAccuracy, Missed, Profile, Refused, SlackFit, parse_policy
from scalavit.serve.policy import could_finish_in_time

MS = 1e-3
# Width w at batch b takes (1 + 9 w) * (1 + b / 4) ms: width 1.0 takes 12.5 / 15 / 20 / 30 ms at batch 1 / 2 / 4 / 8,
# width 0.5 6.9 ms at batch 1, width 0.25 4.06 / 4.9 / 6.5 / 9.75 ms.
WIDTHS, BATCHES = (0.25, 0.5, 0.75, 1.0), (1, 2, 4, 8)
PROFILE = Profile({(w, b): (1 + 9 * w) * (1 + b / 4) * MS for w in WIDTHS for b in BATCHES},
                  {0.25: 70.0, 0.5: 80.0, 0.75: 79.0, 1.0: 85.0})


def latency(width, batch):
    return PROFILE.latency[(width, batch)]


@pytest.mark.parametrize('slack_ms, waiting, expected', [
    (100, 1, (1.0, 1)),     # light load: the most accurate width
    (100, 3, (1.0, 3)),     # three waiting, all fit at width 1.0 (batch 4 takes 30 ms)
    (100, 50, (1.0, 8)),    # at most the largest profiled batch
    (18, 8, (0.5, 8)),      # eight waiting: 0.5 answers all of them in 16.5 ms, 0.75 and 1.0 would take longer
    (18, 2, (1.0, 2)),      # two waiting: width 1.0 answers both in 15 ms
    (12, 1, (0.5, 1)),      # 12.5 ms for width 1.0 does not fit: next most accurate is 0.5 (6.9 ms), not 0.75
    (5, 4, (0.25, 2)),      # only the smallest width, at batch 2 (4.9 ms)
    (4, 1, None),           # nothing fits: the request is dropped
])
def test_slackfit_packs_the_waiting_requests_and_runs_the_most_accurate_width_that_fits(slack_ms, waiting, expected):
    choice = SlackFit().choose(PROFILE, slack_ms * MS, waiting)
    assert (None if choice is None else (choice.width, choice.batch_size)) == expected


@pytest.mark.parametrize('waiting, arrivals_per_s, expected', [
    (8, 100, 1.0),    # width 1.0 answers 267/s in batches of 8 (30 ms): keeps up with 1.25 x 100
    (8, 250, 0.5),    # 1.0 no longer does; of 0.75 (344/s) and 0.5 (485/s), 0.5 is the more accurate
    (8, 500, 0.25),   # only 0.25 (820/s) keeps up with 625/s
    (8, 1000, 0.25),  # none keeps up: the fastest
    (1, 100, 0.5),    # one waiting: at batch 1, width 1.0 answers 80/s, 0.75 103/s, 0.5 145/s
    (1, 50, 1.0),
])
def test_slackfit_chooses_among_the_widths_that_keep_up_with_the_arrivals(waiting, arrivals_per_s, expected):
    choice = SlackFit(headroom=1.25).choose(PROFILE, 0.1, waiting, arrival_rate=arrivals_per_s)
    assert (choice.width, choice.batch_size) == (expected, waiting)


def test_the_baselines_keep_their_width():
    assert (MaxAccuracy().choose(PROFILE, 0.1, 5).width, MaxAccuracy().choose(PROFILE, 0.1, 5).batch_size) == (1.0, 1)
    assert MaxAccuracy().choose(PROFILE, 0.012, 5) is None
    assert Fixed(0.25).choose(PROFILE, 0.1, 50).batch_size == 8 and Fixed(0.25).choose(PROFILE, 0.004, 1) is None
    assert parse_policy('fixed:0.5', list(WIDTHS)).width == 0.5
    with pytest.raises(ValueError, match='fixed:R needs R among the grid'):
        parse_policy('fixed:0.3', list(WIDTHS))
    with pytest.raises(ValueError, match='choose slackfit, maxacc or fixed:R'):
        parse_policy('fastest', list(WIDTHS))


def test_a_profile_must_be_complete():
    with pytest.raises(ValueError, match='missing'):
        Profile({(0.5, 1): 1.0, (1.0, 2): 1.0}, {0.5: 1.0, 1.0: 2.0})


def test_admission_counts_the_requests_ahead_at_the_cheapest_widths_best_rate():
    rate = PROFILE.rate(0.25)  # 8 requests in 9.75 ms
    assert rate == pytest.approx(8 / latency(0.25, 8))
    assert could_finish_in_time(PROFILE, 0.1, ahead=0, busy_for=0)
    assert not could_finish_in_time(PROFILE, 0.004, ahead=0, busy_for=0)   # 4.06 ms needed at batch 1
    assert could_finish_in_time(PROFILE, 0.1, ahead=int(0.09 * rate), busy_for=0)
    assert not could_finish_in_time(PROFILE, 0.1, ahead=int(0.1 * rate), busy_for=0)
    assert not could_finish_in_time(PROFILE, 0.1, ahead=0, busy_for=0.096)
    assert not could_finish_in_time(PROFILE, 0.01, ahead=0, busy_for=0, width=1.0)  # pinned to 12.5 ms


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def batcher(policy=None, max_queue=64, run=None):
    clock = FakeClock()
    return Batcher(run or (lambda items, width: [(item, width) for item in items]), PROFILE, policy or SlackFit(),
                   max_queue, clock=clock), clock


def test_requests_are_served_earliest_deadline_first_and_packed():
    queue, clock = batcher()
    late = queue.submit('late', slo_s=0.2)
    early = [queue.submit(f'early{i}', slo_s=0.05) for i in range(3)]
    batch, dropped = queue.plan(clock.now)
    assert not dropped and batch.width == 1.0
    # width 1.0 at batch 4 takes 20 ms, within the earliest slack (50 ms): all four go, earliest deadlines first
    assert [r.item for r in batch.requests] == ['early0', 'early1', 'early2', 'late']
    assert len(queue) == 0 and not late.done() and not early[0].done()


def test_as_the_earliest_slack_shrinks_the_width_drops_and_then_the_request_is_dropped():
    queue, clock = batcher()
    queue.submit('a', slo_s=0.05)
    clock.now += 0.038  # 12 ms of slack left: width 1.0 (12.5 ms) no longer fits, 0.5 (6.9 ms) does
    batch, _ = queue.plan(clock.now)
    assert (batch.width, len(batch.requests)) == (0.5, 1)
    queue.submit('b', slo_s=0.05)
    clock.now += 0.046  # 4 ms left: not even width 0.25 fits
    batch, dropped = queue.plan(clock.now)
    assert batch is None and [r.item for r in dropped] == ['b']


def test_a_pinned_width_is_served_at_that_width_with_its_own_kind():
    queue, clock = batcher()
    queue.submit('free', slo_s=0.2)
    queue.submit('pinned', slo_s=0.1, width=0.25)
    batch, _ = queue.plan(clock.now)
    assert (batch.width, [r.item for r in batch.requests]) == (0.25, ['pinned'])
    batch, _ = queue.plan(clock.now)
    assert (batch.width, [r.item for r in batch.requests]) == (1.0, ['free'])


def test_the_queue_is_bounded_and_hopeless_requests_are_refused_at_once():
    queue, clock = batcher(max_queue=3)
    # 3 ms: even width 0.25's 4.06 ms, taken a fifth faster than profiled (admission errs on admitting), is late
    with pytest.raises(Refused, match='no width can answer within 3 ms'):
        queue.submit('x', slo_s=0.003)
    for i in range(3):
        queue.submit(i, slo_s=1.0)
    with pytest.raises(Refused, match='queue is full') as refused:
        queue.submit('y', slo_s=1.0)
    assert refused.value.retry_after_s > 0


def test_the_model_thread_answers_drops_and_survives_a_failing_batch():
    calls = []

    def run(items, width):
        calls.append(list(items))
        if 'boom' in items:
            raise RuntimeError('kernel exploded')
        time.sleep(0.001)
        return [f'{item}@{width}' for item in items]

    queue = Batcher(run, PROFILE, SlackFit(), max_queue=64)
    boom = queue.submit('boom', slo_s=1.0)
    queue.start()
    with pytest.raises(BatchFailed, match='RuntimeError: kernel exploded'):
        boom.result(timeout=5)
    answers = [queue.submit(f'img{i}', slo_s=1.0) for i in range(5)]
    results = [future.result(timeout=5) for future in answers]
    assert [r.output for r in results] == [f'img{i}@1.0' for i in range(5)]
    assert all(r.width == 1.0 and r.queue_s >= 0 and r.compute_s > 0 for r in results)
    queue.submit('last', slo_s=1.0)
    queue.stop()  # answers what is queued before the thread ends
    assert calls[-1] == ['last']
    with pytest.raises(Refused, match='shutting down'):
        queue.submit('after', slo_s=1.0)


def test_a_request_missed_in_the_queue_gets_an_answer_saying_so():
    clock = FakeClock()
    queue = Batcher(lambda items, width: items, PROFILE, SlackFit(), 64, clock=clock)
    future = queue.submit('a', slo_s=0.05)
    clock.now += 0.049
    queue.start()
    with pytest.raises(Missed):
        future.result(timeout=5)
    queue.stop()


def test_forwards_slower_than_profiled_make_the_controller_plan_with_what_it_sees():
    clock = FakeClock()

    def slow(items, width):  # every forward takes twice its profiled p95
        clock.now += 2 * PROFILE.p95(width, len(items))
        return items

    queue = Batcher(slow, PROFILE, SlackFit(headroom=0), 64, clock=clock)  # slack alone decides here
    for _ in range(60):
        queue.submit('x', slo_s=1.0)
        queue._run(queue.plan(clock.now)[0])
    # the machine-wide factor has followed most of it (a moving average); each cell that ran learned a little of
    # it too (it cannot yet tell the machine from the cell), so the widths that ran plan with about twice their p95
    assert 1.5 < queue.slowdown() <= 2.0 + 1e-9
    assert 1.8 < queue.slowdown() * queue.profile.p95(1.0, 1) / PROFILE.p95(1.0, 1) <= 2.2
    # half the SLO (20 ms) holds width 1.0's 12.5 ms of profile, but not the 23 ms it takes now
    queue.submit('y', slo_s=0.040)
    assert queue.plan(clock.now)[0].width == 0.5


def test_what_a_burst_taught_fades_so_the_server_accepts_again():
    queue, clock = batcher()
    for _ in range(20):
        queue.note_overhead(0.5)  # answers spent half a second after their forward during a burst
    with pytest.raises(Refused):
        queue.submit('during', slo_s=0.1)
    clock.now += 10  # no answer since: nothing renews what the burst taught
    assert queue.reserve_s() == 0
    queue.submit('after', slo_s=0.1)


def test_an_idle_model_admits_what_the_profile_answers_in_time_whatever_the_speed_estimate_says():
    queue, clock = batcher()
    for _ in range(30):  # a burst left forwards of width 0.25 taking ten times their profile
        queue.speed.observe(0.25, 1, 10 * PROFILE.typical(0.25, 1))
    assert queue.slowdown() > 5
    queue.submit('first', slo_s=0.03)  # 4.06 ms of profile, 40 ms as estimated: admitted, the model being idle
    with pytest.raises(Refused, match='no width can answer'):
        queue.submit('second', slo_s=0.03)  # behind the first, at the speed estimated
    with pytest.raises(Refused):
        queue.submit('impossible', slo_s=0.003)


def test_one_slow_answer_does_not_shut_the_door():
    queue, clock = batcher()
    queue.note_overhead(5.0)  # one outlier: its client, its garbage collection, whatever it was
    for _ in range(8):
        queue.note_overhead(0.001)
    assert queue.reserve_s() == pytest.approx(0.001)
    queue.submit('next', slo_s=0.1)
    for _ in range(10):  # but when most answers take that long, the reserve follows them
        queue.note_overhead(0.08)
    assert queue.reserve_s() == pytest.approx(0.08)
    with pytest.raises(Refused):
        queue.submit('now', slo_s=0.05)


def started(run, policy=None, on_batch=None):
    return Batcher(run, PROFILE, policy or SlackFit(), max_queue=64, on_batch=on_batch).start()


def test_a_policy_that_raises_fails_its_request_and_the_thread_serves_the_next():
    class Flaky(SlackFit):
        calls = 0

        def choose(self, *args, **kwargs):
            self.calls += 1
            if self.calls == 1:
                raise KeyError('a bug in the policy')
            return super().choose(*args, **kwargs)

    queue = started(lambda items, width: items, Flaky())
    with pytest.raises(BatchFailed, match='KeyError'):
        queue.submit('first', slo_s=1.0).result(timeout=5)
    assert queue.submit('second', slo_s=1.0).result(timeout=5).output == 'second'
    assert queue.healthy(stall_s=5)
    queue.stop()


def test_a_callback_or_profile_update_that_raises_leaves_the_answers_and_the_thread():
    def broken_callback(batch, seconds):
        raise RuntimeError('metrics backend down')

    queue = started(lambda items, width: items, on_batch=broken_callback)
    assert [queue.submit(i, slo_s=1.0).result(timeout=5).output for i in range(3)] == [0, 1, 2]
    queue._observe = lambda batch, seconds: 1 / 0  # the profile's update fails after the forward
    assert [queue.submit(i, slo_s=1.0).result(timeout=5).output for i in range(3)] == [0, 1, 2]
    assert queue.healthy(stall_s=5)
    queue.stop()


def test_a_forward_answering_fewer_outputs_than_inputs_fails_its_batch():
    queue = Batcher(lambda items, width: items[:-1], PROFILE, SlackFit(), max_queue=64)
    futures = [queue.submit(i, slo_s=1.0) for i in range(3)]
    queue.start()
    for future in futures:
        with pytest.raises(BatchFailed, match='answered 2 of the batch'):
            future.result(timeout=5)
    queue.stop()


def test_a_cancelled_request_takes_no_place_in_a_batch():
    seen = []
    queue = Batcher(lambda items, width: seen.extend(items) or items, PROFILE, SlackFit(), max_queue=64)
    kept, cancelled = queue.submit('kept', slo_s=1.0), queue.submit('gone', slo_s=1.0)
    assert cancelled.cancel()
    queue.start()
    assert kept.result(timeout=5).output == 'kept'
    queue.stop()
    assert seen == ['kept']


def test_a_stuck_forward_makes_the_thread_unhealthy_and_a_dead_thread_refuses():
    release = threading.Event()
    queue = started(lambda items, width: release.wait(10) and items)
    queue.submit('x', slo_s=1.0)
    time.sleep(0.3)
    assert queue.healthy(stall_s=5) and not queue.healthy(stall_s=0.2)
    release.set()
    assert queue.stop(timeout_s=5)
    assert not queue.healthy(stall_s=5)
    queue.closed = False  # as if it had ended on its own
    with pytest.raises(Refused, match='model thread has stopped'):
        queue.submit('y', slo_s=1.0)


def test_a_batch_takes_at_most_half_of_its_slo_so_that_new_arrivals_keep_the_rest():
    queue, clock = batcher()
    for i in range(8):
        queue.submit(i, slo_s=0.050)
    # width 1.0 answers eight in 30 ms (< 50 ms of slack); within 25 ms the most accurate that does is 0.5
    assert queue.plan(clock.now)[0].width == 0.5


def test_a_tight_slo_may_use_all_its_slack_when_half_of_it_fits_nothing():
    queue, clock = batcher()
    queue.submit('tight', slo_s=0.006)  # half of it (3 ms) fits no width; width 0.25 takes 4.06 ms
    batch, dropped = queue.plan(clock.now)
    assert not dropped and (batch.width, [r.item for r in batch.requests]) == (0.25, ['tight'])


def test_the_batcher_plans_for_the_offered_rate_refusals_included_and_forgets_it():
    class Recording(SlackFit):
        def choose(self, profile, slack, waiting, arrival_rate=0.0, at_ceiling=False):
            self.rate = arrival_rate
            return super().choose(profile, slack, waiting, arrival_rate, at_ceiling)

    policy = Recording()
    queue, clock = batcher(policy, max_queue=100)
    for _ in range(200):  # 400 requests a second over half a second: the last 100 find the queue full
        with contextlib.suppress(Refused):
            queue.submit('x', slo_s=1.0)
        clock.now += 0.0025
    assert len(queue) == 100
    queue.plan(clock.now)
    assert policy.rate == pytest.approx(400, rel=0.02)
    assert queue.plan(clock.now)[0].width == 0.25  # 1.25 x 400/s: only width 0.25 keeps up
    clock.now += 1.0  # quiet since, but the server was saturated: the rate that did it is expected back a while
    queue.plan(clock.now)
    assert 200 < policy.rate < 400
    clock.now += 20.0
    queue.submit('y', slo_s=1.0)
    queue.plan(clock.now)
    assert policy.rate < 3


def test_at_its_ceiling_slackfit_serves_the_cheapest_width_and_the_baselines_keep_theirs():
    choice = SlackFit().choose(PROFILE, 0.1, 50, at_ceiling=True)
    assert (choice.width, choice.batch_size) == (0.25, 8)
    choice = SlackFit().choose(PROFILE, 0.006, 50, at_ceiling=True)  # as many as width 0.25 answers in 6 ms
    assert (choice.width, choice.batch_size) == (0.25, 2)
    assert SlackFit().choose(PROFILE, 0.004, 1, at_ceiling=True) is None
    assert Fixed(1.0).choose(PROFILE, 0.1, 50, at_ceiling=True).width == 1.0
    assert MaxAccuracy().choose(PROFILE, 0.1, 5, at_ceiling=True).width == 1.0


def test_after_turning_a_request_away_for_the_load_the_batcher_serves_the_cheapest_width_for_a_second():
    queue, clock = batcher(max_queue=2)
    queue.submit('a', slo_s=1.0)
    assert queue.plan(clock.now)[0].width == 1.0  # light load: the most accurate width
    for item in 'bcd':  # a few a second, but the queue holds two: 'd' is turned away
        clock.now += 0.1
        with contextlib.suppress(Refused):
            queue.submit(item, slo_s=1.0)
    assert queue.plan(clock.now)[0].width == 0.25
    clock.now += 1.01  # the ceiling's hold is over
    queue.submit('e', slo_s=1.0)
    assert queue.plan(clock.now)[0].width == 1.0


@pytest.mark.parametrize('slo_s, width', [(0.003, None), (0.009, 1.0)])
def test_a_request_refused_for_its_own_impossible_slo_leaves_the_others_at_their_width(slo_s, width):
    queue, clock = batcher()
    with pytest.raises(Refused, match='no width can answer'):
        queue.submit('impatient', slo_s=slo_s, width=width)  # width 0.25 takes 4.06 ms, 1.0 12.5 ms
    assert not queue.at_ceiling()
    queue.submit('patient', slo_s=1.0)
    assert queue.plan(clock.now)[0].width == 1.0


def test_many_threads_submitting_while_the_model_thread_plans_each_get_their_own_answer_once():
    """Real concurrency: 8 threads submit 40 requests each against a running model thread (a 1 ms forward)."""
    def forward(items, width):
        time.sleep(1e-3)
        return [f'{item}@{width}' for item in items]

    queue = Batcher(forward, PROFILE, SlackFit(), max_queue=32)
    queue.start()
    outcomes, lock = {}, threading.Lock()

    def client(name):
        for i in range(40):
            item = f'{name}-{i}'
            try:
                future = queue.submit(item, slo_s=0.2)
            except Refused:
                outcome = 'refused'
            else:
                try:
                    answer = future.result(timeout=10)
                    outcome = answer.output.split('@')[0]  # its own item, whatever the width
                except Missed:
                    outcome = 'missed'
            with lock:
                assert item not in outcomes
                outcomes[item] = outcome

    threads = [threading.Thread(target=client, args=(f'c{n}',)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert queue.healthy(stall_s=10)
    assert queue.stop(timeout_s=10)
    assert len(outcomes) == 8 * 40
    answered = {item for item, outcome in outcomes.items() if outcome not in ('refused', 'missed')}
    assert all(outcomes[item] == item for item in answered) and len(answered) > 0
    assert len(queue) == 0
