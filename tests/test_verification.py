"""``verify`` (verification.py): claimed coordinates checked on a checkpoint, each zeroed
alone and graded as detect grades a candidate, then together; bad claims refused before
any pass. On a tiny llama with one planted super weight."""
from __future__ import annotations

import pytest
from tiny import planted_llama

import superweight as sw
from superweight import proof
from superweight.results import DetectConfig
from superweight.verification import verify, verify_report

CFG = DetectConfig(window=32, windows=2, max_windows=2, super_ppl_ratio=1.5)
PLANTED = sw.Coord(1, 5, 7)


@pytest.fixture(scope="module")
def lm():
    return planted_llama(PLANTED)


def test_the_planted_weight_is_confirmed_and_an_ordinary_one_is_not(lm):
    ordinary = sw.Coord(0, 3, 3)
    planted, other = verify(lm, [PLANTED, ordinary], CFG)
    assert planted.grade in ("super", "strong") and planted.spike and planted.value == lm.adapter.value(PLANTED)
    assert other.grade == "rejected" and not other.is_super_weight and not other.spike and other.reason
    d = planted.to_dict()
    assert (d["layer"], d["row"], d["col"]) == (1, 5, 7) and d["module"] == "model.layers.1.mlp.down_proj.weight"


def test_several_claims_are_also_judged_together(lm):
    rep = verify_report(lm, [PLANTED, sw.Coord(1, 5, 8)], CFG)
    assert rep.model == lm.name and len(rep.verdicts) == 2
    assert rep.together["coords"] == ["1:5:7", "1:5:8"] and "effect" in rep.together
    assert rep.to_dict()["together"] == rep.together


@pytest.mark.parametrize("coords,msg", [([], "no coordinates to verify"), ([sw.Coord(99, 0, 0)], "out of range")])
def test_a_bad_claim_is_refused_before_any_pass(lm, monkeypatch, coords, msg):
    monkeypatch.setattr(proof.passes, "run", lambda *a, **k: pytest.fail("a pass ran"))
    with pytest.raises(sw.UsageError, match=msg):
        verify(lm, coords, CFG)
