"""The detection algorithm's parts (detect.py), on fabricated records and effects: which
spikes are examined, which controls stand next to a candidate, how a grade is decided.
The whole algorithm on every family is tests/test_detect_families.py; on real weights,
tests/test_real_model.py and tests/test_real_qwen.py."""
from __future__ import annotations

import pytest
from tiny import planted_llama

import superweight as sw
from superweight.find import per_layer, spikes
from superweight.proof import controls_for, grade, largest_controls
from superweight.probe.records import SiteRecord, TextEffect
from superweight.results import Control, DetectConfig, Effect


def record(layer, max_output, expert=None):
    return SiteRecord(layer=layer, expert=expert, path=f"layers.{layer}", max_input=1.0, input_token=0,
                      input_channel=0, max_output=max_output, output_token=0, output_channel=layer, output_value=max_output,
                      col=0, weight=1.0, x_col=1.0, share=1.0)


def test_spikes_are_sites_far_above_the_median_layer_largest_first():
    records = {(i, None): record(i, v) for i, v in enumerate([1.0, 2.0, 50.0, 1.5, 300.0])}
    assert [r.layer for r in spikes(records, 10.0)] == [4, 2]  # median 2: >= 20
    assert [r.layer for r in spikes(records, 200.0)] == []
    experts = {(1, 0): record(1, 5.0, 0), (1, 1): record(1, 9.0, 1), (0, None): record(0, 1.0)}
    assert [(r.layer, r.expert) for r in per_layer(experts)] == [(0, None), (1, 1)]  # the strongest site per layer


@pytest.fixture(scope="module")
def planted():
    return planted_llama()


def test_controls_stay_out_of_the_candidates_row_and_column_and_are_reproducible(planted):
    c = sw.Coord(1, 5, 7)
    (largest,) = largest_controls(planted, [c])
    assert largest.layer == 1 and largest.row != 5 and largest.col != 7
    w = planted.adapter.weight(planted.adapter.site(c)).abs()
    w[5, :] = -1
    w[:, 7] = -1
    assert float(planted.adapter.weight(planted.adapter.site(c)).abs()[largest.row, largest.col]) == float(w.max())
    sets = controls_for(planted, [c], set(), n_random=8)
    assert [s.kind for s in sets] == ["largest", "random", "neighbours"]
    rand, near = sets[1].coords, sets[2].coords
    assert len(rand) == 8 and all(r.row != 5 and r.col != 7 for r in rand)
    assert near[0].row == 5 and near[0].col != 7 and near[1].col == 7 and near[1].row != 5
    assert controls_for(planted, [c], set(), n_random=8)[1].coords == rand  # seeded by the coordinate


def effect(kl: dict, ppl: dict, controls: dict) -> Effect:
    e = Effect(kl=1.0, ppl=2.0, ppl_intact=1.0, text=TextEffect.single(ppl, kl))
    e.controls = [Control(k, (sw.Coord(0, 0, i),), TextEffect.single({c: 1.0 for c in kl}, v)) for i, (k, v) in
                  enumerate(controls.items())]
    return e


def test_grades_follow_the_documented_thresholds():
    cfg = DetectConfig()
    ctl = {"largest": {"bos": 0.001, "mid": 0.002}}
    assert grade(effect({"bos": 2.0, "mid": 1.0}, {"bos": 5.0, "mid": 1.2}, ctl), cfg) == ("super", None)
    assert grade(effect({"bos": 2.0, "mid": 1.0}, {"bos": 2.0, "mid": 1.2}, ctl), cfg)[0] == "strong"  # ppl x < 3
    g, why = grade(effect({"bos": 0.01, "mid": 0.005}, {"bos": 5.0, "mid": 5.0}, ctl), cfg)
    assert g == "rejected" and "(< 0.02)" in why  # below strong_kl, whatever the perplexity
    g, why = grade(effect({"bos": 2.0, "mid": 1.0}, {"bos": 9.0, "mid": 9.0}, {"largest": {"bos": 0.5, "mid": 0.5}}), cfg)
    assert g == "rejected" and "only 4x the strongest control's" in why  # a control comes within 10x
    g, why = grade(Effect(kl=0.01, ppl=1.0, ppl_intact=1.0, control_kl=0.02), cfg)
    assert g == "rejected" and why.startswith("screened out on the probe sentences")
