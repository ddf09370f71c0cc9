"""What to give the quantizer you already use so that the super weights keep their precision.

``superweight recipe MODEL --for ENGINE`` turns a verdict (the super and strong weights
detect graded, or ``--coords``) into that engine's own configuration, applied as it is:

    llmcompressor   a YAML recipe: ``oneshot(model=..., recipe="recipe.yaml")``
    llama.cpp       ``llama-quantize --tensor-type 'blk\\.11\\.ffn_down\\.weight=q8_0' ... TYPE``
    bitsandbytes    a ``BitsAndBytesConfig`` (``llm_int8_skip_modules``), Python and JSON
    hqq             a per-module ``BaseQuantizeConfig`` map and the loop that applies it (Python)
    torchao         ``quantize_(model, config, filter_fn=...)`` twice (Python)

The unit every engine can express is a matrix: the recipe protects each matrix that holds
a finding (its down projection), at 8 bits where the engine can give one matrix its own
width (``protect="8bit"``, default: llmcompressor's own config group, llama.cpp's Q8_0,
hqq and torchao 8-bit groups) or left unquantized (``protect="skip"``: llmcompressor's
``ignore``, bitsandbytes' only means). Decisions, written here because the engines differ:

- A W8A8 scheme quantizes each token's inputs with one scale per token; a super
  activation is the largest input of its token in the matrices that read it, so the
  protected matrices are *ignored* there (their inputs stay unquantized), never given 8 bits.
- Columns (the massive-input channels ``superweight quantize`` holds out) and single
  weights cannot be expressed by any of these engines: the recipe says so in ``cannot``.
- Bits per weight are counted over the decoder's linear weights (the ones every engine
  quantizes; embeddings and the head are left as each engine leaves them), with scales at
  16 bits (a bfloat16/float16 checkpoint's), so ``bits["extra"]`` is what the protection costs.
- Python recipes define ``quantize(model)`` (hqq, torchao: applied to a loaded model) or
  ``load(model_id, **kwargs)`` (bitsandbytes: applied while loading); the test suite runs
  them with the real engines as they are printed.

- ``scope="mlp"`` protects every linear of each finding's MLP (gate and up projections too,
  which write the massive input the super weight multiplies), at three times the bits.
  Measured (docs/results/engines.md): on SmolLM2 it brings torchao int4's super activation
  from +5.1% to +1.0% (+0.200 instead of +0.067 bits per weight) and does not help nf4 or
  Q4_0; on Qwen2.5-Coder it moves llmcompressor W4A16's from -15.8% only to -12.0% (+0.439
  bits): most of an activation's error comes from earlier layers. So the default is ``down``.

``recipe(lm, findings, cfg)`` is the verb; ``RecipeConfig`` checks its options; each engine
is one function in ``ENGINES``.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from superweight.coords import Coord
from superweight.errors import UsageError

ENGINES_NAMES = ("llmcompressor", "llama.cpp", "bitsandbytes", "hqq", "torchao")
GROUPS = (128, 64, 32)  # the group sizes users pick, largest first (vLLM's Marlin takes these)
SCALE_BITS = 16
LLMC_SCHEMES = ("W4A16", "W4A16_ASYM", "W8A16", "W8A8", "W3A16")
GGUF_TYPES = {3: "Q3_K_M", 4: "Q4_K_M", 5: "Q5_K_M", 6: "Q6_K", 8: "Q8_0"}  # llama-quantize's default per bits


@dataclass(frozen=True)
class RecipeConfig:
    engine: str
    bits: int = 4
    group_size: int | None = None  # None: the largest of GROUPS dividing every input width; 0: per channel
    scheme: str | None = None  # llmcompressor: W4A16...; llama.cpp: a llama-quantize type (Q4_K_M...)
    protect: str = "8bit"  # "8bit": the matrices at 8 bits where the engine can; "skip": left unquantized
    scope: str = "down"  # "down": each finding's down projection; "mlp": every linear of its MLP (gate, up, down)
    modifier: str = "none"  # llmcompressor: none (data-free QuantizationModifier), gptq, awq

    def __post_init__(self):
        if self.engine not in ENGINES_NAMES:
            raise UsageError(f"--for {self.engine!r}: one of {', '.join(ENGINES_NAMES)}")
        if not isinstance(self.bits, int) or not 2 <= self.bits <= 8:
            raise UsageError(f"--bits must be 2 to 8, not {self.bits!r}")
        if self.group_size is not None and (not isinstance(self.group_size, int) or self.group_size < 0):
            raise UsageError(f"--group-size must be a positive integer or 'row', not {self.group_size!r}")
        if self.protect not in ("8bit", "skip"):
            raise UsageError(f"--protect must be 8bit or skip, not {self.protect!r}")
        if self.scope not in ("down", "mlp"):
            raise UsageError(f"--scope must be down or mlp, not {self.scope!r}")
        if self.modifier not in ("none", "gptq", "awq"):
            raise UsageError(f"--modifier must be none, gptq or awq, not {self.modifier!r}")
        if self.modifier != "none" and self.engine != "llmcompressor":
            raise UsageError(f"--modifier is llmcompressor's; {self.engine} has none")
        if self.scheme is not None and self.engine == "llmcompressor" and self.scheme.upper() not in LLMC_SCHEMES:
            raise UsageError(f"--scheme {self.scheme!r}: llmcompressor schemes here are {', '.join(LLMC_SCHEMES)}")
        if self.scheme is not None and self.engine == "llama.cpp":
            _gguf_type(self.scheme)
        if self.scheme is not None and self.engine not in ("llmcompressor", "llama.cpp"):
            raise UsageError(f"--scheme is for llmcompressor and llama.cpp; {self.engine} takes --bits and --group-size")
        if self.engine == "bitsandbytes" and self.bits not in (4, 8):
            raise UsageError("bitsandbytes quantizes at 4 bits (nf4) or 8 (LLM.int8), not "
                             f"{self.bits}")
        if self.engine == "bitsandbytes" and self.protect == "8bit":
            object.__setattr__(self, "protect", "skip")  # its only means: llm_int8_skip_modules


@dataclass
class Matrix:
    """A protected matrix: its module, shape ``(out, in)``, GGUF tensor name, and findings."""

    module: str
    shape: tuple[int, int]
    coords: list[str]
    gguf: str | None = None

    def to_dict(self) -> dict:
        return {"module": self.module, "shape": list(self.shape), "gguf": self.gguf, "holds": self.coords}


@dataclass
class Recipe:
    engine: str
    model: str
    config: RecipeConfig
    protected: list[Matrix]
    text: str  # the artifact, as the engine reads it
    filename: str  # what to save it as
    apply: str  # the line that applies it
    bits: dict  # without / with / extra bits per weight over the decoder's linear weights
    protects: str  # how the matrices are kept, in words
    cannot: list[str] = field(default_factory=list)
    data: dict | None = None  # the engine's config as JSON, where it has one (bitsandbytes)

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return {"engine": self.engine, "model": self.model, "config": asdict(self.config),
                "protected": [m.to_dict() for m in self.protected], "protects": self.protects,
                "bits_per_weight": self.bits, "cannot": self.cannot, "filename": self.filename, "apply": self.apply,
                "recipe": self.text, **({"engine_config": self.data} if self.data is not None else {})}


def linears(lm) -> dict[str, tuple[int, int]]:
    """The decoder's linear weights: module name -> ``(out, in)`` (meta tensors included)."""
    return lm.adapter.linears()


def default_group(shapes: dict[str, tuple[int, int]]) -> int:
    """The largest of ``GROUPS`` that divides every input width (0: none does, per channel)."""
    return next((g for g in GROUPS if all(s[1] % g == 0 for s in shapes.values())), 0)


def gguf_names(lm, modules: list[str]) -> dict[str, str | None]:
    """Each module's GGUF tensor name (``blk.11.ffn_down.weight``), by gguf-py's own map."""
    import gguf

    arch = next((a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == lm.adapter.model_type), None)
    if arch is None:
        return dict.fromkeys(modules)
    tmap = gguf.get_tensor_name_map(arch, lm.adapter.num_layers)
    return {m: (lambda n: f"{n}.weight" if n else None)(tmap.get_name(m)) for m in modules}


def _gguf_type(name: str) -> tuple[str, float]:
    """A llama-quantize type (Q4_K_M, Q4_0, ...) -> (its base ggml type, bits per weight)."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    base = re.sub(r"_(S|M|L|XL)$", "", name.upper())
    try:
        t = GGMLQuantizationType[base]
    except KeyError:
        raise UsageError(f"--scheme {name!r} is not a llama-quantize type (Q4_K_M, Q4_0, Q5_K_S, Q8_0, ...)") from None
    block, size = GGML_QUANT_SIZES[t]
    return base, size * 8 / block


def _bpw(bits: int, group: int, width: int, zero: bool = False) -> float:
    g = group or width  # 0: one scale per output channel
    return bits + SCALE_BITS / g + (bits / g if zero else 0)


def _mean(per: dict[str, float], shapes: dict[str, tuple[int, int]]) -> float:
    n = sum(o * i for o, i in shapes.values())
    return sum(per[k] * o * i for k, (o, i) in shapes.items()) / n


def recipe(lm, findings: list[tuple[Coord, str]], cfg: RecipeConfig) -> Recipe:
    """The recipe for ``cfg.engine`` that protects the matrices holding ``findings``
    ((coordinate, grade) pairs; none: the engine's plain configuration, for comparison)."""
    shapes = linears(lm)
    if not shapes:
        raise UsageError(f"{lm.name}: no linear weight in its decoder layers to quantize")
    held: dict[str, list[str]] = {}
    for c, grade in findings:
        site = lm.adapter.site(c)
        if site.expert is not None:
            raise UsageError(f"{c}: a routed expert's weight; {cfg.engine} recipes protect dense matrices only")
        held.setdefault(site.path, []).append(f"{c} {grade}")
        if cfg.scope == "mlp":  # the matrices that write the massive input the down projection reads
            mlp = site.path.rpartition(".")[0] + "."
            for m in shapes:
                if m.startswith(mlp) and m.count(".") == site.path.count("."):
                    held.setdefault(m, [])
    names = gguf_names(lm, list(held))
    protected = [Matrix(m, shapes[m], cs, names[m]) for m, cs in held.items() if m in shapes]
    group = cfg.group_size if cfg.group_size is not None else default_group(shapes)
    return ENGINES[cfg.engine](lm, cfg, protected, shapes, group)


def _header(lm, protected: list[Matrix], engine: str, comment: str = "#") -> str:
    what = "; ".join(f"{m.module}: {', '.join(m.coords) or 'its MLP'}" for m in protected) or "nothing (no finding given)"
    return (f"{comment} superweight recipe for {engine}: {lm.name}\n"
            f"{comment} protects the matrices of its super weights: {what}\n")


def _cost(base: dict[str, float], protected: list[Matrix], keep, shapes) -> dict:
    """Bits per weight without and with the protection (``keep``: a protected matrix's bits,
    or a function of the matrix; None: left unquantized, 16 bits)."""
    mine = dict(base)
    for m in protected:
        mine[m.module] = 16.0 if keep is None else keep(m) if callable(keep) else keep
    without, with_ = _mean(base, shapes), _mean(mine, shapes)
    return {"without": round(without, 4), "with": round(with_, 4), "extra": round(with_ - without, 4),
            "over": "the decoder's linear weights (scales at 16 bits)"}


_COLUMNS = ("single weights and columns (the massive-input channels superweight quantize holds out): "
            "{engine} keeps whole matrices only")


def _llmcompressor(lm, cfg, protected, shapes, group) -> Recipe:
    import yaml

    scheme = (cfg.scheme or ("W8A16" if cfg.bits == 8 else f"W{cfg.bits}A16")).upper()
    bits = int(scheme[1])
    zero = scheme.endswith("_ASYM")
    acts = scheme.startswith("W8A8")
    bad = sorted({s[1] for s in shapes.values() if group and s[1] % group})
    if bad:
        fits = [g for g in GROUPS if all(s[1] % g == 0 for s in shapes.values())]
        raise UsageError(f"group size {group} does not divide the input widths {', '.join(map(str, bad))} "
                         f"(compressed-tensors has no ragged group): --group-size {' or '.join(map(str, fits)) or 'row'}")

    def weights(b: int) -> dict:
        w = {"num_bits": b, "type": "int", "symmetric": not zero, "strategy": "group" if group and not acts else "channel"}
        if w["strategy"] == "group":
            w["group_size"] = group
        return w

    base = {"targets": ["Linear"], "weights": weights(bits)}
    if acts:
        base["input_activations"] = {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "token",
                                     "dynamic": True}
    ignore = ["lm_head"]
    groups = {"base": base}
    skip = cfg.protect == "skip" or acts or bits >= 8 or zero
    if protected and skip:
        ignore += [m.module for m in protected]
    elif protected:
        groups["superweights"] = {"targets": [m.module for m in protected], "weights": weights(8)}
    modifier = {"none": "QuantizationModifier", "gptq": "GPTQModifier", "awq": "AWQModifier"}[cfg.modifier]
    body = {"ignore": ignore, "config_groups": groups}
    text = _header(lm, protected, "llmcompressor") + (
        "# data-free; apply with oneshot(model=MODEL, recipe=THIS_FILE, output_dir=OUT)\n" if cfg.modifier == "none" else
        f"# {modifier} needs calibration data: oneshot(model=MODEL, dataset=DATA, recipe=THIS_FILE, output_dir=OUT)\n")
    text += yaml.safe_dump({"quant_stage": {"quant_modifiers": {modifier: body}}}, sort_keys=False)
    width = {k: s[1] for k, s in shapes.items()}
    per = {k: _bpw(bits, 0 if acts else group, width[k], zero) for k in shapes}
    keep = None if skip else (lambda m: _bpw(8, group, m.shape[1]))
    how = ("left unquantized (ignore)" if skip else f"at 8 bits in their own config group (groups of {group or 'a row'})")
    cannot = [_COLUMNS.format(engine="llmcompressor")]
    if acts:
        cannot.append("W8A8: the protected matrices are ignored, not given 8 bits: their inputs carry the super "
                      "activation, which a per-token input scale would make every other input of its token round to 0")
    if zero and protected and cfg.protect != "skip":
        cannot.append("an 8-bit group beside an asymmetric one: the protected matrices are ignored instead, since "
                      "transformers 5.25 loads no mixed asymmetric checkpoint (compressed, it allocates zero points "
                      "unpacked; dequantized, it decodes every matrix with the first group's scheme)")
    return Recipe("llmcompressor", lm.name, cfg, protected, text, "recipe.yaml",
                  'from llmcompressor import oneshot; oneshot(model=MODEL, recipe="recipe.yaml", output_dir=OUT)',
                  _cost(per, protected, keep, shapes), how, cannot)


def _llama_cpp(lm, cfg, protected, shapes, group) -> Recipe:
    ftype = (cfg.scheme or GGUF_TYPES.get(cfg.bits, f"Q{cfg.bits}_K_M")).upper()
    base, bpw = _gguf_type(ftype)
    keep_type = "F16" if cfg.protect == "skip" else "Q8_0"
    _, keep_bpw = _gguf_type(keep_type)
    missing = [m.module for m in protected if m.gguf is None]
    if missing:
        raise UsageError(f"no GGUF tensor name for {', '.join(missing)} (gguf-py has no map for "
                         f"{lm.adapter.model_type})")
    args = [f"--tensor-type '{re.escape(m.gguf)}={keep_type.lower()}'" for m in protected]
    cmd = " \\\n  ".join(["llama-quantize", *args, "MODEL-F16.gguf", f"MODEL-{ftype}.gguf", ftype])
    text = _header(lm, protected, "llama.cpp") + cmd + "\n"
    per = dict.fromkeys(shapes, bpw)
    cannot = [_COLUMNS.format(engine="llama.cpp")]
    if ftype != base:
        cannot.append(f"{ftype} is a mix: llama-quantize gives some tensors more bits than {base}; the bits per weight "
                      f"here count {base} throughout")
    why = "" if keep_type == "F16" else " (gguf-py writes it too: superweight quantize MODEL.gguf --format gguf)"
    return Recipe("llama.cpp", lm.name, cfg, protected, text, "llama-quantize.sh",
                  f"bash llama-quantize.sh (after convert_hf_to_gguf.py MODEL --outtype f16){why}",
                  _cost(per, protected, keep_bpw, shapes), f"as {keep_type} (--tensor-type, a regex on the GGUF "
                  "tensor name)", cannot)


def _bitsandbytes(lm, cfg, protected, shapes, group) -> Recipe:
    skip = ["lm_head", *(m.module for m in protected)]
    if cfg.bits == 4:
        data = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": False,
                "llm_int8_skip_modules": skip}
        per = dict.fromkeys(shapes, 4 + 32 / 64)  # nf4 codes, a float32 absmax per 64 weights
        args = ('load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=False,\n'
                '    bnb_4bit_compute_dtype=torch.bfloat16, ')
    else:
        data = {"load_in_8bit": True, "llm_int8_skip_modules": skip}
        per = {k: 8 + 32 / s[1] for k, s in shapes.items()}  # int8 codes, a float32 scale per row
        args = "load_in_8bit=True, "
    text = (_header(lm, protected, "bitsandbytes") +
            "import torch\nfrom transformers import AutoModelForCausalLM, BitsAndBytesConfig\n\n"
            f"SKIP = {json.dumps(skip)}  # left unquantized: the head and the super weights' matrices\n"
            f"quantization_config = BitsAndBytesConfig(\n    {args}llm_int8_skip_modules=SKIP)\n\n\n"
            "def load(model_id, **kwargs):\n"
            "    return AutoModelForCausalLM.from_pretrained(model_id, quantization_config=quantization_config, **kwargs)\n")
    cannot = [_COLUMNS.format(engine="bitsandbytes"),
              "a matrix at a finer width: bitsandbytes can only leave a module unquantized (llm_int8_skip_modules)"]
    return Recipe("bitsandbytes", lm.name, cfg, protected, text, "bnb_recipe.py",
                  "from bnb_recipe import load; model = load(MODEL)", _cost(per, protected, None, shapes),
                  "left unquantized (llm_int8_skip_modules)", cannot, data)


def _names(protected) -> str:
    return "{" + "".join(f"\n    {m.module!r},  # {', '.join(m.coords)}" for m in protected) + ("\n}" if protected else "}")


def _grouped(engine: str, group: int) -> int:
    """``group``, refused when it is 0 (per channel, asked or the only default that fits):
    the hqq and torchao recipes are written in groups."""
    if not group:
        raise UsageError(f"the {engine} recipe quantizes in groups: give --group-size 32, 64 or 128 (one that "
                         "divides every input width)")
    return group


def _hqq(lm, cfg, protected, shapes, group) -> Recipe:
    g = _grouped("hqq", group)
    prefix = lm.adapter.layers_prefix
    keep = "None  # left unquantized" if cfg.protect == "skip" else f"BaseQuantizeConfig(nbits=8, group_size={g})"
    text = (_header(lm, protected, "hqq") +
            "import torch\nfrom hqq.core.quantize import BaseQuantizeConfig, HQQLinear\n\n"
            f"BASE = BaseQuantizeConfig(nbits={cfg.bits}, group_size={g})\n"
            f"PROTECTED = {_names(protected)}\nKEEP = {keep}\n\n\n"
            "def quantize(model, compute_dtype=torch.bfloat16, device=\"cuda\"):\n"
            "    \"\"\"Every decoder linear as an HQQLinear; the super weights' matrices with KEEP.\"\"\"\n"
            "    for name, module in list(model.named_modules()):\n"
            f"        if not (isinstance(module, torch.nn.Linear) and name.startswith({prefix!r})):\n"
            "            continue\n"
            "        config = KEEP if name in PROTECTED else BASE\n"
            "        if config is None:\n"
            "            continue\n"
            "        parent, _, child = name.rpartition(\".\")\n"
            "        setattr(model.get_submodule(parent), child,\n"
            "                HQQLinear(module, config, compute_dtype=compute_dtype, device=device))\n"
            "    return model\n")
    per = dict.fromkeys(shapes, _bpw(cfg.bits, g, 0) + SCALE_BITS / g)  # a float16 scale and zero per group
    kbits = None if cfg.protect == "skip" else _bpw(8, g, 0) + SCALE_BITS / g
    return Recipe("hqq", lm.name, cfg, protected, text, "hqq_recipe.py",
                  "from hqq_recipe import quantize; quantize(model)", _cost(per, protected, kbits, shapes),
                  "left unquantized" if cfg.protect == "skip" else f"at 8 bits (groups of {g})",
                  [_COLUMNS.format(engine="hqq")])


def _torchao(lm, cfg, protected, shapes, group) -> Recipe:
    g = _grouped("torchao", group)
    prefix = lm.adapter.layers_prefix
    dtype = f"torch.int{cfg.bits}"
    text = (_header(lm, protected, "torchao") +
            "import torch\nfrom torchao.quantization import IntxWeightOnlyConfig, quantize_\n"
            "from torchao.quantization.granularity import PerGroup\n\n"
            f"PROTECTED = {_names(protected)}\n\n\n"
            "def _linear(module, fqn):\n"
            f"    return isinstance(module, torch.nn.Linear) and fqn.startswith({prefix!r})\n\n\n"
            "def quantize(model):\n"
            "    \"\"\"Every decoder linear's weight in groups; the super weights' matrices at 8 bits.\"\"\"\n"
            f"    quantize_(model, IntxWeightOnlyConfig(weight_dtype={dtype}, granularity=PerGroup({g})),\n"
            "              filter_fn=lambda m, fqn: _linear(m, fqn) and fqn not in PROTECTED)\n" +
            ("" if cfg.protect == "skip" else
             f"    quantize_(model, IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=PerGroup({g})),\n"
             "              filter_fn=lambda m, fqn: _linear(m, fqn) and fqn in PROTECTED)\n") +
            "    return model\n")
    per = dict.fromkeys(shapes, _bpw(cfg.bits, g, 0))
    kbits = None if cfg.protect == "skip" else _bpw(8, g, 0)
    return Recipe("torchao", lm.name, cfg, protected, text, "torchao_recipe.py",
                  "from torchao_recipe import quantize; quantize(model)", _cost(per, protected, kbits, shapes),
                  "left unquantized" if cfg.protect == "skip" else f"at 8 bits (IntxWeightOnlyConfig, groups of {g})",
                  [_COLUMNS.format(engine="torchao")])


ENGINES = {"llmcompressor": _llmcompressor, "llama.cpp": _llama_cpp, "bitsandbytes": _bitsandbytes, "hqq": _hqq,
           "torchao": _torchao}
