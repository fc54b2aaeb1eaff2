import importlib.util
import json
import subprocess
import sys
from pathlib import Path

BENCHMARK = Path(__file__).parents[1] / 'benchmarks' / 'serve_load.py'


def load_benchmark():
    spec = importlib.util.spec_from_file_location('serve_load', BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_policy_runs_on_every_backend_named_by_the_policy_alone_when_there_is_one_backend():
    contenders = load_benchmark().contenders
    assert contenders(['slackfit', 'fixed:1'], ['eager']) == {'slackfit': ('slackfit', 'eager'),
                                                              'fixed:1': ('fixed:1', 'eager')}
    assert contenders(['slackfit', 'fixed:1'], ['eager', 'onnxruntime']) == {
        'slackfit on eager': ('slackfit', 'eager'), 'fixed:1 on eager': ('fixed:1', 'eager'),
        'slackfit on onnxruntime': ('slackfit', 'onnxruntime'), 'fixed:1 on onnxruntime': ('fixed:1', 'onnxruntime')}


def test_the_load_benchmark_runs_a_policy_on_two_backends_against_one_schedule_and_writes_its_page(trained, tmp_path):
    output = tmp_path / 'backends.md'
    result = subprocess.run([sys.executable, str(BENCHMARK), '--quick', '--checkpoint', str(trained / 'scala'),
                             '--policies', 'slackfit', '--backends', 'eager', 'onnxruntime', '--output', str(output)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    page = output.read_text()
    assert '--quick' in page and 'backend(s) eager, onnxruntime' in page
    raw = json.loads(output.with_suffix('.json').read_text())
    assert raw['backends'] == ['eager', 'onnxruntime']
    runs = ['slackfit on eager', 'slackfit on onnxruntime']  # one policy keeps the suite short: two servers, not four
    assert raw['policies'] == runs
    for name in runs:
        assert f'| {name} |' in page
        run = raw['results'][name][0]
        assert run['offered'] == raw['results'][runs[0]][0]['offered'] > 0  # the same schedule for every run
        assert run['answered'] > 0 and run['answered'] + run['refused'] + run['errors'] == run['offered']
        assert 0 <= run['attainment'] <= 1
    for figure in ('backends_timeline.png', 'backends_attainment_accuracy.png'):  # named after the page: another
        assert (tmp_path / figure).stat().st_size > 0 and f'({figure})' in page  # page's figures stay its own
