"""What the server learns as it serves, under the threads that really share it: the event loop notes answers and
arrivals while the model thread plans with them."""
import math
import sys
import threading
import time

import pytest

from scalavit.serve import Batcher, Profile, SlackFit
from scalavit.serve.estimators import ArrivalRate, Ceiling, RecentPeak, Speed

MS = 1e-3
WIDTHS, BATCHES = (0.25, 0.5, 1.0), (1, 2, 4, 8)
PROFILE = Profile({(w, b): (1 + 9 * w) * (1 + b / 4) * MS for w in WIDTHS for b in BATCHES},
                  {0.25: 70.0, 0.5: 80.0, 1.0: 85.0})


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def hammer(note):
    """Calls ``note`` from another thread until stopped, as the event loop does for every answer."""
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            note()
    thread = threading.Thread(target=loop)
    thread.start()
    return thread, stop


@pytest.fixture
def fast_switching():
    """Threads switch every 10 µs instead of 5 ms, so that a race shows within a second rather than an hour."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(before)


def test_the_reserve_is_read_while_answers_note_theirs(fast_switching):
    peak = RecentPeak(time.monotonic, window_s=60)
    for _ in range(900):
        peak.note(0.001)
    thread, stop = hammer(lambda: peak.note(0.001))
    try:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            assert peak() == pytest.approx(0.001)  # raised 'deque mutated during iteration' before it was guarded
    finally:
        stop.set()
        thread.join()


def test_planning_under_noted_answers_never_fails_or_loses_a_request(fast_switching, caplog):
    batcher = Batcher(lambda items, width: items, PROFILE, SlackFit(), max_queue=10_000)
    for _ in range(900):
        batcher.note_overhead(1e-4)
    futures = [batcher.submit(i, slo_s=30.0) for i in range(3000)]
    thread, stop = hammer(lambda: batcher.note_overhead(1e-4))
    try:
        while len(batcher):
            batch, dropped = batcher.take(time.monotonic())
            batcher._answer(batch, dropped)
    finally:
        stop.set()
        thread.join()
    assert 'planning failed' not in caplog.text
    assert [f.result(timeout=0) for f in futures] and all(f.done() and not f.exception() for f in futures)
    assert sorted(f.result().output for f in futures) == list(range(3000))


def test_a_planning_fault_answers_what_it_dropped_and_fails_only_the_earliest():
    clock = FakeClock()
    batcher = Batcher(lambda items, width: items, PROFILE, SlackFit(), max_queue=64, clock=clock)
    hopeless, unlucky, kept = (batcher.submit(item, slo_s=slo) for item, slo in (
        ('hopeless', 0.005), ('unlucky', 0.006), ('kept', 1.0)))
    answers = iter([None, None])  # no width for the first (half its SLO, then all of it); then a bug

    def broken(*args, **kwargs):
        return next(answers)
    batcher.policy.choose = broken
    batch, dropped = batcher.take(clock.now)
    batcher._answer(batch, dropped)
    assert [r.item for r in dropped] == ['hopeless'] and hopeless.done()  # dropped on the way: answered, not lost
    with pytest.raises(Exception, match='StopIteration'):
        unlucky.result(timeout=0)
    assert len(batcher) == 1 and not kept.done()


def test_the_machines_speed_is_followed_within_a_fraction_of_a_second_both_ways():
    clock = FakeClock()
    speed = Speed(PROFILE, clock)

    def run_for(seconds, factor):
        end = clock.now + seconds
        while clock.now < end:
            took = factor * PROFILE.p95(0.25, 8)
            clock.now += took
            speed.observe(0.25, 8, took)
    run_for(1.0, 1.0)
    assert speed.factor() == pytest.approx(1.0)
    run_for(1.0, 2.5)  # a co-located job: every forward 2.5 times slower
    assert speed.factor() * speed.profile().p95(0.25, 8) / PROFILE.p95(0.25, 8) == pytest.approx(2.5, rel=0.1)
    run_for(1.0, 0.6)  # then faster than profiled: learned as fast as the slowdown was
    assert speed.factor() * speed.profile().p95(0.25, 8) / PROFILE.p95(0.25, 8) == pytest.approx(0.6, rel=0.1)


def test_one_stalled_forward_moves_the_speed_a_little():
    clock = FakeClock()
    speed = Speed(PROFILE, clock)
    for _ in range(50):
        clock.now += PROFILE.p95(1.0, 1)
        speed.observe(1.0, 1, PROFILE.p95(1.0, 1))
    clock.now += 0.3
    speed.observe(1.0, 1, 0.3)  # a garbage collection: 24 times the profile
    assert 1.0 < speed.factor() < 1.4


def test_a_cell_the_profile_got_wrong_learns_its_own_correction_and_the_others_keep_theirs():
    clock = FakeClock()
    speed = Speed(PROFILE, clock)
    for i in range(3000):  # width 1.0 at batch 8 runs 1.5 times its profile; the rest as profiled
        width, batch = (1.0, 8) if i % 2 else (0.25, 1)
        took = PROFILE.p95(width, batch) * (1.5 if (width, batch) == (1.0, 8) else 1.0)
        clock.now += took
        speed.observe(width, batch, took)
    factor, profile = speed.factor(), speed.profile()
    assert factor * profile.p95(1.0, 8) / PROFILE.p95(1.0, 8) == pytest.approx(1.5, rel=0.05)
    assert factor * profile.p95(0.25, 1) / PROFILE.p95(0.25, 1) == pytest.approx(1.0, rel=0.05)
    assert profile.p95(0.5, 4) == PROFILE.p95(0.5, 4)  # never ran: as profiled, times the machine's factor


def test_the_speed_fades_back_to_the_profile_once_nothing_renews_it():
    clock = FakeClock()
    speed = Speed(PROFILE, clock)
    for _ in range(100):
        clock.now += 0.01
        speed.observe(0.25, 1, 4 * PROFILE.p95(0.25, 1))
    assert speed.factor() > 3
    clock.now += 20
    assert speed.factor() == pytest.approx(1.0, abs=0.01)


def test_a_surge_is_seen_within_a_tenth_of_a_second_but_poisson_noise_is_not():
    rate = ArrivalRate(window_s=0.5, surge_window_s=0.1)
    for i in range(25):  # 50 a second for half a second
        rate.note(i * 0.02)
    assert rate(0.49) == pytest.approx(50)
    for i in range(4):  # four within 10 ms: what 50/s gives now and then
        rate.note(0.5 + i * 0.003)
    assert rate(0.51) == pytest.approx(len(rate._arrivals) / 0.5)
    for i in range(30):  # 30 more within the next 30 ms: 1000 a second
        rate.note(0.52 + i * 0.001)
    assert rate(0.55) > 300
    assert math.isclose(ArrivalRate()(1.0), 0.0)


def test_the_ceiling_holds_a_second_then_while_the_load_that_overran_the_server_stays_up_to_ten_seconds():
    ceiling = Ceiling()
    assert not ceiling(0.0, 500.0)  # never overran
    ceiling.note(100.0, 200.0)  # turned a request away at 200 requests a second
    assert ceiling(100.5, 0.0)  # the first second, whatever the load
    assert ceiling(105.0, 170.0)  # the same load, within its noise, is still offered
    assert not ceiling(105.0, 150.0)  # it fell
    assert not ceiling(110.5, 200.0)  # ten seconds on, the server tries a wider width again
    ceiling.note(200.0, 0.0)  # no rate seen: nothing to call the same load
    assert ceiling(200.5, 0.0) and not ceiling(201.5, 0.0)
