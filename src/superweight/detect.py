"""Find super weights automatically and prove each one by its effect.

The algorithm (one forward pass per round, all down projections hooked):

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
   activation are the known case). The single-weight ablations of a round run side by
   side in one batched forward pass (``single_effects``), which matters when every pass
   reads the weights from disk.
4. Iterate: zero every confirmed super weight and scan again; spikes that were hidden
   behind them (several super weights can share a row or a column) become new
   candidates. Stop when a round brings no coordinate not yet examined.

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

from .coords import Coord
from .effect import PROBE_SENTENCES, Probe, log_probs
from .errors import UsageError
from .hooks import SiteRecord, capture, zeroed
from .model import LoadedModel

DEFAULT_PROMPT = "Apple Inc. is a worldwide tech company."


@dataclass(frozen=True)
class DetectConfig:
    prompts: tuple[str, ...] = (DEFAULT_PROMPT,)
    spike_ratio: float = 10.0  # examine a down projection whose max |Y| is >= this x the median over layers
    min_share: float = 0.5  # one weight must explain at least this share of the spike
    min_kl: float = 2.0  # zeroing a super weight alone moves predictions by at least this (nats)
    min_control_ratio: float = 10.0  # ... and by this many times more than zeroing the control
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
        add_control(lm, probe, eff, coords, avoid)
    return eff


def add_control(lm: LoadedModel, probe: Probe, eff: Effect, coords: list[Coord], avoid: set[Coord]) -> None:
    """Zero as many control weights as ``coords`` and record their damage in ``eff``."""
    avoid = set(avoid) | set(coords)
    controls = []
    for c in coords:
        controls.append(control_for(lm, c, avoid))
        avoid.add(controls[-1])
    with zeroed(lm.adapter, controls):
        eff.control_kl = probe.kl()
    eff.control = controls[0]
    eff.control_value = lm.adapter.value(controls[0])


BATCH_PROBES = 8  # single-weight ablations measured side by side in one forward pass


def single_effects(lm: LoadedModel, probe: Probe, coords: list[Coord]) -> list[Effect]:
    """The effect of zeroing each of ``coords`` alone, ``BATCH_PROBES`` at a time in one
    forward pass: zeroing W[r, c] of a linear map is exactly subtracting X[..., c] * W[r, c]
    from its output channel r, so each copy of the probe batch gets its own subtraction
    from a hook on that weight's module. One pass instead of one per candidate matters when
    every pass reads the weights from disk. Fused-expert weights are zeroed one at a time."""
    out: list[Effect | None] = [None] * len(coords)
    batchable = []
    for i, c in enumerate(coords):
        if lm.adapter.site(c).expert is None:
            batchable.append(i)
        else:
            out[i] = measure(lm, probe, [c])
    B = probe.input_ids.shape[0]
    for start in range(0, len(batchable), BATCH_PROBES):
        idx = batchable[start:start + BATCH_PROBES]
        by_module: dict[int, tuple] = {}
        for k, i in enumerate(idx):
            site = lm.adapter.site(coords[i])
            by_module.setdefault(id(site.module), (site.module, []))[1].append((k, coords[i], lm.adapter.value(coords[i])))
        handles = []
        for module, items in by_module.values():
            def hook(mod, inp, y, items=items, kb=len(idx) * B):
                # [K*B, T, d]; some families (OPT) flatten tokens batch-major to [K*B*T, d]
                x = inp[0].reshape(kb, -1, inp[0].shape[-1])
                out = y.clone()
                y3 = out.view(kb, -1, out.shape[-1])
                for k, c, v in items:
                    rows = slice(k * B, (k + 1) * B)
                    y3[rows, :, c.row] -= (x[rows, :, c.col].float() * v).to(out.dtype)
                return out
            handles.append(module.register_forward_hook(hook))
        try:
            lp = log_probs(probe.model, probe.input_ids.repeat(len(idx), 1), probe.mask.repeat(len(idx), 1))
        finally:
            for h in handles:
                h.remove()
        n = lp.shape[0] // len(idx)
        for k, i in enumerate(idx):
            part = lp[k * n:(k + 1) * n]
            out[i] = Effect(kl=probe.kl(part), ppl=probe.ppl(part), ppl_intact=probe.ppl())
    return out


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
    """Find and prove the super weights of a loaded model. See the module docstring."""
    cfg = cfg or DetectConfig()
    log = log or (lambda _msg: None)
    prompt_ids = encode_prompts(lm, cfg.prompts)
    probe = Probe.build(lm.model, lm.tokenizer, cfg.probe_sentences)
    confirmed: list[Finding] = []
    rejected: list[Finding] = []
    examined: set[Coord] = set()
    removed: list[Coord] = []  # every single-weight candidate: zeroed for the next scans
    residual: list = []  # intact model, first prompt: per layer (max |h| per channel, token)
    first: list[SiteRecord] = []
    rnd = 0
    for rnd in range(1, cfg.max_rounds + 1):
        log(f"round {rnd}: scanning {len(lm.adapter.sites)} down projections")
        with zeroed(lm.adapter, removed):
            records, which = scan(lm, prompt_ids, residual if rnd == 1 else None)
        if rnd == 1:
            first = per_layer(records)
        new = []
        for r in spikes(records, cfg.spike_ratio):
            key = (r.layer, r.expert)
            f = _finding(lm, r, rnd, which[key])
            if f.coord not in examined:
                examined.add(f.coord)
                new.append(f)
        if not new:
            break
        eligible = []
        for f in new[: cfg.max_candidates]:
            if abs(f.share) < cfg.min_share or f.share < 0:
                f.reason = (
                    f"no single weight accounts for the spike: the largest term X[t,col]*W[row,col] "
                    f"is {f.share:.0%} of Y[t,row] (< {cfg.min_share:.0%})"
                )
                rejected.append(f)
                continue
            eligible.append(f)
        if eligible:
            log(f"round {rnd}: proving {len(eligible)} candidate(s) by ablation")
        for f, eff in zip(eligible, single_effects(lm, probe, [f.coord for f in eligible])):
            removed.append(f.coord)
            if eff.kl >= cfg.min_kl:
                add_control(lm, probe, eff, [f.coord], examined)
            f.effect = eff
            f.reason = judge(f.effect, cfg)
            (rejected if f.reason else confirmed).append(f)
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
