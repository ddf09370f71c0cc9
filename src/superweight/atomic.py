"""Write outputs atomically: a temp file in the destination's directory, renamed over it
only once complete, so a reader never sees half a file and a failure leaves nothing."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(dest: str | Path) -> Iterator[Path]:
    """A temp path to write, renamed over ``dest`` on success. A link is followed (the file
    it names is replaced, not the link), and a destination that is not a regular file
    (``/dev/null``, ``/dev/stdout``, a FIFO) is written in place: renaming over it would
    replace the device itself with a file, which as root succeeds."""
    dest = Path(os.path.realpath(dest))
    if dest.exists() and not dest.is_file():
        yield dest
        return
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_dir(dest: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Build a directory in a temp sibling and rename it into place once complete. An
    existing ``dest`` is refused unless ``overwrite`` (then replaced only at the end). A
    failure, a full disk included, leaves nothing behind and ``dest`` as it was."""
    import errno
    import shutil

    from .errors import SuperweightError, UsageError

    dest = Path(dest)
    if dest.exists() and not overwrite:
        raise UsageError(f"{dest} exists; choose another --out or pass --overwrite")
    if dest.exists() and not dest.is_dir():
        raise UsageError(f"{dest} exists and is not a directory")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        try:
            yield tmp
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise SuperweightError(f"disk full while writing {dest}; nothing was written") from e
            raise
        umask = _umask()
        os.chmod(tmp, 0o777 & ~umask)
        for f in tmp.rglob("*"):  # mkstemp/mkdtemp and some writers make private files
            os.chmod(f, (0o777 if f.is_dir() else 0o666) & ~umask)
        old = None
        if dest.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
            os.replace(dest, old / dest.name)
        os.replace(tmp, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask
