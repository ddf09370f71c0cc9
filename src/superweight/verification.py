"""``verify``: claimed coordinates checked on a checkpoint by the detection's own proof.

Each coordinate is zeroed alone on real text next to its controls and graded as ``detect``
grades a candidate (no screen: every one is measured); several are also zeroed together,
since weights that share a row or column can stand in for each other.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from superweight.coords import Coord
from superweight.proof import Judge
from superweight.errors import UsageError
from superweight.models.load import LoadedModel
from superweight.results import DetectConfig, Effect


@dataclass
class Verdict:
    coord: Coord
    param: str  # the parameter's name (JSON key: module)
    value: float
    effect: Effect
    is_super_weight: bool
    reason: str | None
    spike: bool  # the detector's scan sees this exact weight as its layer's spike
    grade: str = "rejected"

    def to_dict(self) -> dict:
        d = {
            **self.coord.to_dict(), "module": self.param, "value": self.value, "grade": self.grade,
            "is_super_weight": self.is_super_weight, "spike": self.spike, "effect": self.effect.to_dict(),
        }
        if self.reason:
            d["reason"] = self.reason
        return d


def verify(lm: LoadedModel, coords: list[Coord], cfg: DetectConfig | None = None,
           log: Callable[[str], None] | None = None, judge: Judge | None = None) -> list[Verdict]:
    """Check claimed coordinates on this checkpoint: each zeroed alone on real text (no
    screen: every one is measured), graded as detect grades a candidate
    (``is_super_weight``: graded ``super``)."""
    cfg = cfg or DetectConfig()
    log = log or (lambda _msg: None)
    if not coords:
        raise UsageError("no coordinates to verify")
    sites = [lm.adapter.site(c) for c in coords]  # range checks before any work
    judge = judge or Judge(lm, cfg, log)  # reads the text: a bad --text fails before any pass
    records = judge.intact(scan=True)[1].records
    log(f"ablating {len(coords)} coordinate(s) on the probe sentences")
    effects, _ = judge.screen([(c,) for c in coords], set(coords))
    grades = judge.prove([([c], e) for c, e in zip(coords, effects)], set(coords), screen=False)
    verdicts = []
    for c, site, eff, (g, reason) in zip(coords, sites, effects, grades):
        r = records.get((c.layer, c.expert))
        spike = r is not None and (r.output_channel, r.col) == (c.row, c.col)
        if g == "strong":
            reason = reason or f"strong, not super: perplexity x{max(eff.text.ppl_ratio.values()):.3g} (< {cfg.super_ppl_ratio:g})"
        verdicts.append(Verdict(c, site.param_name, lm.adapter.value(c), eff, g == "super", reason, spike, g))
    return verdicts


def verify_together(lm: LoadedModel, coords: list[Coord], cfg: DetectConfig | None = None,
                    log: Callable[[str], None] | None = None, judge: Judge | None = None) -> tuple[Effect, str | None]:
    """Zero all ``coords`` at once (weights sharing a row or column can stand in for each
    other) and grade the damage like a single candidate's: (effect, reason or None).
    ``judge``: the one ``verify`` used, to reuse its windows and intact baselines."""
    cfg = cfg or DetectConfig()
    for c in coords:
        lm.adapter.site(c)
    judge = judge or Judge(lm, cfg, log)
    (eff,), _ = judge.screen([tuple(coords)])  # on verify's intact pass, when it ran: one per run
    (g, reason), = judge.prove([(list(coords), eff)], set(coords), screen=False)
    return eff, reason if g == "super" else (reason or f"{g}, not super")


@dataclass
class VerifyResult:
    """What ``superweight verify`` reports: each coordinate's verdict and, for several, the
    verdict on zeroing them all together (weights sharing a row or column can stand in for
    each other). ``to_dict`` is the JSON the command writes."""

    model: str
    verdicts: list[Verdict]
    together: dict | None = None

    def to_dict(self) -> dict:
        return {"model": self.model, "verdicts": [v.to_dict() for v in self.verdicts], "together": self.together}


def verify_report(lm: LoadedModel, coords: list[Coord], cfg: DetectConfig | None = None,
                  log: Callable[[str], None] | None = None) -> VerifyResult:
    """``verify`` each coordinate and, when there are several, ``verify_together``: one set
    of windows and intact baselines for both."""
    cfg = cfg or DetectConfig()
    log = log or (lambda _msg: None)
    judge = Judge(lm, cfg, log)
    verdicts = verify(lm, coords, cfg, log=log, judge=judge)
    together = None
    if len(coords) > 1:
        log(f"ablating all {len(coords)} together")
        eff, reason = verify_together(lm, coords, cfg, log=log, judge=judge)
        together = {"coords": [str(c) for c in coords], "is_super_weight_set": reason is None,
                    "effect": eff.to_dict(), **({"reason": reason} if reason else {})}
    return VerifyResult(lm.name, verdicts, together)
