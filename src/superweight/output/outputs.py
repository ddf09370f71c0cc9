"""A command's outputs as one transaction.

Each output the command line names is checked before any work (its parent is a writable
directory, a file is not a directory, no output is the model, lies inside it or holds it:
the model's directory, its converted GGUF cache, its hub cache folder), locked
for the run (a second run to it is refused), staged next to where it goes, and landed
together with the others at the end, or not at all: a command that fails, is interrupted
(Ctrl-C, SIGTERM, SIGHUP) or finds a directory that appeared during the run without
``--overwrite`` leaves none of its outputs and its temporaries removed. Whether a directory
may be replaced (``--overwrite``: only an empty one or one of ours) is asked again at the end,
on what is there then. The final renames come after every check, so the one gap left is a
rename failing between two outputs. A full disk is one line that names the output.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from superweight.errors import UsageError
from superweight.atomic import (Lock, anchor, full_disk, no_space, publish_dir, publish_file, real,
                                       replaceable, clear_leftovers, temp_dir, temp_file)


@dataclass
class Target:
    flag: str  # the option that named it, for messages
    given: str  # as the user wrote it
    dest: Path  # its real path
    tmp: Path  # where the command writes it
    kind: str  # "file"; "dir" (lands whole); "merge" (its files land into a directory that may exist)
    overwrite: bool = False
    marker: str | None = None  # the file that makes an existing directory one of ours
    lock: Lock | None = None
    existed: bool = False  # whether it was there when the run began (one that appears later is never replaced)


def _writable(directory: Path) -> bool:
    """Whether files can be made in ``directory`` (tried, not guessed from mode bits: root,
    ACLs and read-only mounts all answer differently)."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".superweight-probe-", dir=directory)
    except OSError:
        return False
    os.close(fd)
    os.unlink(probe)
    return True


def _with_real_files(paths, most: int = 20000) -> list[Path]:
    """Each path's real path and, for a folder, the real path of every file in it: in the
    hub's cache layout a model's files are links into ``../../blobs/``, and an output naming
    a blob would replace the model's weights though it lies outside the model's folder."""
    out = []
    for p in paths:
        out.append(real(p))
        if os.path.isdir(p):
            for root, _dirs, files in os.walk(p):
                for f in files:
                    if len(out) > most:
                        return out
                    out.append(real(os.path.join(root, f)))
    return out


def model_sources(ref: str | None) -> list[Path]:
    """The paths a command reads its model from, known before loading: the file or directory
    given, or the default model's file. (The converted GGUF cache and a hub snapshot are
    added once loaded, by ``Outputs.reading``.)"""
    if ref is None:
        try:
            from superweight.models.pypi import smollm2_path

            return [smollm2_path()]
        except Exception:  # noqa: BLE001 - not installed: the load says so, in its own words
            return []
    p = Path(ref).expanduser()
    if os.path.lexists(p):
        return [p]
    hub = _hub_folder(ref)  # a hub id of any shape (``gpt2`` as much as ``org/name``): its cache folder
    return [hub] if hub is not None and hub.is_dir() else []


def _no_space(e: BaseException, targets: list[Target]) -> None:
    """A full disk names the output it was writing (the first on a full filesystem), not just ``OSError``."""
    for t in targets:
        if full_disk(e, anchor(t.dest)):
            raise no_space(f"{t.flag} {t.given}") from e


def _hub_folder(ref: str) -> Path | None:
    """The hub cache folder of a hub id of any shape (``gpt2``, ``org/name``), as the hub's
    own client names it (``models--org--name``: its snapshots and blobs); None for what
    cannot be a hub id."""
    if not ref or ref.count("/") > 1 or ref.startswith((".", "/", "~")):
        return None
    try:
        from huggingface_hub.constants import HF_HUB_CACHE
        from huggingface_hub.file_download import repo_folder_name
    except Exception:  # noqa: BLE001
        return None
    return Path(HF_HUB_CACHE) / repo_folder_name(repo_id=ref, repo_type="model")


class Outputs:
    """Declare outputs (checked and locked at once), write to each ``tmp``, land on exit."""

    def __init__(self, sources=()):
        from superweight.paths import reading

        reading(*sources)
        self.sources = _with_real_files(sources)
        self.targets: list[Target] = []
        self.locks: list[Lock] = []

    def __enter__(self) -> "Outputs":
        return self

    def __exit__(self, et, e, tb) -> bool:
        targets = list(self.targets)
        try:
            if et is None:
                self.commit()
        except OSError as failed:
            _no_space(failed, targets)
            raise
        finally:
            self.discard()
        if e is not None:
            _no_space(e, targets)
        return False

    # -- declaring ----------------------------------------------------------------------
    def file(self, given: str | None, flag: str) -> Path | None:
        """A file output (``--json``, ``--plot``); None when not asked for or ``-`` (stdout)."""
        if given is None or given == "-":
            return None
        dest = real(given)
        if dest.is_dir():
            raise UsageError(f"{flag} {given} is a directory; give a file name")
        parent = dest.parent
        if not parent.exists():
            raise UsageError(f"{flag} {given}: directory {parent} does not exist")
        if not parent.is_dir():
            raise UsageError(f"{flag} {given}: {parent} is not a directory")
        self._checks(flag, given, dest, holds=False)
        return self._add(flag, given, dest, "file")

    def directory(self, given: str, flag: str, *, overwrite: bool = False, merge: bool = False,
                  marker: str | None = None) -> Path:
        """A directory output. ``merge``: a results directory whose files are replaced one by
        one (it may exist); otherwise it lands whole and an existing one is refused unless
        ``overwrite``, and even then only if it is empty or holds ``marker`` (one of ours)."""
        dest = real(given)
        self._not_source(flag, given, dest, holds=True)
        if dest.exists() and not dest.is_dir():
            raise UsageError(f"{flag} {given} exists and is not a directory")
        if dest.exists() and not merge:
            if not overwrite:
                raise UsageError(f"{flag} {given} exists; choose another or pass --overwrite")
            replaceable(dest, marker, f"{flag} {given}")
        a = anchor(dest)
        if not a.is_dir():
            raise UsageError(f"{flag} {given}: {a} is not a directory")
        self._checks(flag, given, dest, holds=True)
        return self._add(flag, given, dest, "merge" if merge else "dir", overwrite, marker)

    def _checks(self, flag: str, given: str, dest: Path, holds: bool) -> None:
        where = anchor(dest) if holds else dest.parent
        if not _writable(where):
            raise UsageError(f"{flag} {given}: directory {where} is not writable")
        for t in self.targets:
            if t.dest == dest or t.kind != "file" and t.dest in dest.parents or holds and dest in t.dest.parents:
                raise UsageError(f"{flag} {given} and {t.flag} {t.given} name the same place")
        self._not_source(flag, given, dest, holds)

    def _not_source(self, flag: str, given: str, dest: Path, holds: bool) -> None:
        """The one rule every output meets: it is not, does not lie inside and does not hold
        anything the run reads (``sources``, resolved through links: the model's folder or
        file and every file in it, a hub id's cache folder of any shape, a GGUF and its
        converted folder), nor superweight's own cache (converted GGUFs, fetched models and
        data, verdicts, locks), which only superweight writes."""
        from superweight.paths import cache_root
        from superweight.signing import verdict_dir

        for what, cache in (("verdict cache", real(verdict_dir())), ("cache", real(cache_root()))):
            if dest == cache or cache in dest.parents or holds and dest in cache.parents:
                raise UsageError(f"{flag} {given} is inside superweight's {what} ({cache}); choose another output")
        for s in self.sources:
            if dest == s:
                raise UsageError(f"{flag} {given} is the model being read; choose another output")
            if s in dest.parents and s.is_dir():
                raise UsageError(f"{flag} {given} is inside the model being read ({s}); choose another output")
            if holds and dest in s.parents:
                raise UsageError(f"{flag} {given} holds the model being read ({s}); choose another output")

    def _add(self, flag: str, given: str, dest: Path, kind: str, overwrite: bool = False,
             marker: str | None = None) -> Path:
        lock = Lock(dest)  # refused here when another run writes it
        self.locks.append(lock)
        clear_leftovers(lock)  # what a killed run to this destination recorded, nothing else
        tmp = temp_file(dest, lock) if kind == "file" else temp_dir(dest, lock)
        self.targets.append(Target(flag, given, dest, tmp, kind, overwrite, marker, lock, dest.exists()))
        return tmp

    def reading(self, *paths) -> None:
        """Also refuse outputs onto what the loaded model turned out to read from: its
        directory or file, the converted cache it reads, or a hub id's cache folder."""
        for p in paths:
            if isinstance(p, str) and not os.path.lexists(p):
                p = _hub_folder(p)
            if isinstance(p, (str, Path)) and os.path.lexists(p):
                from superweight.paths import reading

                reading(p)
                self.sources += _with_real_files([p])
        for t in self.targets:
            self._not_source(t.flag, t.given, t.dest, t.kind != "file")

    # -- landing ------------------------------------------------------------------------
    def commit(self) -> None:
        for t in self.targets:  # every check before the first rename, on what is there now
            if t.kind == "dir" and t.dest.exists() and (not t.overwrite or not t.existed):
                raise UsageError(f"{t.flag} {t.given} appeared while this run was working; nothing was written "
                                 "(choose another output" + (" or pass --overwrite)" if not t.overwrite else ")"))
            if t.kind == "dir" and t.dest.exists():
                try:
                    replaceable(t.dest, t.marker, f"{t.flag} {t.given}")
                except UsageError as e:
                    raise UsageError(f"{e} (it changed while this run was working; nothing was written)") from None
            if t.kind == "file" and t.dest.is_dir() or t.kind != "file" and t.dest.exists() and not t.dest.is_dir():
                raise UsageError(f"{t.flag} {t.given} changed type while this run was working; nothing was written")
        for t in self.targets:
            if t.kind == "file":
                publish_file(t.tmp, t.dest)
            elif t.kind == "dir" or not t.dest.exists():
                publish_dir(t.tmp, t.dest, t.overwrite, t.lock, t.marker, t.existed)
            else:
                for f in sorted(t.tmp.iterdir()):
                    publish_file(f, t.dest / f.name)

    def discard(self) -> None:
        for t in self.targets:
            if t.tmp.is_dir():
                shutil.rmtree(t.tmp, ignore_errors=True)
            else:
                t.tmp.unlink(missing_ok=True)
        for lock in self.locks:
            lock.release()
        self.locks, self.targets = [], []


def write_json(obj, dest: str | Path) -> None:
    """JSON to stdout (``-``) or to a staged output path. Not a number (NaN, infinity) is
    refused: it is not JSON, and no reader would take it."""
    text = json.dumps(obj, indent=2, allow_nan=False) + "\n"
    if str(dest) == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    Path(dest).write_text(text)


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the program is so that every output's cleanup runs,
    as Ctrl-C's KeyboardInterrupt does."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _on_signal(signum, frame):
    raise Terminated(signum)


@contextmanager
def signals_end_the_run():
    """SIGTERM and SIGHUP end the run as Ctrl-C does (temporaries removed, no output
    landed); the caller's handlers come back after. Only the main thread can install them."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
