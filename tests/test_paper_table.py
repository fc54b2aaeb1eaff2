import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[1] / 'benchmarks' / 'paper_table.py'


def run_study(output: Path) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, str(SCRIPT), '--quick', '--output', str(output)],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_quick_study_trains_evaluates_writes_the_tables_and_continues_without_redoing(tmp_path):
    run_study(tmp_path / 'study')
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
    assert str(out / 'ST_10' / 'last.pt') in (out / 'Scala' / 'config.json').read_text()

    # The comparison with the paper: its mean ablation drops over the 7 widths, worked out by hand from SPEC
    # section 6 (w/o PKT: (485.5 - 469.1) / 7 = 2.34), and its Scala minus Separate Training at r=0.25.
    assert "## Against the paper's claims" in doc
    paper_drop_and_rank = {'w/o IA': ('+1.33', '3'), 'w/o PKT': ('+2.34', '1'), 'w/o SS': ('+0.21', '4'),
                           'w/o NC': ('+1.70', '2')}
    for variant, expected in paper_drop_and_rank.items():
        drops_row = [line for line in doc.splitlines() if line.startswith(f'| {variant} |')][-1].split(' | ')
        assert (drops_row[2], drops_row[4]) == expected
    assert '+12.9 in the paper' in doc

    timings = json.loads((out / 'timings.json').read_text())
    assert set(timings) >= {'train ST 1.0', 'train Scala', 'eval Separate Training', 'eval w/o NC'}

    # Run again: every training and evaluation is reused, the recorded times are kept, the tables are the same.
    again = run_study(tmp_path / 'study')
    assert again.stdout.count('already trained') == 10 and again.stdout.count('already evaluated') == 7
    assert json.loads((out / 'timings.json').read_text()) == timings
    assert (out / 'RESULTS.md').read_text() == doc
