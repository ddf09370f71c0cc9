"""Compare weight quantizers on one model: perplexity (and optionally zero-shot accuracy)
against effective bits per weight. The Pareto front is the result.

Methods (every one applied to the same decoder linear weights, undone after each):
- ``RTN blocks``: plain asymmetric min-max RTN in the paper's blocks (flattened runs of B);
- ``paper``: the paper's recipe in the same blocks: clip each block at mean+9*std of |w|,
  quantize, restore the super weights;
- ``RTN groups``: plain RTN in groups of G input channels per row;
- ``ours``: RTN in groups, holding out exactly the super weights and the weight columns of
  massive input channels (the super activation's channel and its kind, ``act_ratio``);
  ``ours blocks``: the same hold-out in the paper's blocks;
- ``HQQ``: the ``hqq`` package's half-quadratic quantizer (data-free, optimizes scale and
  zero), 4-bit codes with float16 scale and zero per group of G (``axis=1``: groups of G
  consecutive elements of the flattened row-major weight, hqq's own convention), when
  ``hqq`` is installed (``pip install superweight[hqq]``).
- ``quanto``: ``optimum-quanto``'s weight-only ``qint4``/``qint2`` (its ``MaxOptimizer``:
  asymmetric min-max with a float scale and shift per group), through its own ``QLinear``, so
  its group rule is its own: 128 input channels, reduced by 32 until it divides the row (96
  for SmolLM2's 576-wide inputs). It has no 3-bit type. Its scale and shift are stored at
  the weight's dtype; they are counted at 16 bits each, as for a model served in bfloat16,
  quanto's normal case (this project's models run in float32, which would count 32).
Sizes are per method; effective bits per weight count codes, scales, zero points and the
held-out values with their indices (``rtn.py``). Quantization wall time is reported.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from superweight.coords import Coord
from superweight.probe.measures import perplexity
from superweight.errors import UsageError
from superweight.models.load import LoadedModel
from superweight.quant.rtn import Clip, QuantConfig
from superweight.quant.apply import quantizable, quantized

WHOLE = None
BLOCK_SIZES = (64, 256, 1024, 4096, 16384, 65536, WHOLE)
GROUP_SIZES = (32, 64, 128, 256)
HQQ_GROUPS = (32, 64, 128)
QUANTO_BITS = (2, 4, 8)  # optimum-quanto's weight types: qint2, qint4, qint8
ACT_RATIO = 10.0


@dataclass
class Point:
    method: str
    bits: int
    size: int | None  # block/group size; None = whole tensor
    bits_per_weight: float
    seconds: float  # quantization wall time
    perplexity: dict[str, float] = field(default_factory=dict)
    accuracy: dict[str, float] = field(default_factory=dict)
    config: dict | None = None

    @property
    def mean_accuracy(self) -> float | None:
        return sum(self.accuracy.values()) / len(self.accuracy) if self.accuracy else None

    def to_dict(self) -> dict:
        return {"method": self.method, "bits": self.bits, "size": self.size,
                "bits_per_weight": round(self.bits_per_weight, 4), "seconds": round(self.seconds, 2),
                "perplexity": self.perplexity, "accuracy": self.accuracy, "mean_accuracy": self.mean_accuracy,
                "config": self.config}


def plan(bits=(3, 4), block_sizes=BLOCK_SIZES, group_sizes=GROUP_SIZES, hqq_groups=HQQ_GROUPS,
         act_ratio: float = ACT_RATIO, quanto: bool = True) -> list[tuple[str, int, int | None, QuantConfig | None, bool]]:
    """(method, bits, size, config or None for an outside quantizer (HQQ, quanto), hold out
    the super weights) per point. ``quanto``: add quanto at the widths it has."""
    out = []
    for b in bits:
        for B in block_sizes:
            out.append(("RTN blocks", b, B, QuantConfig(b, "block", B), False))
            out.append(("paper", b, B, QuantConfig(b, "block", B, clip=Clip("z", 9.0), hold="restore"), True))
            out.append(("ours blocks", b, B, QuantConfig(b, "block", B, act_ratio=act_ratio), True))
        for G in group_sizes:
            out.append(("RTN groups", b, G, QuantConfig(b, "group", G), False))
            out.append(("ours", b, G, QuantConfig(b, "group", G, act_ratio=act_ratio), True))
        for G in hqq_groups:
            out.append(("HQQ", b, G, None, False))
        if quanto and b in QUANTO_BITS:
            out.append(("quanto", b, 128, None, False))
    return out


def hqq_available() -> bool:
    try:
        import hqq.core.quantize  # noqa: F401
    except Exception:  # noqa: BLE001 - missing, or its optional CUDA bits failing to import
        return False
    return True


def quanto_available() -> bool:
    try:
        import optimum.quanto  # noqa: F401
    except Exception:  # noqa: BLE001 - missing, or failing to import against this torch
        return False
    return True


def quanto_quantize_(lm: LoadedModel, bits: int, group: int = 128) -> tuple[float, float]:
    """optimum-quanto's weight-only quantization of every decoder linear weight, in place, as
    quanto's ``QLinear`` quantizes it (``group`` is quanto's, fixed at 128 and reduced to fit;
    the argument is only the label); returns (effective bits per weight, seconds)."""
    from optimum.quanto import qint2, qint4, qint8
    from optimum.quanto.nn import QLinear

    qtype = {2: qint2, 4: qint4, 8: qint8}[bits]
    total = numel = 0
    t0 = time.perf_counter()
    with torch.no_grad():
        for name, p in quantizable(lm):
            mod = lm.model.get_submodule(name.rsplit(".", 1)[0])
            if not isinstance(mod, torch.nn.Linear):
                raise UsageError(f"quanto quantizes torch.nn.Linear modules; {name} belongs to a {type(mod).__name__}")
            qm = QLinear.from_module(mod, weights=qtype)  # shares mod's weight; quantizes on read
            deq = qm.qweight.dequantize()
            G = qm.weight_group_size
            groups = p.shape[0] if G is None else p.numel() // G  # None: one scale per output row
            p.data.copy_(deq.to(p.dtype))
            total += p.numel() * bits + groups * (16 if bits == 8 else 32)  # qint8: a scale only
            numel += p.numel()
    return total / numel, time.perf_counter() - t0


OUTSIDE = {"HQQ": (hqq_available, "hqq"), "quanto": (quanto_available, "optimum-quanto")}


def hqq_quantize_(lm: LoadedModel, bits: int, group: int) -> tuple[float, float]:
    """HQQ every decoder linear weight in place (float16 scale and zero, as hqq stores them);
    returns (effective bits per weight, seconds)."""
    from hqq.core.quantize import Quantizer

    total = numel = 0
    t0 = time.perf_counter()
    with torch.no_grad():
        for _, p in quantizable(lm):
            w = p.data.float()
            w2 = w.reshape(-1, w.shape[-1]) if w.dim() == 3 else w
            if w2.numel() % group:
                raise UsageError(f"HQQ group {group} does not divide a weight of {w2.numel()} elements")
            q, meta = Quantizer.quantize(w2, nbits=bits, group_size=group, axis=1, bitpack=False, optimize=True,
                                         compute_dtype=torch.float32, device="cpu" if w.device.type == "cpu" else str(w.device))
            meta["compute_dtype"] = torch.float32
            meta["scale"] = meta["scale"].half().float()
            meta["zero"] = meta["zero"].half().float()
            p.data.copy_(Quantizer.dequantize(q, meta).reshape(p.shape).to(p.dtype))
            total += w.numel() * bits + (w.numel() // group) * 32
            numel += w.numel()
    return total / numel, time.perf_counter() - t0


def measure(lm: LoadedModel, texts: dict[str, str], seqlen: int, max_windows: int | None,
            tasks=(), limit=None, log=None) -> tuple[dict[str, float], dict[str, float]]:
    ppl = {k: perplexity(lm, lm.tokenizer, t, seqlen, max_windows) for k, t in texts.items()}
    acc = {}
    if tasks:
        from superweight.paper import zeroshot

        acc = zeroshot.evaluate(lm, tasks, limit=limit, log=log)
    return ppl, acc


def sweep(lm: LoadedModel, coords: list[Coord], texts: dict[str, str], points=None, seqlen: int = 1024,
          max_windows: int | None = 4, tasks=(), limit=None, log=None) -> tuple[Point, list[Point]]:
    """Full precision, then every planned point; returns (reference, points)."""
    log = log or (lambda _m: None)
    if lm.adapter.streamer is not None:
        raise UsageError("the comparison needs the model in memory: load it with stream=False")
    points = plan() if points is None else points
    for method, (available, package) in OUTSIDE.items():
        if any(cfg is None and m == method for m, _, _, cfg, _ in points) and not available():
            log(f"{package} is not installed: {method} points skipped (pip install {package})")
            points = [p for p in points if p[3] is not None or p[0] != method]
    for _, _, _, cfg, _ in points:
        if cfg is not None:
            cfg.check()
    log("full precision")
    ppl, acc = measure(lm, texts, seqlen, max_windows, tasks, limit, log)
    ref = Point("full precision", 32, None, float(torch.finfo(next(lm.model.parameters()).dtype).bits), 0.0, ppl, acc)
    out = []
    for i, (method, b, size, cfg, keep_sw) in enumerate(points):
        label = f"{method} {b}-bit {'whole' if size is None else size}"
        log(f"[{i + 1}/{len(points)}] {label}")
        if cfg is None:
            saved = [(p, p.data.clone()) for _, p in quantizable(lm)]
            try:
                bpw, secs = (hqq_quantize_ if method == "HQQ" else quanto_quantize_)(lm, b, size)
                ppl, acc = measure(lm, texts, seqlen, max_windows, tasks, limit, log)
            finally:
                with torch.no_grad():
                    for p, old in saved:
                        p.data.copy_(old)
            out.append(Point(method, b, size, bpw, secs, ppl, acc, {"group": size, "nbits": b}))
            continue
        with quantized(lm, cfg, keep=coords if keep_sw else ()) as rep:
            ppl, acc = measure(lm, texts, seqlen, max_windows, tasks, limit, log)
        out.append(Point(method, b, size, rep.bits_per_weight, rep.seconds, ppl, acc,
                         {**cfg.to_dict(), "super_weights_held": [str(c) for c in (coords if keep_sw else [])]}))
    return ref, out


def markdown(ref: Point, points: list[Point]) -> str:
    texts = list(ref.perplexity)
    has_acc = bool(ref.accuracy)
    head = ["method", "bits", "size", "bits/weight", *[f"ppl {t}" for t in texts]]
    head += ["mean acc"] if has_acc else []
    head += ["quant s"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def row(p: Point) -> str:
        cells = [p.method, str(p.bits), "whole" if p.size is None else str(p.size), f"{p.bits_per_weight:.3f}"]
        cells += [f"{p.perplexity[t]:.2f}" if p.perplexity[t] < 1e5 else f"{p.perplexity[t]:.3g}" for t in texts]
        if has_acc:
            cells.append(f"{100 * p.mean_accuracy:.2f}" if p.mean_accuracy is not None else "")
        cells.append(f"{p.seconds:.1f}")
        return "| " + " | ".join(cells) + " |"

    rows.append(row(ref))
    for p in sorted(points, key=lambda p: (p.bits, p.method, p.bits_per_weight)):
        rows.append(row(p))
    return "\n".join(rows)


def pareto(points: list[Point], text: str) -> list[Point]:
    """Points no other point beats on both bits per weight and perplexity."""
    front = []
    for p in sorted(points, key=lambda p: (p.bits_per_weight, p.perplexity[text])):
        if not front or p.perplexity[text] < front[-1].perplexity[text]:
            front.append(p)
    return front


@dataclass
class SweepResult:
    """What ``superweight quant-compare`` reports; ``to_dict`` is its JSON."""

    model: str
    super_weights: list[Coord]
    seqlen: int
    max_windows: int | None
    tasks: list[str]
    limit: int | None
    reference: Point
    points: list[Point]
    w8a8: dict | None = None

    def to_dict(self) -> dict:
        texts = list(self.reference.perplexity)
        return {"model": self.model, "super_weights": [str(c) for c in self.super_weights], "seqlen": self.seqlen,
                "max_windows": self.max_windows, "tasks": self.tasks, "limit": self.limit,
                "reference": self.reference.to_dict(), "points": [p.to_dict() for p in self.points], "w8a8": self.w8a8,
                "pareto": {t: [f"{p.method} {p.bits}-bit {p.size}" for p in pareto(self.points, t)] for t in texts}}

    def markdown(self) -> str:
        table = markdown(self.reference, self.points)
        if self.w8a8:
            table += ("\n\nSimulated W8A8 (weights 8-bit per tensor, linear inputs 8-bit per token):\n\n"
                      + w8a8_markdown(self.w8a8))
        return table


def w8a8_table(lm: LoadedModel, coords: list[Coord], texts: dict[str, str], seqlen: int = 1024,
               max_windows: int | None = 4, log=None) -> dict[str, dict[str, float]]:
    """The paper's activation experiment: perplexity at full precision, simulated W8A8 naive
    and with the super activation held out, and the activations alone (A8) both ways;
    ``gap closed`` = (naive - hold-out) / (naive - full precision), per text."""
    from superweight.quant.w8a8 import w8a8

    log = log or (lambda _m: None)
    runs = {"full precision": None, "W8A8 naive": (True, ()), "W8A8 SA hold-out": (True, coords),
            "A8 naive": (False, ()), "A8 SA hold-out": (False, coords)}
    out: dict[str, dict[str, float]] = {}
    for name, how in runs.items():
        log(name)
        if how is None:
            out[name] = {k: perplexity(lm, lm.tokenizer, t, seqlen, max_windows) for k, t in texts.items()}
            continue
        with w8a8(lm, holdout=how[1], weights=how[0]):
            out[name] = {k: perplexity(lm, lm.tokenizer, t, seqlen, max_windows) for k, t in texts.items()}
    fp = out["full precision"]
    for prefix in ("W8A8", "A8"):
        naive, held = out[f"{prefix} naive"], out[f"{prefix} SA hold-out"]
        out[f"{prefix} gap closed"] = {k: (naive[k] - held[k]) / (naive[k] - fp[k]) if naive[k] != fp[k] else 0.0
                                       for k in fp}
    return out


def w8a8_markdown(table: dict[str, dict[str, float]]) -> str:
    texts = list(table["full precision"])
    rows = ["| condition | " + " | ".join(f"ppl {t}" for t in texts) + " |", "|---|" + "---|" * len(texts)]
    for name, vals in table.items():
        fmt = (lambda v: f"{100 * v:.0f}%") if "gap" in name else (lambda v: f"{v:.3f}")
        rows.append(f"| {name} | " + " | ".join(fmt(vals[t]) for t in texts) + " |")
    return "\n".join(rows)


@dataclass(frozen=True)
class CompareConfig:
    """What ``quant-compare`` measures, checked when made (errors name the flags)."""

    bits: tuple[int, ...] = (3, 4)
    block_sizes: tuple[int | None, ...] = BLOCK_SIZES
    group_sizes: tuple[int | None, ...] = GROUP_SIZES
    hqq_groups: tuple[int, ...] = HQQ_GROUPS
    act_ratio: float = ACT_RATIO
    quanto: bool = True
    texts: tuple[str, ...] = ("gpl3", "lambada")
    seqlen: int = 1024
    max_windows: int | None = 4  # per text; None: all
    tasks: tuple[str, ...] = ()
    limit: int | None = None
    w8a8: bool = True

    def __post_init__(self):
        import math

        for name, values, low in (("hqq_groups", self.hqq_groups, 1), ("seqlen", (self.seqlen,), 16),
                                  ("max_windows", (self.max_windows or 1,), 1),
                                  ("limit", (self.limit,) if self.limit is not None else (), 1)):
            for v in values:
                if not isinstance(v, int) or v < low:
                    raise UsageError(f"--{name.replace('_', '-')} must be at least {low}, not {v}")
        if not isinstance(self.act_ratio, (int, float)) or not math.isfinite(self.act_ratio) or self.act_ratio < 0:
            raise UsageError(f"--act-ratio must be a finite number >= 0, not {self.act_ratio}")
        for b in self.bits:
            if not 2 <= b <= 8:
                raise UsageError(f"--bits must be from 2 to 8, not {b}")
        from superweight.texts import check_source

        for t in self.texts:
            check_source(t, "--texts")
        if not self.points():
            raise UsageError("nothing to compare: give --block-sizes, --group-sizes or --hqq-groups (or drop --no-quanto)")
        for *_, cfg, _k in self.points():
            if cfg is not None:
                cfg.check()

    def points(self):
        return plan(tuple(self.bits), list(self.block_sizes), list(self.group_sizes), list(self.hqq_groups),
                    self.act_ratio, self.quanto)


def quant_compare(lm: LoadedModel, coords: list[Coord], cfg: CompareConfig, log=None) -> SweepResult:
    """``quant-compare``: every planned point against full precision (``sweep``), and the
    paper's W8A8 table unless ``cfg.w8a8`` is off, as one result."""
    from superweight.texts import read_text

    texts = {t: read_text(t) for t in cfg.texts}
    if cfg.tasks:
        from superweight.paper import zeroshot

        zeroshot.check_tasks(list(cfg.tasks))
    ref, pts = sweep(lm, coords, texts, cfg.points(), cfg.seqlen, cfg.max_windows, tuple(cfg.tasks), cfg.limit, log=log)
    acts = w8a8_table(lm, coords, texts, cfg.seqlen, cfg.max_windows, log) if cfg.w8a8 else None
    return SweepResult(lm.name, coords, cfg.seqlen, cfg.max_windows or 0, list(cfg.tasks), cfg.limit, ref, pts, acts)
