"""Which weights a command acts on: one rule, in one order, and where they came from.

A command names the sources it accepts; the first of them, in this order, that names any
weight wins:

1. ``given``: the coordinates on the command line (``--coords``), each range-checked;
2. ``detected``: the super weights detection proves (through the verdict cache);
3. ``graded``: the super and strong weights detection grades, each with its grade;
4. ``index``: the shipped index's entry for the model (``superweight index``);
5. ``strong``: the strong weights detection grades, when none is super.

The orders the commands take (each command's spec in cli.py names one): ``SUPER``, given or
detected super weights (``quantize``, ``ablate``, ``scale``, ``quant-compare``); ``CLAIMS``,
given coordinates or the index's claim, never detected (``verify`` checks claims); ``GRADED``,
given coordinates or every graded weight (``audit``, ``recipe``); ``ANY``, given, detected,
the index's, then the strong ones (``report``). Detection runs
only when a detection source is reached, and at most once.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from superweight.coords import Coord
from superweight.errors import UsageError

if TYPE_CHECKING:  # this module is read by the command line's start, which imports no torch
    from superweight.models.load import LoadedModel

SOURCES = ("given", "detected", "graded", "index", "strong")
# the orders of sources the commands name (each command's spec in cli.py says which it takes)
SUPER = ("given", "detected")  # given or detected super weights: quantize, ablate, scale, quant-compare
CLAIMS = ("given", "index")  # given coordinates or the index's claim, never detected: verify
GRADED = ("given", "graded")  # every graded weight: audit, recipe
ANY = ("given", "detected", "index", "strong")  # the report: the first that names any weight


@dataclass
class Targets:
    """The weights a command acts on, and where they came from."""

    coords: list[Coord]
    source: str  # one of SOURCES, or "none"
    grades: list[str] = field(default_factory=list)  # per coordinate: "given", "index", or its grade
    result: object | None = None  # the DetectResult, when detection ran
    provenance: object | None = None  # its verdicts.Provenance
    entry: object | None = None  # the index.IndexEntry consulted, if any

    @property
    def label(self) -> str:
        """The source in words (the report's JSON ``acted_on.from``)."""
        return {"given": "given", "detected": "detected super weights",
                "graded": "detected super and strong weights",
                "index": f"the index ({getattr(self.entry, 'source', '')})",
                "strong": "detected strong weights (no super weight found)"}.get(self.source, "none")

    def describe(self) -> str:
        what = ", ".join(map(str, self.coords)) or "none"
        return f"weights acted on: {what} (from: {self.label})"

    def to_dict(self) -> dict:
        return {"coords": [str(c) for c in self.coords], "from": self.label}


@dataclass
class Acted:
    """A command's result next to the weights it acted on: what ``verify``, ``quantize`` and
    ``audit`` hand the command line. Its JSON is the result's, then ``acted_on`` (the
    weights and where they came from) and, when detection ran for them, ``verdict`` (where
    the verdict came from: computed now, or the cache)."""

    result: object
    targets: Targets | None  # None: the command was told to act on no weights (--no-keep-super)
    verdict: object | None = None  # the run's own Provenance (verify's), else the targets'
    head: dict = field(default_factory=dict)  # keys the JSON starts with (quantize: model, out)

    def to_dict(self) -> dict:
        d = {**self.head, **self.result.to_dict()}
        t = self.targets
        d["acted_on"] = t.to_dict() if t is not None else {"coords": [], "from": "none (--no-keep-super)"}
        prov = self.verdict or (t.provenance if t is not None else None)
        if prov is not None:
            d["verdict"] = prov.to_dict()
        return d


def which_weights(lm: LoadedModel, given: list[Coord] | None = None, accept: tuple[str, ...] = ("given", "detected"),
                  cfg=None, *, result=None, log: Callable[[str], None] | None = None, recompute: bool = False,
                  on_verdict: Callable | None = None) -> Targets:
    """The weights to act on, by the module's order over the sources in ``accept``.
    ``result``: a detection already made (not made again); ``cfg``: the DetectConfig a
    detection would use; ``on_verdict`` is given the detection's Provenance when one runs."""
    unknown = set(accept) - set(SOURCES)
    if unknown:
        raise UsageError(f"unknown source(s) of weights: {', '.join(sorted(unknown))} (known: {', '.join(SOURCES)})")
    found = Targets([], "none", result=result)
    for source in SOURCES:
        if source not in accept:
            continue
        if source == "given":
            if given:
                for c in given:
                    lm.adapter.site(c)  # range-checked against this model
                return _with(found, list(given), "given", ["given"] * len(given))
            continue
        if source == "index":
            from superweight.catalog import known

            found.entry = known(lm.index_id)
            if found.entry is not None and found.entry.super_weights:
                coords = list(found.entry.super_weights)
                for c in coords:
                    lm.adapter.site(c)
                return _with(found, coords, "index", ["index"] * len(coords))
            continue
        if found.result is None:
            from superweight.verdicts import detection

            (log or (lambda _m: None))("detecting the super weights first")
            d = detection(lm, cfg, log=log, recompute=recompute)
            found.result, found.provenance = d.result, d.provenance
            if on_verdict is not None:
                on_verdict(found.provenance)
        r = found.result
        picked = {"detected": r.super_weights, "graded": r.super_weights + r.strong, "strong": r.strong}[source]
        if picked:
            return _with(found, [f.coord for f in picked], source, [f.grade for f in picked])
    return found


def _with(t: Targets, coords: list[Coord], source: str, grades: list[str]) -> Targets:
    t.coords, t.source, t.grades = coords, source, grades
    return t
