"""The sequential proof (detect.Judge, docs/detection.md step 5): a grade that the first
windows decide stops there, an open one gets twice as many windows, one whose interval
still straddles a threshold at the budget is ``uncertain``; and the interval itself."""
from __future__ import annotations

import itertools

import pytest
from tiny import planted_llama

import superweight as sw
from superweight.proof import Judge, decided, grade
from superweight.probe.realtext import CONDITIONS
from superweight.probe.records import TextEffect, spread
from superweight.results import Control, DetectConfig, Effect

DECISIVE = sw.Coord(1, 5, 7)  # moves every window by ~1.5 nats
LATE = sw.Coord(1, 6, 8)  # one window of the first four near zero: decided on eight
STRADDLES = sw.Coord(1, 9, 9)  # half its windows at 0, half at 0.04 nats: mean 0.02, the threshold
QUIET = sw.Coord(0, 3, 3)  # below strong_kl everywhere
ONE_SIDED = sw.Coord(1, 2, 2)  # bos like QUIET (decided: it does not matter there); mid like LATE (open)
EXAMINED = {DECISIVE, LATE, STRADDLES, QUIET, ONE_SIDED}  # no control is one of them (detect: every examined spike)


def per_window(coords: tuple, k: int, cond: str = "bos") -> float:
    """The KL of window ``k`` of ``cond`` when ``coords`` are zeroed: a candidate's own, else a control's."""
    if coords == (ONE_SIDED,):
        return per_window((QUIET,) if cond == "bos" else (LATE,), k)
    if coords == (DECISIVE,):
        return 1.5 + 0.1 * (k % 3)
    if coords == (LATE,):
        return 0.001 if k == 0 else 0.05 + 0.01 * (k % 3)
    if coords == (STRADDLES,):
        return 0.04 * (k % 2)
    if coords == (QUIET,):
        return 0.002
    return 1e-4  # every control


class FakeText:
    """Stands in for RealText: per-window values from ``per_window``; records each call's windows."""

    stops = [4, 8, 16]

    def __init__(self):
        self.asked: dict[tuple, list[int]] = {}
        self.conds: dict[tuple, list[tuple]] = {}  # the conditions each call measured

    def measure(self, edits, conditions=None, windows=None, have=None):
        conds = conditions or [CONDITIONS] * len(edits)
        out = []
        for e, cs, h in zip(edits, conds, have or [None] * len(edits)):
            self.asked.setdefault(tuple(e), []).append(windows)
            self.conds.setdefault(tuple(e), []).append(tuple(cs))
            done = {c: (h.windows(c) if h is not None else 0) for c in cs}
            new = TextEffect({c: [0.0] * (windows - done[c]) for c in cs if windows > done[c]},
                             {c: [per_window(tuple(e), k, c) for k in range(done[c], windows)] for c in cs if windows > done[c]})
            out.append(new if h is None else h.extended(new))
        return out


@pytest.fixture(scope="module")
def lm():
    return planted_llama()


def judge(lm, cfg):
    j = Judge.__new__(Judge)
    j.lm, j.cfg, j.log, j._queue, j._rt = lm, cfg, lambda _m: None, {}, FakeText()
    return j


def probe_effect() -> Effect:
    return Effect(kl=1.0, ppl=2.0, ppl_intact=1.0, control_kl=0.0)


def test_a_decisive_grade_stops_after_the_first_windows_and_an_open_one_gets_more(lm):
    cfg = DetectConfig()
    j = judge(lm, cfg)
    items = [([c], probe_effect()) for c in (DECISIVE, LATE, QUIET)]
    grades = j.prove(items, EXAMINED)
    assert [g for g, _ in grades] == ["strong", "strong", "rejected"]
    assert j._rt.asked[(DECISIVE,)] == [4]  # decided on the first look
    assert j._rt.asked[(QUIET,)] == [4]  # below strong_kl even at the top of its interval
    assert j._rt.asked[(LATE,)] == [4, 8]  # open after four windows, decided on eight
    late = items[1][1]
    assert all(late.text.windows(c) == 8 for c in CONDITIONS)
    assert all(k.text is None or k.text.windows("bos") == 8 for k in late.controls)  # its controls follow it
    assert all(k.text is None or k.text.windows("bos") == 4 for k in items[0][1].controls)


def test_a_condition_decided_on_its_own_gets_no_more_windows(lm):
    """Below strong_kl in bos even at the top of its interval, open mid-text: only the mid
    windows (and the controls' mid windows) are added; bos stays at the first look."""
    cfg = DetectConfig()
    j = judge(lm, cfg)
    items = [([ONE_SIDED], probe_effect())]
    (g, _), = j.prove(items, EXAMINED)
    assert g == "strong"
    assert j._rt.asked[(ONE_SIDED,)] == [4, 8]
    assert j._rt.conds[(ONE_SIDED,)] == [CONDITIONS, ("mid",)]
    eff = items[0][1]
    assert eff.text.windows("bos") == 4 and eff.text.windows("mid") == 8
    measured = [k for k in eff.controls if k.text is not None]  # where it cannot matter (bos): never run
    assert measured and all(k.text.windows("bos") == 0 and k.text.windows("mid") == 8 for k in measured)


def test_a_grade_whose_interval_straddles_a_threshold_is_uncertain_with_the_reason(lm):
    cfg = DetectConfig()
    j = judge(lm, cfg)
    items = [([STRADDLES], probe_effect())]
    (g, why), = j.prove(items, EXAMINED)
    assert j._rt.asked[(STRADDLES,)] == [4, 8, 16]  # the whole budget
    assert g == "uncertain"
    assert why.startswith("rejected or strong") and "straddles 0.02" in why and "16 windows" in why
    assert not decided(items[0][1], cfg)


def test_a_fixed_number_of_windows_is_one_look(lm):
    """--windows N --max-windows N: one look of N windows, graded on it (uncertain if open)."""
    cfg = DetectConfig(windows=4, max_windows=4)
    j = judge(lm, cfg)
    j._rt.stops = [4]
    items = [([c], probe_effect()) for c in (LATE, DECISIVE)]
    grades = j.prove(items, EXAMINED)
    assert [g for g, _ in grades] == ["uncertain", "strong"]
    assert j._rt.asked[(LATE,)] == [4]


def test_grade_reads_the_interval_ends():
    cfg = DetectConfig()
    ctl = TextEffect({c: [0.0] * 8 for c in CONDITIONS}, {c: [1e-4] * 8 for c in CONDITIONS})
    sure = Effect(kl=1, ppl=1, ppl_intact=1, text=TextEffect({c: [1.6] * 8 for c in CONDITIONS},
                                                                 {c: [1.5, 1.7] * 4 for c in CONDITIONS}))
    sure.controls = [Control("largest", (QUIET,), ctl)]
    assert grade(sure, cfg) == ("super", None)  # e^1.6 = x4.95 >= 3 at both ends
    # perplexity x2.7 to x3.3 over windows: super or strong, not decided
    edge = Effect(kl=1, ppl=1, ppl_intact=1, text=TextEffect({c: [0.99, 1.2] * 4 for c in CONDITIONS},
                                                                 {c: [1.5] * 8 for c in CONDITIONS}))
    edge.controls = [Control("largest", (QUIET,), ctl)]
    g, why = grade(edge, cfg)
    assert g == "strong" and why.startswith("super not shown") and "straddles x3" in why  # the sure end


def test_the_interval_is_a_bootstrap_of_the_mean_that_holds_it():
    assert spread([0.5]) == (0.5, 0.5)
    lo, hi = spread([1.0, 2.0, 3.0, 4.0])
    assert 1.0 <= lo < 2.5 < hi <= 4.0
    assert spread([1.0, 2.0, 3.0, 4.0]) == (lo, hi)  # seeded: the same every time
    wide = spread([0.0, 1.0] * 4)
    narrow = spread([0.0, 1.0] * 32)
    assert narrow[1] - narrow[0] < wide[1] - wide[0]  # more windows, a tighter interval
    assert list(itertools.chain(spread([2.0] * 5))) == [2.0, 2.0]
    te = TextEffect({"bos": [0.1, 0.3]}, {"bos": [0.2, 0.4]})
    iv = te.interval("bos")
    assert iv["windows"] == 2 and iv["kl"][0] <= 0.3 <= iv["kl"][1]
    assert te.to_dict()["bos"]["spread"] == iv


@pytest.mark.parametrize("kw,msg", [({"windows": 8, "max_windows": 4}, "--max-windows (4) must be at least --windows (8)"),
                                    ({"seed": -1}, "--seed must be"), ({"confidence": 1.0}, "--confidence")])
def test_a_bad_budget_is_one_line(kw, msg):
    with pytest.raises(sw.UsageError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        DetectConfig(**kw)



def test_verify_of_several_weights_runs_the_intact_pass_once(lm, monkeypatch):
    """``verify --coords A B``: each weight alone, then both together, on one set-up (the
    judge's windows and baselines, and one intact pass over the probe sentences)."""
    from superweight import proof
    from superweight.verification import verify_report

    calls = []  # each pass's groups
    real = proof.passes.run
    monkeypatch.setattr(proof.passes, "run", lambda lm, groups, **k: calls.append(groups) or real(lm, groups, **k))
    cfg = DetectConfig(windows=2, max_windows=2, window=32)
    rep = verify_report(lm, [DECISIVE, sw.Coord(1, 5, 8)], cfg)
    intact = [g for g in calls if not any(x.zero for x in g)]  # the screens zero weights; the intact pass does not
    assert len(intact) == 1 and any(x.scan for x in intact[0])  # the probe and the scan (spike or not), once
    assert len(rep.verdicts) == 2 and rep.together is not None
