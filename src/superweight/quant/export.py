"""Write a quantized model as an ordinary checkpoint that ``transformers`` loads as it is.

The output directory holds dequantized weights in safetensors, each tensor in its stored
dtype (the quantized values are exact in float32; a bfloat16/float16 source rounds them
to its own precision), the source's config, generation config and tokenizer files, and
``superweight-quant.json``: the method, the configuration, the held-out weights and the
effective bits per weight, overall and per tensor.

The output format (``format.Format``, by its name in ``formats.py``) says what it accepts,
stores for each chosen weight and adds; ``plan`` asks it all before any work, and the writer
follows the ``Plan``. ``"compressed-tensors"`` writes the chosen weights packed instead (``packed.py``: int codes in
int32, a scale and zero point per group, ``quantization_config`` in config.json), the
matrices holding the super weights unquantized and listed in its ``ignore``.

From a local safetensors checkpoint (a GGUF file's converted cache included) the work is
tensor by tensor: each tensor is read, quantized if chosen, and written into shards of at
most ``max_shard_bytes``; memory stays near one shard, so models larger than RAM work.
Tensors are read under the model's names (``streaming.Mapped``: a layer's per-expert
tensors stacked into the fused tensor the model holds) and written under the names
``save_pretrained`` gives them, so the output has the layout the in-memory path writes. Other
sources (hub ids, ``.bin``) are quantized in memory and saved with ``save_pretrained``.
Either way the directory appears only when complete (``atomic_dir``); the source is only read.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from safetensors.torch import save_file

from superweight.version import VERSION as __version__
from superweight.atomic import atomic_dir
from superweight.errors import ModelLoadError
from superweight.models.load import LoadedModel
from superweight.quant.rtn import QuantConfig
from superweight.quant.apply import QuantResult, kept_by_param, progress, held_columns, quantize_, quantize_param, quantizable
from superweight.quant import formats
from superweight.quant.format import Format

MANIFEST = "superweight-quant.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".msgpack", ".h5")


class ShardWriter:
    """Collect tensors into safetensors shards of at most ``max_bytes`` (a bigger single
    tensor gets a shard of its own), named and indexed as ``save_pretrained`` does. A full
    shard is written in a background thread while the caller goes on (at most one at a
    time, so at most two shards are in memory); ``close`` waits for it and re-raises its
    error, if any."""

    def __init__(self, directory: Path, max_bytes: int):
        self.dir, self.max = directory, max_bytes
        self.buf: dict[str, torch.Tensor] = {}
        self.size = 0
        self.parts: list[tuple[Path, list[str]]] = []
        self.total = 0
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="shard-writer")
        self._pending = None

    def add(self, name: str, t: torch.Tensor) -> None:
        n = t.numel() * t.element_size()
        if self.buf and self.size + n > self.max:
            self.flush()
        self.buf[name] = t.contiguous()
        self.size += n
        self.total += n

    def _wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def flush(self) -> None:
        if not self.buf:
            return
        self._wait()
        path = self.dir / f".part-{len(self.parts):05d}.safetensors"
        self._pending = self._pool.submit(_save_durably, self.buf, path)
        self.parts.append((path, list(self.buf)))
        self.buf, self.size = {}, 0

    def close(self) -> None:
        try:
            self.flush()
            self._wait()
        finally:
            self._pool.shutdown(wait=True)
        n = len(self.parts)
        if n == 1:
            self.parts[0][0].rename(self.dir / "model.safetensors")
            return
        weight_map = {}
        for i, (path, names) in enumerate(self.parts):
            final = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            path.rename(self.dir / final)
            weight_map.update({k: final for k in names})
        index = {"metadata": {"total_size": self.total}, "weight_map": weight_map}
        (self.dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")

    def abort(self) -> None:
        """Stop without an index (the staging directory is discarded by the caller)."""
        self._pending = None
        self._pool.shutdown(wait=True, cancel_futures=True)


def _touched(t: torch.Tensor) -> torch.Tensor:
    """``t``, its pages faulted in: safetensors hands out tensors over a lazy map of the file,
    which would otherwise be read from disk by whoever first computes on them."""
    if t.numel() and t.is_contiguous():
        t.reshape(-1).view(torch.uint8)[::4096].sum()  # one byte of each page
    return t


def _save_durably(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """``save_file``, then ``fsync``: the shard is on disk before the directory is renamed
    into place, and its writeback runs here, beside the computing, not in one flush at the end."""
    save_file(tensors, str(path), metadata={"format": "pt"})
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def prefetched(groups, read):
    """``(group, [(name, tensor), ...])`` for each group, the next one read (from the disk,
    not just mapped) in a background thread while the caller works on this one: reading,
    computing and writing overlap."""
    groups = list(groups)

    def load(g):
        return [(k, _touched(t)) for k, t in read(g)]

    with ThreadPoolExecutor(1, thread_name_prefix="reader") as pool:
        nxt = pool.submit(load, groups[0]) if groups else None
        for i, g in enumerate(groups):
            got = nxt.result()
            nxt = pool.submit(load, groups[i + 1]) if i + 1 < len(groups) else None
            yield g, got


def compute_threads(threads: int) -> int:
    """Torch's threads while the reader and writer threads run beside the quantizer: one
    fewer, since they keep about one core busy (faulting pages in, copying into the page
    cache). With 2 cores this is 1: the two intra-op threads otherwise spin-wait between
    the small ops and take the I/O threads' core (the streamed 7B: 42 s of user time -> 22,
    and 46 s -> 37 s of wall time with huge pages; docs/benchmarks.md)."""
    return max(1, threads - 1)


def _source_checkpoint(lm: LoadedModel, names: list[str]):
    """The checkpoint to read tensor by tensor: the one the model streams from, or its local
    safetensors directory; None when it lacks a chosen tensor under the model's name."""
    from superweight.models.streaming import Checkpoint, Mapped

    ckpt = lm.adapter.streamer.ckpt if lm.adapter.streamer is not None else None
    src = lm.source
    if ckpt is None and isinstance(src, Path) and src.is_dir() and any(src.glob("*.safetensors")):
        ckpt = Mapped(Checkpoint(src), lm.model)
    return ckpt if ckpt is not None and all(n in ckpt.where for n in names) else None


def _copy_side_files(src: Path, dst: Path) -> None:
    """The source's config, tokenizer and other files, not its weights nor superweight's own
    records (a quantize manifest, a converted GGUF's marker: they speak of the source)."""
    from superweight.models.load import CONVERTED_MARKER

    for f in sorted(src.iterdir()):
        if f.is_file() and not f.name.startswith(".") and not f.name.endswith(WEIGHT_SUFFIXES) \
                and f.name not in ("model.safetensors.index.json", MANIFEST, CONVERTED_MARKER):
            shutil.copy2(f, dst / f.name)


@dataclass
class Plan:
    """One preflight of a write, taken before any model work (the detection of the weights to
    hold out takes half a minute): the format, the config resolved to the model's dtype and
    checked by the format, the chosen weights and their shapes, every one fitting the format.
    ``keeping(coords)`` adds the weights to hold out once they are known."""

    fmt: Format
    cfg: QuantConfig
    shapes: dict[str, tuple[int, ...]]  # chosen weight -> its shape as the model holds it, [out, in]
    dtype: torch.dtype  # the model's, that the chosen weights are written at
    keep: tuple = ()  # the coordinates to hold out
    kept: dict[str, list] = field(default_factory=dict)  # chosen weight -> its coordinates to hold out

    @property
    def names(self) -> list[str]:
        return list(self.shapes)

    @property
    def quantized(self) -> list[str]:
        """The chosen weights the format quantizes (the rest it leaves as they are)."""
        return [n for n in self.shapes if not self.fmt.leaves(n in self.kept)]

    def keeping(self, lm: LoadedModel, keep) -> "Plan":
        return replace(self, keep=tuple(keep), kept=kept_by_param(lm, keep))


def plan(lm: LoadedModel, fmt: Format | str, cfg: QuantConfig, include=(), exclude=(), keep=()) -> Plan:
    """What the write will do, or one line saying what the format refuses: a config it cannot
    store (a model-dtype scale resolved first), a matrix its groups do not fit."""
    fmt = formats.get(fmt) if isinstance(fmt, str) else fmt
    chosen = quantizable(lm, include, exclude)
    dtype = chosen[0][1].dtype if chosen else torch.float32
    cfg = cfg.with_model_dtype(dtype)
    fmt.check(cfg)
    shapes = {n: tuple(p.shape) for n, p in chosen}
    for n, shape in shapes.items():
        fmt.fits(n, shape, cfg)
    return Plan(fmt, cfg, shapes, dtype).keeping(lm, keep)


def save_quantized(lm: LoadedModel, cfg: QuantConfig, out: str | Path, keep=(), include=(), exclude=(),
                   overwrite: bool = False, max_shard_bytes: int = 2 << 30, log=None,
                   format: Format | str = "dequantized") -> QuantResult:
    """Quantize ``lm``'s decoder linear weights and write the whole model to ``out``, which
    appears only once complete (``atomic_dir``: locked, refused if it exists unless
    ``overwrite``, and then only if it is empty or an earlier quantize output: it holds
    ``MANIFEST``)."""
    p = plan(lm, format, cfg, include, exclude, keep)
    with atomic_dir(out, overwrite, marker=MANIFEST) as tmp:
        return write_quantized(lm, p, tmp, max_shard_bytes, log)


def _unique_state(model) -> dict[str, torch.Tensor]:
    """The model's state dict with tied tensors once (the first name; loading re-ties them)."""
    seen, out = set(), {}
    for k, t in model.state_dict().items():
        key = (t.data_ptr(), tuple(t.shape)) if t.device.type != "meta" else (k,)
        if key not in seen:
            seen.add(key)
            out[k] = t
    return out


def _stream(lm, p: Plan, items, cols, report, writer, convert: bool) -> None:
    """The streamed write: each group's tensors under the model's names, the chosen ones as
    the format stores them (or left as they are, where it says so), all written under the
    names save_pretrained gives them."""
    from transformers.core_model_loading import revert_weight_conversion

    quantized = set(p.quantized)
    for _, tensors in items:
        out = {}
        for k, t in tensors:
            if convert and t.dtype.is_floating_point:
                t = t.to(p.dtype)  # GGUF: dequantized float32, written at the model's dtype
            if k not in p.shapes:
                out[k] = t
                continue
            if tuple(t.shape) != p.shapes[k]:
                raise ModelLoadError(f"{k} has shape {tuple(t.shape)} in the checkpoint, the config implies {p.shapes[k]}")
            if k not in quantized:
                report.add_dense(k, t)  # the format's hold-out: the whole matrix as it is
                out[k] = t
                continue

            def quantize(w, k=k):
                return quantize_param(w, p.cfg, p.kept.get(k, []), lm.adapter.storage(w), cols.get(k, []))

            stored, q = p.fmt.store(k, t, p.cfg, quantize)
            report.add(k, t.shape, q)
            out.update(stored)
        for k, t in revert_weight_conversion(lm.model, out).items():
            writer.add(k, t)


def write_quantized(lm: LoadedModel, p: Plan, tmp: Path, max_shard_bytes: int = 2 << 30, log=None) -> QuantResult:
    """``save_quantized``'s work as ``p`` plans it, into the existing empty directory ``tmp``
    (a staging directory)."""
    tmp = Path(tmp)
    names, fmt, cfg = p.names, p.fmt, p.cfg
    ckpt = _source_checkpoint(lm, names)
    if ckpt is None and any(w.is_meta for n, w in lm.adapter.linear_weights() if n in p.shapes):
        raise ModelLoadError("cannot quantize a streamed model whose checkpoint names differ from the model's")
    if ckpt is None and fmt.in_place:
        report = quantize_(lm, cfg, p.keep, names, (), log)
        lm.model.save_pretrained(tmp, max_shard_size=max_shard_bytes)
        lm.tokenizer.save_pretrained(tmp)
    else:
        from superweight.models.streaming import GGUFCheckpoint

        # the source: the checkpoint tensor by tensor, else the model's own state in memory
        safetensors = ckpt is not None and not isinstance(ckpt, GGUFCheckpoint)
        groups = ckpt.groups() if ckpt is not None else [None]
        read = (lambda g: ckpt.read_iter(g)) if ckpt is not None else (lambda g: _unique_state(lm.model).items())
        report = QuantResult(cfg, list(p.keep))
        t0 = time.perf_counter()
        cols = held_columns(lm, names, cfg)
        writer = ShardWriter(tmp, max_shard_bytes)
        # one group per stored tensor, or per set of stored tensors transformers fuses on
        # load (a layer's experts): read under the model's names, quantized as the model
        # holds them, written back under the names save_pretrained would use
        threads = torch.get_num_threads()
        torch.set_num_threads(compute_threads(threads))
        try:
            items = progress(prefetched(groups, read), log, "quantizing", total=len(groups))
            _stream(lm, p, items, cols, report, writer, convert=ckpt is not None and not safetensors)
        except BaseException:
            writer.abort()
            raise
        finally:
            torch.set_num_threads(threads)
        writer.close()
        report.seconds = time.perf_counter() - t0
        if safetensors:
            _copy_side_files(ckpt.dir, tmp)
            if not (tmp / "generation_config.json").is_file():  # engines read it for the sampling defaults
                from transformers import GenerationConfig

                GenerationConfig.from_model_config(lm.model.config).save_pretrained(tmp)
        else:
            from superweight.models.convert import save_config

            save_config(lm.model.config, type(lm.model).__name__, tmp, generation=getattr(lm.model, "generation_config", None))
            lm.tokenizer.save_pretrained(tmp)
        fmt.finish(tmp, lm, cfg, {n.removesuffix(".weight") for n in p.quantized})
    report.engines = fmt.engines(cfg, {n.removesuffix(".weight"): p.shapes[n] for n in p.quantized})
    manifest = {"tool": f"superweight {__version__}", "source": lm.name, "format": fmt.name, **report.to_dict()}
    if fmt.leaves(True):
        manifest["unquantized_matrices"] = sorted(set(names) - set(p.quantized))
    manifest["written"] = sorted({f.name for f in tmp.iterdir()} | {MANIFEST})  # what --overwrite may replace
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return report
