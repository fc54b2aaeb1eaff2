import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # runs the load benchmark: scripts/test.sh --fast skips it

BENCHMARK = Path(__file__).parents[1] / 'benchmarks' / 'serve_load.py'


def load_benchmark():
    spec = importlib.util.spec_from_file_location('serve_load', BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_policy_runs_on_every_backend_named_by_the_policy_alone_when_there_is_one_backend():
    contenders = load_benchmark().contenders
    assert contenders(['slackfit', 'fixed:1'], ['eager']) == {'slackfit': ('slackfit', 'eager', 'plain'),
                                                              'fixed:1': ('fixed:1', 'eager', 'plain')}
    assert contenders(['slackfit', 'fixed:1'], ['eager', 'onnxruntime']) == {
        'slackfit on eager': ('slackfit', 'eager', 'plain'), 'fixed:1 on eager': ('fixed:1', 'eager', 'plain'),
        'slackfit on onnxruntime': ('slackfit', 'onnxruntime', 'plain'),
        'fixed:1 on onnxruntime': ('fixed:1', 'onnxruntime', 'plain')}
    assert contenders(['slackfit'], ['eager'], ['plain', 'ray:2']) == {
        'slackfit on plain': ('slackfit', 'eager', 'plain'), 'slackfit on ray:2': ('slackfit', 'eager', 'ray:2')}


def test_ray_runs_are_compared_with_the_plain_server_repeat_by_repeat():
    benchmark = load_benchmark()
    assert benchmark.deployment_options('ray:2') == ['--replicas', '2'] and benchmark.deployment_options('plain') == []
    run = lambda attainment, p99: dict(attainment=attainment, p99_ms=p99)  # noqa: E731
    raw = dict(deployments=['plain', 'ray:1'], backends=['eager'], policies=['slackfit on plain', 'slackfit on ray:1'],
               results={'slackfit on plain': [run(1.0, 50), run(0.5, 100)],
                        'slackfit on ray:1': [run(0.9, 100), run(0.5, 100)]})
    assert benchmark.deployment_ratios(raw)[-1] == '| slackfit on ray:1 | 0.95 (0.9-1) | 1.5 (1-2) |'


def test_a_cascade_run_is_slackfit_with_its_cascade_and_is_compared_with_slackfit_alone_repeat_by_repeat():
    benchmark = load_benchmark()
    assert benchmark.policy_options('slackfit+cascade:0.625,1') == ['--policy', 'slackfit', '--cascade', '0.625,1']
    assert benchmark.policy_options('fixed:1') == ['--policy', 'fixed:1']

    def run(accuracy, attainment, cascaded=None, escalated=None):
        phase = dict(accuracy=accuracy, attainment=attainment, cascaded=cascaded, escalated=escalated)
        return dict(phase, phases={name: phase for name in phases})
    phases = ['low', 'high', 'low again', 'bursty']
    cascade = 'slackfit+cascade:0.625,1'
    raw = dict(policies=['slackfit', cascade], phases=phases,
               results={'slackfit': [run(60.0, 0.99, 0, 0), run(61.0, 1.0, 0, 0)],
                        cascade: [run(62.5, 0.995, 0.5, 0.1), run(61.5, 0.99, 0.3, 0.2)]})
    lines = benchmark.cascade_differences(raw)
    assert lines[-2].startswith(f'| {cascade} | accuracy | 1.5 (0.5-2.5) | 1.5 (0.5-2.5) (0.4 (0.3-0.5), 0.15 (0.1-0.2))')
    assert lines[-1].startswith('| | attainment | -0.0025 (-0.01-0.005) |')
    assert benchmark.cascade_differences(dict(policies=['slackfit', 'fixed:1'], results={})) == []


def test_the_load_benchmark_runs_a_policy_on_two_backends_against_one_schedule_and_writes_its_page(trained, tmp_path):
    output = tmp_path / 'backends.md'
    result = subprocess.run([sys.executable, str(BENCHMARK), '--quick', '--checkpoint', str(trained / 'scala'),
                             '--policies', 'slackfit', '--backends', 'eager', 'onnxruntime', '--output', str(output)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    page = output.read_text()
    assert '--quick' in page and 'backend(s) eager, onnxruntime' in page
    raw = json.loads((output.parent / 'data' / f'{output.stem}.json').read_text())
    assert raw['backends'] == ['eager', 'onnxruntime']
    runs = ['slackfit on eager', 'slackfit on onnxruntime']  # one policy keeps the suite short: two servers, not four
    assert raw['policies'] == runs
    for name in runs:
        assert f'| {name} |' in page
        run = raw['results'][name][0]
        assert run['offered'] == raw['results'][runs[0]][0]['offered'] > 0  # the same schedule for every run
        assert run['answered'] > 0 and run['answered'] + run['refused'] + run['errors'] == run['offered']
        assert run['attainment'] * run['offered'] <= run['answered'] + 0.5  # within the SLO means answered
        phases = run['phases'].values()  # the whole run's attainment is its phases', weighted by what each offered
        within = sum(p['attainment'] * p['offered'] for p in phases)
        assert within / run['offered'] == pytest.approx(run['attainment'], abs=1e-3)
    for figure in ('backends_timeline.png', 'backends_attainment_accuracy.png'):  # named after the page: another
        assert (tmp_path / figure).stat().st_size > 0 and f'({figure})' in page  # page's figures stay its own


def test_a_flash_crowd_with_a_co_located_job_runs_against_the_server_and_the_simulator(trained, tmp_path):
    output = tmp_path / 'flash.md'
    result = subprocess.run([sys.executable, str(BENCHMARK), '--quick', '--checkpoint', str(trained / 'scala'),
                             '--trace', 'flash', '--interference', 'flash', '--policies', 'slackfit',
                             '--output', str(output)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    raw = json.loads((output.parent / 'data' / f'{output.stem}.json').read_text())
    assert raw['phases'] == ['quiet', 'flash', 'after'] and raw['interference'] == 'flash'
    real, simulated = raw['results']['slackfit'][0], raw['simulated']['results']['slackfit']
    assert real['offered'] == simulated['overall']['offered'] > 0  # the same schedule, served and simulated
    assert set(real['phases']) == set(simulated['phases']) == {'quiet', 'flash', 'after'}
    page = output.read_text()
    assert 'co-located job' in page and 'The same trace on the simulator' in page and '| slackfit |' in page
    bad = subprocess.run([sys.executable, str(BENCHMARK), '--quick', '--checkpoint', str(trained / 'scala'),
                          '--trace', 'flash', '--interference', 'high', '--output', str(tmp_path / 'x.md')],
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode != 0 and "--interference 'high': not a phase" in bad.stderr
