"""Find super weights automatically and prove each one by its effect on real text.

The algorithm, its thresholds and the measurements they were chosen from are described
once, in docs/detection.md. In short: scan every down projection for spikes; take the
weight that explains each spike; screen it on short built-in sentences; then zero it on
long windows of real prose (starting with the model's start token, and mid-text) next to
control weights of the same matrix, and grade it ``super``, ``strong`` or ``rejected``.
Zero what was found and scan again, until no new spike appears.

This module is the algorithm only: the proof's set-up, its controls and its grade are in
``proof.py``, the result types in ``results.py``, the residual stream's analysis in
``residual.py``, ``verify`` in ``verification.py``, and which weights a command acts on in
``targets.py``.
"""
from __future__ import annotations

import statistics
from typing import Callable

from superweight.coords import Coord
from superweight.models.load import LoadedModel
from superweight.probe.records import SiteRecord
from superweight.probe.passes import Group
from superweight.proof import Judge
from superweight.residual import massive_channels, super_activation
from superweight.results import DetectConfig, DetectResult, Finding


def per_layer(records: dict) -> list[SiteRecord]:
    """The strongest site (largest max |Y|) of each layer, in layer order."""
    top: dict[int, SiteRecord] = {}
    for r in records.values():
        if r.layer not in top or r.max_output > top[r.layer].max_output:
            top[r.layer] = r
    return [top[k] for k in sorted(top)]


def spikes(records: dict, ratio: float) -> list[SiteRecord]:
    """Sites whose max |Y| stands ``ratio`` times above the median layer, largest first."""
    layers = per_layer(records)
    if not layers:
        return []
    median = statistics.median(r.max_output for r in layers)
    floor = ratio * median
    hits = [r for r in records.values() if r.max_output >= floor and r.max_output > 0]
    return sorted(hits, key=lambda r: (-r.max_output, r.layer, r.expert or 0))


def detect(lm: LoadedModel, cfg: DetectConfig | None = None, log: Callable[[str], None] | None = None) -> DetectResult:
    """Find, prove and grade the super weights of a loaded model (docs/detection.md).

    Passes: the first runs the intact probe and the first scan together; each round after
    that is one more, which screens the round's candidates and their controls on the probe
    sentences and scans for the next round with all of them zeroed (``passes.run``). Once
    no new spike appears, the real-text proof runs the screened candidates, and then the
    controls of those with an effect, on long windows."""
    cfg = cfg or DetectConfig()
    log = log or (lambda _msg: None)
    judge = Judge(lm, cfg, log)  # the proof's set-up: windows, the intact passes, the baselines
    found: list[Finding] = []
    probed: list[Finding] = []  # screened on the probe sentences, to be proven on real text
    examined: set[Coord] = set()
    removed: list[Coord] = []  # every single-weight candidate: zeroed for the next scans
    site_max: dict[tuple, float] = {}  # (layer, expert) -> largest |Y| examined there
    log(f"round 1: scanning {len(lm.adapter.sites)} down projections")
    probe, scanned = judge.intact(scan=True, residual=True)
    residual = scanned.residual  # intact model, first prompt: per layer (max |h| per channel, token)
    hidden = scanned.hidden  # the same, whole: embeddings, then after each layer [T, H]
    first = per_layer(scanned.records)
    rnd = 0
    for rnd in range(1, cfg.max_rounds + 1):
        new = []
        for r in spikes(scanned.records, cfg.spike_ratio):
            f = Finding.of(r, lm.adapter.site(r.coord).param_name, rnd, scanned.which[(r.layer, r.expert)])
            if f.coord not in examined:
                examined.add(f.coord)
                new.append(f)
        if not new:
            break
        eligible = []
        for f in new[: cfg.max_candidates]:
            key = (f.coord.layer, f.coord.expert)  # one finding per site and round
            above = site_max.get(key)
            site_max[key] = max(above or 0.0, abs(f.output_activation))
            if above is not None and abs(f.output_activation) < cfg.hidden_ratio * above:
                f.reason = (
                    f"a trailing spike: |Y| {abs(f.output_activation):.4g} is under {cfg.hidden_ratio:g}x the "
                    f"{above:.4g} already examined in this down projection; not probed"
                )
                found.append(f)
                continue
            if abs(f.share) < cfg.min_share or f.share < 0:
                f.reason = (
                    f"no single weight accounts for the spike: the largest term X[t,col]*W[row,col] "
                    f"is {f.share:.0%} of Y[t,row] (< {cfg.min_share:.0%})"
                )
                found.append(f)
                continue
            eligible.append(f)
        if not eligible:
            break  # nothing zeroed: the next scan would see the same model
        removed += [f.coord for f in eligible]
        more = rnd < cfg.max_rounds
        log(f"round {rnd}: screening {len(eligible)} candidate(s) on the probe sentences"
            + (f", scanning for round {rnd + 1}" if more else ""))
        effects, after = judge.screen([(f.coord,) for f in eligible], examined,
                                      [Group(*judge.prompts, zero=tuple(removed), scan=True)] if more else [])
        for f, eff in zip(eligible, effects):
            f.effect = eff
        probed += eligible
        if more:
            scanned = after[0]
    # on real text, once every spike is known: no control is a weight that a later round examines
    for f, (g, reason) in zip(probed, judge.prove([([f.coord], f.effect) for f in probed], examined)):
        f.grade, f.reason = g, reason
    found += probed
    # then groups: weights sharing a row or column, and weights with the neighbours that
    # decided their grade; a group's finding replaces the single one
    for collect, what in ((shared_lines, "group(s) of weights sharing a row or column together"),
                          (with_neighbours, "weight(s) together with the neighbours that move real text too")):
        todo = collect(found, cfg)
        if todo:
            log(f"screening {len(todo)} {what}")
        joint = _prove_groups(judge, todo, examined | {c for _, coords in todo for c in coords})
        found = [f for f in found if f.coord not in {j.coord for j in joint}] + joint
    by_grade = {g: sorted((f for f in found if f.grade == g), key=_order) for g in ("super", "strong", "uncertain")}
    rejected = [f for f in found if f.grade == "rejected" and f.reason]
    graded = by_grade["super"] + by_grade["strong"]
    text, massive = judge.on_text(graded + by_grade["uncertain"] + rejected)
    return DetectResult(
        model=lm.name, architecture=lm.adapter.model_type, num_layers=lm.adapter.num_layers,
        prompts=list(cfg.prompts), super_weights=by_grade["super"], rejected=rejected, layers=first,
        super_activation=super_activation(residual, graded), rounds=rnd,
        probe_ppl=probe.ppl(), config=cfg, strong=by_grade["strong"], text=text,
        massive=massive_channels(lm, hidden, graded + by_grade["uncertain"] + rejected, "prompt") + massive,
        uncertain=by_grade["uncertain"],
    )


def _order(f: Finding):
    return (f.coord.layer, f.coord.expert or 0, f.coord.row, f.coord.col)


def shared_lines(found: list[Finding], cfg: DetectConfig) -> list[tuple[list[Finding], list[Coord]]]:
    """Weights that share a row or a column in one matrix can stand in for each other, so
    that zeroing any one alone does little (Phi-3-mini has three per column). Each such
    group of candidates that were probed and not graded alone (rejected, or uncertain), as
    (its findings, the coordinates to zero together): proven like one candidate, a group
    that grades is reported whole, each member with ``jointly_with`` naming the others."""
    pool = [f for f in found if f.effect is not None and f.grade in ("rejected", "uncertain")]
    groups: dict = {}
    for f in pool:
        c = f.coord
        groups.setdefault(("row", c.layer, c.expert, c.row), []).append(f)
        groups.setdefault(("col", c.layer, c.expert, c.col), []).append(f)
    todo = []
    used: set[Coord] = set()
    for key, members in sorted(groups.items(), key=lambda kv: (-len(kv[1]), str(kv[0]))):
        members = [f for f in members if f.coord not in used]
        if len(members) < 2:
            continue
        used |= {f.coord for f in members}
        todo.append((members, [f.coord for f in members]))
    return todo


def with_neighbours(found: list[Finding], cfg: DetectConfig) -> list[tuple[list[Finding], list[Coord]]]:
    """A candidate not graded alone because its own row and column neighbours (its
    ``neighbours`` control) move real text by ``strong_kl`` or more, as ([it], it and those
    neighbours): proven like one candidate, a group that grades is reported as the
    candidate with ``jointly_with`` naming the neighbours (SmolLM2's 9:507:200). Only
    candidates whose grade the neighbours decided are taken."""
    todo = []
    for f in found:
        if f.grade not in ("rejected", "uncertain") or f.jointly_with or f.effect is None or f.effect.text is None:
            continue
        near = next((c for c in f.effect.controls if c.kind == "neighbours" and c.text is not None), None)
        if near is None or not any(v >= cfg.strong_kl for v in near.text.kl.values()):
            continue
        if any(f.effect.control_kl_text(c) != near.text.kl.get(c) for c in near.text.kl):
            continue  # another control is as close: the neighbours are not what decided it
        todo.append(([f], [f.coord, *near.coords]))
    return todo


def _prove_groups(judge: Judge, todo: list[tuple[list[Finding], list[Coord]]], examined: set[Coord]) -> list[Finding]:
    """Screen and prove each (findings, coordinates zeroed together); for each group that is
    not rejected, a copy of each finding with the group's effect, grade and ``jointly_with``."""
    if not todo:
        return []
    edits = [coords for _, coords in todo]
    effects, _ = judge.screen(edits, examined, control_above=judge.cfg.screen_kl)
    proven = []
    for (members, coords), eff, (g, reason) in zip(todo, effects, judge.prove(list(zip(edits, effects)), examined)):
        if g == "rejected":
            continue
        for f in members:
            proven.append(Finding(**{**f.__dict__, "effect": eff, "reason": reason, "grade": g,
                                     "jointly_with": [c for c in coords if c != f.coord]}))
    return proven
