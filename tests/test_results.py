"""The result types (results.py): what a detection, a candidate's effect and its controls
say in JSON, and that every field survives the verdict cache's round trip."""
from __future__ import annotations

import json

import pytest

import superweight as sw
from superweight.probe.records import TextEffect
from superweight.results import Control, DetectConfig, DetectResult, Effect, Finding
from superweight.verdicts import from_state, to_state


def finding(coord, grade, effect=None, **kw) -> Finding:
    return Finding(coord, f"model.layers.{coord.layer}.mlp.down_proj.weight", 3.5, 100.0, -700.0, 1, 0.9, 0,
                   effect=effect, grade=grade, **kw)


@pytest.fixture
def effect():
    e = Effect(kl=1.2, ppl=9.0, ppl_intact=3.0, control=sw.Coord(1, 2, 3), control_value=0.1, control_kl=0.001,
               text=TextEffect({"bos": [1.0, 1.2], "mid": [0.1, 0.3]}, {"bos": [2.0, 2.2], "mid": [0.5, 0.7]}))
    near = Control("neighbours", (sw.Coord(1, 5, 8),), TextEffect.single({"bos": 1.0, "mid": 1.0}, {"bos": 0.01, "mid": 0.03}))
    largest = Control("largest", (sw.Coord(1, 9, 9),))
    e.controls = [near, largest, Control("largest+random", largest.coords, of=[largest])]
    e.stages, e.margin, e.matters_in = [[0], [2]], {"bos": 100.0, "mid": 20.0}, ["bos", "mid"]
    return e


def test_an_effect_reads_its_strongest_measured_control_per_condition(effect):
    assert effect.control_kl_text("bos") == pytest.approx(0.01) and effect.control_kl_text("mid") == pytest.approx(0.03)
    assert effect.control_kl_text("nowhere") is None
    d = effect.to_dict()
    assert d["text"]["bos"]["kl"] == pytest.approx(2.1) and d["control"]["kl"] == 0.001
    assert [c.get("union_of") for c in d["controls"]] == [None, None, ["largest"]]
    assert "stages" not in d  # the proof's working state is not part of the JSON


def test_a_detection_names_its_super_and_strong_weights_and_round_trips(effect):
    sw_, strong = sw.Coord(1, 5, 7), sw.Coord(2, 0, 4)
    r = DetectResult("tiny", "LlamaForCausalLM", 4, ["a prompt"], [finding(sw_, "super", effect)], [], [], None, 1, 12.0,
                     config=DetectConfig(window=32), strong=[finding(strong, "strong", jointly_with=[sw_])])
    assert r.coords == [sw_] and r.strong_coords == [strong]
    d = r.to_dict()
    assert [f["grade"] for f in d["super_weights"] + d["strong"]] == ["super", "strong"]
    assert d["strong"][0]["jointly_with"] == [sw_.to_dict()] and d["config"]["window"] == 32
    back = from_state(DetectResult, json.loads(json.dumps(to_state(r))))
    assert back == r and back.super_weights[0].effect.stages == [[0], [2]]
    assert back.to_dict() == d
