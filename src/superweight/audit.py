"""Did a quantized checkpoint keep its super weights? ``superweight audit ORIGINAL QUANTIZED``.

Both checkpoints are loaded by the one loader (GGUF of any type ``gguf`` dequantizes,
safetensors, our own ``quantize`` output) and compared through the adapter, so nothing
reads a model a second way. For each finding of the original (its super and strong
weights from ``detect``, or the coordinates given):

- its value in each checkpoint and the relative error;
- the error of the rest of its quantization block (relative RMS over the block's other
  weights), next to the median block of the same matrix: a super weight stretches its
  block's range, and the weights that share it pay;
- the residual-stream channel it writes to, right after its layer (its super activation),
  on the prompt: in each model, and in the quantized model with the original weights put
  back.

Then real-text perplexity, in both conditions (windows starting with the model's start
token, ``bos``, and mid-text, ``mid``), of the original, the quantized model, and the
quantized model with the findings' original values put back: ``recovered`` is the share of
the quantization loss that putting them back removes.

The block, read from the checkpoint: for a GGUF the tensor's own block (32 or 256 weights
of a row); for a compressed-tensors checkpoint (llmcompressor, ``quantize --format
compressed-tensors``) the config group that targets the matrix (group, channel or tensor;
``ignore`` means none); for bitsandbytes, HQQ and torchao modules the engine's own record
(models/dense.py); for our ``quantize`` output the manifest's group or block; otherwise
unknown, and a group of 32 weights of the row is assumed, and the conclusion says so.
"""
from __future__ import annotations

import json
import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import torch

from superweight.coords import Coord
from superweight.errors import ModelLoadError, UsageError, flag
from superweight.models.finite import require_finite
from superweight.models.load import LoadedModel
from superweight.probe.realtext import CONDITIONS

ASSUMED_BLOCK = 32
# llama.cpp's k-quants: a super-block of 256 weights (one scale, quantizing the sub-blocks'
# scales) holds sub-blocks of 16 or 32 weights with their own scale (ggml-common.h); the
# audit's block is the super-block, whose range a super weight stretches first
K_SUBBLOCKS = {"Q2_K": 16, "Q3_K": 16, "Q4_K": 32, "Q5_K": 32, "Q6_K": 16}
MAX_BLOCK = 1 << 40  # a block size past any matrix's element count (a manifest's number is checked, not trusted)


@dataclass(frozen=True)
class AuditConfig:
    prompt: str | None = None  # for the super activation; default: detect's prompt
    text: str = "lambada"  # real text for perplexity: lambada, gpl3, wikitext2, c4 or a file
    window: int = 512
    windows: int = 1

    def __post_init__(self):
        if self.prompt is not None and (not isinstance(self.prompt, str) or not self.prompt.strip()):
            raise UsageError(f"--prompt must be some text, not {self.prompt!r}")
        for name in ("window", "windows"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise UsageError(f"{flag(name)} must be a positive integer, not {v!r}")


@dataclass
class Block:
    kind: str  # "gguf Q4_K", "group 128", "block 4096", "assumed group 32", "none (F32)"
    size: int | None  # weights per block along the flattened [out, in] matrix; None: not blockwise


# A finding is kept when its value is within 1% and its super activation within 10% of the
# original's; lost when its value is off by more than half, or the super activation falls by
# more than half (the paper's collapse: zeroing SmolLM2's super weight takes it down 90%+);
# damaged when its value is off by more than 1% short of that; moved when its value is kept
# but its activation moved by more than 10% short of that (the weight is intact; the weights
# that build the activation are not: issue 40, a pack that keeps every value is not said to
# damage them). VERDICT_RULE says it in words, on the console, the page and in the JSON.
KEPT = {"value": 0.01, "activation": 0.10}
LOST = {"value": 0.5, "activation": 0.5}
VERDICT_RULE = ("kept: value within 1% and super activation within 10%; moved: value within 1%, activation moved "
                "more than 10%; damaged: value off by more than 1%; lost: value off by more than half or super "
                "activation down by more than half")
# A finding whose value is kept but whose activation fell is not told to be held out: on both
# real models, leaving its whole matrix unquantized did not bring the activation back
# (docs/benchmarks.md, "What an audit's advice rests on"), though its block's other weights
# were badly rounded.


@dataclass
class FindingAudit:
    coord: Coord
    grade: str  # super, strong, given
    original: float
    quantized: float
    block: Block
    block_error: float | None  # relative RMS error of the rest of its block
    typical_block_error: float | None  # the median block of the same matrix
    peak: dict[str, float] = field(default_factory=dict)  # original / quantized / restored: max |h| of its row's
    # residual channel after its layer, on the prompt

    @property
    def rel_error(self) -> float:
        return abs(self.quantized - self.original) / abs(self.original) if self.original else math.inf

    @property
    def value_kept(self) -> bool:
        """Its value within ``KEPT["value"]`` of the original's (held out, or quantized finely)."""
        return self.rel_error <= KEPT["value"]

    @property
    def activation_change(self) -> float | None:
        """Relative change of the super activation (its channel's peak) in the quantized copy."""
        o, q = self.peak.get("original"), self.peak.get("quantized")
        return (q - o) / o if o and q is not None and math.isfinite(q) else None

    @property
    def value_change(self) -> float:
        """Signed relative change of its value, (quantized - original) / |original|."""
        return (self.quantized - self.original) / abs(self.original) if self.original else math.inf

    def verdict(self) -> str:
        """``kept``, ``moved``, ``damaged`` or ``lost`` (``VERDICT_RULE``; ``KEPT`` and ``LOST`` hold the numbers)."""
        e, a = self.rel_error, self.activation_change
        if not math.isfinite(e) or e > LOST["value"] or a is not None and a < -LOST["activation"]:
            return "lost"
        if e > KEPT["value"]:
            return "damaged"
        return "kept" if a is None or abs(a) <= KEPT["activation"] else "moved"

    def sizes(self) -> str:
        """``value -0.04%, activation -12%``: the two changes the verdict is read from."""
        from superweight.numbers import fmt_signed_pct

        a = self.activation_change
        return f"value {fmt_signed_pct(self.value_change)}" + ("" if a is None else f", activation {fmt_signed_pct(a)}")

    def to_dict(self) -> dict:
        return {"coord": str(self.coord), "grade": self.grade, "original": self.original, "quantized": self.quantized,
                "rel_error": _finite(self.rel_error), "value_change": _finite(self.value_change),
                "activation_change": self.activation_change, "block": {"kind": self.block.kind, "size": self.block.size},
                "block_error": self.block_error, "typical_block_error": self.typical_block_error,
                "channel": self.coord.row, "peak": self.peak, "verdict": self.verdict()}


@dataclass
class AuditResult:
    original: str
    quantized: str
    findings: list[FindingAudit]
    ppl: dict[str, dict[str, float]]  # original / quantized / restored -> condition -> perplexity
    text: dict  # the windows (source, window, count, start token)
    prompt: str = ""  # where the super activation's peak is read
    model_arg: str | None = None  # the original as a command line names it ("" : the default model; None: no
    # reference, a model wrapped in Python: its name stands in)
    engine: str | None = None  # the engine that made the quantized copy, when its layout says (engine_of)
    ppl_interval: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # as ppl: the 95% bootstrap
    # interval over windows of each perplexity (exp of the mean NLL's interval; the point is exp(pooled NLL))

    def recovered(self, cond: str) -> float | None:
        """Share of the quantization loss (log perplexity) that the original findings remove."""
        o, q, r = (math.log(self.ppl[k][cond]) for k in ("original", "quantized", "restored"))
        return None if abs(q - o) < 1e-9 else (q - r) / (q - o)

    def conclusion(self) -> list[str]:
        """The audit in words: one sentence per finding, then the whole copy's."""
        model = self.original if self.model_arg is None else self.model_arg
        lines = [_sentence(f, model, self.quantized, self.engine) for f in self.findings]
        if not self.findings:
            return ["no super or strong weight in the original: nothing to audit but perplexity"]
        assumed = (f" (the checkpoint does not say how it was quantized: block errors assume groups of {ASSUMED_BLOCK} "
                   "weights of a row)" if any(f.block.kind.startswith("assumed") for f in self.findings) else "")
        bad = [f for f in self.findings if f.verdict() != "kept"]
        if not bad:
            return lines + [f"conclusion: {self.quantized} keeps all {len(self.findings)} weight(s) audited: every "
                            f"value within {KEPT['value']:.0%} and every super activation within "
                            f"{KEPT['activation']:.0%}{assumed}"]
        values = [str(f.coord) for f in bad if not f.value_kept]
        rest = [str(f.coord) for f in bad if f.value_kept]
        build = "the weights that build the activation need more bits or smaller groups"
        held = (f"requantize with {'its matrix' if len(values) == 1 else 'their matrices'} protected "
                f"({_recipe_line(model, self.engine)})" if self.engine else f"requantize with {', '.join(values)} held out")
        fixes = ([held] if values else []) + (
            [(f"{', '.join(rest)} kept {'its value but not its' if len(rest) == 1 else 'their values but not their'}"
              if values else f"{'it' if len(rest) == 1 else 'each'} kept its value but not its") + f" activation: {build}"]
            if rest else [])
        kept = len(self.findings) - len(bad)
        said = "; ".join(f"{f.coord} {f.verdict()} ({f.sizes()})" for f in bad)
        return lines + [f"conclusion: {self.quantized} keeps {kept} of {len(self.findings)} weight(s) audited; "
                        f"{said}: {'; '.join(fixes)}{assumed}"]

    def to_dict(self) -> dict:
        return {"original": self.original, "quantized": self.quantized, "conclusion": self.conclusion(),
                "findings": [f.to_dict() for f in self.findings], "perplexity": self.ppl,
                "perplexity_interval": self.ppl_interval,
                "recovered": {c: self.recovered(c) for c in CONDITIONS}, "text": self.text, "prompt": self.prompt,
                "engine": self.engine, "verdict_rule": VERDICT_RULE}


def _num(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.4g}"


def engine_of(lm: LoadedModel) -> str | None:
    """The engine whose layout ``lm``'s checkpoint is in, for the advice (None: ours or unknown)."""
    from superweight.quant.export import MANIFEST

    path = lm.origin.path if lm.origin is not None else None
    if path is not None and path.is_file():  # a file source is a GGUF (resolve refuses others), read either way
        return "llama.cpp"
    if lm.blocks:
        return next(iter(lm.blocks.values()))[0].split()[0]
    if _hf_quant_config(lm) is not None and not (lm.source / MANIFEST).is_file():  # not our own pack
        return "llmcompressor"
    return None


def _hf_quant_config(lm: LoadedModel) -> dict | None:
    """The compressed-tensors ``quantization_config`` of ``lm``'s checkpoint folder (None: none)."""
    src = lm.source
    cfg_path = src / "config.json" if isinstance(src, Path) else None
    if cfg_path is None or not cfg_path.is_file():
        return None
    try:
        qc = json.loads(cfg_path.read_text()).get("quantization_config")
    except (ValueError, UnicodeDecodeError, AttributeError):
        return None
    return qc if isinstance(qc, dict) and qc.get("quant_method") == "compressed-tensors" else None


def _recipe_line(original: str, engine: str) -> str:
    """The command that writes the protecting recipe for ``engine``."""
    return f"`superweight recipe {shlex.quote(original) + ' ' if original else ''}--for {engine}`"


def _sentence(f: FindingAudit, original: str, quantized: str, engine: str | None = None) -> str:
    """``kept: value within 0.1%, super activation 24,060 -> 23,900`` and the like; what to do
    when it is not kept: hold it out when its value was damaged, and when its value was kept
    but its activation fell, say that holding it out cannot help. ``original``: the model as
    a command line names it ("": the default model)."""
    from superweight.numbers import fmt_pct, fmt_signed_pct

    v = f.verdict()
    value = ("value exact" if f.rel_error == 0 else f"value within {fmt_pct(max(f.rel_error, 1e-4))}"
             if f.rel_error <= KEPT["value"] else
             f"value {_num(f.original)} -> {_num(f.quantized)} ({fmt_signed_pct(f.value_change)})")
    a, o, q = f.activation_change, f.peak.get("original"), f.peak.get("quantized")
    act = "" if a is None else (f", super activation {_num(o)} -> {_num(q)} ({fmt_signed_pct(a)})"
                                if abs(a) <= KEPT["activation"] else
                                f", super activation {'down' if a < 0 else 'up'} {fmt_pct(abs(a))} "
                                f"({_num(o)} -> {_num(q)})")
    held = f"{str(quantized).rstrip('/')}-held/"
    fix = "" if v == "kept" else (
        ": its value is kept, so holding it out cannot help: the weights that build its activation need more "
        "bits or smaller groups" if f.value_kept else
        f": requantize with its matrix protected, {_recipe_line(original, engine)}" if engine else
        f": requantize with it held out, e.g. `superweight quantize {shlex.quote(original) + ' ' if original else ''}"
        f"--coords {f.coord} --out {shlex.quote(held)}`")
    return f"{f.coord} ({f.grade}) {v}: {value}{act}{fix}"


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def check_pair(original: LoadedModel, quantized: LoadedModel) -> None:
    """Before any work: the same model (``check_same_model``), and a quantized copy whose
    quantize manifest, if it has one, can be read."""
    check_same_model(original, quantized)
    _quant_manifest(quantized)


def check_same_model(a: LoadedModel, b: LoadedModel) -> None:
    """The same architecture and shapes, or a clear error."""
    if a.adapter.model_type != b.adapter.model_type:
        raise UsageError(f"not the same model: {a.name} is {a.adapter.model_type}, {b.name} is {b.adapter.model_type}")
    sa = [(s.layer, s.expert, s.shape) for s in a.adapter.sites]
    sb = [(s.layer, s.expert, s.shape) for s in b.adapter.sites]
    if sa != sb:
        raise UsageError(f"not the same model: the down projections of {a.name} and {b.name} differ in number or shape")
    va, vb = (m.model.get_input_embeddings().num_embeddings for m in (a, b))
    if va != vb:
        raise UsageError(f"not the same model: vocabularies of {va} and {vb} tokens")
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "intermediate_size"):
        x, y = (getattr(m.model.config, key, None) for m in (a, b))
        if x != y:
            raise UsageError(f"not the same model: {key} is {x} in {a.name} and {y} in {b.name}")


def block_of(lm: LoadedModel, coord: Coord) -> Block:
    """The quantization block holding ``coord`` in ``lm``'s checkpoint (see the module docstring)."""
    from superweight.models.streaming import GGUFCheckpoint

    ckpt = lm.adapter.streamer.ckpt if lm.adapter.streamer is not None else None
    site = lm.adapter.site(coord)
    if isinstance(ckpt, GGUFCheckpoint):
        from gguf import GGML_QUANT_SIZES

        from superweight.models.gguf_file import FLOAT_TYPES

        t, _ = ckpt.locate(site.param_name, site.stored_index(coord))
        name = t.tensor_type.name
        if name in FLOAT_TYPES:
            return Block(f"none ({name})", None)
        size = GGML_QUANT_SIZES[t.tensor_type][0]
        sub = K_SUBBLOCKS.get(name)
        return Block(f"gguf {name}" + (f" (super-block {size}, sub-blocks of {sub})" if sub else ""), size)
    if lm.blocks:  # an engine's own modules (models/dense.py); one it did not replace it left unquantized
        return Block(*lm.blocks[site.path]) if site.path in lm.blocks else Block("none (left unquantized)", None)
    ct = compressed_tensors_block(lm, site)
    if ct is not None:
        return ct
    manifest = _quant_manifest(lm)
    if manifest is not None:
        cfg = manifest.get("config", {})
        out, inp = site.shape
        size = cfg.get("size")
        if cfg.get("layout") == "group":
            return Block(f"group {size or 'row'}", size or inp)
        return Block(f"block {size or 'whole'}", size or out * inp)
    return Block(f"assumed group {ASSUMED_BLOCK}", ASSUMED_BLOCK)


def compressed_tensors_block(lm: LoadedModel, site) -> Block | None:
    """The block of ``site``'s matrix in a compressed-tensors checkpoint (llmcompressor's
    outputs, ``quantize --format compressed-tensors``), from its config's
    ``quantization_config`` by the library's own matching (an exact name, then a regex, then
    a class; the first group whose target matches wins; ``ignore`` first); None when the
    checkpoint is not one."""
    qc = _hf_quant_config(lm)
    if qc is None:
        return None
    from compressed_tensors.utils.match import match_name, match_targets

    name, module = site.path, lm.model.get_submodule(site.path)
    if any(match_name(name, t) for t in qc.get("ignore") or []):
        return Block("none (ignored: left unquantized)", None)
    schemes = {}
    for group in (qc.get("config_groups") or {}).values():
        for t in group.get("targets") or []:
            schemes.setdefault(t, group)
    hit = match_targets(name, module, list(schemes))
    if not hit:
        return Block("none (no config group targets it)", None)
    w = schemes[hit[0]].get("weights") or {}
    out, inp = site.shape
    bits, strategy = w.get("num_bits"), w.get("strategy")
    kind = f"compressed-tensors int{bits} {'sym' if w.get('symmetric', True) else 'asym'}"
    if strategy == "group":
        g = int(w.get("group_size") or inp)
        order = " (actorder: its columns' groups are permuted; contiguous groups shown)" if w.get("actorder") else ""
        return Block(f"{kind} group {g}{order}", g)
    if strategy == "channel":
        return Block(f"{kind} per channel", inp)
    if strategy == "tensor":
        return Block(f"{kind} per tensor", out * inp)
    return Block(f"{kind} {strategy}", None)


def _quant_manifest(lm: LoadedModel) -> dict | None:
    """The quantize manifest of ``lm``'s directory (None without one); one that cannot be read
    as ours is refused in one line, not guessed around."""
    from superweight.quant.export import MANIFEST

    src = lm.source
    if not (isinstance(src, Path) and (src / MANIFEST).is_file()):
        return None
    path = src / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{path} is not valid JSON ({e}); remove it to audit with an assumed block size") from None
    cfg = manifest.get("config") if isinstance(manifest, dict) else None
    size = cfg.get("size") if isinstance(cfg, dict) else None
    if not isinstance(cfg, dict) or cfg.get("layout") not in ("group", "block") or not (
            size is None or isinstance(size, int) and not isinstance(size, bool) and 0 < size <= MAX_BLOCK):
        raise ModelLoadError(f"{path} is not a superweight quantize manifest (its config needs a layout of group or "
                             f"block and a size from 1 to {MAX_BLOCK:,}, or null); remove it to audit with an assumed "
                             "block size")
    return manifest


def block_errors(orig: torch.Tensor, quant: torch.Tensor, size: int | None, flat: int,
                 skip: set[int]) -> tuple[float | None, float | None]:
    """(relative RMS error of the block holding ``flat`` without the ``skip`` elements, the
    median of every block's) over the flattened [out, in] matrices; the first is None when
    that rest is all zero in the original."""
    if size is None:
        return None, None
    o, q = orig.reshape(-1).float(), quant.reshape(-1).float()
    start = flat - flat % size
    idx = [i for i in range(start, min(start + size, len(o))) if i not in skip]
    if not idx:
        return None, None
    sel = torch.tensor(idx)
    rest = o[sel].norm()
    # a rest that is all zero in the original (a block an earlier quantization crushed to
    # zero around its super weight) has no relative error: None, not 0
    own = float((q[sel] - o[sel]).norm() / rest) if rest > 0 else None
    n = len(o) // size * size
    ob, qb = o[:n].view(-1, size), q[:n].view(-1, size)
    per = (qb - ob).norm(dim=1) / ob.norm(dim=1).clamp_min(1e-30)
    return own, float(per.median())


def measure(lm: LoadedModel, prompt: tuple[torch.Tensor, torch.Tensor], windows) -> tuple[list, dict, dict]:
    """One pass: the residual stream's per-channel max |h| after each layer on the prompt
    ((ids, mask) [1, T]), perplexity on each condition's windows, and its interval over them."""
    from superweight.probe.passes import Group, run
    from superweight.probe.records import spread
    from superweight.probe.realtext import Baseline

    dev = lm.device
    groups = [Group(prompt[0].to(dev), prompt[1].to(dev), residual=True)]
    groups += [Group(windows.ids[c].to(dev), windows.mask[c].to(dev)) for c in CONDITIONS]
    reducers = [lambda lp: None] + [Baseline.building(windows.ids[c].to(dev), windows.mask[c].to(dev)) for c in CONDITIONS]
    answers = run(lm, groups, per_group=reducers)
    bases = dict(zip(CONDITIONS, (a.value for a in answers[1:])))
    # the interval is over windows' mean NLLs; the point pools every token: widened to hold it
    spreads = {c: [math.exp(min(lo, b.nll)), math.exp(max(hi, b.nll))]
               for c, b in bases.items() for lo, hi in [spread([float(x) for x in b.window_nll])]}
    return answers[0].residual, {c: math.exp(b.nll) for c, b in bases.items()}, spreads


def audit(original: LoadedModel, quantized: LoadedModel, findings: list[tuple[Coord, str]],
          cfg: AuditConfig | None = None, log=None) -> AuditResult:
    """Compare ``quantized`` with ``original`` at ``findings`` ((coordinate, grade) pairs)."""
    from superweight.proof import inputs
    from superweight.probe.interventions import edited
    from superweight.probe.prompts import DEFAULT_PROMPT
    from superweight.results import DetectConfig

    cfg = cfg or AuditConfig()
    log = log or (lambda msg: None)
    check_same_model(original, quantized)
    coords = [c for c, _ in findings]
    for c in coords:
        original.adapter.site(c)  # range checks first
    # the proof's inputs (the prompt encoded, the windows cut), with the audit's text, window and count
    setup = DetectConfig(prompts=(cfg.prompt or DEFAULT_PROMPT,), text=cfg.text, window=cfg.window,
                         windows=cfg.windows, max_windows=cfg.windows)
    prompt, _, windows = inputs(original.tokenizer, original.model, original.device, setup, original.name, log)
    log("comparing the findings' weights and blocks")
    out: list[FindingAudit] = []
    for c, grade in findings:
        site = original.adapter.site(c)
        wo, wq = original.adapter.weight(site), quantized.adapter.weight(quantized.adapter.site(c))
        block = block_of(quantized, c)
        inp = wo.shape[1]
        skip = {x.row * inp + x.col for x in coords if (x.layer, x.expert) == (c.layer, c.expert)}
        own, typical = block_errors(wo, wq, block.size, c.row * inp + c.col, skip)
        # each number blames the model that holds its non-finite value: the block errors come
        # from both, so they name the copy unless the original's own matrix is not finite
        require_finite(original, f"the weight at {c}", float(wo[c.row, c.col]))
        require_finite(quantized, f"the weight at {c}", float(wq[c.row, c.col]))
        if not all(math.isfinite(v) for v in (own or 0.0, typical or 0.0)):
            require_finite(original, f"the matrix of {c}", float(wo.float().abs().sum()))
            require_finite(quantized, f"the matrix of {c}", float("nan"))
        out.append(FindingAudit(c, grade, float(wo[c.row, c.col]), float(wq[c.row, c.col]), block, own, typical))
        del wo, wq
    restore = {f.coord: f.original for f in out}
    runs = {}
    for key, lm in (("original", original), ("quantized", quantized)):
        log(f"the {key} model on the prompt and the text")
        runs[key] = measure(lm, prompt, windows)
        require_finite(lm, "the perplexity on real text", *runs[key][1].values())
    if restore:
        log("the quantized model with the original findings put back")
        with edited(quantized.adapter, restore):
            runs["restored"] = measure(quantized, prompt, windows)
    else:
        runs["restored"] = runs["quantized"]
    for f in out:  # the channel it writes to, right after its layer
        f.peak = {k: float(residual[f.coord.layer][0][f.coord.row]) for k, (residual, _, _) in runs.items()}
    ppl = {k: p for k, (_, p, _) in runs.items()}
    arg = None if original.origin is None else original.origin.ref or ""  # "": the default, no argument
    return AuditResult(original.name, quantized.name, out, ppl, windows.to_dict(), cfg.prompt or DEFAULT_PROMPT, arg,
                       engine_of(quantized), {k: sp for k, (_, _, sp) in runs.items()})
