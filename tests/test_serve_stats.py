"""/stats: the last seconds of the server, second by second, from a fake clock (no torch, no HTTP)."""
from scalavit.serve.stats import LiveStats


class Clock:
    def __init__(self):
        self.now = 1000.2

    def __call__(self):
        return self.now


def test_each_second_counts_its_own_events_and_quiet_seconds_are_listed_empty():
    clock = Clock()
    stats = LiveStats(window_s=10, clock=clock)
    for latency_ms, width in ((10, 1.0), (20, 1.0), (30, 0.25), (40, 0.25)):
        stats.responded(200)
        stats.answered(latency_ms / 1e3, width, missed=latency_ms > 35)
    stats.batch(4, speed=2.0)
    stats.batch(4, speed=0.5)
    stats.responded(503)
    stats.refused()
    clock.now += 2  # one quiet second, then one request
    stats.responded(400)
    seconds = stats.snapshot(3)
    assert [s['ago_s'] for s in seconds] == [2, 1, 0]
    busy, quiet, last = seconds
    assert (busy['offered'], busy['answered'], busy['refused'], busy['missed']) == (5, 4, 1, 1)
    assert busy['p50_ms'] == 25.0 and busy['p99_ms'] == 39.7 and busy['mean_width'] == 0.625
    assert busy['widths'] == {'0.25': 2, '1': 2} and busy['batch_sizes'] == {'4': 2}
    assert busy['speed'] == 1.0  # the geometric mean: twice as slow, then twice as fast
    assert quiet == dict(ago_s=1, offered=0, answered=0, refused=0, missed=0, p50_ms=None, p95_ms=None, p99_ms=None,
                         mean_width=None, speed=None, widths={}, batch_sizes={})
    assert last['offered'] == 1 and last['answered'] == 0


def test_only_the_window_is_kept():
    clock = Clock()
    stats = LiveStats(window_s=5, clock=clock)
    for _ in range(100):
        stats.responded(200)
        clock.now += 1
    assert len(stats.seconds) <= 5
    assert [s['offered'] for s in stats.snapshot(5)] == [1, 1, 1, 1, 0]
