"""scripts/setup.sh, the set-up behind both quick-start commands: a full disk is one clear line, before anything."""
import os
import shutil
import stat
import subprocess
from pathlib import Path

ROOT = Path(__file__).parents[1]
FAKE_DF = """#!/bin/sh
echo 'Filesystem 1024-blocks Used Available Capacity Mounted on'
echo '/dev/fake 263174212 262125636 {free_kb} 99% /'
"""


def run_setup(tmp_path: Path, free_kb: int) -> subprocess.CompletedProcess:
    (tmp_path / 'scripts').mkdir()
    shutil.copy(ROOT / 'scripts' / 'setup.sh', tmp_path / 'scripts')
    (tmp_path / 'pyproject.toml').write_text('')
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    df = bin_dir / 'df'
    df.write_text(FAKE_DF.format(free_kb=free_kb))
    df.chmod(df.stat().st_mode | stat.S_IEXEC)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    return subprocess.run(['bash', '-c', 'source scripts/setup.sh'], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60)


def test_too_little_disk_for_the_venv_is_one_line_and_creates_nothing(tmp_path):
    result = run_setup(tmp_path, free_kb=1024 * 1024)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f'setup: .venv needs about 8 GB but {tmp_path} has 1 GB free: free some space and run again']
    assert not (tmp_path / '.venv').exists()
