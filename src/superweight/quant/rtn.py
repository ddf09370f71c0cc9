"""Round-to-nearest weight quantization of one tensor, simulated: quantize, then dequantize.

Plain functions over tensors; nothing here knows about models (``apply.py`` applies this
to a model's decoder linear weights).

Conventions (the decisions, written down):

- A tensor is quantized as a 2-D ``[out, in]`` matrix in the stored weight's terms
  (3-D fused experts ``[E, out, in]`` become ``[E*out, in]``; a transposed GPT-2 ``Conv1D``
  is turned to ``[out, in]`` by the caller).
- Two block conventions, always named:
  ``layout="block"``: the paper's, contiguous runs of ``size`` elements of the flattened
  row-major weight (``w.reshape(-1, size)``); ``layout="group"``: groups of ``size``
  consecutive input channels within each output row (GPTQ/AWQ/HQQ's group-wise).
  ``size=None`` is the whole tensor (block) or the whole row (group, i.e. per channel).
- A size that does not divide the run it cuts leaves a *ragged last block*: the remaining
  elements (of the flattened tensor, or of each row) form one shorter block with its own
  scale. A size larger than the tensor (or the row) is therefore one block. There is never
  a silent fall-back to a different block size.
- Asymmetric (default): ``q = round((w - lo) / s)`` in ``[0, 2^b - 1]``, ``w' = q*s + lo``,
  from the block's min and max. Symmetric: ``q = round(w / s)`` in ``[-(2^(b-1)-1), 2^(b-1)-1]``,
  ``s`` from the block's abs-max. ``s`` and ``lo`` are stored at ``scale_dtype`` (float16
  by default) and rounded outward (``lo`` down, ``s`` up), so every value of the clipped
  block stays within half a step of its input.
- Asymmetric with an integer zero point (``zero="int"``, the GPTQ/AWQ/compressed-tensors
  convention, what ``quantize --format compressed-tensors`` stores): the range is widened
  to hold 0, ``s = (hi - lo) / (2^b - 1)``, ``z = round(-lo / s)`` in ``[0, 2^b - 1]``,
  ``q = round(w / s) + z`` clamped to ``[0, 2^b - 1]``, ``w' = (q - z)*s``. Zero is exact;
  the grid is shifted by up to half a step, so the block's extremes may clip by as much.
  ``z`` costs ``b`` bits, not a float.
- Clipping (before quantizing, per block, symmetric ``[-t, t]``): ``z``: ``t = mean|w| + z*std|w|``
  (the paper's, z=9 in its scripts); ``pct``: ``t`` = the block's p-th percentile of ``|w|``.
  A value of ``None`` ("auto") picks the value from a fixed grid that gives the least
  squared reconstruction error over the whole tensor.
- Held-out weights (the super weights, and optionally the top ``keep_fraction`` of ``|w|``
  per tensor or per block) stay exact, as a sparse set; ``hold="exclude"`` (ours) also
  leaves them out of the clipping statistics and the block's range, ``hold="restore"``
  (the paper's recipe) quantizes them with the rest and then puts them back.
- Size accounting: ``bits`` per weight for the dense codes (held-out slots included), plus
  per block the scale (and ``lo`` when asymmetric) at ``scale_dtype``'s width, plus per
  held-out weight its value at the source dtype's width and a 32-bit index.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from superweight.errors import UsageError

Z_GRID = (2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0, 16.0, 24.0)
PCT_GRID = (99.0, 99.5, 99.9, 99.95, 99.99, 99.995, 99.999)
MSE_GRID = tuple(1 - 0.025 * i for i in range(21))  # range shrink factors 1.0 .. 0.5
SCALE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
MODEL_DTYPE = "model"  # scales at the model's own dtype (``QuantConfig.with_model_dtype``)


@dataclass(frozen=True)
class Clip:
    method: str  # "z" or "pct"
    value: float | None = None  # None: chosen per tensor by least reconstruction error

    @classmethod
    def parse(cls, text: str | None) -> "Clip | None":
        """``none``, ``z:9``, ``z:auto``, ``pct:99.9``, ``pct:auto``."""
        if text is None or text.strip().lower() in ("", "none", "off"):
            return None
        method, _, value = text.strip().lower().partition(":")
        if method == "mse" and not value:
            return cls("mse", None)
        if method not in ("z", "pct") or not value:
            raise UsageError(f"clip {text!r}: expected none, z:VALUE, z:auto, pct:VALUE or pct:auto")
        if value == "auto":
            return cls(method, None)
        try:
            v = float(value)
        except ValueError:
            raise UsageError(f"clip {text!r}: {value!r} is not a number or 'auto'") from None
        if method == "z" and not (v > 0 and math.isfinite(v)):
            raise UsageError(f"clip {text!r}: z must be a positive number")
        if method == "pct" and not 0 < v <= 100:
            raise UsageError(f"clip {text!r}: the percentile must be in (0, 100]")
        return cls(method, v)

    def __str__(self) -> str:
        if self.method == "mse":
            return "mse"
        return f"{self.method}:{'auto' if self.value is None else f'{self.value:g}'}"


@dataclass(frozen=True)
class QuantConfig:
    bits: int = 4
    layout: str = "group"  # "group" (along the input dim, per output row) or "block" (paper: flattened runs)
    size: int | None = 128  # elements per block/group; None = whole tensor (block) or whole row (group)
    symmetric: bool = False
    zero: str = "float"  # asymmetric zero point: "float" (w' = q*s + lo) or "int" (w' = (q - z)*s)
    clip: Clip | None = None
    keep_fraction: float = 0.0  # also hold out this top fraction of |w| ...
    keep_scope: str = "tensor"  # ... of each tensor, or of each block
    hold: str = "exclude"  # held-out weights: "exclude" from the range (ours) or "restore" after (paper)
    scale_dtype: str = "float16"
    act_ratio: float = 0.0  # model level: hold out the weight columns of input channels whose max |x|
    act_max_cols: int = 8  # is >= act_ratio x the median channel's (0: off), at most this many per tensor

    def __post_init__(self):
        self.check()  # a config that exists is a valid one

    def check(self) -> "QuantConfig":
        if not isinstance(self.bits, int) or not 2 <= self.bits <= 8:
            raise UsageError(f"--bits must be an integer from 2 to 8, not {self.bits!r}")
        if self.zero not in ("float", "int"):
            raise UsageError(f"zero point must be 'float' or 'int', not {self.zero!r}")
        if self.layout not in ("group", "block"):
            raise UsageError(f"layout must be 'group' or 'block', not {self.layout!r}")
        if self.size is not None and (not isinstance(self.size, int) or self.size < 1):
            raise UsageError(f"{self.layout} size must be a positive integer (or whole), not {self.size!r}")
        if not isinstance(self.keep_fraction, (int, float)) or not 0 <= self.keep_fraction < 1:
            raise UsageError(f"--keep-outliers: the keep fraction must be in [0, 1), not {self.keep_fraction!r}")
        if self.keep_scope not in ("tensor", "block"):
            raise UsageError(f"keep scope must be 'tensor' or 'block', not {self.keep_scope!r}")
        if self.hold not in ("exclude", "restore"):
            raise UsageError(f"hold must be 'exclude' or 'restore', not {self.hold!r}")
        if not isinstance(self.act_ratio, (int, float)) or not math.isfinite(self.act_ratio) or self.act_ratio < 0:
            raise UsageError(f"--act-ratio must be a finite number >= 0 (0: off), not {self.act_ratio!r}")
        if not isinstance(self.act_max_cols, int) or self.act_max_cols < 0:
            raise UsageError(f"--act-max-cols must be an integer >= 0, not {self.act_max_cols!r}")
        if self.scale_dtype not in SCALE_DTYPES and self.scale_dtype != MODEL_DTYPE:
            raise UsageError(f"--scale-dtype must be one of {', '.join(SCALE_DTYPES)}, not {self.scale_dtype!r}")
        return self

    def with_model_dtype(self, dtype: torch.dtype) -> "QuantConfig":
        """``MODEL_DTYPE`` scales resolved to ``dtype`` (float16 when that is no float type of ours)."""
        if self.scale_dtype != MODEL_DTYPE:
            return self
        name = next((k for k, v in SCALE_DTYPES.items() if v == dtype), "float16")
        return replace(self, scale_dtype=name)

    def describe(self) -> str:
        size = "whole" if self.size is None else str(self.size)
        kind = "sym" if self.symmetric else ("asym, integer zero point" if self.zero == "int" else "asym")
        parts = [f"{self.bits}-bit {kind} RTN, {self.layout} {size}"]
        if self.clip:
            parts.append(f"clip {self.clip}")
        if self.keep_fraction:
            parts.append(f"hold out top {self.keep_fraction:g} per {self.keep_scope}")
        if self.act_ratio:
            parts.append(f"hold out columns of inputs >= {self.act_ratio:g}x median (<= {self.act_max_cols})")
        if self.hold == "restore":
            parts.append("restore held-out weights after")
        return ", ".join(parts)

    def to_dict(self) -> dict:
        return {"bits": self.bits, "layout": self.layout, "size": self.size, "symmetric": self.symmetric, "zero": self.zero,
                "clip": None if self.clip is None else str(self.clip), "keep_fraction": self.keep_fraction,
                "keep_scope": self.keep_scope, "hold": self.hold, "scale_dtype": self.scale_dtype,
                "act_ratio": self.act_ratio, "act_max_cols": self.act_max_cols}


@dataclass
class QuantizedTensor:
    dequantized: torch.Tensor  # same shape and dtype as the input
    blocks: int  # scale groups
    held: int  # exact sparse weights
    bits_total: float  # storage, see the module docstring
    clip_value: float | None = None  # the clip threshold used (the chosen one for auto)
    sq_error: float = 0.0  # sum of squared reconstruction error
    numel: int = 0
    norm_sq: float = 0.0  # sum of squares of the input, for the relative error

    @property
    def bits_per_weight(self) -> float:
        return self.bits_total / self.numel


@dataclass
class _Pieces:
    """How a 2-D ``[rows, cols]`` tensor is cut into blocks: a main ``[n, size]`` part and an
    optional ragged tail, as views (``split``) and back (``join``)."""

    layout: str
    size: int
    rows: int
    cols: int

    @classmethod
    def of(cls, rows: int, cols: int, layout: str, size: int | None) -> "_Pieces":
        full = rows * cols if layout == "block" else cols
        return cls(layout, full if size is None else min(size, full), rows, cols)

    def split(self, t: torch.Tensor) -> list[torch.Tensor]:
        B = self.size
        if self.layout == "block":
            flat = t.reshape(-1)
            n = flat.numel() // B
            out = [flat[: n * B].view(n, B)] if n else []
            if flat.numel() > n * B:
                out.append(flat[n * B:].view(1, -1))
            return out
        k = self.cols // B
        out = [t[:, : k * B].reshape(-1, B)] if k else []
        if self.cols > k * B:
            out.append(t[:, k * B:])
        return out

    def join(self, parts: list[torch.Tensor]) -> torch.Tensor:
        B = self.size
        if self.layout == "block":
            return torch.cat([p.reshape(-1) for p in parts]).view(self.rows, self.cols)
        k = self.cols // B
        cols = []
        if k:
            cols.append(parts[0].reshape(self.rows, k * B))
        if self.cols > k * B:
            cols.append(parts[-1])
        return torch.cat(cols, dim=1)


def _outward(v: torch.Tensor, dtype: torch.dtype, up: bool) -> torch.Tensor:
    """Round ``v`` to ``dtype`` away from the range it bounds (up for ``up``), back as float32."""
    if dtype == torch.float32:
        return v
    r = v.to(dtype)
    wrong = r.float() < v if up else r.float() > v
    r = torch.where(wrong, torch.nextafter(r, torch.full_like(r, math.inf if up else -math.inf)), r)
    if not torch.isfinite(r).all():
        raise UsageError(f"weights too large for {dtype} scales; use a float32 scale dtype")
    return r.float()


def _clip_threshold(a: torch.Tensor, valid: torch.Tensor, clip: Clip, value: float) -> torch.Tensor:
    """Per-row clip threshold ``[n, 1]`` from the valid ``|w|`` of each row."""
    cnt = valid.sum(1, keepdim=True).clamp(min=1)
    if clip.method == "z":
        av = a * valid
        mean = av.sum(1, keepdim=True) / cnt
        var = ((a - mean) ** 2 * valid).sum(1, keepdim=True) / cnt
        return mean + value * var.sqrt()
    # percentile over the valid entries: held ones are sorted to the bottom as -1
    s = torch.where(valid, a, torch.full_like(a, -1.0)).sort(1).values
    held = (~valid).sum(1, keepdim=True)
    k = (held + torch.ceil(cnt * value / 100).long() - 1).clamp(0, a.shape[1] - 1)
    return s.gather(1, k)


def qparams(lo: torch.Tensor, hi: torch.Tensor, cfg: QuantConfig) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-block ``(s, zero)`` from the ranges ``[lo, hi]`` (``[n, 1]`` each; for symmetric,
    ``hi`` is the abs-max), as float32 holding values exact at ``cfg.scale_dtype``. ``zero``
    is ``lo`` (asymmetric), the integer zero point ``z`` (``zero="int"``) or None (symmetric)."""
    sdt = SCALE_DTYPES[cfg.scale_dtype]
    if cfg.symmetric:
        return _outward(hi / (2 ** (cfg.bits - 1) - 1), sdt, up=True), None
    qmax = 2 ** cfg.bits - 1
    if cfg.zero == "int":
        lo, hi = lo.clamp(max=0), hi.clamp(min=0)
        s = _outward((hi - lo) / qmax, sdt, up=True)
        return s, torch.clamp(torch.round(-lo / _safe(s)), 0, qmax)
    lo = _outward(lo, sdt, up=False)
    return _outward((hi - lo) / qmax, sdt, up=True), lo


def _safe(s: torch.Tensor) -> torch.Tensor:
    return torch.where(s > 0, s, torch.ones_like(s))


def codes(x: torch.Tensor, s: torch.Tensor, zero: torch.Tensor | None, cfg: QuantConfig,
          out: torch.Tensor | None = None) -> torch.Tensor:
    """The integer codes (as float32) of the rows of ``x`` on ``qparams``' grid (into ``out``,
    a buffer of ``x``'s shape, when given)."""
    if cfg.symmetric:
        qmax = 2 ** (cfg.bits - 1) - 1
        return torch.div(x, _safe(s), out=out).round_().clamp_(-qmax, qmax)
    qmax = 2 ** cfg.bits - 1
    if cfg.zero == "int":
        return torch.div(x, _safe(s), out=out).round_().add_(zero).clamp_(0, qmax)
    return torch.sub(x, zero, out=out).div_(_safe(s)).round_().clamp_(0, qmax)


def dequantize(q: torch.Tensor, s: torch.Tensor, zero: torch.Tensor | None, cfg: QuantConfig) -> torch.Tensor:
    """``codes`` back to values, in place on ``q``."""
    if cfg.symmetric:
        return q.mul_(s)
    if cfg.zero == "int":
        return q.sub_(zero).mul_(s)
    return q.mul_(s).add_(zero)


def _fake(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, cfg: QuantConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize-dequantize the rows of ``x`` on the ranges ``[lo, hi]`` (``[n, 1]`` each; for
    symmetric, ``hi`` is the abs-max); values outside are clamped. Returns (dequantized, step)."""
    s, zero = qparams(lo, hi, cfg)
    return dequantize(codes(x, s, zero, cfg), s, zero, cfg), s


def _range(xc: torch.Tensor, valid: torch.Tensor, cfg: QuantConfig) -> tuple[torch.Tensor, torch.Tensor]:
    any_valid = valid.any(1, keepdim=True)
    if cfg.symmetric:
        amax = torch.where(valid, xc.abs(), torch.zeros_like(xc)).amax(1, keepdim=True)
        return -amax, amax
    lo = torch.where(valid, xc, torch.full_like(xc, math.inf)).amin(1, keepdim=True)
    hi = torch.where(valid, xc, torch.full_like(xc, -math.inf)).amax(1, keepdim=True)
    zero = torch.zeros_like(lo)
    return torch.where(any_valid, lo, zero), torch.where(any_valid, hi, zero)


def _rtn_rows(x: torch.Tensor, held: torch.Tensor, cfg: QuantConfig, clip_value: float | None) -> torch.Tensor:
    """Quantize-dequantize each row of ``x [n, B]`` (float32) as one block."""
    valid = ~held if cfg.hold == "exclude" else torch.ones_like(held)
    if cfg.clip is not None and cfg.clip.method == "mse":
        # per block: shrink the range by each factor of the grid, keep the least squared error
        lo, hi = _range(x, valid, cfg)
        best, best_err = None, None
        for f in MSE_GRID:
            deq, _ = _fake(x, lo * f, hi * f, cfg)
            err = ((deq - x) ** 2 * valid).sum(1, keepdim=True)
            if best is None:
                best, best_err = deq, err
            else:
                better = err < best_err
                best = torch.where(better, deq, best)
                best_err = torch.where(better, err, best_err)
        return torch.where(held, x, best)
    xc = x
    if cfg.clip is not None:
        t = _clip_threshold(x.abs(), valid, cfg.clip, clip_value)
        xc = torch.maximum(torch.minimum(x, t), -t)
    lo, hi = _range(xc, valid, cfg)
    deq, _ = _fake(xc, lo, hi, cfg)
    return torch.where(held, x, deq)


def _held_mask(w: torch.Tensor, pieces: _Pieces, cfg: QuantConfig, keep: list[tuple[int, int]],
               keep_cols: list[int]) -> torch.Tensor:
    """Which entries of the 2-D ``w`` stay exact: ``keep``, the columns ``keep_cols`` and the
    top fraction of |w|."""
    held = torch.zeros(w.shape, dtype=torch.bool)
    for r, c in keep:
        held[r, c] = True
    if keep_cols:
        held[:, list(keep_cols)] = True
    if cfg.keep_fraction > 0:
        a = w.abs()
        if cfg.keep_scope == "tensor":
            k = math.ceil(cfg.keep_fraction * a.numel())
            held.view(-1)[a.reshape(-1).topk(k).indices] = True
        else:
            for ap, hp in zip(pieces.split(a), pieces.split(held)):
                k = math.ceil(cfg.keep_fraction * ap.shape[1])
                hp.scatter_(1, ap.topk(k, dim=1).indices, True)
    return held


def _candidates(cfg: QuantConfig) -> tuple:
    if cfg.clip is None or cfg.clip.method == "mse":
        return (None,)
    if cfg.clip.value is not None:
        return (cfg.clip.value,)
    return (Z_GRID if cfg.clip.method == "z" else PCT_GRID) + (None,)  # None: no clipping at all


def _bits_total(numel: int, n_blocks: int, n_held: int, cfg: QuantConfig, dtype: torch.dtype) -> float:
    sbits = torch.finfo(SCALE_DTYPES[cfg.scale_dtype]).bits
    zbits = 0 if cfg.symmetric else (cfg.bits if cfg.zero == "int" else sbits)
    vbits = torch.finfo(dtype).bits if dtype.is_floating_point else 32
    return float(numel * cfg.bits + n_blocks * (sbits + zbits) + n_held * (vbits + 32))


@dataclass
class Codes:
    """A group-quantized tensor as stored: ``q`` the codes ``[out, in]`` as unsigned bytes
    (offset binary: asymmetric codes as they are, ``[0, 2^b-1]``; symmetric ones plus
    ``2^(b-1)``), ``scale`` and ``zero`` ``[out, in/G]`` (``zero``: the integer zero point,
    or ``lo`` for ``zero="float"``, or None symmetric)."""

    q: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor | None


CHUNK = 1 << 20  # elements per slice of rows on the fast path (4 MiB of float32: the fastest on 2 cores)


def _fast(cfg: QuantConfig) -> bool:
    """Configurations ``_group_rows`` quantizes (the common ones): groups, no clip, no top
    fraction held out."""
    return cfg.layout == "group" and cfg.clip is None and cfg.keep_fraction == 0


def _group_rows(w: torch.Tensor, cfg: QuantConfig, keep, keep_cols, want_codes: bool = False):
    """``quantize_tensor`` for ``_fast`` configurations, a slice of rows at a time into two
    reused float32 buffers (a fresh large tensor costs more in page faults than the
    arithmetic: 50 ms against 9 for a 45M-element bf16 -> float32 copy), the range from
    ``amin``/``amax``, held weights fixed up only in the groups that hold them. Gives exactly
    what the general path gives. Returns (dequantized in ``w``'s dtype, squared error,
    squared norm, blocks, held, codes or None)."""
    rows, cols = w.shape
    G = cols if cfg.size is None else min(cfg.size, cols)
    k = cols // G
    spans = [(c0, c1) for c0, c1 in ((0, k * G), (k * G, cols)) if c1 > c0]
    if want_codes and (len(spans) > 1 or keep or keep_cols):
        raise UsageError(f"stored codes need whole groups and no held-out weights ({cols} columns, group {G})")
    held_cols = sorted(set(int(c) for c in keep_cols))
    held_set = set(held_cols)
    coords = sorted({(int(r), int(c)) for r, c in keep if int(c) not in held_set})
    out = torch.empty_like(w)
    q_all = torch.empty(rows, cols, dtype=torch.uint8) if want_codes else None
    offset = 2 ** (cfg.bits - 1) if cfg.symmetric else 0
    s_all = torch.empty(rows, k) if want_codes else None
    z_all = torch.empty(rows, k) if want_codes and not cfg.symmetric else None
    err = norm = 0.0
    step = min(rows, max(1, CHUNK // cols))
    xbuf, qbuf = torch.empty(step * cols), torch.empty(step * cols)  # [step, cols] each, reused
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        n = r1 - r0
        x = xbuf[: n * cols].view(n, cols)
        x.copy_(w[r0:r1])
        deq = qbuf[: n * cols].view(n, cols) if len(spans) == 1 else torch.empty_like(x)
        mine = [(r - r0, c) for r, c in coords if r0 <= r < r1]
        for c0, c1 in spans:
            B = G if c1 - c0 >= G else c1 - c0
            ng = (c1 - c0) // B
            xs = x[:, c0:c1].reshape(-1, B)
            lo, hi = xs.amin(1, keepdim=True), xs.amax(1, keepdim=True)
            if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
                raise UsageError("weight holds NaN or Inf; refusing to quantize it")
            if cfg.symmetric:
                hi = torch.maximum(-lo, hi)
                lo = -hi
            # held weights leave their groups' range (hold="exclude"): redo those groups masked
            marks = [(None, c - c0) for c in held_cols if c0 <= c < c1] + [(rr, c - c0) for rr, c in mine if c0 <= c < c1]
            if marks and cfg.hold == "exclude":
                gids, js = [], []
                for rr, cc in marks:
                    g, j = divmod(cc, B)
                    r = torch.arange(n) if rr is None else torch.tensor([rr])
                    gids.append(r * ng + g)
                    js.append(torch.full_like(r, j))
                gid, inv = torch.unique(torch.cat(gids), return_inverse=True)
                mask = torch.zeros(len(gid), B, dtype=torch.bool)
                mask[inv, torch.cat(js)] = True
                lo[gid], hi[gid] = _range(xs[gid], ~mask, cfg)
            sc, zero = qparams(lo, hi, cfg)
            q = codes(xs, sc, zero, cfg, out=deq.view(-1, B) if len(spans) == 1 else None)
            if want_codes:
                q_all[r0:r1] = q.view(n, cols) + offset if offset else q.view(n, cols)
                s_all[r0:r1] = sc.view(n, ng)
                if z_all is not None:
                    z_all[r0:r1] = zero.view(n, ng)
            d = dequantize(q, sc, zero, cfg)
            if len(spans) > 1:
                deq[:, c0:c1] = d.view(n, c1 - c0)
        if held_cols:
            deq[:, held_cols] = x[:, held_cols]
        for rr, c in mine:
            deq[rr, c] = x[rr, c]
        out[r0:r1] = deq
        xf, d = x.view(-1), deq.view(-1).sub_(x.view(-1))  # deq is spent: now the error
        err += float(torch.dot(d, d))
        norm += float(torch.dot(xf, xf))
    n_blocks = rows * (k + (1 if len(spans) > 1 or k == 0 else 0))
    n_held = rows * len(held_cols) + len(coords)
    got = Codes(q_all, s_all, z_all) if want_codes else None
    return out, err, norm, n_blocks, n_held, got


def quantize_codes(w: torch.Tensor, cfg: QuantConfig) -> tuple[QuantizedTensor, Codes]:
    """Quantize a 2-D ``[out, in]`` weight in whole groups and return the stored form too
    (for packed formats); the group size must divide ``in`` and nothing is held out."""
    cfg.check()
    if not _fast(cfg):
        raise UsageError("stored codes are for group RTN without clipping or outliers held out")
    if w.dim() != 2:
        raise UsageError(f"quantize_codes takes a 2-D [out, in] weight, not shape {tuple(w.shape)}")
    deq, err, norm, n_blocks, _, got = _group_rows(w, cfg, (), (), want_codes=True)
    total = _bits_total(w.numel(), n_blocks, 0, cfg, w.dtype)
    return QuantizedTensor(deq, n_blocks, 0, total, None, err, w.numel(), norm), got


def quantize_tensor(w: torch.Tensor, cfg: QuantConfig, keep: list[tuple[int, int]] = (),
                    keep_cols: list[int] = ()) -> QuantizedTensor:
    """Quantize-dequantize a 2-D ``[out, in]`` weight. ``keep``: ``(row, col)`` entries held
    out exact (the super weights); ``keep_cols``: whole input columns held out. Raises on NaN
    or Inf (a clear error, not garbage out)."""
    cfg.check()
    if w.dim() != 2:
        raise UsageError(f"quantize_tensor takes a 2-D [out, in] weight, not shape {tuple(w.shape)}")
    if _fast(cfg):
        deq, err, norm, n_blocks, n_held, _ = _group_rows(w.detach(), cfg, keep, keep_cols)
        return QuantizedTensor(deq, n_blocks, n_held, _bits_total(w.numel(), n_blocks, n_held, cfg, w.dtype),
                               None, err, w.numel(), norm)
    if not torch.isfinite(w).all():
        raise UsageError("weight holds NaN or Inf; refusing to quantize it")
    x = w.detach().float()
    rows, cols = x.shape
    pieces = _Pieces.of(rows, cols, cfg.layout, cfg.size)
    held = _held_mask(x, pieces, cfg, list(keep), list(keep_cols))
    xs, hs = pieces.split(x), pieces.split(held)
    best = None
    for value in _candidates(cfg):
        c = cfg if value is not None or cfg.clip is None or cfg.clip.method == "mse" else replace(cfg, clip=None)
        deq = pieces.join([_rtn_rows(xp, hp, c, value) for xp, hp in zip(xs, hs)])
        err = float(((deq - x) ** 2).sum())
        if best is None or err < best[0]:
            best = (err, value, deq)
    err, value, deq = best
    n_blocks = sum(p.shape[0] for p in xs)
    n_held = int(held.sum())
    total = _bits_total(x.numel(), n_blocks, n_held, cfg, w.dtype)
    return QuantizedTensor(deq.to(w.dtype), n_blocks, n_held, total, value, err, x.numel(),
                           float(x.pow(2).sum()))
