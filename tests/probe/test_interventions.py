"""The paper's interventions: composable, reversible, exact where they claim to be."""
from __future__ import annotations

import math

import pytest
import torch
from tiny import plant, tiny_model

import superweight as sw
from superweight.probe.measures import perplexity
from superweight.probe.interventions import activation_restored, outliers_pruned, prunable_params, scaled

SW = [sw.Coord(11, 507, 1229)]


def _state(lm):
    return {k: v.clone() for k, v in lm.model.state_dict().items()}


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def test_scaled_multiplies_and_restores():
    lm = tiny_model("llama")
    c = sw.Coord(1, 5, 7)
    before = _state(lm)
    v = lm.adapter.value(c)
    with scaled(lm.adapter, [c], 2.5):
        assert lm.adapter.value(c) == pytest.approx(2.5 * v)
    assert _same(before, _state(lm))
    with pytest.raises(sw.UsageError, match="finite"):
        scaled(lm.adapter, [c], math.nan)


def test_outliers_pruned_zeroes_the_largest_of_every_matrix_but_kept_ones():
    lm = tiny_model("gpt2")
    keep = sw.Coord(1, 5, 7)
    plant(lm, keep, 400)  # now the largest weight of its matrix
    before = _state(lm)
    params = dict(prunable_params(lm.adapter))
    assert "transformer.h.0.mlp.c_proj.weight" in params and not any("ln_" in n or "wte" in n for n in params)
    top = {n: float(p.detach().abs().max()) for n, p in params.items()}
    with outliers_pruned(lm.adapter, topk=1, keep=[keep]):
        assert lm.adapter.value(keep) != 0.0  # kept
        for n, p in params.items():
            now = float(p.detach().abs().max())
            if n == lm.adapter.site(keep).param_name:
                assert now == pytest.approx(abs(lm.adapter.value(keep)))
            else:
                assert now < top[n]  # its largest weight is gone
    assert _same(before, _state(lm))
    with pytest.raises(sw.UsageError):
        outliers_pruned(lm.adapter, fraction=0.0)
    with pytest.raises(sw.UsageError):
        outliers_pruned(lm.adapter, fraction=None, topk=0)


def test_interventions_compose_and_unwind_on_error():
    lm = tiny_model("llama")
    before = _state(lm)
    c = sw.Coord(1, 5, 7)
    with pytest.raises(RuntimeError):
        with sw.zeroed(lm.adapter, [c]), outliers_pruned(lm.adapter, topk=2), scaled(lm.adapter, [sw.Coord(2, 1, 1)], 3.0):
            raise RuntimeError("boom")
    assert _same(before, _state(lm))


@pytest.fixture(scope="module")
def gpl3_ppl(smol, gpl3_text):
    return lambda: perplexity(smol.model, smol.tokenizer, gpl3_text, seqlen=512, max_windows=1)


def test_restoring_the_super_activation_undoes_the_damage_on_smollm2(smol, gpl3_ppl):
    """On SmolLM2 the super weight acts entirely through its activation on token 0: put
    that back and perplexity returns to the intact value, while the weight stays zero."""
    intact = gpl3_ppl()
    values = {c: smol.adapter.value(c) for c in SW}
    with sw.zeroed(smol.adapter, SW):
        broken = gpl3_ppl()
        with activation_restored(smol.adapter, SW, values):
            assert smol.adapter.value(SW[0]) == 0.0  # the weight itself stays removed
            restored = gpl3_ppl()
    assert broken > 10 * intact
    assert restored == pytest.approx(intact, rel=0.01)


def test_scaling_the_super_weight_on_smollm2(smol, gpl3_ppl):
    intact = gpl3_ppl()
    with scaled(smol.adapter, SW, 2.0):
        doubled = gpl3_ppl()
    with scaled(smol.adapter, SW, 0.0):
        gone = gpl3_ppl()
    assert abs(doubled / intact - 1) < 0.1  # flat to slightly better for s in 1..2, as in the paper
    assert gone > 10 * intact
    assert gpl3_ppl() == pytest.approx(intact)
