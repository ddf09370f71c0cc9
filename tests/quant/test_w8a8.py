"""Simulated W8A8 (quant/w8a8.py): outputs change and come back, the per-token quantizer, the holdout, the table."""
from __future__ import annotations

import pytest
import torch
from tiny import plant, tiny_model

import superweight as sw
from superweight.quant.w8a8 import fake_quant_per_token, quant_with_holdout, w8a8

IDS = torch.tensor([[256, 72, 101, 108, 108, 111, 32, 119, 111, 114, 108, 100]])


def _logits(lm):
    with torch.no_grad():
        return lm.model(IDS).logits


def test_w8a8_context_changes_outputs_and_is_undone():
    lm = tiny_model("llama")
    coord = sw.Coord(1, 5, 7)
    plant(lm, coord, 400)
    ref = _logits(lm)
    with w8a8(lm):
        naive = _logits(lm)
    with w8a8(lm, holdout=[coord]):
        held = _logits(lm)
    assert torch.equal(_logits(lm), ref)
    assert not torch.equal(naive, ref)
    # keeping the super activation in full precision brings the outputs closer
    assert (held - ref).abs().mean() < (naive - ref).abs().mean()


def test_per_token_quantizer_and_holdout():
    x = torch.randn(2, 5, 16)
    x[0, 0, 3] = 1000.0
    q = fake_quant_per_token(x)
    assert (q - x).abs().max() <= x.abs().amax(-1, keepdim=True).max() / 127 / 2 + 1e-4
    h = quant_with_holdout(x, [3])
    assert torch.equal(h[..., 3], x[..., 3])
    assert (h[0, 0] - x[0, 0]).abs().max() < (q[0, 0] - x[0, 0]).abs().max()


def test_w8a8_table_reports_the_gap_closed():
    from superweight.quant.sweep import w8a8_markdown, w8a8_table

    lm = tiny_model("llama")
    coord = sw.Coord(1, 5, 7)
    plant(lm, coord, 400)
    table = w8a8_table(lm, [coord], {"t": "The quick brown fox jumps over the lazy dog. " * 10}, seqlen=64, max_windows=2)
    assert set(table) == {"full precision", "W8A8 naive", "W8A8 SA hold-out", "A8 naive", "A8 SA hold-out",
                          "W8A8 gap closed", "A8 gap closed"}
    t = table["W8A8 naive"]["t"], table["W8A8 SA hold-out"]["t"], table["full precision"]["t"]
    assert table["W8A8 gap closed"]["t"] == pytest.approx((t[0] - t[1]) / (t[0] - t[2]))
    assert "| W8A8 gap closed |" in w8a8_markdown(table)
