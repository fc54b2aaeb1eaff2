"""A run directory (config.json, log.jsonl, log.csv, last.pt, best.pt), written by its own run only.

A new run needs an empty or new directory; a resumed run writes into its own directory or into an empty one, never
over another run; one process at a time holds the directory (``RunFolderLock``). The logs are rewritten whole from the
rows kept in the checkpoint, so after any crash they agree with ``last.pt`` and a resumed run's logs read as an
uninterrupted run's.
"""
import csv
import datetime
import fcntl
import io
import json
import os
import socket
from pathlib import Path
from typing import Callable, Optional

from .checkpoint import load_checkpoint
from .files import check_writable_directory, write_text_atomically


def run_directory(resume: str) -> Path:
    """The directory of the run ``--resume`` names (a run directory or a checkpoint file in it)."""
    path = Path(resume)
    return path if path.is_dir() else path.parent


def has_checkpoint(resume: str) -> bool:
    path = Path(resume)
    return (path / 'last.pt').is_file() if path.is_dir() else path.is_file()


def resumed_config(resume: str) -> dict:
    """The configuration of the run to continue: its checkpoint's, or for a run stopped before its first checkpoint,
    its config.json (it then starts again from step 0)."""
    if not has_checkpoint(resume):
        saved = run_directory(resume) / 'config.json'
        if Path(resume).is_dir() and saved.is_file():
            return json.loads(saved.read_text())
    return load_checkpoint(resume)['config']


def check_output(output: Path, resume: Optional[str]) -> None:
    """Refuse an output directory that holds anything but the run being resumed."""
    check_writable_directory(output, '--output', create=False)
    if output.is_dir() and any(path.name != LOCK_FILE for path in output.iterdir()):
        if resume is None:
            held = 'a run (last.pt)' if (output / 'last.pt').exists() else 'files'
            raise FileExistsError(f"--output {output} already holds {held}; continue it with --resume {output}, or "
                                  "choose another --output (nothing is overwritten)")
        if output.resolve() != run_directory(resume).resolve():
            raise FileExistsError(f"--output {output} is not empty and is not the run being resumed "
                                  f"({run_directory(resume)}); a resumed run writes only into its own directory or "
                                  "an empty one")


LOCK_FILE = '.scalavit.lock'


class RunFolderBusy(OSError):
    """Another process holds the run directory."""


class RunFolderLock:
    """One writer per run directory: an exclusive ``flock`` on ``.scalavit.lock``, which names its holder (pid, host,
    start). The system releases it when the process ends however it ends, so a lock file that a killed run left behind
    is taken over (and said); the file is removed when the run ends normally."""

    def __init__(self, output: Path, say: Callable[[str], None]):
        self.path = Path(output) / LOCK_FILE
        self.fd = self._take(say)

    def _take(self, say: Callable[[str], None]) -> int:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise RunFolderBusy(f"--output {self.path.parent} is being written by another scalavit train "
                                    f"({holder}); wait for it to end, or choose another --output") from None
            try:
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)  # its holder removed the file while we waited on it: take the new one
        previous = _read_holder(fd)
        if previous:
            say(f"taking over {self.path.parent}: its lock names {previous}, which no longer holds it (it ended "
                "without releasing it)")
        record = dict(pid=os.getpid(), host=socket.gethostname(),
                      since=datetime.datetime.now().isoformat(timespec='seconds'))
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + '\n').encode(), 0)
        os.fsync(fd)
        return fd

    def release(self) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self.fd)
            self.fd = None


def _read_holder(fd: int) -> str:
    text = os.pread(fd, 4096, 0).decode(errors='replace').strip()
    if not text:
        return ''
    try:
        record = json.loads(text)
        return f"process {record['pid']} on {record['host']} since {record['since']}"
    except (ValueError, KeyError, TypeError):
        return f"a lock reading {text[:80]!r}"


RUN_FILES = ('config.json', 'log.jsonl', 'log.csv', 'last.pt', 'best.pt', 'grad_stats.jsonl')


def remove_stale_temporaries(output: Path) -> None:
    """Temporary files that a crash left behind in the run's own directory (the real files are intact)."""
    for name in RUN_FILES:
        for stale in output.glob(f'.{name}.*.tmp'):
            stale.unlink(missing_ok=True)


class RunLog:
    """log.jsonl (one JSON line per epoch) and log.csv (the same figures), rewritten atomically from all rows."""

    def __init__(self, output: Path, columns: list[str]):
        self.output, self.columns = output, columns

    def write(self, rows: list[dict]) -> None:
        write_text_atomically(self.output / 'log.jsonl', ''.join(json.dumps(row) + '\n' for row in rows))
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(self.columns)
        writer.writerows([row.get(column, '') for column in self.columns] for row in rows)
        write_text_atomically(self.output / 'log.csv', buffer.getvalue())


def read_log(output: Path, up_to_epoch: int) -> list[dict]:
    """The rows of an existing log.jsonl up to ``up_to_epoch`` (for checkpoints written before the rows were kept)."""
    path = output / 'log.jsonl'
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    return [row for row in rows if row.get('epoch', 0) <= up_to_epoch]
