"""Outputs land whole or not at all, one writer at a time, and never over what they must not replace.

Every output is staged in a temporary next to where it goes (the same filesystem, so the
final rename is atomic), named ``.NAME.sw-XXXXXXXX.tmp`` (a file keeps its suffix after
that, so writers that go by the suffix still work). A writer first takes an exclusive lock
on the destination (``flock`` on a file under ``$SUPERWEIGHT_CACHE/locks``, keyed by the
destination's real path, released by the kernel when the process dies however it dies), so
a second run to the same destination is refused in one line instead of racing the first.
Holding the lock, it removes the temporaries of that destination that a killed run left:
those owned by this user and older than the lock (no live run can own them, since every
writer holds the lock while its temporary exists).
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import re
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from superweight.errors import SuperweightError, UsageError

MARK = "sw-"


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def real(dest: str | Path) -> Path:
    """The absolute path a destination names, links followed (a link's target is replaced, not the link)."""
    return Path(os.path.realpath(os.path.expanduser(str(dest))))


def anchor(dest: Path) -> Path:
    """The nearest existing ancestor of ``dest``: where its temporary is staged (missing
    parents are made only when the output lands)."""
    p = dest.parent
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _stale(name: str) -> re.Pattern:
    """Temporaries of the destination ``name``: ours (``.NAME.sw-XXXXXXXX.tmp[.SUFFIX]`` and
    ``.old``) and those of versions before the lock (``.NAME.XXXXXXXX.tmp``)."""
    return re.compile(rf"^\.{re.escape(name)}\.(?:{MARK})?[a-z0-9_]{{8}}\.(?:tmp|old)(?:\.[A-Za-z0-9]+)?$")


def lock_dir() -> Path:
    from superweight.models.load import cache_root

    d = cache_root() / "locks"
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError:
        d = Path(tempfile.gettempdir()) / f"superweight-locks-{os.getuid()}"
        d.mkdir(exist_ok=True)
    return d


class Lock:
    """An exclusive lock on a destination path, held until ``release``. Refused at once when
    another process holds it, or, with ``wait``, taken when that process lets go."""

    def __init__(self, dest: Path, wait: bool = False):
        self.dest = dest
        key = hashlib.sha256(str(dest).encode()).hexdigest()[:24]
        self.path = lock_dir() / f"{key}.lock"
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            pid = os.pread(self.fd, 32, 0).decode(errors="replace").strip()
            os.close(self.fd)
            who = f" (pid {pid})" if pid.isdigit() else ""
            raise UsageError(f"{dest} is being written by another superweight run{who}; "
                             "wait for it to finish or choose another output") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, str(os.getpid()).encode(), 0)
        self.since = time.time()

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def sweep(dest: Path, before: float) -> list[Path]:
    """Remove the temporaries of ``dest`` that a killed run left (call it holding the lock)."""
    pattern, gone = _stale(dest.name), []
    for where in {dest.parent, anchor(dest)}:
        try:
            entries = list(os.scandir(where))
        except OSError:
            continue
        for e in entries:
            if not pattern.match(e.name):
                continue
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            if st.st_uid != os.getuid() or st.st_mtime >= before:
                continue
            p = Path(e.path)
            if e.is_dir(follow_symlinks=False):
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            gone.append(p)
    return gone


@contextmanager
def locked(dest: str | Path, wait: bool = False) -> Iterator[Lock]:
    """Hold the lock on ``dest`` (refused if another run holds it, or waited for) and clear
    its stale temporaries."""
    lk = Lock(real(dest), wait)
    try:
        sweep(lk.dest, lk.since)
        yield lk
    finally:
        lk.release()


def temp_file(dest: Path) -> Path:
    """A new, empty temporary for the file ``dest``, next to it (suffix kept)."""
    special = dest.exists() and not dest.is_file() and not dest.is_dir()  # a device or FIFO: written through
    where = Path(tempfile.gettempdir()) if special else anchor(dest)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.{MARK}", suffix=f".tmp{dest.suffix}", dir=where)
    os.close(fd)
    return Path(tmp)


def temp_dir(dest: Path) -> Path:
    return Path(tempfile.mkdtemp(prefix=f".{dest.name}.{MARK}", suffix=".tmp", dir=anchor(dest)))


def publish_file(tmp: Path, dest: Path) -> None:
    """Move a finished temporary file into place (the usual permissions, not mkstemp's 0600).
    A destination that is not a regular file (``/dev/null``, a FIFO) is written through:
    renaming over it would replace the device itself with a file, which as root succeeds."""
    if dest.exists() and not dest.is_file() and not dest.is_dir():
        with open(tmp, "rb") as src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out)
        tmp.unlink()
        return
    os.chmod(tmp, 0o666 & ~_umask())
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, dest)


def publish_dir(tmp: Path, dest: Path, overwrite: bool) -> None:
    """Move a finished temporary directory into place. Something at ``dest`` that is there
    now (made during the run, say) is replaced only with ``overwrite``."""
    if dest.exists() and not overwrite:
        raise UsageError(f"{dest} appeared while this run was working; nothing was replaced "
                         "(choose another output or pass --overwrite)")
    umask = _umask()
    os.chmod(tmp, 0o777 & ~umask)
    for f in tmp.rglob("*"):  # mkstemp/mkdtemp and some writers make private files
        os.chmod(f, (0o777 if f.is_dir() else 0o666) & ~umask)
    dest.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if dest.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.{MARK}", suffix=".old", dir=dest.parent))
        os.replace(dest, old / dest.name)
    os.replace(tmp, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_path(dest: str | Path) -> Iterator[Path]:
    """A temp path to write, renamed over ``dest`` on success; a failure leaves ``dest`` as it was.
    A link is followed; a device or FIFO is written through (see ``publish_file``)."""
    dest = real(dest)
    tmp = temp_file(dest)
    try:
        yield tmp
        publish_file(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _disk_full(e: OSError, dest: Path) -> None:
    if e.errno == errno.ENOSPC:
        raise SuperweightError(f"disk full while writing {dest}; nothing was written") from e


@contextmanager
def atomic_dir(dest: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Build a directory in a temp sibling and rename it into place once complete, holding the
    lock on ``dest`` throughout. An existing ``dest`` is refused unless ``overwrite`` (then
    replaced only at the end), and so is one that appears during the work. A failure, a full
    disk included, leaves nothing behind and ``dest`` as it was."""
    dest = real(dest)
    if dest.exists() and not overwrite:
        raise UsageError(f"{dest} exists; choose another --out or pass --overwrite")
    if dest.exists() and not dest.is_dir():
        raise UsageError(f"{dest} exists and is not a directory")
    with locked(dest):
        tmp = temp_dir(dest)
        try:
            try:
                yield tmp
            except OSError as e:
                _disk_full(e, dest)
                raise
            publish_dir(tmp, dest, overwrite)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
