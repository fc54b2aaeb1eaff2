"""studies/transfer.py --quick: the whole transfer pipeline on a few steps a run."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow  # trains the transfer study's runs: scripts/test.sh --fast skips it

SCRIPT = Path(__file__).parents[1] / 'studies' / 'transfer.py'


def run(output: Path) -> str:
    result = subprocess.run([sys.executable, str(SCRIPT), '--quick', '--output', str(output)], capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_quick_transfer_study_writes_its_table_and_continues_without_redoing(tmp_path):
    run(tmp_path / 'study')
    out = tmp_path / 'study_quick'
    doc = (out / 'transfer.md').read_text()
    for name in ('| Scala fine-tuned |', '| linear probe |', '| Scala from scratch |', '| separate (one model a width) |'):
        assert name in doc
    assert (out / 'transfer_top1_by_width.png').read_bytes()[:4] == b'\x89PNG'
    # the target runs start from the source run; the probe changed nothing but the classifier
    assert json.loads((out / 'Scala_fine-tuned' / 'config.json').read_text())['init'] == str(out / 'source_Scala')
    source = torch.load(out / 'source_Scala' / 'last.pt', weights_only=True)['model']
    probe = torch.load(out / 'linear_probe' / 'last.pt', weights_only=True)['model']
    assert torch.equal(source['blocks.0.mlp.fc1.weight'], probe['blocks.0.mlp.fc1.weight'])
    assert not torch.equal(source['head.weight'], probe['head.weight'])
    # the target classes are the other five
    assert sorted(p.name for p in (out / 'data_target' / 'train').iterdir()) == [
        'Ankle boot', 'Bag', 'Sandal', 'Shirt', 'Sneaker']
    assert 'already trained' in run(tmp_path / 'study')
