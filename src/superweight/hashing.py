"""A file's content identity, remembered (a leaf: imports only leaves). Models, texts and the
verdict cache name what they read by it."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from superweight.paths import cache_root


def content_hash(path: Path) -> str:
    """SHA-256 of a file's bytes, remembered in the cache against (device, inode, size, mtime,
    ctime), which no tool can set back, so a file is read for hashing once, not at every load.
    Each remembered hash is signed with the cache's secret (``signing.py``): one edited by
    hand, or with no signature, is not trusted, and the file is hashed again."""
    from superweight.signing import secret, verifies

    st = path.stat()
    stamp = f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"
    memo = cache_root() / "gguf" / "hashes.json"
    try:
        known = json.loads(memo.read_text())
    except (OSError, ValueError):
        known = {}
    key = str(path.resolve())
    sk = secret()
    entry = known.get(key) if isinstance(known, dict) else None
    if sk is not None and isinstance(entry, dict) and entry.get("stamp") == stamp and \
            verifies(sk, [key, stamp, entry.get("sha256")], entry.get("mac")):
        return entry["sha256"]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    digest = h.hexdigest()
    if sk is None:
        return digest  # no secret to sign with: nothing remembered
    from superweight.signing import mac, write_private

    known = known if isinstance(known, dict) else {}
    known[key] = {"stamp": stamp, "sha256": digest, "mac": mac(sk, [key, stamp, digest])}
    try:
        write_private(memo, json.dumps(known, indent=1))
    except OSError:
        pass  # a read-only cache only costs hashing again next time
    return digest
