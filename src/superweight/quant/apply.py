"""Apply the tensor quantizer (``rtn.py``) to a model's decoder linear weights.

    report = quantize_(lm, QuantConfig(bits=4, layout="block", size=16384), keep=sw)   # in place
    with quantized(lm, cfg, keep=sw) as report: ...                                   # undone on exit
    save_quantized(lm, cfg, "out/", keep=sw)                                          # a checkpoint

Which weights: every linear weight inside the decoder layers (attention and MLP projections,
fused experts), never embeddings, norms or the output head; ``include``/``exclude`` are
shell-style patterns over parameter names (``*mlp*``, ``*.down_proj.weight``). ``keep``
holds out super weights (``Coord``) exactly, in the stored weight's terms (GPT-2's
transposed ``Conv1D`` weights are quantized as ``[out, in]`` too).
"""
from __future__ import annotations

import fnmatch
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch

from superweight.coords import Coord
from superweight.errors import UsageError
from superweight.models.adapters import Storage
from superweight.models.load import LoadedModel
from superweight.probe.tokens import tokens
from superweight.quant.rtn import QuantConfig, QuantizedTensor, quantize_tensor


@dataclass
class TensorResult:
    name: str
    shape: tuple[int, ...]
    blocks: int
    held: int
    bits_per_weight: float
    rel_error: float  # ||W' - W|| / ||W||
    clip: float | None

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "blocks": self.blocks, "held": self.held,
                "bits_per_weight": round(self.bits_per_weight, 5), "rel_error": self.rel_error, "clip": self.clip}


@dataclass
class QuantResult:
    config: QuantConfig
    keep: list[Coord]
    tensors: list[TensorResult] = field(default_factory=list)
    bits_total: float = 0.0
    numel: int = 0
    seconds: float = 0.0
    engines: dict | None = None  # who serves the written checkpoint (quant/engines.py)

    @property
    def bits_per_weight(self) -> float:
        """Effective bits per weight over the quantized weights (codes, scales, zero points,
        held-out values and their indices)."""
        return self.bits_total / max(self.numel, 1)

    @property
    def held(self) -> int:
        return sum(t.held for t in self.tensors)

    def add(self, name: str, shape, q: QuantizedTensor) -> None:
        rel = (q.sq_error / q.norm_sq) ** 0.5 if q.norm_sq > 0 else 0.0
        self.tensors.append(TensorResult(name, tuple(shape), q.blocks, q.held, q.bits_per_weight, rel, q.clip_value))
        self.bits_total += q.bits_total
        self.numel += q.numel

    def add_dense(self, name: str, t: torch.Tensor) -> None:
        """A chosen weight left unquantized (a packed format's hold-out): all its bits count."""
        bits = torch.finfo(t.dtype).bits
        self.tensors.append(TensorResult(name, tuple(t.shape), 0, t.numel(), float(bits), 0.0, None))
        self.bits_total += t.numel() * bits
        self.numel += t.numel()

    def to_dict(self, tensors: bool = True) -> dict:
        d = {"method": self.config.describe(), "config": self.config.to_dict(),
             "super_weights_held": [str(c) for c in self.keep], "held_out": self.held,
             "quantized_weights": self.numel, "bits_per_weight": round(self.bits_per_weight, 5),
             "seconds": round(self.seconds, 2)}
        if self.engines is not None:
            d["engines"] = self.engines
        if tensors:
            d["tensors"] = [t.to_dict() for t in self.tensors]
        return d


def quantizable(lm: LoadedModel, include=(), exclude=()) -> list[tuple[str, torch.nn.Parameter]]:
    """The decoder linear weights to quantize, filtered by name patterns."""
    params = lm.adapter.linear_weights()
    chosen = [(n, p) for n, p in params
              if (not include or any(fnmatch.fnmatchcase(n, pat) for pat in include))
              and not any(fnmatch.fnmatchcase(n, pat) for pat in exclude)]
    if not chosen:
        pats = " ".join(list(include) + [f"!{p}" for p in exclude])
        raise UsageError(f"no decoder linear weight matches {pats!r} (e.g. {params[0][0]})")
    return chosen


def kept_by_param(lm: LoadedModel, keep) -> dict[str, list[tuple[int, ...]]]:
    out: dict[str, list[tuple[int, ...]]] = {}
    for c in keep:
        site = lm.adapter.site(c)
        out.setdefault(site.param_name, []).append(site.stored_index(c))
    return out


def quantize_param(w: torch.Tensor, cfg: QuantConfig, keep: list[tuple[int, ...]] = (),
                   storage: Storage = Storage(), keep_cols: list[int] = ()) -> tuple[torch.Tensor, QuantizedTensor]:
    """Quantize one stored parameter, laid out as ``storage`` says (``Adapter.storage``).
    ``keep``: stored indices held out. Returns the new stored tensor (same shape, dtype) and
    the quantizer's account."""
    keep2 = [storage.index(tuple(k), w.shape) for k in keep]
    q = quantize_tensor(storage.matrix(w), cfg, keep2, keep_cols if w.dim() == 2 else ())
    return storage.stored(q.dequantized, w.shape).contiguous(), q


def massive_input_columns(lm: LoadedModel, names: list[str], ratio: float, max_cols: int,
                          prompts: tuple[str, ...] | None = None) -> dict[str, list[int]]:
    """For each named 2-D linear weight, the input channels whose max |x| over the prompts is at
    least ``ratio`` times the median channel's: the super activation's channel and its kind.
    Their weight columns multiply the massive activations, so their error is amplified. At
    most ``max_cols`` per weight, largest first. (Fused expert weights get none.)"""
    from superweight.probe.prompts import DEFAULT_PROMPT

    prompts = prompts or (DEFAULT_PROMPT,)
    peak: dict[str, torch.Tensor] = {}
    handles = []
    for name in names:
        mod = lm.model.get_submodule(name.rsplit(".", 1)[0])
        if not isinstance(getattr(mod, "weight", None), torch.Tensor) or mod.weight.dim() != 2:
            continue

        def hook(m, inp, out, name=name):
            x = inp[0].detach().abs().reshape(-1, inp[0].shape[-1]).amax(0).float().cpu()
            peak[name] = x if name not in peak else torch.maximum(peak[name], x)
        handles.append(mod.register_forward_hook(hook))
    from superweight.probe.hooks import hooked
    from superweight.probe.passes import Group, run

    with hooked(handles):  # one pass per prompt through the engine (no padding for the hooks to see), the head at the last token only
        for p in prompts:
            ids = torch.tensor([tokens(lm.tokenizer, p, special=True)], device=lm.device)
            run(lm, [Group(ids, torch.ones_like(ids, dtype=torch.bool), last=True)], reduce=lambda lp: None)
    out = {}
    for name, x in peak.items():
        med = x.median().clamp(min=1e-12)
        top = (x / med).topk(min(max_cols, x.numel()))
        cols = [int(i) for v, i in zip(top.values, top.indices) if v >= ratio]
        if cols:
            out[name] = cols
    return out


def held_columns(lm: LoadedModel, names: list[str], cfg: QuantConfig) -> dict[str, list[int]]:
    if not cfg.act_ratio or not cfg.act_max_cols:
        return {}
    return massive_input_columns(lm, names, cfg.act_ratio, cfg.act_max_cols)


def progress(items, log, what: str, total: int | None = None):
    """``items`` with a tqdm bar over tensors while a caller logs (none when ``log`` is None)."""
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return items
    return tqdm(items, desc=what, unit="tensor", total=total, disable=True if log is None else None, leave=False)


def quantize_(lm: LoadedModel, cfg: QuantConfig, keep=(), include=(), exclude=(), log=None) -> QuantResult:
    """Quantize-dequantize the model's decoder linear weights in place (in memory)."""
    cfg.check()
    chosen = quantizable(lm, include, exclude)
    if any(p.is_meta for _, p in chosen):
        raise UsageError("this model's layers are streamed from disk; quantize it with save_quantized")
    kept = kept_by_param(lm, keep)
    report = QuantResult(cfg, list(keep))
    t0 = time.perf_counter()
    cols = held_columns(lm, [n for n, _ in chosen], cfg)
    with torch.no_grad():
        for name, p in progress(chosen, log, "quantizing"):
            new, q = quantize_param(p.data, cfg, kept.get(name, []), lm.adapter.storage(p), cols.get(name, []))
            report.add(name, p.shape, q)
            p.data.copy_(new)
    report.seconds = time.perf_counter() - t0
    return report


@contextmanager
def quantized(lm: LoadedModel, cfg: QuantConfig, keep=(), include=(), exclude=(), log=None) -> Iterator[QuantResult]:
    """``quantize_`` for the duration of the block; the original weights come back on exit."""
    chosen = quantizable(lm, include, exclude)
    saved = [(p, p.data.clone()) for _, p in chosen]
    try:
        yield quantize_(lm, cfg, keep, include, exclude, log)
    finally:
        with torch.no_grad():
            for p, old in saved:
                p.data.copy_(old)
