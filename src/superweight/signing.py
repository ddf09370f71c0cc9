"""The cache's secret and what it signs: verdicts (verdicts.py) and the remembered hashes of
checkpoint files (models/source.py), so that nothing the cache relies on can be edited by
hand, or written by another user, and still be trusted.

The secret is 32 random bytes in ``verdict_dir()/.secret`` (mode 0600), made once, atomically:
written to a temporary and linked into place, so a full disk or a killed run leaves either no
secret or a whole one. A secret shorter than 32 bytes is refused and replaced (what it
signed is then proven again). Cache files are written without following links
(``write_private``): a link planted in the cache is replaced, never written through.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import tempfile
from pathlib import Path

SECRET_BYTES = 32


def verdict_dir() -> Path:
    """``$SUPERWEIGHT_VERDICT_CACHE`` when set (the test suite starts each session with an
    empty one), else ``$SUPERWEIGHT_CACHE/verdicts``."""
    from superweight.paths import cache_root

    own = os.environ.get("SUPERWEIGHT_VERDICT_CACHE")
    return Path(own) if own else cache_root() / "verdicts"


def known_secret(where: Path | None = None) -> bytes | None:
    """The cache's secret when it has a sound one (None: not made yet, unreadable, or short)."""
    try:
        got = bytes.fromhex(((where or verdict_dir()) / ".secret").read_text().strip())
    except (OSError, ValueError):
        return None
    return got if len(got) >= SECRET_BYTES else None


def secret(where: Path | None = None, why: list | None = None) -> bytes | None:
    """The cache's secret, made on first use (or in place of a short or damaged one); None
    when the folder cannot be written (the OSError appended to ``why``, when given: a full
    disk is said as such, not as "not writable")."""
    where = where or verdict_dir()
    got = known_secret(where)
    if got is not None:
        return got
    f = where / ".secret"
    try:
        where.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".secret.", suffix=".tmp", dir=where)  # mode 0600
        try:
            with os.fdopen(fd, "w") as h:
                h.write(secrets.token_hex(SECRET_BYTES))
                h.flush()
                os.fsync(h.fileno())
            try:
                os.link(tmp, f)  # atomic, and never over another run's secret
            except FileExistsError:
                if known_secret(where) is None:  # a short, empty or damaged one: replaced
                    os.replace(tmp, f)
                    tmp = None
        finally:
            if tmp is not None:
                os.unlink(tmp)
    except OSError as e:
        if why is not None:
            why.append(e)
        return None
    return known_secret(where)


def mac(key: bytes, body) -> str:
    return hmac.new(key, json.dumps(body, sort_keys=True).encode(), hashlib.sha256).hexdigest()


def verifies(key: bytes, body, signature) -> bool:
    return isinstance(signature, str) and hmac.compare_digest(signature, mac(key, body))


def write_private(dest: Path, text: str) -> None:
    """``text`` into the cache file ``dest``, atomically and without following links: a
    temporary beside it (mode 0600), then renamed over ``dest`` itself (a link there is
    replaced, its target untouched)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "w") as h:
            h.write(text)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
