"""Write a quantized model as an ordinary checkpoint that ``transformers`` loads as it is.

The output directory holds dequantized weights in safetensors, each tensor in its stored
dtype (the quantized values are exact in float32; a bfloat16/float16 source rounds them
to its own precision), the source's config, generation config and tokenizer files, and
``superweight-quant.json``: the method, the configuration, the held-out weights and the
effective bits per weight, overall and per tensor.

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
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from superweight import __version__
from superweight.output.atomic import atomic_dir
from superweight.errors import ModelLoadError
from superweight.models.load import LoadedModel
from superweight.quant.rtn import QuantConfig
from superweight.quant.apply import QuantReport, _kept_by_param, _loop, held_columns, quantize_, quantize_param, targets

MANIFEST = "superweight-quant.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".msgpack", ".h5")


class ShardWriter:
    """Collect tensors into safetensors shards of at most ``max_bytes`` (a bigger single
    tensor gets a shard of its own), named and indexed as ``save_pretrained`` does."""

    def __init__(self, directory: Path, max_bytes: int):
        self.dir, self.max = directory, max_bytes
        self.buf: dict[str, torch.Tensor] = {}
        self.size = 0
        self.parts: list[tuple[Path, list[str]]] = []
        self.total = 0

    def add(self, name: str, t: torch.Tensor) -> None:
        n = t.numel() * t.element_size()
        if self.buf and self.size + n > self.max:
            self.flush()
        self.buf[name] = t.contiguous()
        self.size += n
        self.total += n

    def flush(self) -> None:
        if not self.buf:
            return
        path = self.dir / f".part-{len(self.parts):05d}.safetensors"
        save_file(self.buf, str(path), metadata={"format": "pt"})
        self.parts.append((path, list(self.buf)))
        self.buf, self.size = {}, 0

    def close(self) -> None:
        self.flush()
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
    for f in sorted(src.iterdir()):
        if f.is_file() and not f.name.startswith(".") and not f.name.endswith(WEIGHT_SUFFIXES) \
                and f.name != "model.safetensors.index.json" and f.name != MANIFEST:
            shutil.copy2(f, dst / f.name)


def save_quantized(lm: LoadedModel, cfg: QuantConfig, out: str | Path, keep=(), include=(), exclude=(),
                   overwrite: bool = False, max_shard_bytes: int = 2 << 30, log=None) -> QuantReport:
    """Quantize ``lm``'s decoder linear weights and write the whole model to ``out``, which
    appears only once complete (``atomic_dir``: locked, refused if it exists unless
    ``overwrite``)."""
    cfg.check()
    with atomic_dir(out, overwrite) as tmp:
        return write_quantized(lm, cfg, tmp, keep, include, exclude, max_shard_bytes, log)


def write_quantized(lm: LoadedModel, cfg: QuantConfig, tmp: Path, keep=(), include=(), exclude=(),
                    max_shard_bytes: int = 2 << 30, log=None) -> QuantReport:
    """``save_quantized``'s work, into the existing empty directory ``tmp`` (a staging directory)."""
    cfg.check()
    tmp = Path(tmp)
    chosen = targets(lm, include, exclude)
    names = [n for n, _ in chosen]
    shapes = {n: tuple(p.shape) for n, p in chosen}
    kept = _kept_by_param(lm, keep)
    ckpt = _source_checkpoint(lm, names)
    if ckpt is None:
        if any(p.is_meta for _, p in chosen):
            raise ModelLoadError("cannot quantize a streamed model whose checkpoint names differ from the model's")
        report = quantize_(lm, cfg, keep, include, exclude, log)
        lm.model.save_pretrained(tmp, max_shard_size=max_shard_bytes)
        lm.tokenizer.save_pretrained(tmp)
    else:
        from transformers.core_model_loading import revert_weight_conversion

        from superweight.models.streaming import GGUFCheckpoint

        safetensors = not isinstance(ckpt, GGUFCheckpoint)
        dtype = next((p.dtype for _, p in chosen), torch.float32)
        report = QuantReport(cfg, list(keep))
        t0 = time.perf_counter()
        cols = held_columns(lm, names, cfg)
        writer = ShardWriter(tmp, max_shard_bytes)
        chosen_set = set(names)
        # one group per stored tensor, or per set of stored tensors transformers fuses on
        # load (a layer's experts): read under the model's names, quantized as the model
        # holds them, written back under the names save_pretrained would use
        for group in _loop(ckpt.groups(), log, "quantizing"):
            out = {}
            for k, t in ckpt.read_iter(group):
                if not safetensors and t.dtype.is_floating_point:
                    t = t.to(dtype)  # GGUF: dequantized float32, written at the model's dtype
                if k in chosen_set:
                    if tuple(t.shape) != shapes[k]:
                        raise ModelLoadError(f"{k} has shape {tuple(t.shape)} in the checkpoint, the config implies {shapes[k]}")
                    new, q = quantize_param(t, cfg, kept.get(k, []), lm.adapter.layout(t), cols.get(k, []))
                    report.add(k, t.shape, q)
                    t = new
                out[k] = t
            for k, t in revert_weight_conversion(lm.model, out).items():
                writer.add(k, t)
            del out
        writer.close()
        report.seconds = time.perf_counter() - t0
        if safetensors:
            _copy_side_files(ckpt.dir, tmp)
        else:
            lm.model.config.save_pretrained(tmp)
            lm.tokenizer.save_pretrained(tmp)
    manifest = {"tool": f"superweight {__version__}", "source": lm.name, **report.to_dict()}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return report
