"""Write a checkpoint with chosen weights zeroed or scaled, for engines we do not write.

``superweight edit MODEL --zero L:R:C --scale L:R:C=F --out DIR`` runs the paper's
experiments on whatever serves the result (vLLM or TGI with tensor parallelism, lm-eval's
vLLM backend, llama.cpp). The checkpoint is read through the same loader, streamer and
adapter as every other command: the coordinate names a site, the site names the model
tensor and its index, and the checkpoint reader says where that element is stored
(``locate``, which runs transformers' own load-time conversion, so stacked experts and
GPT-2's transposed weights are followed, not re-implemented).

- Safetensors in, safetensors out, in the source's own layout (same files, names, index
  and headers). Every file is copied byte for byte and the edited elements' bytes are then
  written in place, so memory stays small whatever the model's size. Other files of the
  directory (config, tokenizer, generation config) are copied; weights in other formats
  (``.bin``, ``.gguf``, ...) are not, and neither are ``.safetensors`` files the checkpoint's
  index does not list (Mistral's ``consolidated.safetensors``: no loader reads them beside an
  index, and an unedited copy would still hold the weights); the manifest lists them all.
- GGUF in, GGUF out (``DIR/<same file name>``), written with the ``gguf`` package's writer:
  only the quantization blocks holding an edited weight change, and inside them only that
  weight's code (see ``models.gguf_file``). Where the block's type cannot hold the new
  value, that one tensor is stored at F16 or F32 (whichever holds all its values exactly),
  and the change is recorded in the manifest and in the file's ``superweight.edit`` key
  (which keeps the record of earlier edits of the file, under ``history``).
- A scale that overflows the stored type is refused before anything is written, in one
  line that names the weight, the type and the largest factor that fits.

The result is verified before it lands: read back with ``safetensors`` or ``gguf``'s
reader, every tensor equals the source's except the named elements, which hold their new
values. The directory appears whole or not at all (see output/outputs.py) and holds
``superweight-edit.json``: what changed, from what value, to what, and why.
"""
from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from superweight.coords import Coord
from superweight.errors import ModelLoadError, UsageError
from superweight.models.load import CONVERTED_MARKER, LoadedModel, reader

EDIT_MANIFEST = "superweight-edit.json"
OTHER_WEIGHTS = (".bin", ".pt", ".pth", ".gguf", ".msgpack", ".h5", ".ckpt")


@dataclass(frozen=True)
class Edit:
    """Multiply the weight at ``coord`` by ``factor`` (0: zero it)."""

    coord: Coord
    factor: float = 0.0

    def __post_init__(self):
        if not math.isfinite(self.factor):
            raise UsageError(f"scale factor for {self.coord} must be a finite number, not {self.factor}")

    @classmethod
    def parse_scale(cls, text: str) -> "Edit":
        """``L:R:C=F`` (``L:R:C:E=F`` for an expert)."""
        where, sep, factor = text.partition("=")
        if not sep:
            raise UsageError(f"bad --scale {text!r}: expected LAYER:ROW:COL=FACTOR")
        try:
            f = float(factor)
        except ValueError:
            raise UsageError(f"bad --scale {text!r}: {factor!r} is not a number") from None
        return cls(Coord.parse(where), f)

    @property
    def op(self) -> str:
        return "zero" if self.factor == 0 else f"scale x{self.factor:g}"


@dataclass
class Change:
    coord: Coord
    op: str
    why: str
    tensor: str  # the stored tensor's name in the checkpoint
    index: int  # flat element index into it (row-major, the stored shape)
    before: float
    after: float  # the value stored now, read back from the output
    how: str  # "in place", or "tensor stored as F32 (was Q4_1)"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["coord"] = str(self.coord)
        return d


@dataclass
class EditResult:
    source: str
    format: str  # safetensors or gguf
    files: list[str] = field(default_factory=list)  # written weight files, relative to the output
    changes: list[Change] = field(default_factory=list)
    retyped: dict[str, tuple[str, str]] = field(default_factory=dict)  # tensor -> (old type, new type)
    not_copied: list[str] = field(default_factory=list)
    history: list = field(default_factory=list)  # the records of earlier edits of the source, oldest first
    verified: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict:
        from superweight.quant.engines import DENSE, GGUF

        return {"tool": _tool(), "source": self.source, "format": self.format,
                "engines": {"serve": list(GGUF if self.format == "gguf" else DENSE), "not": {}},
                "files": self.files, "changes": [c.to_dict() for c in self.changes],
                "retyped": [{"tensor": k, "from": a, "to": b,
                             "why": f"{a} cannot hold the new value without changing other weights of its block"}
                            for k, (a, b) in self.retyped.items()],
                "not_copied": self.not_copied, "history": self.history, "verified": self.verified,
                "seconds": round(self.seconds, 2)}


def _tool() -> str:
    from superweight.version import VERSION as __version__

    return f"superweight {__version__}"


def check_edits(edits: list[Edit]) -> None:
    seen = set()
    for e in edits:
        if e.coord in seen:
            raise UsageError(f"coordinate {e.coord} is edited twice; give each weight once")
        seen.add(e.coord)
    if not edits:
        raise UsageError("nothing to edit: give --zero L:R:C or --scale L:R:C=F")


def _targets(lm: LoadedModel, edits: list[Edit]):
    """(edit, model tensor name, index in it, value now) per edit; range-checked by the adapter."""
    out = []
    for e in edits:
        site = lm.adapter.site(e.coord)
        out.append((e, site.param_name, site.stored_index(e.coord), lm.adapter.value(e.coord)))
    return out


def save_edited(lm: LoadedModel, edits: list[Edit], out: str | Path, overwrite: bool = False, why: str = "",
                log=None) -> EditResult:
    """Write ``lm``'s checkpoint with ``edits`` applied to the directory ``out``, which appears
    only once written and verified (``atomic_dir``: locked, refused if it exists unless
    ``overwrite``, and then only if it is empty or an earlier edit: it holds
    ``EDIT_MANIFEST``). ``lm``: loaded with ``load(ref, stream=True)``."""
    from superweight.atomic import atomic_dir

    check_edits(edits)
    with atomic_dir(out, overwrite, marker=EDIT_MANIFEST) as tmp:
        return edit_checkpoint(lm, edits, tmp, why, log)


def _stored_quantized(source) -> str | None:
    """The quant_method of ``source`` when it was saved quantized and is read back dequantized
    (transformers drops the config's ``quantization_config`` once it has dequantized one, so
    its config.json tells); None otherwise."""
    from superweight.quant.formats import readers

    config = Path(source) / "config.json" if isinstance(source, (str, Path)) else None
    try:
        qc = json.loads(config.read_text()).get("quantization_config") if config and config.is_file() else None
    except (OSError, ValueError, AttributeError):
        return None
    rdr = reader(qc, readers())
    return rdr.quant_method if rdr is not None else None


def edit_checkpoint(lm: LoadedModel, edits: list[Edit], out: Path, why: str = "", log=None) -> EditResult:
    """Write ``lm``'s checkpoint with ``edits`` applied into the existing, empty directory
    ``out`` (a staging directory), verify it, and write the manifest. ``lm`` must be loaded
    streamed (``load(..., stream=True)``): the checkpoint reader is the streamer's."""
    from superweight.models.streaming import GGUFCheckpoint

    check_edits(edits)
    streamer = lm.adapter.streamer
    if streamer is None:
        method = _stored_quantized(lm.source)
        raise ModelLoadError("edit reads a local safetensors directory or a GGUF file" + (
            f"; {lm.name} is a {method} checkpoint, read dequantized: edit the original, then quantize it"
            if method else ""))
    t0 = time.perf_counter()
    targets = _targets(lm, edits)
    gguf = isinstance(streamer.ckpt, GGUFCheckpoint)
    report = EditResult(lm.name, "gguf" if gguf else "safetensors")
    out = Path(out)
    if gguf:
        report.history = _history(streamer.ckpt.reader)
        _edit_gguf(streamer.ckpt, targets, out, report, why, log)
    else:
        report.history = _earlier(streamer.ckpt.dir / EDIT_MANIFEST)
        _edit_safetensors(streamer.ckpt, targets, out, report, why, log)
    report.verified = True
    report.seconds = time.perf_counter() - t0
    manifest = report.to_dict()
    manifest["written"] = sorted({p.name for p in out.iterdir()} | {EDIT_MANIFEST})  # what --overwrite may replace
    (out / EDIT_MANIFEST).write_text(json.dumps(manifest, indent=2, allow_nan=False) + "\n")
    return report


def check_fits(e: Edit, before: float, dtype: torch.dtype, tensor: str) -> None:
    """Refuse a scale whose result the stored type cannot hold (it would become inf)."""
    if e.factor == 0 or before == 0:
        return
    top = torch.finfo(dtype).max
    new = torch.tensor([before * e.factor], dtype=torch.float64)
    if abs(before * e.factor) <= top and torch.isfinite(new.to(dtype)).all():
        return
    fits = top / abs(before)
    fits = math.floor(fits / 10 ** (math.floor(math.log10(fits)) - 3)) * 10 ** (math.floor(math.log10(fits)) - 3)
    raise UsageError(f"--scale {e.coord}={e.factor:g}: {tensor} is stored as {str(dtype).removeprefix('torch.')}, "
                     f"and {before:g} x {e.factor:g} overflows it; the largest factor that fits is {fits:.4g}")


def _target(before: float, e: Edit) -> float:
    """The new value: +0.0 for a zeroed weight (not -0.0 from a negative one), else before x factor."""
    return 0.0 if e.factor == 0 else before * e.factor


def _why(e: Edit, why: str) -> str:
    return why or ("zeroed with superweight edit --zero" if e.factor == 0 else f"scaled x{e.factor:g} with superweight edit --scale")


# -- safetensors ---------------------------------------------------------------------------

def _edit_safetensors(mapped, targets, out: Path, report: EditResult, why: str, log) -> None:
    inner = mapped.inner
    patches: dict[Path, list[tuple[int, bytes, str, int, float, Edit, float]]] = {}
    for e, name, idx, before in targets:
        key, flat = mapped.locate(name, idx)
        f, off, size = inner.span(key)
        dtype = inner.meta(key)[0]
        check_fits(e, before, dtype, key)
        width = torch.empty((), dtype=dtype).element_size()
        new = torch.tensor([_target(before, e)], dtype=torch.float32).to(dtype)
        stored = _element(f, off + flat * width, dtype)
        if stored != torch.tensor([before], dtype=torch.float32).to(dtype).item():
            raise ModelLoadError(f"{key}[{flat}] holds {stored}, but the model reads {before} at {e.coord}; "
                                 "the checkpoint's layout is not the one transformers loads")
        patches.setdefault(f, []).append((off + flat * width, new.view(torch.uint8).numpy().tobytes(), key, flat,
                                          before, e, float(new.item())))
    src = mapped.dir
    files = sorted(set(inner.where.values()))
    for i, f in enumerate(files):
        rel = f.relative_to(src) if f.is_relative_to(src) else Path(f.name)
        dest = out / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if log is not None:
            log(f"writing {rel} ({i + 1}/{len(files)})")
        shutil.copyfile(f, dest)
        with open(dest, "r+b") as h:
            for off, data, *_ in patches.get(f, []):
                h.seek(off)
                h.write(data)
        report.files.append(str(rel))
    for p in sorted(src.iterdir()):
        if not p.is_file() or p.name.startswith(".") or p in files or p.name in (EDIT_MANIFEST, CONVERTED_MARKER):
            continue  # superweight's own records of the source (an edit's manifest, a converted GGUF's marker)
        if p.name.endswith(OTHER_WEIGHTS + (".safetensors",)):
            report.not_copied.append(p.name)  # another format, or weights the index does not list
            continue
        shutil.copy2(p, out / p.name)
    for f, ps in patches.items():
        for _, _, key, flat, before, e, after in ps:
            report.changes.append(Change(e.coord, e.op, _why(e, why), key, flat, before, after, "in place"))
    _verify_safetensors(src, out, files, patches, log)


def _element(path: Path, offset: int, dtype: torch.dtype) -> float:
    width = torch.empty((), dtype=dtype).element_size()
    with open(path, "rb") as h:
        h.seek(offset)
        raw = bytearray(h.read(width))
    return torch.frombuffer(raw, dtype=dtype).item()


def _verify_safetensors(src: Path, out: Path, files: list[Path], patches: dict, log) -> None:
    """Read both checkpoints with ``safetensors``: every tensor equal, except the edited
    elements, which hold their new values."""
    from safetensors import safe_open

    for f in files:
        rel = f.relative_to(src) if f.is_relative_to(src) else Path(f.name)
        want: dict[str, dict[int, float]] = {}
        for _, _, key, flat, _, _, after in patches.get(f, []):
            want.setdefault(key, {})[flat] = after
        if log is not None:
            log(f"verifying {rel}")
        with safe_open(str(f), framework="pt") as a, safe_open(str(out / rel), framework="pt") as b:
            if sorted(a.keys()) != sorted(b.keys()):
                raise ModelLoadError(f"verification failed: {rel} does not hold the source's tensors")
            for k in a.keys():
                x, y = a.get_tensor(k), b.get_tensor(k)
                diff = (x != y).reshape(-1)
                if x.dtype.is_floating_point:
                    diff &= ~(torch.isnan(x) & torch.isnan(y)).reshape(-1)
                changed = set(torch.nonzero(diff).reshape(-1).tolist())
                expected = {i for i, v in want.get(k, {}).items() if x.reshape(-1)[i].item() != v}
                if changed != expected or any(y.reshape(-1)[i].item() != v for i, v in want.get(k, {}).items()):
                    raise ModelLoadError(f"verification failed: {k} in {rel} differs from the source "
                                         f"at {len(changed)} element(s), {len(expected)} expected")


# -- GGUF ---------------------------------------------------------------------------------

def _edit_gguf(ckpt, targets, out: Path, report: EditResult, why: str, log) -> None:
    from gguf import GGMLQuantizationType

    from superweight.models import gguf_file

    by_tensor: dict[str, list] = {}
    tensors = {}
    for e, name, idx, before in targets:
        t, flat = ckpt.locate(name, idx)
        check_fits(e, before, torch.float32, t.name)  # a block that cannot hold it is stored as F32
        tensors[t.name] = t
        by_tensor.setdefault(t.name, []).append((e, flat, before))
    replace, plan = {}, []
    for tname, items in by_tensor.items():
        t = tensors[tname]
        stored = gguf_file.values(t).reshape(-1)
        data = np.array(t.data, copy=True)
        raw = data.reshape(-1).view(np.uint8)
        placed = True
        for e, flat, before in items:
            if stored[flat] != np.float32(before):
                raise ModelLoadError(f"{tname}[{flat}] holds {stored[flat]}, but the model reads {before} at {e.coord}")
            patch = gguf_file.set_in_place(_View(data, t.tensor_type), flat, float(np.float32(_target(before, e))))
            if patch is None:
                placed = False
                break
            off, new = patch
            raw[off:off + len(new)] = np.frombuffer(new, dtype=np.uint8)
        if placed:
            replace[tname] = (data, t.tensor_type)
            how = "in place"
        else:
            vals = stored.copy()
            for e, flat, before in items:
                vals[flat] = np.float32(_target(before, e))
            kind = gguf_file.float_type_for(vals)
            vals = vals.reshape(gguf_file.element_shape(t)).astype(np.float16 if kind == "F16" else np.float32)
            replace[tname] = (vals, GGMLQuantizationType[kind])
            report.retyped[tname] = (t.tensor_type.name, kind)
            how = f"tensor stored as {kind} (was {t.tensor_type.name})"
        for e, flat, before in items:
            plan.append((e, tname, flat, before, how))
    name = ckpt.dir.name
    manifest = {"tool": _tool(),
                "changes": [{"coord": str(e.coord), "op": e.op, "tensor": tn, "index": fl, "before": b, "how": h}
                            for e, tn, fl, b, h in plan],
                "history": report.history}
    if log is not None:
        log(f"writing {name}")
    gguf_file.write_copy(ckpt.reader, out / name, replace, {"superweight.edit": json.dumps(manifest)}, log)
    report.files.append(name)
    after = _verify_gguf(ckpt.reader, out / name, {tn: [(fl, np.float32(_target(b, e))) for e, t2, fl, b, _ in plan
                                                       if t2 == tn] for tn in by_tensor}, report.retyped)
    for e, tname, flat, before, how in plan:
        report.changes.append(Change(e.coord, e.op, _why(e, why), tname, flat, before, after[(tname, flat)], how))


def _history(reader) -> list:
    """The ``superweight.edit`` records of the edits a GGUF source already went through, oldest
    first (a record that is not our JSON is kept as the text it is)."""
    field = reader.fields.get("superweight.edit")
    return [] if field is None else _records(field.contents())


def _earlier(manifest: Path) -> list:
    """The same for a safetensors source: from its ``superweight-edit.json``."""
    try:
        return _records(manifest.read_text())
    except (OSError, UnicodeDecodeError):
        return []


def _records(text: str) -> list:
    try:
        earlier = json.loads(text)
    except ValueError:
        return [text]
    if not isinstance(earlier, dict):
        return [earlier]
    before = earlier.pop("history", [])
    return [*(before if isinstance(before, list) else [before]), earlier]


class _View:
    """A tensor's raw data and type, shaped like a ``gguf`` reader tensor."""

    def __init__(self, data, tensor_type):
        self.data, self.tensor_type = data, tensor_type


def _verify_gguf(reader, path: Path, want: dict[str, list[tuple[int, float]]], retyped: dict) -> dict:
    """Read the written file with ``gguf``'s reader: the same keys (plus ours) and tensors,
    every tensor byte-equal to the source except the edited ones, whose values differ from
    the source's exactly at the named elements. Returns the stored new values."""
    from superweight.models import gguf_file

    new = gguf_file.reader(path)
    fail = f"verification of {path.name} failed"
    if [t.name for t in new.tensors] != [t.name for t in reader.tensors]:
        raise ModelLoadError(f"{fail}: its tensors differ from the source's")
    extra = set(new.fields) - set(reader.fields)
    if extra - {"superweight.edit"}:
        raise ModelLoadError(f"{fail}: unexpected keys {sorted(extra)}")
    got = {}
    for a, b in zip(reader.tensors, new.tensors):
        if a.name not in want:
            if a.tensor_type != b.tensor_type or not np.array_equal(np.asarray(a.data), np.asarray(b.data)):
                raise ModelLoadError(f"{fail}: {a.name} is not a byte copy of the source's")
            continue
        expect = (a.tensor_type.name, b.tensor_type.name) if a.name in retyped else None
        if (expect is None and a.tensor_type != b.tensor_type) or (expect and retyped[a.name] != expect):
            raise ModelLoadError(f"{fail}: {a.name} has type {b.tensor_type.name}")
        x, y = gguf_file.values(a).reshape(-1), gguf_file.values(b).reshape(-1)
        changed = set(np.flatnonzero(x != y).tolist())
        expected = {i for i, v in want[a.name] if x[i] != v}
        if changed != expected or any(y[i] != v for i, v in want[a.name]):
            raise ModelLoadError(f"{fail}: {a.name} differs from the source at {len(changed)} element(s), "
                                 f"{len(expected)} expected")
        got.update({(a.name, i): float(y[i]) for i, _ in want[a.name]})
    return got
