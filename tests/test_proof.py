"""The proof (proof.py): its inputs, the controls that stand next to a candidate, the
stages of control sets it keeps on each effect, and how a grade is decided; on a tiny
planted model and on fabricated effects. The sequential windows are tests/test_sequential.py."""
from __future__ import annotations

import pytest
from tiny import planted_llama

import superweight as sw
from superweight import proof
from superweight.proof import Judge, controls_for, grade, inputs, largest_controls, screened
from superweight.probe.records import TextEffect
from superweight.results import Control, DetectConfig, Effect


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


def test_the_inputs_are_encoded_and_a_bad_text_fails_before_any_pass(planted, monkeypatch):
    cfg = DetectConfig(window=32, windows=2, max_windows=4)
    got = inputs(planted.tokenizer, planted.model, planted.device, cfg, planted.name)
    ids, mask = got.prompts
    assert ids.shape[0] == len(cfg.prompts) and mask.shape == ids.shape and int(mask.sum()) > 0
    assert got.sentences[0].shape[0] >= 1 and got.windows.count == 4  # max_windows cut, per condition
    monkeypatch.setattr(proof.passes, "run", lambda *a, **k: pytest.fail("a pass ran"))
    with pytest.raises(sw.UsageError):
        Judge(planted, DetectConfig(text=str(planted.name) + "-no-such-file.txt"))


def test_the_control_stages_live_on_the_effect_and_are_set_once(planted):
    """Issue 41: the proof's state is on the Effect (indices into its controls, stage by
    stage), not in the judge keyed by id: neighbours first, then largest and random zeroed
    together when the candidate is strong; proving the same effect again adds no union."""
    c = sw.Coord(1, 5, 7)
    judge = Judge(planted, DetectConfig(window=32, windows=2, max_windows=2))
    (eff,), _ = judge.screen([(c,)], {c})
    assert eff.stages is None
    (g, _), = judge.prove([([c], eff)], {c}, screen=False)
    assert g in ("super", "strong") and eff.stages is not None
    kinds = [[eff.controls[i].kind for i in stage] for stage in eff.stages]
    assert kinds[0] == ["neighbours"] and kinds[1] in (["largest+random"], ["largest", "random"])
    union = [k for k in eff.controls if k.of]
    assert all(i < len(eff.controls) for stage in eff.stages for i in stage)
    n = len(eff.controls)
    judge.prove([([c], eff)], {c}, screen=False)
    assert len(eff.controls) == n and [k for k in eff.controls if k.of] == union


def test_the_screen_needs_both_the_threshold_and_the_margin_over_its_control():
    cfg = DetectConfig()
    assert screened(Effect(kl=1.0, ppl=2.0, ppl_intact=1.0, control_kl=0.01), cfg)
    assert not screened(Effect(kl=1.0, ppl=2.0, ppl_intact=1.0, control_kl=0.9), cfg)  # its control as strong
    assert not screened(Effect(kl=cfg.screen_kl / 2, ppl=2.0, ppl_intact=1.0, control_kl=0.0), cfg)
