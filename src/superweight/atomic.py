"""Outputs land whole or not at all, one writer at a time, and never over what they must not replace.

Every output is staged in a temporary next to where it goes (the same filesystem, so the
final rename is atomic), named ``.NAME.superweight-staging.XXXXXXXX.tmp`` (a file keeps its
suffix after that, so writers that go by the suffix still work). A writer first takes an
exclusive lock on the destination (``flock`` on a file under ``$SUPERWEIGHT_CACHE/locks``,
keyed by the destination's real path, released by the kernel when the process dies however
it dies), so a second run to the same destination is refused in one line instead of racing
the first. The lock file is also the record of its owner: it holds the owner's pid and the
path of every temporary the owner staged. A run that ends, however it ends short of being
killed, removes its temporaries and the lock file; a killed run leaves both, and the next
run to the same destination removes exactly the temporaries that record names (each one
still carrying the marker, still this user's). Nothing else is ever removed: a user's own
``.NAME.draft.tmp`` or another run's staging directory is not ours to clear.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from superweight.errors import SuperweightError, UsageError
from superweight.paths import cache_root

MARK = "superweight-staging"  # in every temporary's name; no user writes it


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


def staging_name(dest_name: str) -> re.Pattern:
    """The names of ``dest_name``'s temporaries: ``.NAME.superweight-staging.XXXXXXXX.tmp[.SUFFIX]``
    and ``.old`` (what an overwrite moves aside)."""
    return re.compile(rf"^\.{re.escape(dest_name)}\.{MARK}\.[a-z0-9_]{{8}}\.(?:tmp|old)(?:\.[A-Za-z0-9]+)?$")


def lock_dir() -> Path:
    d = cache_root() / "locks"
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError:
        d = Path(tempfile.gettempdir()) / f"superweight-locks-{os.getuid()}"
        d.mkdir(exist_ok=True)
    return d


_HELD: dict[str, int] = {}  # lock file -> the thread of this process that holds it


class Lock:
    """An exclusive lock on a destination path, held until ``release``: refused at once when
    another process holds it, or, with ``wait``, taken when that process lets go. Its file
    records the temporaries staged under it (``record``); ``left`` holds those a killed
    holder recorded and never removed."""

    def __init__(self, dest: Path, wait: bool = False, on_wait=None):
        self.dest = dest
        key = hashlib.sha256(os.fsencode(dest)).hexdigest()[:24]  # a path's bytes: any name the OS takes
        self.path = lock_dir() / f"{key}.lock"
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = os.pread(fd, 32, 0).decode(errors="replace").split("\n")[0].strip()
                who = f" (pid {pid})" if pid.isdigit() else ""
                mine = _HELD.get(str(self.path)) == threading.get_ident()
                if not wait or mine:
                    os.close(fd)
                    if mine and wait:  # this thread holds it already: waiting would be for ourselves, forever
                        raise UsageError(f"{dest} is this run's own output (one of its outputs names it); "
                                         "choose another path") from None
                    raise UsageError(f"{dest} is being written by another superweight run{who}; "
                                     "wait for it to finish or choose another output") from None
                if on_wait is not None:
                    on_wait(int(pid) if pid.isdigit() else None)
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:  # a holder that finished removes the file: lock the one that is there now
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        self.fd = fd
        _HELD[str(self.path)] = threading.get_ident()
        self.left = self._recorded()
        self.staged: list[Path] = []
        self._rewrite()

    def _recorded(self) -> list[Path]:
        size = os.fstat(self.fd).st_size
        lines = os.pread(self.fd, size, 0).decode(errors="replace").split("\n")[1:]
        out = []
        for line in lines:
            try:
                out.append(Path(json.loads(line)))
            except (ValueError, TypeError):
                continue
        return out

    def _rewrite(self) -> None:
        text = f"{os.getpid()}\n" + "".join(json.dumps(str(p)) + "\n" for p in self.left + self.staged)
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, text.encode(), 0)

    def record(self, path: Path) -> Path:
        """Note a temporary staged under this lock (written before it is made)."""
        self.staged.append(Path(path))
        self._rewrite()
        return path

    def release(self) -> None:
        if self.fd is None:
            return
        _HELD.pop(str(self.path), None)
        if not any(os.path.lexists(p) for p in self.left + self.staged):
            try:  # nothing left to clear: the lock file goes too (they do not pile up)
                os.unlink(self.path)
            except OSError:
                pass
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None


def clear_leftovers(lock: Lock) -> list[Path]:
    """Remove what a killed holder of ``lock`` staged and recorded: only paths that still
    carry the marker for its destination's name and are this user's."""
    pattern, gone, kept = staging_name(lock.dest.name), [], []
    for p in lock.left:
        try:
            st = os.lstat(p)
        except OSError:
            continue
        if not pattern.match(p.name) or st.st_uid != os.getuid():
            continue  # not ours, whatever the record says
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        (kept if os.path.lexists(p) else gone).append(p)
    lock.left = kept
    lock._rewrite()
    return gone


@contextmanager
def locked(dest: str | Path, wait: bool = False, on_wait=None) -> Iterator[Lock]:
    """Hold the lock on ``dest`` (refused if another run holds it, or waited for, after
    ``on_wait(pid of the holder)``) and clear what a killed holder of it left. A lock this
    process holds already is refused, never waited for."""
    lk = Lock(real(dest), wait, on_wait)
    try:
        clear_leftovers(lk)
        yield lk
    finally:
        lk.release()


def temp_file(dest: Path, lock: Lock | None = None) -> Path:
    """A new, empty temporary for the file ``dest``, next to it (suffix kept), recorded under ``lock``."""
    special = dest.exists() and not dest.is_file() and not dest.is_dir()  # a device or FIFO: written through
    where = Path(tempfile.gettempdir()) if special else anchor(dest)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.{MARK}.", suffix=f".tmp{dest.suffix}", dir=where)
    os.close(fd)
    return lock.record(Path(tmp)) if lock else Path(tmp)


def temp_dir(dest: Path, lock: Lock | None = None) -> Path:
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.{MARK}.", suffix=".tmp", dir=anchor(dest)))
    return lock.record(tmp) if lock else tmp


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


def replaceable(dest: Path, marker: str | None, what: str) -> None:
    """Refuse to replace ``dest`` unless it is empty or one of ours (holds ``marker``), and is
    not the current directory or one that holds it. Asked at the start and again at the end,
    on what is there then."""
    if not dest.exists():
        return
    if not dest.is_dir():
        raise UsageError(f"{what} exists and is not a directory")
    cwd = real(os.getcwd())
    if dest == cwd or dest in cwd.parents:
        raise UsageError(f"{what}: refusing to replace the current directory or one that holds it")
    if marker and any(dest.iterdir()) and not (dest / marker).is_file():
        raise UsageError(f"{what} is not a superweight output (it has no {marker}); "
                         "refusing to replace it, even with --overwrite")
    if marker and (dest / marker).is_file():
        try:
            ours = set(json.loads((dest / marker).read_text()).get("written", []))
        except (OSError, ValueError, AttributeError):
            ours = set()
        foreign = sorted(p.name for p in dest.iterdir() if p.name not in ours | {marker})
        if foreign:
            more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
            raise UsageError(f"{what} holds files superweight did not write there ({', '.join(foreign[:3])}{more}); "
                             "refusing to replace it, even with --overwrite")


def publish_dir(tmp: Path, dest: Path, overwrite: bool, lock: Lock | None = None, marker: str | None = None,
                existed: bool = True) -> None:
    """Move a finished temporary directory into place. Something at ``dest`` now is replaced
    only with ``overwrite``, only if it was there when the run began (``existed``: a folder
    that appeared during the run is never replaced), and only if it is ours (``replaceable``,
    asked now, at the swap)."""
    if dest.exists() and (not overwrite or not existed):
        raise UsageError(f"{dest} appeared while this run was working; nothing was replaced "
                         "(choose another output" + (" or pass --overwrite)" if not overwrite else ")"))
    replaceable(dest, marker, str(dest))
    umask = _umask()
    os.chmod(tmp, 0o777 & ~umask)
    for f in tmp.rglob("*"):  # mkstemp/mkdtemp and some writers make private files
        os.chmod(f, (0o777 if f.is_dir() else 0o666) & ~umask)
    dest.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if dest.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.{MARK}.", suffix=".old", dir=dest.parent))
        if lock:
            lock.record(old)
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


def full_disk(e: BaseException, where: Path) -> bool:
    """Whether ``e`` is a full disk under ``where``: ENOSPC, or an OSError without an errno
    (numpy's ``tofile``, the GGUF writer's, says only "N requested and 0 written") while the
    filesystem has no room left."""
    if not isinstance(e, OSError):
        return False
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if e.errno is None:
        try:
            return shutil.disk_usage(where).free < 1 << 20
        except OSError:
            return False
    return False


def no_space(dest: Path | str) -> SuperweightError:
    return SuperweightError(f"no space left on the device while writing {dest}; nothing was written")


@contextmanager
def atomic_dir(dest: str | Path, overwrite: bool = False, marker: str | None = None) -> Iterator[Path]:
    """Build a directory in a temp sibling and rename it into place once complete, holding the
    lock on ``dest`` throughout. An existing ``dest`` is refused unless ``overwrite`` and ours
    (empty or holding ``marker``; asked again at the end), and so is one that appears during
    the work without ``overwrite``. A failure, a full disk included, leaves nothing behind and
    ``dest`` as it was."""
    dest = real(dest)
    if dest.exists() and not overwrite:
        raise UsageError(f"{dest} exists; choose another --out or pass --overwrite")
    replaceable(dest, marker, str(dest))
    existed = dest.exists()
    with locked(dest) as lk:
        tmp = temp_dir(dest, lk)
        try:
            try:
                yield tmp
            except OSError as e:
                if full_disk(e, tmp):
                    raise no_space(dest) from e
                raise
            publish_dir(tmp, dest, overwrite, lk, marker, existed)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
