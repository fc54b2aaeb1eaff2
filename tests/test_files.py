import os
import stat
import subprocess

import pytest
import torch

from scalavit import files
from scalavit.checkpoint import save_atomically
from scalavit.cli import main
from scalavit.report import write_report


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def record_disk_events(monkeypatch):
    """What reaches the disk, in order: ('fsync', what was flushed) and ('rename', destination)."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        path = os.readlink(f'/proc/self/fd/{fd}')
        events.append(('fsync', os.path.basename(path) if os.path.isfile(path) else 'folder:' + path))
        real_fsync(fd)

    def replace(source, destination):
        events.append(('rename', os.path.basename(destination)))
        real_replace(source, destination)

    monkeypatch.setattr(os, 'fsync', fsync)
    monkeypatch.setattr(os, 'replace', replace)
    return events


def test_a_save_is_flushed_before_its_rename_and_the_folder_after(tmp_path, monkeypatch):
    events = record_disk_events(monkeypatch)
    save_atomically({'weights': torch.ones(3)}, tmp_path / 'last.pt')
    assert [kind for kind, _ in events] == ['fsync', 'rename', 'fsync']
    assert events[0][1].startswith('.last.pt.') and events[1] == ('rename', 'last.pt')
    assert events[2] == ('fsync', f'folder:{tmp_path}')
    assert torch.equal(torch.load(tmp_path / 'last.pt')['weights'], torch.ones(3))


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    (tmp_path / 'results.json').write_text('old')

    def fail(tmp):
        tmp.write_text('half')
        raise OSError(28, 'No space left on device')

    with pytest.raises(OSError):
        files.write_atomically(tmp_path / 'results.json', fail)
    assert [p.name for p in tmp_path.iterdir()] == ['results.json']
    assert (tmp_path / 'results.json').read_text() == 'old'


def test_checkpoints_and_reports_get_the_modes_of_any_file_the_user_writes(tmp_path, umask_022):
    save_atomically({'x': 1}, tmp_path / 'last.pt')
    report = dict(rows=[dict(width=1.0, top1=50.0, top5=90.0, params=10, macs=100, latency_ms_median=1.0,
                             latency_ms_p90=1.1, throughput_img_s=5.0, checkpoint='c')],
                  meta=dict(device_name='cpu', threads=1, model='m', data='d'))
    write_report(report, tmp_path / 'report', 'run')
    written = [tmp_path / 'last.pt', *(tmp_path / 'report').iterdir()]
    assert len(written) == 5 and {stat.S_IMODE(p.stat().st_mode) for p in written} == {0o644}


def test_a_staged_folder_is_flushed_then_replaces_the_old_one_whole(tmp_path, monkeypatch, umask_022):
    (tmp_path / 'out').mkdir()
    (tmp_path / 'out' / 'model.onnx').write_text('old')
    events = record_disk_events(monkeypatch)
    with files.staging_directory(tmp_path / 'out') as staging:
        (staging / 'model.safetensors').write_text('new')
    assert events[0] == ('fsync', 'model.safetensors') and events[1][0] == 'fsync'  # the file, then its folder
    assert [p.name for p in (tmp_path / 'out').iterdir()] == ['model.safetensors']
    assert [p.name for p in tmp_path.iterdir()] == ['out']
    assert stat.S_IMODE((tmp_path / 'out').stat().st_mode) == 0o755


@pytest.fixture
def small_disk(tmp_path):
    """A real 4 MiB filesystem (tmpfs), so that writes fill it as a full disk does."""
    mount = tmp_path / 'disk'
    mount.mkdir()
    result = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=4m', 'tmpfs', str(mount)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({result.stderr.decode().strip()}); needs root")
    yield mount
    subprocess.run(['umount', '-l', str(mount)], check=True)


def test_a_full_disk_is_one_line_and_the_previous_file_stays(small_disk):
    path = small_disk / 'last.pt'
    save_atomically({'step': 1, 'weights': torch.ones(1000)}, path)
    with pytest.raises(files.NoSpaceLeft, match=f'no space left on device writing {path}; {path} is as it was'):
        save_atomically({'step': 2, 'weights': torch.ones(2_000_000)}, path)  # 8 MB
    assert torch.load(path, weights_only=True)['step'] == 1
    assert [p.name for p in small_disk.iterdir()] == ['last.pt']


def test_training_and_export_onto_a_full_disk_end_in_one_line(trained, small_disk, capsys):
    (small_disk / 'filler').write_bytes(b'x' * (3 * 2 ** 20))  # room for config.json and logs, not a checkpoint
    assert main(['train', '--resume', str(trained / 'scala'), '--output', str(small_disk / 'run'),
                 '--epochs', '3']) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]  # after the epoch's progress bar
    assert error.startswith('scalavit train: error: no space left on device writing')
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    (small_disk / 'filler2').write_bytes(b'x' * (free - 64 * 1024))  # room for less than the export
    assert main(['export', str(trained / 'scala'), '--width', '0.5', '--output', str(small_disk / 'export')]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith('scalavit export: error: no space left on device writing') and '\n' not in error
    assert not (small_disk / 'export').exists()
