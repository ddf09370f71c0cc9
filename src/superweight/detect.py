"""Find super weights automatically and prove each one by its effect.

The algorithm (all down projections hooked):

1. Scan: on each prompt, record for every down projection the largest |Y[t, row]| and,
   at that same token t, the input channel ``col`` whose term X[t,col] * W[row,col]
   contributes most to it.
2. Spikes: a down projection whose max |Y| is at least ``spike_ratio`` times the median
   over layers of the per-layer max |Y| is examined. If that one term explains less than
   ``min_share`` of Y[t,row], no single weight accounts for the spike: rejected.
3. Proof by effect, data-free: zero the weight alone and measure how far the model's
   next-token distributions move on a few short built-in sentences (mean KL, nats),
   against zeroing a *control*: the largest-magnitude weight of the same matrix outside
   the candidate's row and column. A super weight moves them by at least ``min_kl`` and
   by at least ``min_control_ratio`` times the control. Spikes that fail are reported
   under ``rejected`` with the reason (late-layer spikes that cancel the super
   activation are the known case). A round's ablations, their controls and the next
   round's scan run side by side in one batched forward pass (``passes.run``), which
   matters when every pass reads the weights from disk.
4. Iterate: zero every single-weight candidate and scan again; spikes that were hidden
   behind them (several super weights can share a row or a column) become new
   candidates. A spike found at a down projection that already had one examined is
   examined only if it is at least ``hidden_ratio`` of the largest examined there: weights
   that stand in for each other or share a row are of one order of magnitude (the
   paper's pairs, and the tiny-model tests, within 2x), while ordinary weights of the
   massive input's column give a trail of ever smaller rows, each a new spike once the
   one above it is zeroed (about 1/20 of the super weight's on a synthetic Llama-2). Such
   trailing spikes are listed as rejected, unprobed. Stop when a round zeroes nothing new:
   the next scan would see the same model.

Thresholds were set on SmolLM2-135M-Instruct, the one real model on hand (see
docs/detection.md): its super weight moves predictions by ~4.4 nats, the strongest
non-super spike by ~1.1, the late cancelling spike by ~0.15; the control ~1e-3.
Everything is deterministic: no sampling, fixed sentences, argmax ties broken by index.
"""
from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from . import passes
from .coords import Coord
from .effect import PROBE_SENTENCES, Probe
from .errors import UsageError
from .hooks import SiteRecord, capture, zeroed
from .model import LoadedModel
from .passes import Group, stack

DEFAULT_PROMPT = "Apple Inc. is a worldwide tech company."


@dataclass(frozen=True)
class DetectConfig:
    prompts: tuple[str, ...] = (DEFAULT_PROMPT,)
    spike_ratio: float = 10.0  # examine a down projection whose max |Y| is >= this x the median over layers
    min_share: float = 0.5  # one weight must explain at least this share of the spike
    min_kl: float = 2.0  # zeroing a super weight alone moves predictions by at least this (nats)
    min_control_ratio: float = 10.0  # ... and by this many times more than zeroing the control
    hidden_ratio: float = 0.1  # a later round's spike at an examined site: examined if >= this x the largest there
    max_rounds: int = 8
    max_candidates: int = 16  # per round, largest spikes first
    probe_sentences: tuple[str, ...] = PROBE_SENTENCES


@dataclass
class Effect:
    """What zeroing one weight alone does on the probe sentences."""

    kl: float  # mean KL(intact || zeroed), nats
    ppl: float  # probe perplexity with the weight zeroed
    ppl_intact: float
    control: Coord | None = None  # the ordinary weight zeroed for comparison
    control_value: float | None = None
    control_kl: float | None = None

    def to_dict(self) -> dict:
        d = {"kl": self.kl, "probe_ppl": self.ppl, "probe_ppl_intact": self.ppl_intact}
        if self.control is not None:
            d["control"] = {**self.control.to_dict(), "value": self.control_value, "kl": self.control_kl}
        return d


@dataclass
class Finding:
    """A spike that was examined: a confirmed super weight, or a rejected one (``reason``)."""

    coord: Coord
    module: str  # parameter name, e.g. model.layers.11.mlp.down_proj.weight
    value: float  # W[row, col]
    input_activation: float  # X[t, col]
    output_activation: float  # Y[t, row] (signed)
    token: int  # position in the prompt where the spike is
    share: float  # X[t,col]*W[row,col] / Y[t,row]
    round: int
    prompt: int = 0
    effect: Effect | None = None
    reason: str | None = None
    jointly_with: list[Coord] | None = None  # proven only together with these (same row or column)

    def to_dict(self) -> dict:
        d = {
            **self.coord.to_dict(),
            "module": self.module,
            "value": self.value,
            "input_activation": self.input_activation,
            "output_activation": self.output_activation,
            "token": self.token,
            "share": self.share,
            "round": self.round,
        }
        if self.effect is not None:
            d["effect"] = self.effect.to_dict()
        if self.reason is not None:
            d["reason"] = self.reason
        if self.jointly_with:
            d["jointly_with"] = [c.to_dict() for c in self.jointly_with]
        return d


@dataclass
class DetectResult:
    model: str
    architecture: str
    num_layers: int
    prompts: list[str]
    super_weights: list[Finding]
    rejected: list[Finding]
    layers: list[SiteRecord]  # first round: the strongest down projection of each layer
    super_activation: dict | None
    rounds: int
    probe_ppl: float
    config: DetectConfig = field(default_factory=DetectConfig)

    @property
    def coords(self) -> list[Coord]:
        return [f.coord for f in self.super_weights]

    def to_dict(self) -> dict:
        layers = []
        for r in self.layers:
            row = {
                "layer": r.layer,
                "max_input": r.max_input,
                "input_channel": r.input_channel,
                "input_token": r.input_token,
                "max_output": r.max_output,
                "output_channel": r.output_channel,
                "token": r.output_token,
            }
            if r.expert is not None:
                row["expert"] = r.expert
            layers.append(row)
        cfg = asdict(self.config)
        return {
            "model": self.model,
            "architecture": self.architecture,
            "num_layers": self.num_layers,
            "prompts": self.prompts,
            "super_weights": [f.to_dict() for f in self.super_weights],
            "rejected": [f.to_dict() for f in self.rejected],
            "super_activation": self.super_activation,
            "layers": layers,
            "rounds": self.rounds,
            "probe_ppl": self.probe_ppl,
            "config": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
        }


def encode_prompts(lm: LoadedModel, prompts) -> list[torch.Tensor]:
    if not prompts:
        raise UsageError("no prompt given")
    out = []
    for p in prompts:
        if not p or not p.strip():
            raise UsageError("empty prompt: give some text with --prompt")
        ids = lm.tokenizer(p, return_tensors="pt")["input_ids"]
        if ids.numel() == 0:
            raise UsageError(f"prompt {p!r} tokenizes to nothing")
        out.append(ids.to(lm.device))
    return out


@torch.no_grad()
def scan(lm: LoadedModel, prompt_ids: list[torch.Tensor], residual: list | None = None) -> tuple[dict, dict]:
    """One forward pass per prompt with every down projection hooked.

    Returns (records keyed by (layer, expert), prompt index of each record). If
    ``residual`` is a list, it receives, for the first prompt, each layer's output hidden
    state as ``(max |h| per channel [H], argmax token per channel [H])``."""
    best: dict = {}
    which: dict = {}
    for i, ids in enumerate(prompt_ids):
        want = residual is not None and i == 0
        with capture(lm.adapter) as rec:
            out = lm.model(input_ids=ids, use_cache=False, output_hidden_states=want)
        if want:
            for h in out.hidden_states[1:]:  # after each decoder layer
                mx, tok = h[0].float().abs().max(dim=0)
                residual.append((mx, tok))
        for key, r in rec.items():
            if key not in best or r.max_output > best[key].max_output:
                best[key], which[key] = r, i
    return best, which


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


def control_for(lm: LoadedModel, coord: Coord, avoid: set[Coord]) -> Coord:
    """The largest-magnitude weight of the same matrix outside ``coord``'s row and column."""
    w = lm.adapter.weight(lm.adapter.site(coord)).abs().float().clone()
    w[coord.row, :] = -1
    w[:, coord.col] = -1
    for c in avoid:
        if c.layer == coord.layer and c.expert == coord.expert:
            w[c.row, c.col] = -1
    r, c = divmod(int(w.argmax()), w.shape[1])
    return Coord(coord.layer, r, c, coord.expert)


def measure(lm: LoadedModel, probe: Probe, coords: list[Coord], avoid: set[Coord] = frozenset(),
            control_above: float = 0.0) -> Effect:
    """Zero ``coords`` together (usually one weight), then, if that moved predictions by at
    least ``control_above`` nats, the same number of control weights; compare the damage."""
    with zeroed(lm.adapter, coords):
        lp = probe.current()
    eff = Effect(kl=probe.kl(lp), ppl=probe.ppl(lp), ppl_intact=probe.ppl())
    if eff.kl >= control_above:
        avoid = set(avoid) | set(coords)
        controls = []
        for c in coords:
            controls.append(control_for(lm, c, avoid))
            avoid.add(controls[-1])
        with zeroed(lm.adapter, controls):
            eff.control_kl = probe.kl()
        eff.control = controls[0]
        eff.control_value = lm.adapter.value(controls[0])
    return eff


def judge(effect: Effect, cfg: DetectConfig) -> str | None:
    """None if the effect proves a super weight, else the reason it does not."""
    if effect.kl < cfg.min_kl:
        return (
            f"zeroing it moves predictions by only {effect.kl:.3g} nats (< {cfg.min_kl:g}); "
            f"probe perplexity {effect.ppl_intact:.4g} -> {effect.ppl:.4g}"
        )
    if effect.control_kl is not None and effect.kl < cfg.min_control_ratio * effect.control_kl:
        return (
            f"not specific: zeroing it moves predictions by {effect.kl:.3g} nats, the control weight "
            f"{effect.control} by {effect.control_kl:.3g} (< {cfg.min_control_ratio:g}x)"
        )
    return None


def _finding(lm: LoadedModel, r: SiteRecord, rnd: int, prompt: int) -> Finding:
    coord = Coord(r.layer, r.output_channel, r.col, r.expert)
    site = lm.adapter.site(coord)
    return Finding(
        coord=coord, module=site.param_name, value=r.weight, input_activation=r.x_col,
        output_activation=r.output_value, token=r.output_token, share=r.share, round=rnd, prompt=prompt,
    )


def detect(lm: LoadedModel, cfg: DetectConfig | None = None, log: Callable[[str], None] | None = None) -> DetectResult:
    """Find and prove the super weights of a loaded model. See the module docstring.

    Passes: the first runs the intact probe and the first scan together; each round after
    that is one more, which proves the round's candidates and their controls side by side
    and scans for the next round with all of them zeroed (``passes.run``)."""
    cfg = cfg or DetectConfig()
    log = log or (lambda _msg: None)
    prompts, pmask = stack(encode_prompts(lm, cfg.prompts))
    ids, mask = Probe.encode(lm.model, lm.tokenizer, cfg.probe_sentences)
    confirmed: list[Finding] = []
    rejected: list[Finding] = []
    examined: set[Coord] = set()
    removed: list[Coord] = []  # every single-weight candidate: zeroed for the next scans
    site_max: dict[tuple, float] = {}  # (layer, expert) -> largest |Y| examined there
    log(f"round 1: scanning {len(lm.adapter.sites)} down projections")
    base, scanned = passes.run(lm, [Group(ids, mask), Group(prompts, pmask, scan=True, residual=True)])
    probe = Probe.from_base(lm.model, ids, mask, base.log_probs)
    residual = scanned.residual  # intact model, first prompt: per layer (max |h| per channel, token)
    first = per_layer(scanned.records)
    rnd = 0
    for rnd in range(1, cfg.max_rounds + 1):
        new = []
        for r in spikes(scanned.records, cfg.spike_ratio):
            f = _finding(lm, r, rnd, scanned.which[(r.layer, r.expert)])
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
                rejected.append(f)
                continue
            if abs(f.share) < cfg.min_share or f.share < 0:
                f.reason = (
                    f"no single weight accounts for the spike: the largest term X[t,col]*W[row,col] "
                    f"is {f.share:.0%} of Y[t,row] (< {cfg.min_share:.0%})"
                )
                rejected.append(f)
                continue
            eligible.append(f)
        if not eligible:
            break  # nothing zeroed: the next scan would see the same model
        removed += [f.coord for f in eligible]
        controls = [control_for(lm, f.coord, examined) for f in eligible]
        groups = [Group(ids, mask, zero=(c,)) for c in [f.coord for f in eligible] + controls]
        more = rnd < cfg.max_rounds
        if more:
            groups.append(Group(prompts, pmask, zero=tuple(removed), scan=True))
        log(f"round {rnd}: proving {len(eligible)} candidate(s) by ablation"
            + (f", scanning for round {rnd + 1}" if more else ""))
        answers = passes.run(lm, groups, reduce=lambda lp: (probe.kl(lp), probe.ppl(lp)))
        k = len(eligible)
        for i, f in enumerate(eligible):
            (kl, ppl), control = answers[i].log_probs, controls[i]
            f.effect = Effect(kl=kl, ppl=ppl, ppl_intact=probe.ppl(), control=control,
                              control_value=lm.adapter.value(control), control_kl=answers[k + i].log_probs[0])
            f.reason = judge(f.effect, cfg)
            (rejected if f.reason else confirmed).append(f)
        if more:
            scanned = answers[-1]
    confirmed += _prove_jointly(lm, probe, rejected, examined, cfg, log)
    rejected = [f for f in rejected if f.reason]
    confirmed.sort(key=lambda f: (f.coord.layer, f.coord.expert or 0, f.coord.row, f.coord.col))
    return DetectResult(
        model=lm.name, architecture=lm.adapter.model_type, num_layers=lm.adapter.num_layers,
        prompts=list(cfg.prompts), super_weights=confirmed, rejected=rejected, layers=first,
        super_activation=super_activation(residual, confirmed), rounds=rnd,
        probe_ppl=probe.ppl(), config=cfg,
    )


def _prove_jointly(lm, probe, rejected: list[Finding], examined: set[Coord], cfg: DetectConfig, log) -> list[Finding]:
    """Weights that share a row or a column in one matrix can stand in for each other, so
    that zeroing any one alone does little (Phi-3-mini has three per column). Test each
    such group of individually failed candidates together; confirm the group if it passes."""
    pool = [f for f in rejected if f.effect is not None and f.effect.kl < cfg.min_kl]
    groups: dict = {}
    for f in pool:
        c = f.coord
        groups.setdefault(("row", c.layer, c.expert, c.row), []).append(f)
        groups.setdefault(("col", c.layer, c.expert, c.col), []).append(f)
    proven: list[Finding] = []
    used: set[Coord] = set()
    for key, members in sorted(groups.items(), key=lambda kv: (-len(kv[1]), str(kv[0]))):
        members = [f for f in members if f.coord not in used]
        if len(members) < 2:
            continue
        coords = [f.coord for f in members]
        log(f"proving {len(coords)} weights of layer {key[1]} sharing a {key[0]} together")
        eff = measure(lm, probe, coords, examined, control_above=cfg.min_kl)
        if judge(eff, cfg) is None:
            for f in members:
                f.effect, f.reason = eff, None
                f.jointly_with = [c for c in coords if c != f.coord]
                used.add(f.coord)
                proven.append(f)
    return proven


def super_activation(residual: list, found: list[Finding]) -> dict | None:
    """The residual-stream channel the super weights write to, and its max |h| after each layer."""
    if not found or not residual:
        return None
    channel = max(found, key=lambda f: abs(f.output_activation)).coord.row
    return {
        "channel": channel,
        "max_per_layer": [float(mx[channel]) for mx, _ in residual],
        "token_per_layer": [int(tok[channel]) for _, tok in residual],
    }


@dataclass
class Verdict:
    coord: Coord
    module: str
    value: float
    effect: Effect
    is_super_weight: bool
    reason: str | None
    spike: bool  # the detector's scan sees this exact weight as its layer's spike

    def to_dict(self) -> dict:
        d = {
            **self.coord.to_dict(), "module": self.module, "value": self.value,
            "is_super_weight": self.is_super_weight, "spike": self.spike, "effect": self.effect.to_dict(),
        }
        if self.reason:
            d["reason"] = self.reason
        return d


def verify(lm: LoadedModel, coords: list[Coord], cfg: DetectConfig | None = None,
           log: Callable[[str], None] | None = None) -> list[Verdict]:
    """Check claimed coordinates on this checkpoint by ablation, one by one."""
    cfg = cfg or DetectConfig()
    log = log or (lambda _msg: None)
    if not coords:
        raise UsageError("no coordinates to verify")
    sites = [lm.adapter.site(c) for c in coords]  # range checks before any work
    prompt_ids = encode_prompts(lm, cfg.prompts)
    records, _ = scan(lm, prompt_ids)
    probe = Probe.build(lm.model, lm.tokenizer, cfg.probe_sentences)
    verdicts = []
    for c, site in zip(coords, sites):
        log(f"ablating layer {c.layer} [{c.row}, {c.col}]")
        eff = measure(lm, probe, [c], set(coords))
        reason = judge(eff, cfg)
        r = records.get((c.layer, c.expert))
        spike = r is not None and (r.output_channel, r.col) == (c.row, c.col)
        verdicts.append(Verdict(c, site.param_name, lm.adapter.value(c), eff, reason is None, reason, spike))
    return verdicts


def verify_together(lm: LoadedModel, coords: list[Coord], cfg: DetectConfig | None = None) -> tuple[Effect, str | None]:
    """Zero all ``coords`` at once (weights sharing a row or column can stand in for each
    other) and judge the damage like a single candidate's: (effect, reason or None)."""
    cfg = cfg or DetectConfig()
    for c in coords:
        lm.adapter.site(c)
    probe = Probe.build(lm.model, lm.tokenizer, cfg.probe_sentences)
    eff = measure(lm, probe, list(coords), set(coords))
    return eff, judge(eff, cfg)
