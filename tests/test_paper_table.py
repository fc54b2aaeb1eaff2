"""studies/paper_table.py --quick: the paper's comparison as the paper ran it, on a few steps a run."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # trains the paper table's runs: scripts/test.sh --fast skips it

SCRIPT = Path(__file__).parents[1] / 'studies' / 'paper_table.py'


def run_study(output: Path) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, str(SCRIPT), '--quick', '--output', str(output)],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def table_row(doc: str, first_cell: str) -> list[str]:
    return [line for line in doc.splitlines() if line.startswith(f'| {first_cell} |')][-1].split(' | ')


def test_quick_study_trains_evaluates_writes_the_tables_and_continues_without_redoing(tmp_path):
    run_study(tmp_path / 'study')
    out = tmp_path / 'study_quick'
    doc = (out / 'RESULTS.md').read_text()
    for name in ('| US-Net |', '| Separate Training |', '| ST+KD |', '| Scala |', '| w/o IA |', '| w/o PKT |',
                 '| w/o SS |', '| w/o NC |'):
        assert name in doc
    assert (out / 'results_accuracy_vs_macs.png').read_bytes()[:4] == b'\x89PNG'
    # The separate family is evaluated as one set of four widths; every Scala run at all 13.
    assert (out / 'ST_family_5ep_s0' / 'results.csv').read_text().count('\n') == 1 + 4
    assert (out / 'Scala_5ep_s0_t15' / 'results.csv').read_text().count('\n') == 1 + 13
    # Scala and ST+KD are taught by the separate full-width model trained three times as long.
    teacher = str(out / 'teacher_15ep' / 'last.pt')
    assert json.loads((out / 'teacher_15ep' / 'config.json').read_text())['epochs'] == 15
    for run in ('Scala_5ep_s0_t15', 'STplusKD_025_5ep_s0_t15', 'Scala_wo_IA_5ep_s0_t15'):
        assert json.loads((out / run / 'config.json').read_text())['teacher'] == teacher, run
    # two seeds of ST, US-Net and Scala; Scala records its gradients for grad_interference.py
    assert json.loads((out / 'Scala_5ep_s1_t15' / 'config.json').read_text())['seed'] == 1
    assert (out / 'Scala_5ep_s0_t15' / 'grad_stats.jsonl').is_file()

    # Each seed is in the page, and the means are theirs.
    main_row = [line.split(' | ') for line in doc.splitlines() if line.startswith('| Scala |') and ' ±' in line][0]
    seed_rows = [line.split(' | ') for line in doc.splitlines() if line.startswith(('| Scala | 0 |', '| Scala | 1 |'))]
    assert main_row[2] == '2' and len(seed_rows) == 2
    assert abs(float(main_row[3].split(' ±')[0]) - (float(seed_rows[0][2]) + float(seed_rows[1][2])) / 2) < 0.006

    # The comparison with the paper: its mean ablation drops over the 7 widths, worked out by hand from SPEC
    # section 6 (w/o PKT: (485.5 - 469.1) / 7 = 2.34), and its Scala minus Separate Training at r=0.25.
    assert "## Against the paper's claims" in doc
    paper_drop_and_rank = {'w/o IA': ('+1.33', '3'), 'w/o PKT': ('+2.34', '1'), 'w/o SS': ('+0.21', '4'),
                           'w/o NC': ('+1.70', '2')}
    for variant, expected in paper_drop_and_rank.items():
        drops_row = table_row(doc, variant)
        assert (drops_row[2], drops_row[4]) == expected
    paper_row = [line for line in doc.splitlines() if line.startswith('| Scala minus Separate Training | paper |')]
    assert paper_row[0].split(' | ')[2] == '+12.9'
    assert 'Scala above Separate Training: r=0.25: ' in doc

    timings = json.loads((out / 'timings.json').read_text())
    assert set(timings) >= {'train teacher 15ep', 'train ST 1.0 5ep s1', 'train Scala 5ep s0 t15',
                            'eval ST family 5ep s0', 'eval Scala w/o NC 5ep s0'}

    # Run again: every training and evaluation is reused, the recorded times are kept, the tables are the same.
    again = run_study(tmp_path / 'study')
    assert '] trained in' not in again.stdout and again.stdout.count('already evaluated') == 11
    assert json.loads((out / 'timings.json').read_text()) == timings
    assert (out / 'RESULTS.md').read_text() == doc
