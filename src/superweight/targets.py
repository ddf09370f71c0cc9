"""Which weights a command acts on: one rule, in one order, and where they came from.

A command names the sources it accepts; the first of them, in this order, that names any
weight wins:

1. ``given``: the coordinates on the command line (``--coords``), each range-checked;
2. ``detected``: the super weights detection proves (through the verdict cache);
3. ``graded``: the super and strong weights detection grades, each with its grade;
4. ``index``: the shipped index's entry for the model (``superweight index``);
5. ``strong``: the strong weights detection grades, when none is super.

Per command (``ACCEPTS``): ``quantize``, ``ablate``, ``scale`` and ``quant-compare`` act on
given or detected super weights; ``verify`` checks given coordinates or the index's claim
(it never detects: it checks claims); ``audit`` checks given coordinates or every graded
weight; ``recipe`` protects given coordinates or every graded weight; ``report`` takes given,
detected, the index's, then the strong ones. Detection runs
only when a detection source is reached, and at most once.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from superweight.coords import Coord
from superweight.errors import UsageError
from superweight.models.load import LoadedModel

SOURCES = ("given", "detected", "graded", "index", "strong")
ACCEPTS = {
    "quantize": ("given", "detected"), "ablate": ("given", "detected"), "scale": ("given", "detected"),
    "quant-compare": ("given", "detected"), "verify": ("given", "index"), "audit": ("given", "graded"),
    "report": ("given", "detected", "index", "strong"), "recipe": ("given", "graded"),
}


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
            from superweight.index import known

            found.entry = known(lm.index_id)
            if found.entry is not None and found.entry.super_weights:
                coords = list(found.entry.super_weights)
                for c in coords:
                    lm.adapter.site(c)
                return _with(found, coords, "index", ["index"] * len(coords))
            continue
        if found.result is None:
            from superweight.verdicts import detect_once

            (log or (lambda _m: None))("detecting the super weights first")
            found.result, found.provenance = detect_once(lm, cfg, log=log, recompute=recompute)
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
