"""A run directory (config.json, log.jsonl, log.csv, last.pt, best.pt), written by its own run only.

A new run needs an empty or new directory; a resumed run writes into its own directory or into an empty one, never
over another run. The logs are rewritten whole from the rows kept in the checkpoint, so after any crash they agree
with ``last.pt`` and a resumed run's logs read as an uninterrupted run's.
"""
import csv
import io
import json
from pathlib import Path
from typing import Optional

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
    if output.is_dir() and any(output.iterdir()):
        if resume is None:
            held = 'a run (last.pt)' if (output / 'last.pt').exists() else 'files'
            raise FileExistsError(f"--output {output} already holds {held}; continue it with --resume {output}, or "
                                  "choose another --output (nothing is overwritten)")
        if output.resolve() != run_directory(resume).resolve():
            raise FileExistsError(f"--output {output} is not empty and is not the run being resumed "
                                  f"({run_directory(resume)}); a resumed run writes only into its own directory or "
                                  "an empty one")


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
