"""The proof of a detection: its set-up, built once per run, and its grade.

``Judge`` holds what every proof runs on (the prompts and probe sentences encoded, the
real-text windows and, on first use, the intact pass and the windows' intact baselines)
and proves edits with it: ``screen`` on the probe sentences, ``prove`` on real text next
to control weights (chosen by ``controls_for``), sequentially over windows. ``grade``
turns what a candidate showed into ``super``, ``strong``, ``uncertain`` or ``rejected``;
the thresholds and the measurements they were chosen from are in docs/detection.md.
``detect``, ``verify`` and ``audit`` each build one Judge.
"""
from __future__ import annotations

import math
import random
import zlib
from typing import NamedTuple

from superweight.coords import Coord
from superweight.models.finite import refuse_nonfinite
from superweight.models.load import LoadedModel
from superweight.probe import passes, tokens
from superweight.probe.measures import Probe
from superweight.probe.passes import Group, stack
from superweight.probe.realtext import CONDITIONS, RealText, Windows, context_of, make_windows
from superweight.probe.records import TextEffect
from superweight.residual import massive_channels
from superweight.results import Control, DetectConfig, Effect, Finding


def largest_controls(lm: LoadedModel, coords, avoid=frozenset()) -> tuple[Coord, ...]:
    """One control per coordinate: the largest-magnitude weight of its matrix outside its row
    and column, none of them in ``avoid``, another coordinate, or another's control."""
    avoid = set(avoid) | set(coords)
    out = []
    for coord in coords:
        w = lm.adapter.weight(lm.adapter.site(coord)).abs().float().clone()
        w[coord.row, :] = -1
        w[:, coord.col] = -1
        for c in avoid:
            if c.layer == coord.layer and c.expert == coord.expert:
                w[c.row, c.col] = -1
        r, c = divmod(int(w.argmax()), w.shape[1])
        out.append(Coord(coord.layer, r, c, coord.expert))
        avoid.add(out[-1])
    return tuple(out)


def controls_for(lm: LoadedModel, coords: list[Coord], avoid: set[Coord], n_random: int = 8) -> list[Control]:
    """Three controls for zeroing ``coords``, each as many ordinary weights of the same
    matrices zeroed together: ``largest`` (the largest |w| outside each one's row and
    column), ``random`` (``n_random`` per coordinate, seeded by it: reproducible), and
    ``neighbours`` (the largest other |w| of each one's row and of its column)."""
    avoid = set(avoid) | set(coords)
    largest, rand, near = largest_controls(lm, coords, avoid), [], []
    for coord in coords:
        w = lm.adapter.weight(lm.adapter.site(coord)).abs().float()
        rng = random.Random(zlib.crc32(str(coord).encode()))  # not hash(): hash(None) differs between runs
        out, inp = w.shape
        while len(rand) < n_random * (coords.index(coord) + 1):
            c = Coord(coord.layer, rng.randrange(out), rng.randrange(inp), coord.expert)
            if c.row != coord.row and c.col != coord.col and c not in avoid and c not in rand:
                rand.append(c)
        row, col = w[coord.row].clone(), w[:, coord.col].clone()
        for a in avoid | set(near):
            if a.layer == coord.layer and a.expert == coord.expert:
                if a.row == coord.row:
                    row[a.col] = -1
                if a.col == coord.col:
                    col[a.row] = -1
        near += [Coord(coord.layer, coord.row, int(row.argmax()), coord.expert),
                 Coord(coord.layer, int(col.argmax()), coord.col, coord.expert)]
    return [Control("largest", largest), Control("random", tuple(rand)), Control("neighbours", tuple(near))]


class Bounds(NamedTuple):
    """What the numbers say at one end of their intervals (``_bounds``)."""

    grade: str  # super, strong or rejected
    margin: dict  # condition -> the candidate's KL over its strongest control's
    matters: list  # the conditions where it matters
    state: dict  # condition -> wreck, matters or none


def _bounds(eff: Effect, cfg: DetectConfig, end: int) -> Bounds:
    """The grade, margin per condition, conditions where it matters, and what each condition
    shows (``wreck``, ``matters`` or ``none``) with every number at one end of its interval over
    windows: ``end`` 0 the point values (means over windows), -1 the pessimistic end (the
    candidate's lower bound against its controls' upper bounds), +1 the optimistic end.
    Conditions without a measured control are not graded."""
    margin, matters, wreck = {}, [], []
    for c in eff.text.kls:
        ctls = [k.text for k in eff.controls if k.text is not None and c in k.text.kls]
        if not ctls:
            continue
        if end == 0:
            kl, ppl, ctl = eff.text.kl[c], eff.text.ppl_ratio[c], max(t.kl[c] for t in ctls)
        else:
            iv = eff.text.interval(c, cfg.confidence)
            kl, ppl = iv["kl"][end > 0], iv["ppl_ratio"][end > 0]
            ctl = max(t.interval(c, cfg.confidence)["kl"][end < 0] for t in ctls)
        margin[c] = kl / max(ctl, cfg.kl_floor)
        if kl >= cfg.strong_kl and margin[c] >= cfg.min_control_ratio:
            matters.append(c)
            if ppl >= cfg.super_ppl_ratio:
                wreck.append(c)
    state = {c: "wreck" if c in wreck else "matters" if c in matters else "none" for c in eff.text.kls}
    return Bounds("super" if wreck else "strong" if matters else "rejected", margin, matters, state)


def _open(eff: Effect, cfg: DetectConfig) -> tuple[str, ...]:
    """The conditions whose part in the grade differs at the two ends of the intervals:
    the only ones where more windows can change it (a condition that shows the same at both
    ends is decided on its own, and its windows stop there)."""
    lo, hi = _bounds(eff, cfg, -1).state, _bounds(eff, cfg, +1).state
    return tuple(c for c in eff.text.kls if lo[c] != hi[c]) or tuple(eff.text.kls)


def decided(eff: Effect, cfg: DetectConfig) -> bool:
    """Whether more windows could not change the grade: at both ends of every interval it is
    the same (a candidate below ``strong_kl`` even at its upper bound is decided too)."""
    if eff.text is None:
        return True
    return _bounds(eff, cfg, -1).grade == _bounds(eff, cfg, +1).grade


def grade(eff: Effect, cfg: DetectConfig) -> tuple[str, str | None]:
    """(grade, reason): ``super``, ``strong``, ``uncertain`` or ``rejected`` with the reason;
    see docs/detection.md. The grade is the one that holds at both ends of every interval
    over windows. Where the ends differ: ``uncertain`` when it is open whether the weight
    matters at all (rejected at one end, graded at the other); ``strong`` with the reason
    "super not shown: ..." when it surely matters but its perplexity interval straddles
    ``super_ppl_ratio``."""
    if eff.text is None:
        return "rejected", (
            f"screened out on the probe sentences: zeroing it moves them by {eff.kl:.3g} nats"
            + (f", its control {eff.control_kl:.2g}" if eff.control_kl is not None else "")
            + f" (needs >= {cfg.screen_kl:g} and >= {cfg.screen_margin:g}x the control)")
    point = _bounds(eff, cfg, 0)
    g, margin = point.grade, point.margin
    eff.margin = margin or None
    eff.matters_in = point.matters
    low, high = _bounds(eff, cfg, -1).grade, _bounds(eff, cfg, +1).grade
    if low == "rejected" and high != "rejected":  # does it matter at all? the windows cannot tell
        return "uncertain", f"{low} or {high}: " + "; ".join(_straddles(eff, cfg))
    if low != high:  # it matters for sure; that it wrecks the model is not shown at both ends
        return low, f"{high} not shown: " + "; ".join(_straddles(eff, cfg))
    if g != "rejected":
        return g, None
    c = eff.text.worst()
    ctl = eff.control_kl_text(c)
    if eff.text.kl[c] < cfg.strong_kl:
        why = f"{eff.text.kl[c]:.3g} nats (< {cfg.strong_kl:g})"
    else:
        which = "strongest control's" if all(k.text is not None for k in eff.controls) else "strongest measured control's"
        why = (f"{eff.text.kl[c]:.3g} nats, only {margin[c]:.3g}x the {which} {ctl:.2g} (< {cfg.min_control_ratio:g}x)"
               if c in margin else f"{eff.text.kl[c]:.3g} nats, no control measured there")
    return "rejected", f"on real text ({c}) zeroing it moves predictions by {why}; perplexity x{eff.text.ppl_ratio[c]:.3g}"


def _straddles(eff: Effect, cfg: DetectConfig) -> list[str]:
    """Each threshold that an interval over windows straddles, in words."""
    out = []
    lo, hi = _bounds(eff, cfg, -1).margin, _bounds(eff, cfg, +1).margin
    for c in eff.text.kls:
        iv = eff.text.interval(c, cfg.confidence)
        n = f"{iv['windows']} windows"
        (klo, khi), (plo, phi) = iv["kl"], iv["ppl_ratio"]
        if klo < cfg.strong_kl <= khi:
            out.append(f"{c}: KL {klo:.3g}-{khi:.3g} nats over {n} straddles {cfg.strong_kl:g}")
        if c in lo and lo[c] < cfg.min_control_ratio <= hi[c] and khi >= cfg.strong_kl:
            out.append(f"{c}: {lo[c]:.3g}-{hi[c]:.3g}x its strongest control straddles {cfg.min_control_ratio:g}x")
        if plo < cfg.super_ppl_ratio <= phi and khi >= cfg.strong_kl:
            out.append(f"{c}: perplexity x{plo:.3g}-{phi:.3g} over {n} straddles x{cfg.super_ppl_ratio:g}")
    return out or ["the interval over windows straddles a threshold"]


UNION_KL = 0.1  # nats: a candidate this strong in every condition it could matter in gets its controls zeroed together


# Zeroing two control sets together is not exactly an upper bound on zeroing either alone:
# on the tiny models a part moved real text by up to 16% more than its union (tiny Qwen2,
# mid; docs/detection.md). A union is accepted only this many times further below the
# candidate than a single control must be; else its parts are measured one by one.
UNION_SAFETY = 2.0


def _passes(eff: Effect, te: TextEffect, cfg: DetectConfig, safety: float = UNION_SAFETY) -> bool:
    """Whether ``eff`` stays ``safety`` x ``min_control_ratio`` above a union of controls
    that moved real text by ``te``, in every condition where it could matter."""
    return all(eff.text.kl[c] >= safety * cfg.min_control_ratio * max(te.kl[c], cfg.kl_floor)
               for c in _conditions(eff, cfg) if c in te.kl)


def _conditions(eff: Effect, cfg: DetectConfig) -> tuple[str, ...]:
    """The conditions where ``eff`` could move real text by ``strong_kl`` or more (the upper
    end of its interval over windows): the only ones where a control can decide its grade,
    so the only ones its controls are measured in."""
    return tuple(c for c in eff.text.kls if eff.text.interval(c, cfg.confidence)["kl"][1] >= cfg.strong_kl)


def _settled(eff: Effect, cfg: DetectConfig) -> bool:
    """Rejected whatever the controls not yet measured show, even at the optimistic end of
    every interval: in every condition the candidate is below ``strong_kl`` or under
    ``min_control_ratio`` x a measured control."""
    for c in eff.text.kls:
        khi = eff.text.interval(c, cfg.confidence)["kl"][1]
        ctls = [k.text.interval(c, cfg.confidence)["kl"][0] for k in eff.controls if k.text is not None and c in k.text.kls]
        if khi >= cfg.strong_kl and (not ctls or khi >= cfg.min_control_ratio * max(max(ctls), cfg.kl_floor)):
            return False
    return True


def screened(eff: Effect, cfg: DetectConfig) -> bool:
    ctl = eff.control_kl or 0.0
    return eff.kl >= cfg.screen_kl and eff.kl >= cfg.screen_margin * ctl


class Inputs(NamedTuple):
    """What a proof reads, encoded once (``inputs``)."""

    prompts: tuple  # (ids, mask) [B, T]: the prompts scanned for spikes
    sentences: tuple  # (ids, mask) [B, T]: the probe sentences
    windows: Windows  # the real-text windows, per condition


def inputs(tok, model, device, cfg: DetectConfig, name: str = "", log=None) -> Inputs:
    """The prompts and probe sentences encoded by ``tok`` and the real-text windows cut for
    ``model`` (its context and vocabulary), on ``device``: the set-up of ``Judge``, and all
    that ``audit`` reads of it. A bad ``--text`` fails here, before any pass; ``name``: the
    model, in the messages."""
    from superweight.texts import read_text

    ctx = context_of(model)
    prompts = stack(tokens.prompts(tok, cfg.prompts, ctx, name), device)
    sentences = stack(tokens.sentences(tok, cfg.probe_sentences), device)
    (log or (lambda _msg: None))(f"reading {cfg.text} for the real-text proof")  # before any pass
    windows = make_windows(tok, read_text(cfg.text), cfg.window, cfg.max_windows, device, cfg.text, ctx,
                           model.get_input_embeddings().num_embeddings, cfg.seed)
    return Inputs(prompts, sentences, windows)


class Judge:
    """The set-up of every proof, built once per run, and the proof itself: the prompts and
    the probe sentences encoded, the real-text windows cut (a bad ``--text`` fails here,
    before any pass); then, on first use, the intact pass (``intact``) and the windows'
    intact baselines. ``screen`` measures edits on the probe sentences; ``prove`` grades
    them on real text, sequentially (docs/detection.md, step 5): every candidate and control
    is measured on the first ``windows`` windows of each condition, and only those whose
    grade the interval over windows leaves open get more, doubling up to ``max_windows``.
    ``detect``, ``verify`` and ``audit`` each build one."""

    def __init__(self, lm: LoadedModel, cfg: DetectConfig, log=None):
        self.lm, self.cfg, self.log, self._rt = lm, cfg, log or (lambda _msg: None), None
        self.prompts, self.sentences, self.windows = inputs(lm.tokenizer, lm.model, lm.device, cfg, lm.name, self.log)
        self._intact = None  # (Probe, scan Answer or None): the intact pass, once per run

    def intact(self, scan: bool = False, residual: bool = False) -> tuple[Probe, passes.Answer | None]:
        """The intact model on the probe sentences (a ``Probe``) and, with ``scan``, every down
        projection's spike on the prompts (an ``Answer``; with ``residual``, the residual
        stream too), in one batched run, once per run: a later call reuses it (``verify``
        and ``verify --coords A B``'s joint check share one pass)."""
        have, scan = self._intact, scan or residual  # the residual stream comes with the scan
        if have is not None and (not scan or have[1] is not None) and (not residual or have[1].residual):
            return have
        ids, mask = self.sentences
        groups = [Group(ids, mask, keep=True)]  # its layer outputs: each screened edit starts at its own layer
        if scan:
            groups.append(Group(*self.prompts, scan=True, residual=residual))
        answers = passes.run(self.lm, groups)
        probe = Probe.from_base(self.lm.model, ids, mask, answers[0].log_probs)
        if not math.isfinite(probe.intact_nll):
            refuse_nonfinite(self.lm, "the probe perplexity")  # names the tensor that holds NaN or Inf
        probe.resume = answers[0].resume
        self._intact = probe, (answers[1] if scan else None)
        return self._intact

    def screen(self, edits: list, avoid=frozenset(), extra: list[Group] = (),
               control_above: float = 0.0) -> tuple[list[Effect], list[passes.Answer]]:
        """The probe-sentence screen, in one batched run (``passes.run``): each edit
        (coordinates zeroed together) and its control (``largest_controls``: none of them in
        ``avoid``), plus ``extra`` groups (the next round's scan) answered alongside. Returns
        an Effect per edit (its control's KL only where the edit moved predictions by
        ``control_above`` nats or more), and the extra groups' Answers."""
        lm, (probe, _) = self.lm, self.intact()
        controls = [largest_controls(lm, list(e), avoid) for e in edits]
        rows = [Group(probe.input_ids, probe.mask, zero=tuple(z), resume=probe.resume)
                for z in [*map(tuple, edits), *controls]]
        answers = passes.run(lm, rows + list(extra), reduce=lambda lp: (probe.kl(lp), probe.ppl(lp)))
        k = len(edits)
        effects = []
        for i, ctrl in enumerate(controls):
            (kl, ppl), (ckl, _) = answers[i].value, answers[k + i].value
            effects.append(Effect(kl=kl, ppl=ppl, ppl_intact=probe.ppl(), control=ctrl[0],
                                  control_value=lm.adapter.value(ctrl[0]), control_kl=ckl if kl >= control_above else None))
        return effects, answers[2 * k:]

    def on_text(self, findings: list[Finding]) -> tuple[dict | None, list[dict]]:
        """What the real text showed, once proven: its windows (those measured) and intact
        perplexities, and its massive activations (where the attention sink forms), made by
        ``findings``."""
        if self._rt is None:
            return None, []
        rt = self._rt
        return (rt.summary,
                [m for c in CONDITIONS for m in massive_channels(self.lm, rt.hidden[c], findings, c)])

    def prove(self, items: list[tuple[list[Coord], Effect]], avoid: set[Coord],
              screen: bool = True) -> list[tuple[str, str | None]]:
        """Grade each (coordinates zeroed together, its probe effect): screen (unless
        ``screen`` is False: coordinates a user asks about), zero on real text, and for those
        that could move it by ``strong_kl`` measure the controls; then, while a grade is
        open at the two ends of its intervals, the same on twice as many windows."""
        cfg = self.cfg
        todo = [k for k, (_, eff) in enumerate(items) if not screen or screened(eff, cfg)]
        if todo and self._rt is None:  # the intact baselines, on first use
            self.log("the intact model on real text")
            self._rt = RealText(self.lm, self.windows, cfg.windows)
            if not self._rt.finite:
                refuse_nonfinite(self.lm, "the perplexity on real text")
        where = {k: CONDITIONS for k in todo}  # the conditions each candidate is measured in at this look
        for n in (self._rt.stops if todo else ()):
            if not todo:
                break
            self.log(f"zeroing {len(todo)} candidate(s) on real text ({n} window(s) per condition)")
            for k, te in zip(todo, self._rt.measure([tuple(items[k][0]) for k in todo], [where[k] for k in todo],
                                                    windows=n, have=[items[k][1].text for k in todo])):
                items[k][1].text = te
            for k in todo:
                eff = items[k][1]
                if not eff.controls and _conditions(eff, cfg):
                    eff.controls = list(controls_for(self.lm, items[k][0], avoid, cfg.random_controls))
            self._controls({k: items[k][1] for k in todo if items[k][1].controls}, n, where)
            todo = [k for k in todo if not decided(items[k][1], cfg)]
            where = {k: _open(items[k][1], cfg) for k in todo}  # a decided condition gets no more windows
        return [grade(eff, cfg) for _, eff in items]

    def _controls(self, effects: dict, n: int, where: dict) -> None:
        """Measure the candidates' control sets on their first ``n`` windows, in stages, only
        as far as a grade depends on them (docs/detection.md, step 6): first each one's
        ``neighbours`` (the set most often close to a candidate), then, for a candidate not
        yet rejected, ``largest`` and ``random``: zeroed together as one set when the
        candidate moves real text by at least ``UNION_KL`` in every condition where it could
        matter, and split into the two only when that union is not ``UNION_SAFETY`` x
        ``min_control_ratio`` below it. A candidate that its measured controls already
        reject is not measured further. A set measured on fewer windows is extended, in the
        conditions ``where`` names for its candidate (those still open) only."""
        cfg = self.cfg
        for eff in effects.values():
            if eff.stages is not None:
                continue
            near = [i for i, c in enumerate(eff.controls) if c.kind == "neighbours"]
            rest = [i for i, c in enumerate(eff.controls) if c.kind != "neighbours"]
            if len(rest) > 1 and min(eff.text.kl[c] for c in _conditions(eff, cfg)) >= UNION_KL:
                parts = [eff.controls[i] for i in rest]
                eff.controls.append(Control("+".join(c.kind for c in parts), tuple(x for c in parts for x in c.coords),
                                            of=parts))
                rest = [len(eff.controls) - 1]
            eff.stages = [near, rest]
        stage = 0
        while True:
            batch = [(k, eff.controls[i]) for k, eff in effects.items() if len(eff.stages) > stage
                     and not _settled(eff, cfg) for i in eff.stages[stage]]
            if not batch:
                break
            # a control can change a grade only where its candidate could matter, and is still open
            conds = [tuple(c for c in _conditions(effects[k], cfg) if c in where[k]) for k, _ in batch]
            batch, conds = [b for b, cs in zip(batch, conds) if cs], [cs for cs in conds if cs]
            if not batch:
                break
            self.log(f"zeroing {len(batch)} control set(s) on real text")
            for (k, c), te in zip(batch, self._rt.measure([c.coords for _, c in batch], conds, n,
                                                          [c.text for _, c in batch])):
                c.text = te
                eff = effects[k]
                parts = [i for i, x in enumerate(eff.controls) if any(x is p for p in c.of or ())]
                if parts and not _passes(eff, te, cfg) and parts not in eff.stages:
                    eff.stages.append(parts)  # the union is too close: measure its parts
            stage += 1
