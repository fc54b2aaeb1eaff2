import json
import subprocess
import sys
from pathlib import Path

BENCHMARK = Path(__file__).parents[1] / 'benchmarks' / 'serve_load.py'


def test_the_load_benchmark_runs_end_to_end_and_writes_its_page(trained, tmp_path):
    output = tmp_path / 'serving.md'
    result = subprocess.run([sys.executable, str(BENCHMARK), '--quick', '--checkpoint', str(trained / 'scala'),
                             '--output', str(output)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    page = output.read_text()
    assert '| slackfit |' in page and '| fixed:0.25 |' in page and '--quick' in page
    raw = json.loads(output.with_suffix('.json').read_text())
    for policy in ('slackfit', 'fixed:0.25'):
        run = raw['results'][policy][0]
        assert run['offered'] > 0 and run['answered'] + run['refused'] + run['errors'] == run['offered']
        assert 0 <= run['attainment'] <= 1
    assert (tmp_path / 'serving_timeline.png').stat().st_size > 0
