"""Prove once: detection verdicts kept on disk and reused by every command.

A verdict (a ``DetectResult``, or a ``VerifyResult`` for given coordinates) is decided by
the checkpoint's bytes, the detection config (prompts, thresholds, the text's name, window,
windows, seed), the text's source file, the dtype and device type it runs at, the versions
of torch and transformers, and the package version and the digest of its source files (a
changed checkout proves again).
The entry's key is the SHA-256 of those; it lives in ``$SUPERWEIGHT_VERDICT_CACHE`` when set,
else ``$SUPERWEIGHT_CACHE/verdicts`` (default ``~/.cache/superweight/verdicts``), as KEY.json:

    {"key": {...what decided it...}, "computed_at": "...", "seconds": 27.2,
     "payload": {...every field of the result...}, "mac": "..."}

``mac`` is an HMAC-SHA256 of the rest under a secret made on first use and kept beside the
entries (``.secret``, mode 0600). An entry whose MAC does not verify (damaged, edited by
hand, written under another secret), whose key is not the one asked for (foreign), whose
format or version differs, or that does not parse into a result, is recomputed, never
trusted; the run says why. Writes are atomic (temp file, rename) under the entry's lock;
a second run on the same checkpoint waits for the first one's proof, then reads it.

Every part of the key is known before the model is loaded (``key_for``: the library
versions are read from their files, not imported), so ``superweight detect`` answers a
cached verdict from the resolved reference alone (``Verdicts.lookup``), without torch, in about a
tenth of a second; only a miss loads the model.

Checkpoint identity (``models/source.py``): a GGUF or other single file, by the SHA-256 of
its bytes (not its converted cache); a directory, by the SHA-256 of every file a loader
reads from it (each file at its top, hidden ones included, and every shard an index names,
wherever it lies; hashes are remembered against each file's inode, size and times, so they
are computed once); a hub id, through its snapshot in the local hub cache. A model without
files behind it (``LoadedModel.wrap``) is never cached. ``SUPERWEIGHT_VERDICTS=off`` turns
the cache off; deleting the folder clears it.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import sys
import time
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from superweight.signing import known_secret, mac, verifies, write_private
from superweight.signing import secret as make_secret
from superweight.version import VERSION

FORMAT = 2


@dataclass
class Provenance:
    """Where a verdict came from: ``cache`` (an earlier run's), ``computed`` (now, and
    stored), or ``uncached`` (now, not stored: ``note`` says why)."""

    source: str
    computed_at: str | None = None  # when the proof ran (UTC, ISO 8601)
    seconds: float | None = None  # how long the proof took then
    key: str | None = None
    note: str | None = None  # why the cache was not used, or why an entry was not trusted

    def to_dict(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def describe(self) -> str:
        if self.source == "cache":
            return (f"verdict from the cache, computed {self.computed_at} in {self.seconds:.1f} s "
                    f"(--recompute proves it again)")
        what = f"verdict computed now in {self.seconds:.1f} s" if self.seconds is not None else "verdict computed now"
        if self.source == "computed":
            return what + " and cached" + (f" ({self.note})" if self.note else "")
        return what + (f", not cached: {self.note}" if self.note else "")


def cache_dir() -> Path:
    """``$SUPERWEIGHT_VERDICT_CACHE`` when set, else ``$SUPERWEIGHT_CACHE/verdicts``."""
    from superweight.signing import verdict_dir

    return verdict_dir()


# --- checkpoint identity ----------------------------------------------------------------

def checkpoint_fingerprint(lm) -> str | None:
    """The SHA-256 that names the checkpoint's content, or None (nothing on disk to name):
    that of what the user's reference resolved to (``models/source.py``: a GGUF file's bytes,
    not its converted cache), else of the model's source."""
    from superweight.models.source import Source

    if getattr(lm, "origin", None) is not None:
        return lm.origin.fingerprint()
    src = lm.source
    if src is None:
        return None
    p = Path(src)
    local = isinstance(src, Path) or p.exists()
    return Source(None if local else str(src), str(src), p if local else None).fingerprint()


def _libraries() -> dict:
    """The versions of the libraries a verdict depends on, read without importing them
    (importing torch and transformers takes seconds; a cached verdict takes a tenth of one)."""
    return {"torch": _version_of("torch", "version.py"), "transformers": _version_of("transformers", "__init__.py")}


def _version_of(package: str, file: str) -> str | None:
    """``package.__version__`` from the line that sets it in its source (``torch/version.py``,
    ``transformers/__init__.py``), else from its installed metadata; None when not installed."""
    import importlib.util
    import re

    try:
        spec = importlib.util.find_spec(package)
        text = (Path(spec.origin).parent / file).read_text()
        return re.search(r"^__version__\s*(?::\s*str\s*)?=\s*['\"]([^'\"]+)['\"]", text, re.M).group(1)
    except Exception:  # noqa: BLE001 - not laid out as expected: ask the installed metadata
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version(package)
        except PackageNotFoundError:
            return None


def key_for(fingerprint: str, cfg, dtype: str, device: str, kind: str = "detect", extra: dict | None = None) -> dict:
    """What decides a verdict, as a dict: the checkpoint's fingerprint, the config, the text,
    the dtype and device type it runs at (``float32``, ``cpu``), the code and libraries."""
    from superweight.texts import text_identity

    conf = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}
    return {"format": FORMAT, "version": VERSION, "code": code_digest(), "kind": kind, "libraries": _libraries(),
            "checkpoint": fingerprint, "config": conf, "text": text_identity(cfg.text), "dtype": dtype,
            "device": str(device).split(":")[0], **(extra or {})}


def verdict_key(lm, cfg, kind: str = "detect", extra: dict | None = None) -> dict | None:
    """``key_for`` a loaded model (None when the checkpoint cannot be named)."""
    fp = checkpoint_fingerprint(lm)
    if fp is None:
        return None
    p = next(lm.model.parameters())
    return key_for(fp, cfg, str(p.dtype).removeprefix("torch."), lm.device.type, kind, extra)


def code_digest() -> str:
    """SHA-256 of the package's own source files: a change to the code between releases
    (a developer's checkout) invalidates verdicts as a new version does."""
    global _CODE
    if _CODE is None:
        root = Path(__file__).parent
        h = hashlib.sha256()
        for f in sorted(root.rglob("*.py")):
            h.update(f"{f.relative_to(root)}\0".encode() + f.read_bytes())
        _CODE = h.hexdigest()
    return _CODE


_CODE: str | None = None


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


# --- the entry's MAC --------------------------------------------------------------------

# --- results to JSON and back ------------------------------------------------------------

def to_state(obj):
    """Every field of a result (nested dataclasses, tuples, None) as plain JSON values."""
    return json.loads(json.dumps(dataclasses.asdict(obj)))


def _decode(tp, v, ns: dict):
    if v is None:
        return None
    if isinstance(tp, str):
        tp = eval(tp, ns)  # noqa: S307 - a type annotation of our own dataclasses
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _decode(inner[0], v, ns)
    if dataclasses.is_dataclass(tp):
        ns, hints = _hints(tp)
        return tp(**{f.name: _decode(hints[f.name], v[f.name], ns) for f in dataclasses.fields(tp) if f.name in v})
    if origin is list:
        return [_decode(args[0], x, ns) for x in v]
    if origin is tuple:
        return tuple(_decode(args[0], x, ns) for x in v)
    if origin is dict and args:
        return {k: _decode(args[1], x, ns) for k, x in v.items()}
    return v


@functools.lru_cache(maxsize=None)
def _hints(tp) -> tuple[dict, dict]:
    """A dataclass's module namespace and its fields' types, resolved once."""
    mod = __import__(tp.__module__, fromlist=["_"])
    return vars(mod), typing.get_type_hints(tp, vars(mod))


def from_state(cls, state: dict):
    """``to_state``'s inverse for a result type (``DetectResult``, ``VerifyResult``)."""
    return _decode(cls, state, {})


# --- the cache ---------------------------------------------------------------------------

def _off() -> bool:
    return os.environ.get("SUPERWEIGHT_VERDICTS", "").lower() in ("off", "0", "no", "false")


def _read(path: Path, key: dict, secret: bytes, cls) -> tuple[object, dict] | str:
    """(result, entry) from a trusted entry, else why it is not trusted."""
    try:
        entry = json.loads(path.read_text())
        body = {k: entry[k] for k in ("key", "computed_at", "seconds", "payload")}
        signature = entry["mac"]
    except (OSError, ValueError, KeyError, TypeError):
        return "a damaged cache entry"
    if not verifies(secret, body, signature):
        return "a cache entry that does not verify (damaged, edited or foreign)"
    if body["key"] != key:
        return "a cache entry for something else"
    try:
        return from_state(cls, body["payload"]), body
    except Exception:  # noqa: BLE001 - a payload that does not fit the result type
        return "a cache entry that does not parse"


def _write(path: Path, key: dict, secret: bytes, result, seconds: float, computed_at: str) -> None:
    body = {"key": key, "computed_at": computed_at, "seconds": round(seconds, 3), "payload": to_state(result)}
    write_private(path, json.dumps({**body, "mac": mac(secret, body)}))  # a link planted there is replaced


class Verdicts:
    """The verdict cache, one object: ``lookup`` answers from a resolved source before
    anything is loaded; ``proved`` answers for a loaded model, from the cache or by
    computing and storing; each answer carries its ``Provenance`` (where it came from, and
    why the cache was not used). ``detection`` is the one call the commands make; it asks
    the cache once: an entry the lookup found missing or untrusted is not read again after
    the load, unless another run held its lock or a missing one has appeared since (another
    run wrote it meanwhile)."""

    def __init__(self, where: Path | None = None):
        self.where = where or cache_dir()
        self.asked: dict[str, str | None] = {}  # key looked up and not answered -> why (None: no entry)

    def lookup(self, source, cfg, dtype: str | None, device: str, cls, kind: str = "detect",
               extra: dict | None = None) -> tuple[object, Provenance] | str | None:
        """The trusted verdict for a model resolved (``models.source.Source``) but not loaded;
        why an entry is not trusted (then proved again); or None (none, or cannot say before
        loading). Read without the entry's lock: entries land by rename, so a reader sees a
        whole one or none. ``dtype``: the name it would be loaded at (``source.dtype_name``)."""
        if _off() or dtype is None:
            return None
        fp = source.fingerprint()
        if fp is None:
            return None
        key = key_for(fp, cfg, dtype, device, kind, extra)
        name = _digest(key)
        secret = known_secret(self.where)
        path = self.where / f"{name}.json"
        if secret is None or not path.is_file():
            self.asked[name] = None
            return None
        got = _read(path, key, secret, cls)
        if isinstance(got, str):
            self.asked[name] = f"recomputed: {got}"
            return self.asked[name]
        result, body = got
        return result, Provenance("cache", body["computed_at"], body["seconds"], name)

    def proved(self, lm, cfg, compute: Callable[[], object], cls, kind: str = "detect", extra: dict | None = None,
               recompute: bool = False, log: Callable[[str], None] | None = None) -> tuple[object, Provenance]:
        """``compute()``'s result for this checkpoint and config, from the cache when a trusted
        entry is there (unless ``recompute``), else computed now and stored."""
        log = log or (lambda _m: None)

        def run(note=None, source="uncached", key_hash=None):
            t0 = time.perf_counter()
            result = compute()
            return result, Provenance(source, time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                                      time.perf_counter() - t0, key_hash, note)

        if _off():
            return run("SUPERWEIGHT_VERDICTS=off")
        key = verdict_key(lm, cfg, kind, extra)
        if key is None:
            return run("the model has no checkpoint on disk to name it by")
        why: list = []
        secret = make_secret(self.where, why)
        if secret is None:
            import errno

            full = any(getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT) for e in why)
            return run(f"no space left on the device for {self.where}" if full else f"{self.where} is not writable")
        name = _digest(key)
        path = self.where / f"{name}.json"
        from superweight.atomic import locked

        waited = []

        def waiting(pid):
            waited.append(pid)
            who = f" (pid {pid})" if pid else ""
            print(f"superweight: waiting for the run{who} proving this model; its verdict is read when it ends",
                  file=sys.stderr, flush=True)

        try:
            lock = locked(path, wait=True, on_wait=waiting)
            lock.__enter__()
        except OSError:
            return run(f"{self.where} is not writable")
        try:
            note = None
            if recompute:
                note = "recomputed: --recompute"
            elif name in self.asked and not waited and (self.asked[name] is not None or not path.exists()):
                note = self.asked[name]  # looked up already, and no other run wrote it since
            elif path.exists():
                got = _read(path, key, secret, cls)
                if not isinstance(got, str):
                    result, body = got
                    log("verdict from the cache")
                    return result, Provenance("cache", body["computed_at"], body["seconds"], name)
                note = f"recomputed: {got}"
            if note:
                log(note)
            result, prov = run(note, "computed", name)
            try:
                _write(path, key, secret, result, prov.seconds, prov.computed_at)
            except OSError as e:
                prov.source, prov.note = "uncached", f"could not write {path}: {e.strerror or e}"
            return result, prov
        finally:
            lock.__exit__(None, None, None)


def capped(lm, cfg, log=None):
    """``cfg`` with its real-text window capped at the model's context, said once (issue 42: a
    huge --window was capped silently and the verdict keyed by the huge number)."""
    from dataclasses import replace

    from superweight.probe.realtext import context_of

    ctx = context_of(lm.model)
    if ctx is None or cfg.window <= ctx:
        return cfg
    if log:
        log(f"--window {cfg.window:,} is longer than the model's context: windows of {ctx:,} tokens")
    return replace(cfg, window=ctx)


@dataclass
class Detection:
    """A detection as the commands hand it on: the result, where its verdict came from, and
    how it agrees with the index's entry for the model (None: the model has none)."""

    result: object  # DetectResult
    provenance: Provenance
    agreement: dict | None = None

    def to_dict(self) -> dict:
        return {**self.result.to_dict(), "index": self.agreement, "verdict": self.provenance.to_dict()}


def detection(model, cfg=None, log=None, recompute: bool = False, *, load: Callable[[], object] | None = None,
              dtype: str | None = None, device: str = "cpu", verdicts: Verdicts | None = None) -> Detection:
    """``detect.detect`` through the verdict cache, with the index's agreement: what every
    command that needs the super weights asks. ``model``: a loaded model, or a resolved
    source (``models.source.Source``) with ``load`` (called only on a miss) and the
    ``dtype`` name it would be loaded at; a cached verdict is then answered unloaded."""
    from superweight.catalog import compare, known
    from superweight.results import DetectConfig, DetectResult  # no torch: a cached verdict is answered without it

    verdicts = verdicts or Verdicts()
    cfg = cfg or DetectConfig()
    if load is not None:
        got = None if recompute else verdicts.lookup(model, cfg, dtype, device, DetectResult)
        if isinstance(got, tuple):
            result, prov = got
            result.model = model.name  # the model as it is named now (issue 40)
            entry = known(model.index_id)
            return Detection(result, prov, compare(result.coords, entry) if entry else None)
        model = load()
    from superweight.find import detect

    lm = model
    cfg = capped(lm, cfg, log)
    result, prov = verdicts.proved(lm, cfg, lambda: detect(lm, cfg, log=log), DetectResult, "detect",
                                   recompute=recompute, log=log)
    result.model = lm.name  # the model as it is named now, not as the run that proved it named it (issue 40)
    entry = known(lm.index_id)
    return Detection(result, prov, compare(result.coords, entry) if entry else None)


def verify_once(lm, coords, cfg=None, log=None, recompute: bool = False):
    """``verification.verify_report`` through the verdict cache, keyed on the coordinates
    too: (VerifyResult, Provenance)."""
    from superweight.results import DetectConfig
    from superweight.verification import VerifyResult, verify_report

    cfg = capped(lm, cfg or DetectConfig(), log)
    for c in coords:
        lm.adapter.site(c)  # range checks before any hashing
    rep, prov = Verdicts().proved(lm, cfg, lambda: verify_report(lm, coords, cfg, log), VerifyResult, "verify",
                                  {"coords": [str(c) for c in coords]}, recompute=recompute, log=log)
    rep.model = lm.name  # the model read now, not the copy that proved it
    return rep, prov
