import subprocess
import sys

import timm

from scalavit.cli import main


def test_help_works_as_module_and_lists_commands():
    result = subprocess.run([sys.executable, '-m', 'scalavit', '--help'], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    assert 'widths' in result.stdout


def test_widths_prints_one_row_per_width(capsys):
    assert main(['widths', '--granularity', '0.25', '--repeats', '1']) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    rows = [line.split() for line in lines[2:]]
    assert [float(row[0]) for row in rows] == [0.25, 0.5, 0.75, 1.0]
    assert [row[2] for row in rows] == ['first', 'last', 'last', 'first']
    model = timm.create_model('scala_vit_mini_patch7_28')
    assert int(rows[-1][3].replace(',', '')) == sum(p.numel() for p in model.parameters())
    macs = [int(row[4].replace(',', '')) for row in rows]
    assert macs == sorted(macs) and macs[0] < macs[-1] / 8


def test_widths_refuses_a_grid_the_heads_cannot_split(capsys):
    assert main(['widths', '--granularity', '0.015625', '--repeats', '1']) == 2
    assert 'do not split into 3 heads' in capsys.readouterr().err
