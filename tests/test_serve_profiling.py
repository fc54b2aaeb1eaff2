"""The profile a server plans with: measured once per machine, weights, backend and threads, cached, and checked at
every start against the machine as it is then."""
import json
import os

import pytest

import serving
from serving import Server
from scalavit.serve.profiling import ProfileCache, identity
from scalavit.serve.runner import Runner
from scalavit.serve.service import Service, Settings

LATENCY = {(0.25, 1): 0.004, (0.25, 2): 0.005, (1.0, 1): 0.012, (1.0, 2): 0.015}
MEDIAN = {cell: seconds * 0.9 for cell, seconds in LATENCY.items()}
KEY = dict(version=1, device='cpu', weights='abc', backend='eager', threads=1, batch_sizes=[1, 2])


def test_a_saved_profile_reads_back_as_it_was_measured(tmp_path):
    cache = ProfileCache(tmp_path / 'profiles')
    assert cache.load(KEY) is None
    cache.save(KEY, LATENCY, MEDIAN, {0.25: 1000, 1.0: 9000})
    loaded = cache.load(KEY)
    assert (loaded['latency'], loaded['median'], loaded['macs']) == (LATENCY, MEDIAN, {0.25: 1000, 1.0: 9000})
    assert cache.load(dict(KEY, threads=2)) is None  # another machine's, or the same with other threads


def test_an_unreadable_or_foreign_cache_file_is_measured_anew_never_an_error(tmp_path, caplog):
    cache = ProfileCache(tmp_path)
    cache.path(KEY).write_text('{"identity": ')
    assert cache.load(KEY) is None and 'unreadable' in caplog.text
    cache.path(KEY).write_text(json.dumps(dict(identity=dict(KEY, weights='other'))))
    assert cache.load(KEY) is None
    blocked = tmp_path / 'file'
    blocked.write_text('not a folder')
    ProfileCache(blocked / 'profiles').save(KEY, LATENCY, MEDIAN, {})  # cannot write: warns, serves on
    assert 'could not cache the profile' in caplog.text


@pytest.fixture(scope='module')
def runner(trained):
    return Runner(str(trained / 'scala'))


def test_a_stale_cached_profile_is_checked_and_the_server_plans_with_the_machine_as_it_is(runner, tmp_path):
    settings = Settings(profile_repeats=2, max_batch_size=2, profile_cache=str(tmp_path))
    first = Service(runner, settings, runner.accuracies(None))
    first.prepare()
    assert first.error is None
    first.close()
    key = identity(runner, settings.batch_sizes)
    assert ProfileCache(tmp_path).load(key)['latency'] == first.profile.latency
    # as if profiled on a machine six times faster than this one is now
    cache = ProfileCache(tmp_path)
    saved = cache.load(key)
    cache.save(key, {c: s / 6 for c, s in saved['latency'].items()}, {c: s / 6 for c, s in saved['median'].items()},
               saved['macs'])
    again = Service(runner, settings, runner.accuracies(None))
    again.prepare()
    assert again.error is None and again.profile.latency == {c: s / 6 for c, s in saved['latency'].items()}
    # the check forwards found it several times slower (by how much depends on what else shares the machine, as in
    # the suite, while the first profile and the check forwards ran)
    assert again.batcher.slowdown() > 2
    widths = again.widths_json()
    row = widths['profile'][0]
    assert widths['speed'] == pytest.approx(again.batcher.slowdown(), rel=0.05)
    assert row['planned_ms']['1'] > row['p95_ms']['1']  # planned with what the machine takes now
    again.close()


def test_a_restart_reuses_the_cached_profile(trained, tmp_path):
    labelled_png = serving.labelled_png(trained)
    options = ('--profile-cache', str(tmp_path), '--threads', '1')
    first = Server(trained / 'scala', *options)
    try:
        assert first.post(labelled_png[0]).status_code == 200
    finally:
        first.stop()
    assert 'profiled (3 calls each)' in ''.join(first.output)
    assert len(os.listdir(tmp_path)) == 1
    second = Server(trained / 'scala', *options)
    try:
        body = second.post(labelled_png[0]).json()
        assert body['top5'][0]['label'] == labelled_png[1]
    finally:
        second.stop()
    log = ''.join(second.output)
    assert 'from the cache' in log and str(tmp_path) in log, log
    # another thread count is another machine for the profile: measured, and cached beside the first
    third = Server(trained / 'scala', '--profile-cache', str(tmp_path), '--threads', '2')
    third.stop()
    assert 'profiled (3 calls each)' in ''.join(third.output) and len(os.listdir(tmp_path)) == 2
