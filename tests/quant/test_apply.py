"""Quantizing a model in memory (quant/apply.py): in place and undone, super weights held out exactly, name patterns, massive-input columns."""
from __future__ import annotations

import pytest
import torch
from tiny import plant, tiny_model

import superweight as sw
from superweight.errors import UsageError
from superweight.quant.rtn import QuantConfig
from superweight.quant.apply import massive_input_columns, quantize_, quantized, quantizable


@pytest.mark.parametrize("model_type,coord", [
    ("llama", sw.Coord(1, 5, 7)),
    ("gpt2", sw.Coord(1, 5, 7)),  # Conv1D: stored transposed
    ("qwen2_moe", sw.Coord(1, 5, 7, expert=2)),  # fused 3-D experts
])
def test_quantize_in_place_holds_super_weights_and_is_undone(model_type, coord):
    lm = tiny_model(model_type)
    plant(lm, coord, 50)
    before = {n: p.detach().clone() for n, p in quantizable(lm)}
    others = {n: p.detach().clone() for n, p in lm.model.named_parameters() if n not in before}
    assert any("embed" in n or "wte" in n for n in others) and any(p.dim() == 1 for p in others.values())
    sw_value = lm.adapter.value(coord)
    cfg = QuantConfig(bits=3, layout="block", size=64)
    with quantized(lm, cfg, keep=[coord]) as rep:
        assert lm.adapter.value(coord) == sw_value  # exact
        changed = [n for n, p in quantizable(lm) if not torch.equal(p, before[n])]
        assert len(changed) == len(before)  # every decoder linear weight was quantized
        assert rep.held == 1 and len(rep.tensors) == len(before)
        assert 3.0 < rep.bits_per_weight < 3.6
        # embeddings, norms, biases and the head untouched, bit for bit
        for n, p in lm.model.named_parameters():
            if n in others:
                assert torch.equal(p, others[n]), n
    for n, p in quantizable(lm):
        assert torch.equal(p, before[n])  # undone
    without = QuantConfig(bits=3, layout="block", size=64)
    with quantized(lm, without) as rep2:
        assert lm.adapter.value(coord) != sw_value  # a 3-bit grid does not keep a planted outlier by chance
        assert rep2.held == 0


def test_patterns_choose_the_weights_and_a_pattern_matching_nothing_is_an_error():
    lm = tiny_model("llama")
    rep = quantize_(lm, QuantConfig(bits=4), include=["*mlp*"], exclude=["*gate_proj*"])
    names = {t.name for t in rep.tensors}
    assert names and all(".mlp." in n and "gate_proj" not in n for n in names)
    with pytest.raises(UsageError, match="no decoder linear weight matches"):
        quantize_(lm, QuantConfig(bits=4), include=["*nothing*"])


def test_massive_input_columns_find_the_planted_super_activation_channel():
    lm = tiny_model("llama")
    coord = sw.Coord(1, 5, 7)
    plant(lm, coord, 400)
    cols = massive_input_columns(lm, [n for n, _ in quantizable(lm)], ratio=3, max_cols=2)
    # the layers after the super weight read channel 5 of the residual stream, hugely
    later = [n for n in cols if n.startswith("model.layers.2.") and ("q_proj" in n or "up_proj" in n)]
    assert later and all(5 in cols[n] for n in later)
