"""The studies of studies/ (--quick): each trains its runs on a few steps, shares them with the others, and
writes its page."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # trains the studies' runs: scripts/test.sh --fast skips it

STUDIES = Path(__file__).parents[1] / 'studies'




def study(name: str, output: Path, *args: str) -> tuple[str, str]:
    result = subprocess.run([sys.executable, str(STUDIES / f'{name}.py'), '--quick', '--output', str(output), *args],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    page = output.with_name(output.name + '_quick') / f'{name}.md'
    return result.stdout, page.read_text()


def config(output: Path, run: str) -> dict:
    return json.loads((output.with_name(output.name + '_quick') / run / 'config.json').read_text())


def cells(page: str, first: str) -> list[str]:
    return next(line for line in page.splitlines() if line.startswith(f'| {first} |')).split(' | ')


def check_constant_activation_trains_each_variant_without_the_smallest_at_every_step(output):
    _, page = study('constant_activation', output)
    assert config(output, 'Scala_wo_CA_5ep_s0_t15')['always_smallest'] is False
    assert config(output, 'Scala_wo_IA_wo_CA_5ep_s0_t15')['isolated_activation'] is False
    assert config(output, 'US-Net_wo_CA_5ep_s0')['method'] == 'usnet'
    for run in ('Scala', 'Scala w/o CA', 'Scala w/o IA', 'Scala w/o IA w/o CA', 'US-Net', 'US-Net w/o CA'):
        assert len(cells(page, run)) == 1 + 13 + 2  # every width, the mean, the minutes
    assert '| US-Net → US-Net w/o CA |' in page


def check_granularity_trains_four_grids_and_gives_each_its_expected_epochs(output):
    stdout, page = study('granularity', output)
    assert '[Scala 5ep s0 t15] already trained' in stdout  # shared with the study before
    assert config(output, 'Scala_grid_1-32_5ep_s0_t15')['granularity'] == 1 / 32
    assert [cells(page, g)[1:3] for g in ('1/4', '1/8', '1/16', '1/32')] == [
        ['4', '5.00'], ['7', '2.00'], ['13', '0.91'], ['25', '0.43']]


def check_slicing_bound_trains_each_smallest_width(output):
    _, page = study('slicing_bound', output)
    assert config(output, 'Scala_smallest_0125_5ep_s0_t15')['smallest'] == 0.125
    assert cells(page, '0.125')[1] == '15' and cells(page, '0.5')[1] == '9'
    # columns 0.125 to 1 by 1/16: the 0.5 run leaves the six below 0.5 blank and has a top-1 at every other one
    row = cells(page, '0.5')
    assert row[2:8] == [''] * 6 and all(float(cell) >= 0 for cell in row[8:17])


def check_grad_interference_reads_the_gradients_the_scala_runs_recorded(output):
    stdout, page = study('grad_interference', output)
    assert '] trained in' not in stdout  # both runs were trained by the studies before
    for pair in ('full and upper', 'full and smallest', 'lower and smallest'):
        assert f'| {pair} |' in page
    assert '| block0 |' in page and '| head |' in page
    root = output.with_name(output.name + '_quick')
    assert (root / 'grad_interference_cosine.png').read_bytes()[:4] == b'\x89PNG'


def check_regime_trains_each_budget_with_a_teacher_three_times_as_long_and_is_reused(output):
    _, page = study('regime', output, '--budgets', '5', '10')
    assert config(output, 'Scala_10ep_s0_t30')['teacher'].endswith('teacher_30ep/last.pt')
    assert config(output, 'STplusKD_025_10ep_s0_t30')['epochs'] == 10
    # each row: epochs, teacher, ST / ST+KD / Scala at 0.25 then at 1, Scala - ST at both, minutes
    for first in ('5', '10', 'deeper (depth 8)'):
        row = cells(page, first)
        st_small, scala_small, st_full, scala_full = (float(row[i]) for i in (2, 4, 5, 7))
        assert abs(float(row[8]) - (scala_small - st_small)) < 0.011
        assert abs(float(row[9]) - (scala_full - st_full)) < 0.011
    # the capacity axis: the same runs of the model twice as deep, taught by its own deep teacher
    assert config(output, 'deep_Scala_5ep_s0_t15')['model'] == 'scala_vit_mini_deep_distilled_patch7_28'
    assert config(output, 'deep_Scala_5ep_s0_t15')['teacher'].endswith('deep_teacher_15ep/last.pt')
    again, _ = study('regime', output, '--budgets', '5', '10')
    assert '] trained in' not in again


def check_a_new_machine_reuses_the_kept_record_and_trains_again_only_a_teacher_whose_student_is_missing(output):
    root = output.with_name(output.name + '_quick')
    kept = root / 'data' / 'study_runs'
    assert json.loads((kept / 'Scala_10ep_s0_t30' / 'config.json').read_text())['epochs'] == 10
    _, page = study('regime', output, '--budgets', '5', '10')
    # a new machine: no runs, only the record that git holds (and the quick data, at the same path)
    old = root.rename(root.with_name('old_machine'))
    try:
        shutil.copytree(old / 'data', root / 'data')  # the quick data, and in it the record
        shutil.rmtree(kept / 'Scala_10ep_s0_t30')
        stdout, again = study('regime', output, '--budgets', '5', '10')
        assert '[ST 0.25 5ep s0] already trained' in stdout and 'its record: no weights here' in stdout
        trained = sorted(line for line in stdout.splitlines() if '] trained in' in line)
        assert [line.split(']')[0] for line in trained] == ['[Scala 10ep s0 t30', '[teacher 30ep']
        assert cells(again, '5') == cells(page, '5')  # the 5-epoch row comes from the record alone
        assert (kept / 'Scala_10ep_s0_t30' / 'log.jsonl').is_file()  # the run trained here is kept again
    finally:
        shutil.rmtree(root)
        old.rename(root)


def check_the_record_of_finished_runs_lists_each_with_its_accuracy(output):
    root = output.with_name(output.name + '_quick')
    result = subprocess.run([sys.executable, str(STUDIES / 'study.py'), '--output', str(root), '--doc',
                             str(root / 'study_runs.md')], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    record = (root / 'study_runs.md').read_text()
    scala = cells(record, 'Scala_5ep_s0_t15')
    assert scala[1:5] == ['scala', '5', '0', 'teacher_15ep'] and scala[-1].startswith('0.25: ')
    assert 'always_smallest=False' in cells(record, 'Scala_wo_CA_5ep_s0_t15')[5]
    # a run gone from the runs folder and from the record keeps its row; the others are listed from their runs again
    for folder in (root, root / 'data' / 'study_runs'):
        shutil.rmtree(folder / 'US-Net_wo_CA_5ep_s0')
    again = subprocess.run(result.args, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    rewritten = (root / 'study_runs.md').read_text()
    assert cells(rewritten, 'US-Net_wo_CA_5ep_s0') == cells(record, 'US-Net_wo_CA_5ep_s0')
    assert cells(rewritten, 'Scala_5ep_s0_t15') == scala
    assert rewritten.count('| US-Net_wo_CA_5ep_s0 |') == 1
    # a run trained again with another result (here: its row as an earlier machine had it) keeps the earlier row
    page = root / 'study_runs.md'
    page.write_text(page.read_text().replace('| Scala_5ep_s0_t15 | scala |', '| Scala_5ep_s0_t15 | usnet |'))
    third = subprocess.run(result.args, capture_output=True, text=True, timeout=300)
    assert third.returncode == 0, third.stderr[-2000:]
    rewritten = page.read_text()
    assert cells(rewritten, 'Scala_5ep_s0_t15') == scala
    assert cells(rewritten, 'Scala_5ep_s0_t15 (earlier)')[1] == 'usnet'


def check_a_run_known_only_by_its_row_of_the_runs_page_is_taken_from_there_and_not_trained_again(output):
    root = output.with_name(output.name + '_quick')
    listed = cells((root / 'study_runs.md').read_text(), 'ST_025_5ep_s0')  # the page the test before wrote
    for folder in (root, root / 'data' / 'study_runs'):  # trained on a machine whose runs and record are gone
        shutil.rmtree(folder / 'ST_025_5ep_s0')
        shutil.rmtree(folder / 'Scala_5ep_s0_t15')
    # that machine's teacher, since trained again here: a student known by its row is shown with its own teacher
    runs_page = root / 'study_runs.md'
    teacher_row = next(line for line in runs_page.read_text().splitlines() if line.startswith('| teacher_15ep |'))
    earlier_teacher = teacher_row.replace('| teacher_15ep |', '| teacher_15ep (earlier) |').rsplit('1: ', 1)[0]
    runs_page.write_text(runs_page.read_text() + earlier_teacher + '1: 12.34 |\n')
    stdout, page = study('regime', output, '--budgets', '5', '10', '--max-teacher-epochs', '15', '--kd-budgets', '5')
    assert '[ST 0.25 5ep s0] trained on an earlier machine' in stdout and not (root / 'ST_025_5ep_s0').exists()
    assert cells(page, '5')[2] == listed[-1].rstrip(' |').split(': ')[1]
    assert cells(page, '5')[1] == '12.34 (15)' and cells(page, '10')[1] != '12.34 (15)'  # Scala 10 trains here
    assert 'known by their row of `study_runs.md` alone' in page and 'ST_025_5ep_s0' in page
    # a capped teacher: the 10-epoch runs are taught by the 15-epoch one, and ST+KD is not run at 10 epochs
    assert config(output, 'Scala_10ep_s0_t15')['teacher'].endswith('teacher_15ep/last.pt')
    ten = cells(page, '10')
    assert ten[1].endswith('(15)') and ten[3] == ten[6] == '-'
    assert not (root / 'STplusKD_025_10ep_s0_t15').exists()



def test_the_studies_share_their_runs_write_their_pages_and_keep_their_record(tmp_path):
    """One test, because the studies build on each other as they do for real: each reuses the runs of those before
    it, and the record is checked after they all ran. Each step below is what a former test of its own asserted."""
    output = tmp_path / 'runs'
    check_constant_activation_trains_each_variant_without_the_smallest_at_every_step(output)
    check_granularity_trains_four_grids_and_gives_each_its_expected_epochs(output)
    check_slicing_bound_trains_each_smallest_width(output)
    check_grad_interference_reads_the_gradients_the_scala_runs_recorded(output)
    check_regime_trains_each_budget_with_a_teacher_three_times_as_long_and_is_reused(output)
    check_a_new_machine_reuses_the_kept_record_and_trains_again_only_a_teacher_whose_student_is_missing(output)
    check_the_record_of_finished_runs_lists_each_with_its_accuracy(output)
    check_a_run_known_only_by_its_row_of_the_runs_page_is_taken_from_there_and_not_trained_again(output)


def test_the_regime_verdict_names_the_budgets_where_one_seed_cannot_tell_scala_from_st():
    sys.path.insert(0, str(STUDIES))
    import regime
    gaps = {5: (-2.76, -1.45), 10: (-1.53, -0.50), 20: (-0.23, 0.10)}  # Scala minus ST at r = 0.25 and 1
    by_budget = {e: {'gaps': {'ST r=0.25': g[0], 'ST r=1': g[1]}} for e, g in gaps.items()}
    # within the spread: below ST by less than it; beating ST (+0.10) or trailing by more (-1.53) is not
    assert regime.within_note(by_budget, (0.96, 0.13)) == (
        ' Scala is below ST by less than those 0.96 points at r = 0.25 (20 epochs) and r = 1 (10 epochs): one seed '
        'does not tell the two apart there.')
    assert regime.within_note(by_budget, (0.1, 0.05)) == ''
    assert regime.within_note(by_budget, None) == ''  # no second seed yet: nothing to measure against
    assert regime.at_budgets([5, 10], 'at none') == 'at 5, 10 epochs' and regime.at_budgets([], 'at none') == 'at none'
