import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[1] / 'benchmarks' / 'paper_table.py'


def test_quick_study_trains_evaluates_and_writes_the_tables(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), '--quick', '--output', str(tmp_path / 'study')],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / 'study_quick'
    doc = (out / 'RESULTS.md').read_text()
    for name in ('| US-Net |', '| Separate Training |', '| Scala |', '| w/o IA |', '| w/o PKT |', '| w/o SS |',
                 '| w/o NC |'):
        assert name in doc
    assert (out / 'results_accuracy_vs_macs.png').read_bytes()[:4] == b'\x89PNG'
    # The separate family is evaluated as one set of four widths; every Scala run at all 13.
    assert (out / 'ST_family' / 'results.csv').read_text().count('\n') == 1 + 4
    assert (out / 'Scala' / 'results.csv').read_text().count('\n') == 1 + 13
    # Scala was taught by the separate full-width model.
    assert '"teacher":' in (out / 'Scala' / 'config.json').read_text()
    assert str(out / 'ST_10' / 'last.pt') in (out / 'Scala' / 'config.json').read_text()
