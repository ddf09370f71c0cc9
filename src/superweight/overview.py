"""Everything superweight knows about one model, gathered for ``superweight report``.

``build_report`` runs detection, then, for the weights it acts on, a short version of the
paper's ablation (no zero-shot tasks: perplexity, the super activation through the layers,
the stopword shift) and a small quantization sweep (RTN at 3 and 4 bits, in groups of 128
and in the paper's blocks of 4,096, each with and without the weights held out), and
optionally an audit of a quantized copy. ``output/html.py`` renders the result as one
self-contained page.

The weights acted on are, in this order: the ``coords`` given; the super weights detection
found; the index's entry for the model; the strong weights detection found (a model with
no super weight, such as Qwen2.5-Coder-0.5B, still shows what its strongest weights do).
"""
from __future__ import annotations

import datetime
from dataclasses import dataclass, field

from superweight.coords import Coord
from superweight.errors import UsageError, flag
from superweight.numbers import fmt_interval
from superweight.models.load import LoadedModel

LAYOUTS = (("groups of 128", "group", 128), ("blocks of 4096", "block", 4096))
# nothing; the weights acted on; those and the weight columns of massive input channels
# (``QuantConfig.act_ratio``: ours, see quant/apply.py)
HOLDS = ("nothing", "the weights acted on", "those + massive-input columns")


@dataclass(frozen=True)
class ReportConfig:
    ablate: bool = True  # the short ablation
    quant: bool = True  # the RTN sweep
    text: str = "lambada"  # perplexity text for the ablation and the sweep
    # windows of 128 tokens, 4 of them: the findings' window length and first look, 512
    # tokens in all, so each perplexity carries its interval over windows and each ratio its
    # paired one within the page's budgets (60 s on SmolLM2, 2 min on Qwen2.5-Coder; 6 windows
    # took Qwen's to 143 s: docs/benchmarks.md, "Issue 40"); --max-windows buys more
    seqlen: int = 128
    max_windows: int = 4
    # 50, not the ablate command's 500: the page shows which tokens gain mass, not the
    # last digit of each; 100 prompts took 28 s of a 90 s report on SmolLM2 (2 cores)
    stopword_prompts: int = 50
    bits: tuple[int, ...] = (3, 4)

    def __post_init__(self):
        for name in ("seqlen", "max_windows"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise UsageError(f"{flag(name)} must be a positive integer, not {v!r}")
        if not isinstance(self.stopword_prompts, int) or self.stopword_prompts < 0:
            raise UsageError(f"--stopword-prompts must be an integer >= 0, not {self.stopword_prompts!r}")


@dataclass
class QuantRow:
    layout: str  # "groups of 128", ...
    bits: int
    hold: str  # what is held out exactly: one of HOLDS
    ppl: object  # a measures.Perplexity: the value, its interval and its windows (for paired ratios)
    bits_per_weight: float

    @property
    def perplexity(self) -> float:
        return self.ppl.value

    @property
    def interval(self) -> list[float]:
        """The perplexity's 95% bootstrap interval over the windows."""
        return self.ppl.interval()

    def to_dict(self) -> dict:
        return {"layout": self.layout, "bits": self.bits, "hold": self.hold, "perplexity": self.perplexity,
                "perplexity_interval": self.interval, "window_nll": list(self.ppl.nlls),
                "bits_per_weight": round(self.bits_per_weight, 4)}


HELPS = 0.95  # a hold-out "helps" where it takes perplexity 5% or more below holding out nothing, at the
# upper end of the ratio's interval paired window by window


def holdout_notes(rows: list[QuantRow], acted: str) -> list[str]:
    """Where holding out the weights acted on does not help, in one sentence: the layouts and
    widths where its perplexity over the row holding out nothing, paired window by window, is
    not ``HELPS`` below 1 at the upper end of its interval (each with that ratio), and, where the
    massive-input columns' hold-out does help at those points, that it is what does. The
    numbers say it; no reason is guessed."""
    flat, cols = [], []
    for (layout, bits) in dict.fromkeys((r.layout, r.bits) for r in rows):
        by = {r.hold: r for r in rows if (r.layout, r.bits) == (layout, bits)}
        none, held, more = by.get(HOLDS[0]), by.get(HOLDS[1]), by.get(HOLDS[2])
        if none is None or held is None:
            continue
        r, lo, hi = held.ppl.ratio(none.ppl)
        if hi >= HELPS:
            flat.append(f"{bits} bits in {layout} x{fmt_interval(r, lo, hi)}")
            if more is not None:
                cols.append(more.ppl.ratio(none.ppl)[2] < HELPS)
    if not flat:
        return []
    line = (f"holding out {acted} alone takes perplexity less than {1 - HELPS:.0%} below holding out nothing "
            f"(its ratio to that, paired window by window: {'; '.join(flat)}): rounding those weights costs little "
            "there, and the loss comes from rounding the other weights")
    if cols and all(cols):
        line += ", which the massive-input columns' hold-out does reduce at each of these points"
    return [line]


@dataclass
class Report:
    model: str
    result: object  # DetectResult
    agreement: dict | None
    coords: list[Coord]
    coords_from: str  # given, detected super weights, index, detected strong weights, none
    config: ReportConfig
    ablation: object | None = None  # AblateResult
    quant: list[QuantRow] = field(default_factory=list)
    quant_ref_ppl: object | None = None  # the unquantized perplexity on the same windows (a measures.Perplexity)
    audit: object | None = None  # AuditResult
    created: str = ""
    command: str = ""
    provenance: object | None = None  # verdicts.Provenance: computed now, or from the verdict cache

    @property
    def quant_ref(self) -> float | None:
        return self.quant_ref_ppl.value if self.quant_ref_ppl is not None else None

    @property
    def quant_ref_interval(self) -> list[float] | None:
        return self.quant_ref_ppl.interval() if self.quant_ref_ppl is not None else None

    def to_dict(self) -> dict:
        from superweight.version import VERSION as __version__

        return {"model": self.model, "superweight": __version__, "created": self.created, "command": self.command,
                "detect": {**self.result.to_dict(), "index": self.agreement,
                           **({"verdict": self.provenance.to_dict()} if self.provenance else {})},
                "acted_on": {"coords": [str(c) for c in self.coords], "from": self.coords_from},
                "ablation": self.ablation.to_dict() if self.ablation else None,
                "quantization": {"text": self.config.text, "window": self.config.seqlen,
                                 "windows": self.config.max_windows, "unquantized": self.quant_ref,
                                 "unquantized_interval": self.quant_ref_interval,
                                 "points": [q.to_dict() for q in self.quant]},
                "audit": self.audit.to_dict() if self.audit else None}


def quant_sweep(lm: LoadedModel, coords: list[Coord], cfg: ReportConfig, log, ref=None):
    """RTN at each bit width and layout, holding out each of ``HOLDS``: (the unquantized
    ``Perplexity``, the rows). ``ref``: the unquantized perplexity on the same windows when it
    is known (the ablation's ``original``, a ``Perplexity``), else measured here."""
    from superweight.texts import read_text
    from superweight.probe.measures import perplexity_spread
    from superweight.quant.apply import quantized
    from superweight.quant.rtn import QuantConfig

    text = read_text(cfg.text)

    def ppl():
        return perplexity_spread(lm, lm.tokenizer, text, cfg.seqlen, cfg.max_windows)

    if ref is None:
        log("quantization sweep: unquantized")
        ref = ppl()
    rows = []
    points = [(b, lay, hold) for b in cfg.bits for lay in LAYOUTS for hold in (HOLDS if coords else HOLDS[:1])]
    for i, (b, (label, layout, size), hold) in enumerate(points):
        log(f"quantization sweep [{i + 1}/{len(points)}]: {b}-bit RTN in {label}, holding out {hold}")
        qc = QuantConfig(b, layout, size, act_ratio=10.0 if hold == HOLDS[2] else 0.0)
        with quantized(lm, qc, keep=coords if hold != HOLDS[0] else ()) as rep:
            p = ppl()
            rows.append(QuantRow(label, b, hold, p, rep.bits_per_weight))
    return ref, rows


def build_report(lm: LoadedModel, cfg: ReportConfig | None = None, detect_cfg=None, coords: list[Coord] | None = None,
                 quantized_model: LoadedModel | None = None, log=None, command: str = "",
                 recompute: bool = False) -> Report:
    """Detect, then ablate, sweep and audit as ``cfg`` says. The ablation and the sweep edit
    weights in memory, so ``lm`` is loaded whole (``load(..., stream=False)``)."""
    from superweight.targets import ANY, GRADED, which_weights
    from superweight.verdicts import detection

    cfg = cfg or ReportConfig()
    log = log or (lambda msg: None)
    if (cfg.ablate or cfg.quant) and lm.adapter.streamer is not None:
        raise UsageError("the report's ablation and quantization need the model in memory (load it with stream=False)")
    if quantized_model is not None:  # a mismatched pair is refused before any work
        from superweight.audit import check_pair

        check_pair(lm, quantized_model)
    found = detection(lm, detect_cfg, log=log, recompute=recompute)
    result, provenance, agreement = found.result, found.provenance, found.agreement
    acts = which_weights(lm, coords, ANY, result=result)
    rep = Report(lm.name, result, agreement, acts.coords, acts.label, cfg,
                 created=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), command=command,
                 provenance=provenance)
    acts = acts.coords
    if acts and cfg.ablate:
        from superweight.paper.ablate import AblateConfig, ablate

        log("short ablation")
        rep.ablation = ablate(lm, acts, AblateConfig(tasks=(), texts=(cfg.text,), seqlen=cfg.seqlen,
                                                     max_windows=cfg.max_windows,
                                                     stopword_prompts=cfg.stopword_prompts), log=log)
    if cfg.quant:
        known_ref = None
        if rep.ablation is not None:  # the same text, window and count: the same number
            orig = next((c for c in rep.ablation.conditions if c.name == "original"), None)
            if orig is not None and cfg.text in orig.perplexity:
                known_ref = orig.ppl(cfg.text)
        rep.quant_ref_ppl, rep.quant = quant_sweep(lm, acts, cfg, log, ref=known_ref)
    if quantized_model is not None:
        from superweight.audit import audit

        checked = which_weights(lm, coords, GRADED, result=result)
        rep.audit = audit(lm, quantized_model, list(zip(checked.coords, checked.grades)), log=log)
    return rep
