"""The tensor quantizer: properties over random shapes, bits, block and group sizes (hypothesis)."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from superweight.errors import UsageError
from superweight.quant.rtn import Clip, QuantConfig, quantize_tensor, _Pieces

SETTINGS = settings(max_examples=60, deadline=None)


@st.composite
def weights(draw):
    rows = draw(st.integers(1, 24))
    cols = draw(st.integers(1, 40))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([1e-3, 0.02, 1.0, 300.0]))
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * scale
    if draw(st.booleans()):  # an outlier, as real weights have
        w[draw(st.integers(0, rows - 1)), draw(st.integers(0, cols - 1))] *= 50
    return w


@st.composite
def configs(draw, clip=True):
    layout = draw(st.sampled_from(["block", "group"]))
    size = draw(st.one_of(st.none(), st.integers(1, 1000)))
    c = None
    if clip:
        c = draw(st.sampled_from([None, Clip("z", 3.0), Clip("z", 9.0), Clip("pct", 99.0), Clip("pct", 50.0)]))
    return QuantConfig(bits=draw(st.integers(2, 8)), layout=layout, size=size, symmetric=draw(st.booleans()), clip=c,
                       scale_dtype=draw(st.sampled_from(["float16", "float32"])))


def _reference_blocks(w: torch.Tensor, cfg: QuantConfig) -> list[torch.Tensor]:
    """The block each element belongs to, computed independently of the implementation."""
    rows, cols = w.shape
    idx = torch.arange(w.numel()).view(rows, cols)
    if cfg.layout == "block":
        B = w.numel() if cfg.size is None else min(cfg.size, w.numel())
        return [idx.reshape(-1)[i:i + B] for i in range(0, w.numel(), B)]
    G = cols if cfg.size is None else min(cfg.size, cols)
    return [idx[r, c:c + G] for r in range(rows) for c in range(0, cols, G)]


def _clipped(w: torch.Tensor, cfg: QuantConfig) -> torch.Tensor:
    """Each block clipped as the config says (reference computation, float64)."""
    out = w.double().clone().reshape(-1)
    for ix in _reference_blocks(w, cfg):
        x = out[ix]
        if cfg.clip is not None:
            a = x.abs()
            if cfg.clip.method == "z":
                t = a.mean() + cfg.clip.value * a.std(unbiased=False)
            else:
                s = a.sort().values
                t = s[max(math.ceil(len(s) * cfg.clip.value / 100) - 1, 0)]
            out[ix] = x.clamp(-t, t)
    return out.view(w.shape)


@SETTINGS
@given(weights(), configs())
def test_every_value_within_half_a_step_of_its_clipped_input(w, cfg):
    q = quantize_tensor(w, cfg)
    assert q.dequantized.shape == w.shape and q.dequantized.dtype == w.dtype
    xc = _clipped(w, cfg)
    levels = 2 ** (cfg.bits - 1) - 1 if cfg.symmetric else 2 ** cfg.bits - 1
    err = (q.dequantized.double() - xc).abs().reshape(-1)
    for ix in _reference_blocks(w, cfg):
        x = xc.reshape(-1)[ix]
        span = 2 * x.abs().max() if cfg.symmetric else x.max() - x.min()
        step = span / levels
        # half a step, plus the outward rounding of a float16 scale and zero point (relative
        # and, for subnormals, absolute) and float32 arithmetic
        half = cfg.scale_dtype == "float16"
        slack = step * (2 ** -9 if half else 1e-6) + x.abs().max() * (2 ** -10 if half else 1e-6) \
            + (2 ** -24 if half else 1e-30)
        assert float(err[ix].max()) <= float(step / 2 + slack), (cfg, float(err[ix].max()), float(step))


@SETTINGS
@given(weights(), configs(), st.data())
def test_held_out_weights_are_exact(w, cfg, data):
    rows, cols = w.shape
    keep = data.draw(st.lists(st.tuples(st.integers(0, rows - 1), st.integers(0, cols - 1)), max_size=4, unique=True))
    frac = data.draw(st.sampled_from([0.0, 0.01, 0.2]))
    scope = data.draw(st.sampled_from(["tensor", "block"]))
    hold = data.draw(st.sampled_from(["exclude", "restore"]))
    cfg = QuantConfig(**{**cfg.to_dict(), "clip": cfg.clip, "keep_fraction": frac, "keep_scope": scope, "hold": hold})
    q = quantize_tensor(w, cfg, keep)
    for r, c in keep:
        assert q.dequantized[r, c] == w[r, c]
    if frac and scope == "tensor":
        k = math.ceil(frac * w.numel())
        top = w.abs().reshape(-1).topk(k).indices
        assert torch.equal(q.dequantized.reshape(-1)[top], w.reshape(-1)[top])
    assert q.held >= len(keep)


@SETTINGS
@given(weights(), configs(clip=False))
def test_block_count_and_size_accounting(w, cfg):
    q = quantize_tensor(w, cfg)
    n_blocks = len(_reference_blocks(w, cfg))
    assert q.blocks == n_blocks
    per_block = 16 if cfg.scale_dtype == "float16" else 32
    expected = w.numel() * cfg.bits + n_blocks * per_block * (1 if cfg.symmetric else 2)
    assert q.bits_total == expected


@SETTINGS
@given(weights(), st.sampled_from(["block", "group"]), st.one_of(st.none(), st.integers(1, 64)))
def test_pieces_split_and_join_round_trip(w, layout, size):
    p = _Pieces.of(*w.shape, layout, size)
    parts = p.split(w)
    assert sum(x.numel() for x in parts) == w.numel()
    assert torch.equal(p.join(parts), w)


def test_ragged_last_block_is_its_own_block_not_the_whole_tensor():
    w = torch.arange(10, dtype=torch.float32).view(2, 5)
    q = quantize_tensor(w, QuantConfig(bits=8, layout="block", size=4))
    assert q.blocks == 3  # 4 + 4 + 2
    q = quantize_tensor(w, QuantConfig(bits=8, layout="group", size=2))
    assert q.blocks == 6  # per row: 2 + 2 + 1


def test_more_bits_less_error_and_whole_tensor_is_worst():
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(0))
    w[3, 7] = 40.0
    errs = [quantize_tensor(w, QuantConfig(bits=b, layout="group", size=64)).sq_error for b in (2, 3, 4, 8)]
    assert errs == sorted(errs, reverse=True)
    whole = quantize_tensor(w, QuantConfig(bits=4, layout="block", size=None)).sq_error
    assert whole > quantize_tensor(w, QuantConfig(bits=4, layout="block", size=64)).sq_error
    # holding the outlier out of the range helps the blocks it shared
    held = quantize_tensor(w, QuantConfig(bits=4, layout="block", size=None), keep=[(3, 7)]).sq_error
    assert held < whole / 10


def test_auto_clip_is_never_worse_than_no_clip():
    w = torch.randn(32, 512, generator=torch.Generator().manual_seed(1)) ** 3
    plain = quantize_tensor(w, QuantConfig(bits=3, layout="block", size=4096))
    for method in ("z", "pct"):
        auto = quantize_tensor(w, QuantConfig(bits=3, layout="block", size=4096, clip=Clip(method, None)))
        assert auto.sq_error <= plain.sq_error
        assert auto.clip_value is None or auto.sq_error < plain.sq_error


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_or_inf_is_an_error(bad):
    w = torch.randn(4, 8)
    w[1, 2] = bad
    with pytest.raises(UsageError, match="NaN or Inf"):
        quantize_tensor(w, QuantConfig())


@pytest.mark.parametrize("kw,msg", [
    ({"bits": 1}, "bits"), ({"bits": 9}, "bits"), ({"size": 0}, "size"), ({"layout": "rows"}, "layout"),
    ({"keep_fraction": 1.0}, "keep fraction"), ({"hold": "maybe"}, "hold"), ({"scale_dtype": "int8"}, "--scale-dtype"),
])
def test_bad_config_is_a_clear_error(kw, msg):
    with pytest.raises(UsageError, match=msg):
        QuantConfig(**kw).check()


@pytest.mark.parametrize("text,expected", [
    ("none", None), ("z:9", Clip("z", 9.0)), ("z:auto", Clip("z", None)), ("pct:99.9", Clip("pct", 99.9)),
    ("mse", Clip("mse", None)),
])
def test_clip_parsing(text, expected):
    assert Clip.parse(text) == expected


@pytest.mark.parametrize("text", ["z", "z:-1", "pct:0", "pct:101", "q:3", "z:abc"])
def test_bad_clip_is_a_clear_error(text):
    with pytest.raises(UsageError, match="clip"):
        Clip.parse(text)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_fast_group_path_gives_exactly_what_the_general_path_gives(dtype, monkeypatch):
    """``_group_rows`` (slices of rows, held weights fixed up per group) against the general
    path, over ragged groups, held weights and columns, both zero points, symmetric, restore."""
    import itertools

    from superweight.quant import rtn

    g = torch.Generator().manual_seed(0)
    cases = []
    for shape in [(64, 128), (37, 100), (5, 7)]:
        w = (torch.randn(shape, generator=g) * 0.02).to(dtype)
        w[3, 5] = 1.5
        for size, sym, zero, hold in itertools.product([32, None, 1000], [False, True], ["float", "int"],
                                                       ["exclude", "restore"]):
            cfg = QuantConfig(4, "group", size, symmetric=sym, zero=zero, hold=hold)
            for keep, cols in [((), ()), ([(3, 5), (1, 2)], [5, 6, 0]), ([], [4])]:
                cases.append((w, cfg, keep, cols, quantize_tensor(w, cfg, keep, cols)))
    monkeypatch.setattr(rtn, "_fast", lambda cfg: False)
    monkeypatch.setattr(rtn, "CHUNK", 1)  # irrelevant to the general path; the fast one ran above
    for w, cfg, keep, cols, fast in cases:
        slow = quantize_tensor(w, cfg, keep, cols)
        assert torch.equal(fast.dequantized, slow.dequantized), (cfg.describe(), keep, cols)
        assert (fast.blocks, fast.held, fast.bits_total) == (slow.blocks, slow.held, slow.bits_total)
        assert fast.sq_error == pytest.approx(slow.sq_error, rel=1e-4, abs=1e-12)


def test_the_fast_path_works_a_slice_of_rows_at_a_time(monkeypatch):
    from superweight.quant import rtn

    w = torch.randn(50, 64, generator=torch.Generator().manual_seed(2))
    cfg = QuantConfig(3, "group", 16)
    whole = quantize_tensor(w, cfg, [(7, 3), (40, 9)], [11])
    monkeypatch.setattr(rtn, "CHUNK", 64 * 3)  # three rows a slice: the held rows fall in different slices
    sliced = quantize_tensor(w, cfg, [(7, 3), (40, 9)], [11])
    assert torch.equal(whole.dequantized, sliced.dequantized)
    assert sliced.dequantized[7, 3] == w[7, 3] and torch.equal(sliced.dequantized[:, 11], w[:, 11])
    with pytest.raises(UsageError, match="NaN or Inf"):
        quantize_tensor(w.index_fill(0, torch.tensor([30]), float("nan")), cfg)
