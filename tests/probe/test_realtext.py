"""Real-text windows and their measures (probe/realtext.py): how a window starts is the point."""
from __future__ import annotations

import pytest
import torch
from tiny import planted_llama

import superweight as sw
from superweight.probe.realtext import CONDITIONS, RealText, make_windows

PROSE = "\n\n".join(f"Passage {i} tells of a river that runs to the sea past the town of Ely. " * 3 for i in range(40))


@pytest.fixture(scope="module")
def lm():
    return planted_llama()


def test_bos_windows_start_with_the_start_token_and_mid_windows_do_not(lm):
    w = make_windows(lm.tokenizer, PROSE, 32, 1, "cpu", "prose", vocab_size=lm.model.config.vocab_size)
    assert set(w.ids) == set(CONDITIONS) == {"bos", "mid"}
    bos_id = lm.tokenizer.bos_token_id
    assert w.start is not None and (w.ids["bos"][:, 0] == bos_id).all()
    assert not (w.ids["mid"][:, 0] == bos_id).any()
    assert w.ids["bos"].shape == w.ids["mid"].shape == (1, 32) and bool(w.mask["bos"].all())
    assert w.to_dict() == {"source": "prose", "window": 32, "start_token": w.start, "seed": 0,
                           "windows": {"bos": 1, "mid": 1}}
    # the bos window begins at a passage (after its blank line); the mid window inside one
    text = lm.tokenizer.decode(w.ids["bos"][0, 1:])
    assert text.lstrip("\n").startswith("Passage ")


def test_windows_are_capped_at_the_context_and_refused_below_16_tokens(lm):
    assert make_windows(lm.tokenizer, PROSE, 512, 1, "cpu", context=48).window == 48
    with pytest.raises(sw.UsageError, match="at least 16 tokens"):
        make_windows(lm.tokenizer, PROSE, 8, 1, "cpu")
    with pytest.raises(sw.UsageError, match="too short for one window"):
        make_windows(lm.tokenizer, "A few words.", 32, 1, "cpu", "short.txt")


def test_zeroing_the_planted_weight_moves_real_text_and_a_small_one_does_not(lm):
    w = make_windows(lm.tokenizer, PROSE, 32, 1, "cpu", "prose", vocab_size=lm.model.config.vocab_size)
    rt = RealText(lm, w)
    planted, ordinary = rt.measure([(sw.Coord(1, 5, 7),), (sw.Coord(0, 2, 3),)])
    for c in CONDITIONS:
        assert rt.ppl(c) > 1
        assert planted.kl[c] > 100 * max(ordinary.kl[c], 1e-6)
    assert planted.worst() in CONDITIONS
    # the intact baselines match a plain forward: the bos window's mean NLL
    with torch.no_grad():
        logits = lm.model(w.ids["bos"]).logits[0, :-1]
    nll = torch.nn.functional.cross_entropy(logits.float(), w.ids["bos"][0, 1:])
    assert rt.base["bos"].nll == pytest.approx(float(nll), rel=1e-4)


def test_an_edit_is_measured_only_in_the_conditions_asked_for(lm):
    """Controls are measured only where their candidate could matter (detect's
    ``_conditions``): the rows of the other condition are not run at all, and what is
    measured equals the same edit measured in both."""
    from superweight.probe import passes

    w = make_windows(lm.tokenizer, PROSE, 32, 1, "cpu", "prose", vocab_size=lm.model.config.vocab_size)
    rt = RealText(lm, w)
    edits = [(sw.Coord(1, 5, 7),), (sw.Coord(0, 2, 3),)]
    both = rt.measure(edits)
    passes.reset_stats()
    part = rt.measure(edits, [("bos",), ("bos", "mid")])
    assert passes.reset_stats()["head_tokens"] == 3 * 32  # three rows of 32 positions, not four
    assert set(part[0].kl) == {"bos"} and set(part[1].kl) == {"bos", "mid"}
    assert part[0].kl["bos"] == pytest.approx(both[0].kl["bos"], rel=1e-5)
    for c in CONDITIONS:
        assert part[1].kl[c] == pytest.approx(both[1].kl[c], rel=1e-5, abs=1e-9)


def test_a_seed_draws_other_passages_and_zero_keeps_the_texts_order(lm):
    prose = "\n\n".join(f"Passage {i} tells of river {i} that runs to the sea past the town of Ely. " * 3
                         for i in range(60))
    first = make_windows(lm.tokenizer, prose, 32, 4, "cpu", "prose")
    again = make_windows(lm.tokenizer, prose, 32, 4, "cpu", "prose", seed=0)
    other = make_windows(lm.tokenizer, prose, 32, 4, "cpu", "prose", seed=1)
    assert torch.equal(first.ids["bos"], again.ids["bos"]) and first.count == other.count == 4
    assert lm.tokenizer.decode(first.ids["bos"][0, 1:]).lstrip("\n").startswith("Passage 0 ")
    assert not torch.equal(first.ids["bos"], other.ids["bos"]) and other.to_dict()["seed"] == 1
    assert torch.equal(first.rows(1, 3).ids["mid"], first.ids["mid"][1:3])


def test_more_windows_extend_an_edit_without_measuring_the_first_again(lm):
    """RealText computes a stage of windows on first use; an edit measured on the first
    four and then asked for eight runs only the next four, and equals measuring all eight."""
    from superweight.probe import passes

    w = make_windows(lm.tokenizer, PROSE * 3, 32, 8, "cpu", "prose", vocab_size=lm.model.config.vocab_size)
    rt = RealText(lm, w, first=4)
    assert rt.stops == [4, 8]
    edit = [(sw.Coord(1, 5, 7),)]
    (four,) = rt.measure(edit)
    assert four.windows("bos") == 4
    passes.reset_stats()
    (eight,) = rt.measure(edit, windows=8, have=[four])
    # the next four windows of each condition only: their intact baseline (on first use), then the edit
    assert passes.reset_stats()["head_tokens"] == 2 * (2 * 4 * 32)
    (whole,) = RealText(lm, w).measure(edit)
    for c in CONDITIONS:
        assert eight.windows(c) == 8 and eight.kls[c][:4] == four.kls[c]
        assert eight.kl[c] == pytest.approx(whole.kl[c], rel=1e-4)

