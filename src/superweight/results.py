"""What a detection returns: its configuration, and the findings with their evidence.

Plain dataclasses with ``to_dict`` (the JSON the commands write); the algorithm that fills
them is ``find.py``. Audit, overview, the HTML page and the verdict cache import these
types, not the algorithm.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from superweight.coords import Coord
from superweight.errors import UsageError, flag
from superweight.probe.prompts import DEFAULT_PROMPT, PROBE_SENTENCES
from superweight.probe.records import SiteRecord, TextEffect


GRADES = ("super", "strong", "uncertain", "rejected")


@dataclass(frozen=True)
class DetectConfig:
    prompts: tuple[str, ...] = (DEFAULT_PROMPT,)
    spike_ratio: float = 10.0  # examine a down projection whose max |Y| is >= this x the median over layers
    min_share: float = 0.5  # one weight must explain at least this share of the spike
    hidden_ratio: float = 0.1  # a later round's spike at an examined site: examined if >= this x the largest there
    max_rounds: int = 8
    max_candidates: int = 16  # per round, largest spikes first
    probe_sentences: tuple[str, ...] = PROBE_SENTENCES
    # screen (probe sentences): a candidate goes on to real text if zeroing it moves them by
    # at least screen_kl nats and screen_margin x its largest-weight control
    screen_kl: float = 0.05
    screen_margin: float = 3.0
    # proof on real text (``text``: lambada, gpl3, wikitext2, c4 or a file)
    text: str = "lambada"
    window: int = 128  # tokens per window, capped at the model's context
    windows: int = 4  # windows per condition (bos, mid) at the first look ...
    max_windows: int = 16  # ... doubled while a grade's interval is open, up to this many
    seed: int = 0  # which passages: 0 in the text's order, else shuffled by this seed
    confidence: float = 0.95  # two-sided level of the bootstrap interval over windows
    strong_kl: float = 0.02  # strong: mean KL on real text >= this in some condition ...
    min_control_ratio: float = 10.0  # ... and >= this x the strongest control's (floored at kl_floor)
    super_ppl_ratio: float = 3.0  # super: also perplexity x >= this in some condition
    kl_floor: float = 1e-3  # controls' KL below this counts as this (the measure's resolution)
    random_controls: int = 8  # random weights of the matrix, zeroed together as one control

    def __post_init__(self):
        for name in ("spike_ratio", "min_share", "hidden_ratio", "screen_kl", "screen_margin", "strong_kl",
                     "min_control_ratio", "super_ppl_ratio", "kl_floor"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise UsageError(f"{flag(name)} must be a finite number >= 0, not {v!r}")
        for name in ("max_rounds", "max_candidates", "window", "windows", "max_windows"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise UsageError(f"{flag(name)} must be a positive integer, not {v!r}")
        if self.max_windows < self.windows:
            raise UsageError(f"--max-windows ({self.max_windows}) must be at least --windows ({self.windows})")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise UsageError(f"--seed must be an integer >= 0, not {self.seed!r}")
        if not 0 < self.confidence < 1:
            raise UsageError(f"--confidence must be between 0 and 1, not {self.confidence!r}")
        if self.window < 16:
            raise UsageError(f"--window: real-text windows must be at least 16 tokens, not {self.window}")
        if any(not isinstance(p, str) or not p.strip() for p in self.prompts) or not self.prompts:
            raise UsageError("empty prompt: give some text with --prompt")
        from superweight.texts import check_source

        check_source(self.text)


@dataclass
class Control:
    """Ordinary weights of the candidate's matrix, zeroed together, for comparison."""

    kind: str  # largest (outside the row and column), random, neighbours (next in the row and the column)
    coords: tuple[Coord, ...]
    text: TextEffect | None = None  # None: not measured (it could not change the grade); else in the
    # conditions where the candidate moves real text by ``strong_kl`` or more (elsewhere it cannot matter)
    of: list[Control] | None = None  # a union of these sets, zeroed together

    def to_dict(self) -> dict:
        d = {"kind": self.kind, "coords": [str(c) for c in self.coords]}
        if self.of:
            d["union_of"] = [c.kind for c in self.of]
        d["text"] = self.text.to_dict() if self.text is not None else None
        return d


@dataclass
class Effect:
    """What zeroing one weight (or a set) does: on the probe sentences, then on real text."""

    kl: float  # probe sentences: mean KL(intact || zeroed), nats
    ppl: float  # probe perplexity with the weight zeroed
    ppl_intact: float
    control: Coord | None = None  # the largest ordinary weight, zeroed for comparison on the probe
    control_value: float | None = None
    control_kl: float | None = None
    text: TextEffect | None = None  # real text, per condition
    controls: list[Control] = field(default_factory=list)  # on real text
    margin: dict[str, float] | None = None  # per condition: KL / strongest control's KL (floored)
    matters_in: list[str] = field(default_factory=list)  # conditions with a strong, specific effect
    stages: list[list[int]] | None = None  # the proof's control sets to measure, stage by stage, as indices
    #                                        into ``controls`` (None: not staged yet; proof.Judge._controls)

    def control_kl_text(self, cond: str) -> float | None:
        vals = [c.text.kl[cond] for c in self.controls if c.text is not None and cond in c.text.kl]
        return max(vals) if vals else None

    def to_dict(self) -> dict:
        d = {"kl": self.kl, "probe_ppl": self.ppl, "probe_ppl_intact": self.ppl_intact}
        if self.control is not None:
            d["control"] = {**self.control.to_dict(), "value": self.control_value, "kl": self.control_kl}
        if self.text is not None:
            d["text"] = self.text.to_dict()
            d["controls"] = [c.to_dict() for c in self.controls]
            if self.margin is not None:
                d["control_margin"] = self.margin
            d["matters_in"] = self.matters_in
        return d


@dataclass
class Finding:
    """A spike that was examined: a confirmed super weight, or a rejected one (``reason``)."""

    coord: Coord
    param: str  # the parameter's name, e.g. model.layers.11.mlp.down_proj.weight (JSON key: module)
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
    grade: str = "rejected"  # super, strong, uncertain or rejected (see GRADES)

    @classmethod
    def of(cls, r: SiteRecord, param: str, rnd: int, prompt: int) -> "Finding":
        """The finding a scan's spike points to: the weight that explains it (``r.coord``)."""
        return cls(coord=r.coord, param=param, value=r.weight, input_activation=r.x_col,
                   output_activation=r.output_value, token=r.output_token, share=r.share, round=rnd, prompt=prompt)

    def to_dict(self) -> dict:
        d = {
            **self.coord.to_dict(),
            "module": self.param,  # the JSON keeps its first name
            "value": self.value,
            "input_activation": self.input_activation,
            "output_activation": self.output_activation,
            "token": self.token,
            "share": self.share,
            "round": self.round,
            "grade": self.grade,
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
    super_weights: list[Finding]  # grade super
    rejected: list[Finding]
    layers: list[SiteRecord]  # first round: the strongest down projection of each layer
    super_activation: dict | None
    rounds: int
    probe_ppl: float
    config: DetectConfig = field(default_factory=DetectConfig)
    strong: list[Finding] = field(default_factory=list)  # grade strong
    text: dict | None = None  # the real-text windows and the intact perplexity per condition
    massive: list[dict] = field(default_factory=list)  # massive residual channels and what makes them
    uncertain: list[Finding] = field(default_factory=list)  # grade uncertain: an interval straddles a threshold

    @property
    def coords(self) -> list[Coord]:
        """The super weights' coordinates (what the other commands act on)."""
        return [f.coord for f in self.super_weights]

    @property
    def strong_coords(self) -> list[Coord]:
        return [f.coord for f in self.strong]

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
            "strong": [f.to_dict() for f in self.strong],
            "uncertain": [f.to_dict() for f in self.uncertain],
            "rejected": [f.to_dict() for f in self.rejected],
            "super_activation": self.super_activation,
            "massive_channels": self.massive,
            "text": self.text,
            "layers": layers,
            "rounds": self.rounds,
            "probe_ppl": self.probe_ppl,
            "config": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
        }
