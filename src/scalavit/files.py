"""Files the user keeps (checkpoints, logs, reports, exports): written whole or not at all, readable by others.

Every write goes to a temporary file in the destination's folder, is flushed to disk, renamed over the destination,
and the folder itself is flushed, so that neither a crash nor a power cut leaves a half-written or empty file. New
files and folders get the modes the user's umask gives any other file (temporary files are private by default).
"""
import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator


def _umask() -> int:
    """The process's umask, read without changing it where Linux tells it (/proc): setting and restoring it would
    race with any other thread creating a file meanwhile. Elsewhere there is no other way."""
    try:
        for line in Path('/proc/self/status').read_text().splitlines():
            if line.startswith('Umask:'):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_directory(folder: Path) -> None:
    """Make a rename or a new entry in ``folder`` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class NoSpaceLeft(OSError):
    """The disk (or quota) filled while writing; the file written over is as it was."""


def _out_of_space(error: BaseException, folder: Path) -> bool:
    """Whether a failed write ran out of space. Writers other than Python's own files say so in their own words
    (torch.save as a RuntimeError of its zip writer), so the folder's free space decides when the error does not."""
    if isinstance(error, OSError):
        return error.errno in (errno.ENOSPC, errno.EDQUOT)
    if not isinstance(error, Exception):  # Ctrl-C
        return False
    if 'No space left on device' in str(error):
        return True
    try:
        stats = os.statvfs(folder)
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize < 2 ** 20


def _no_space_left(path: Path) -> NoSpaceLeft:
    kept = f"{path} is as it was" if path.exists() else "nothing was written"
    return NoSpaceLeft(f"no space left on device writing {path}; {kept}. Free some space (or write elsewhere) and run "
                       "again")


def write_atomically(path: Path, write: Callable[[Path], None], suffix: str = '.tmp') -> None:
    """Call ``write(tmp)`` to write a temporary file (named ``*suffix``, for writers that insist on an extension),
    then make it ``path`` durably and atomically."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, 'rb+') as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        full = _out_of_space(error, path.parent)
        tmp.unlink(missing_ok=True)
        if full:
            raise _no_space_left(path) from None
        raise
    fsync_directory(path.parent)


def write_text_atomically(path: Path, text: str) -> None:
    write_atomically(path, lambda tmp: tmp.write_text(text))


@contextlib.contextmanager
def staging_directory(output: Path) -> Iterator[Path]:
    """A fresh folder beside ``output`` to fill; on success it replaces ``output`` (an existing one only once the new
    one is complete), with every file in it flushed to disk. On failure it is removed and ``output`` is untouched."""
    output = Path(output)
    staging = Path(tempfile.mkdtemp(prefix=f'.{output.name}.', dir=output.parent))  # same filesystem: renames work
    try:
        os.chmod(staging, 0o777 & ~_umask())
        yield staging
        for file in staging.rglob('*'):
            if file.is_file():
                os.chmod(file, 0o666 & ~_umask())  # some writers (safetensors) create private files
                with open(file, 'rb+') as f:
                    os.fsync(f.fileno())
        fsync_directory(staging)
        _replace_directory(staging, output)
    except BaseException as error:
        full = _out_of_space(error, staging)
        shutil.rmtree(staging, ignore_errors=True)
        if full:
            raise _no_space_left(output) from None
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _replace_directory(staging: Path, output: Path) -> None:
    if output.exists():
        old = Path(tempfile.mkdtemp(prefix=f'.{output.name}.old.', dir=output.parent))
        os.replace(output, old / output.name)
        os.replace(staging, output)
        fsync_directory(output.parent)
        shutil.rmtree(old)
    else:
        os.replace(staging, output)
        fsync_directory(output.parent)


def check_writable_directory(path: Path, option: str, create: bool = True) -> Path:
    """Make sure the folder ``path`` can be written (creating it, or with ``create=False`` only its parents), or fail
    with a message that names ``path`` as the user gave it."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{option} {path} is an existing file, not a folder; give a folder path")
    folder = path if create else path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PermissionError(f"{option} {path}: cannot create {folder} ({error.strerror}); "
                              "choose a folder you can write to") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"{option} {path}: {folder} is not writable; choose a folder you can write to")
    return path
