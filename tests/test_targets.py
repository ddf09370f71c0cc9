"""The one rule for which weights a command acts on (targets.py): one order, each command's
sources, detection at most once, the source said."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
from tiny import planted_llama

import superweight as sw
import superweight.verdicts as verdicts
from superweight.cli import COMMANDS
from superweight.targets import ANY, CLAIMS, GRADED, SOURCES, SUPER, which_weights

SW = sw.Coord(1, 5, 7)

# A random tiny model's perplexity says little: zeroing the planted weight costs it x1.7 to
# x4.3 mid-text over 16 windows of 32 tokens, so "wrecks it" is set at x1.5 here to make
# the planted weight a super weight (docs/detection.md, "Tiny models").
TINY_SUPER = sw.DetectConfig(window=32, super_ppl_ratio=1.5)


@pytest.fixture(scope="module")
def lm():
    return planted_llama(SW)


def finding(coord, grade):
    return SimpleNamespace(coord=coord, grade=grade)


def detected(super_=(), strong=()):
    return SimpleNamespace(super_weights=[finding(c, "super") for c in super_],
                           strong=[finding(c, "strong") for c in strong])


@pytest.fixture
def no_detection(monkeypatch):
    def banned(*a, **k):
        raise AssertionError("detection ran")

    monkeypatch.setattr(verdicts, "detection", banned)


def test_given_coordinates_win_and_are_range_checked(lm, no_detection):
    takers = [c for c in COMMANDS if c.accepts]
    assert {c.name for c in takers} == {"quantize", "ablate", "scale", "quant-compare", "verify", "audit", "report",
                                        "recipe"}
    for c in takers:
        t = which_weights(lm, [sw.Coord(0, 1, 2)], c.accepts)
        assert (t.coords, t.source, t.grades) == ([sw.Coord(0, 1, 2)], "given", ["given"]), c.name
        assert t.describe() == "weights acted on: 0:1:2 (from: given)"
    with pytest.raises(sw.UsageError, match="out of range"):
        which_weights(lm, [sw.Coord(1, 999, 0)])


def test_detection_runs_once_through_the_verdict_cache(lm, monkeypatch):
    calls = []
    real = verdicts.detection

    def counted(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(verdicts, "detection", counted)
    said = []
    t = which_weights(lm, None, ANY, TINY_SUPER, on_verdict=said.append)
    assert (t.coords, t.source, t.label) == ([SW], "detected", "detected super weights")
    assert len(calls) == 1 and len(said) == 1 and t.provenance is said[0]
    assert t.to_dict() == {"coords": ["1:5:7"], "from": "detected super weights"}


def test_one_order_over_each_commands_sources(lm, no_detection, monkeypatch):
    from superweight import catalog as index

    entry = index.IndexEntry("tiny/llama", "a paper", (sw.Coord(2, 3, 4),))
    monkeypatch.setattr(index, "known", lambda hub_id: entry)
    only_strong = detected(strong=[sw.Coord(0, 1, 1)])
    both = detected(super_=[SW], strong=[sw.Coord(0, 1, 1)])
    # report: detected super weights, else the index's, else the strong ones
    assert which_weights(lm, None, ANY, result=both).source == "detected"
    t = which_weights(lm, None, ANY, result=only_strong)
    assert (t.coords, t.source, t.label) == ([sw.Coord(2, 3, 4)], "index", "the index (a paper)")
    monkeypatch.setattr(index, "known", lambda hub_id: None)
    t = which_weights(lm, None, ANY, result=only_strong)
    assert (t.coords, t.source) == ([sw.Coord(0, 1, 1)], "strong")
    # audit: every graded weight with its grade; quantize: the super weights only, maybe none
    t = which_weights(lm, None, GRADED, result=both)
    assert (t.coords, t.grades, t.source) == ([SW, sw.Coord(0, 1, 1)], ["super", "strong"], "graded")
    t = which_weights(lm, None, SUPER, result=only_strong)
    assert (t.coords, t.source, t.label) == ([], "none", "none")
    # verify never detects: the index's claim, or nothing
    assert which_weights(lm, None, CLAIMS).source == "none"
    assert SOURCES == ("given", "detected", "graded", "index", "strong")


def test_an_unknown_source_is_refused(lm):
    with pytest.raises(sw.UsageError, match="unknown source"):
        which_weights(lm, None, ("given", "guessed"))
