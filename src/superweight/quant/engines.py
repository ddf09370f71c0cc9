"""Which engines load an output we write, by the rules in their loaders' source.

Read on 2026-12-04 (vllm-project/vllm, main):

- ``model_executor/models/llama.py`` and ``qwen2.py``: ``load_weights`` skips ``lm_head.*``
  when ``tie_word_embeddings`` (so a tied model's embedding must be stored as
  ``model.embed_tokens.weight``), skips ``rotary_emb.inv_freq``, maps ``q/k/v_proj`` into
  ``qkv_proj`` and ``gate/up_proj`` into ``gate_up_proj``, and every other name must be a
  parameter of the model; the default loader then refuses a parameter nothing filled.
- ``layers/quantization/compressed_tensors/schemes/compressed_tensors_wNa16.py``: a
  ``pack-quantized`` int group scheme is served by the WNA16 kernels, which take 4 and 8
  bits (``uint4b8``/``uint8b128`` symmetric; with zero points, ``uint4`` only); its tensors
  are ``weight_packed``, ``weight_scale``, ``weight_shape`` and ``weight_zero_point``.
- ``layers/quantization/utils/marlin_utils.py``: Marlin takes group sizes 32, 64 and 128 (or
  one group per row), an input width divisible by 128 (``GPTQ_MARLIN_MIN_THREAD_K``) and an
  output width divisible by 64 (``GPTQ_MARLIN_MIN_THREAD_N``); compute capability 8.0+.

SGLang's compressed-tensors WNA16 path is vLLM's (same type maps and Marlin limits), and
its Llama/Qwen2 loaders follow the same naming rules. ``vllm_names`` replays the name rules
on a written checkpoint; the tests run it on every export of both real models.
"""
from __future__ import annotations

import json
from pathlib import Path

DENSE = ("transformers", "vLLM", "SGLang")  # a float checkpoint under the HF names
GGUF = ("llama.cpp", "transformers (gguf_file=)")
VLLM_BITS = (4, 8)
VLLM_ZP_BITS = (4,)  # zero points (asymmetric packs)
MARLIN_GROUPS = (32, 64, 128)
MARLIN_K, MARLIN_N = 128, 64
STACKED = ((".qkv_proj", ".q_proj"), (".qkv_proj", ".k_proj"), (".qkv_proj", ".v_proj"),
           (".gate_up_proj", ".gate_proj"), (".gate_up_proj", ".up_proj"))


def vllm_refusals(bits: int, group_size: int, symmetric: bool, shapes: dict[str, tuple[int, int]]) -> list[str]:
    """Why vLLM's compressed-tensors WNA16 (Marlin) kernels cannot serve a pack with these
    settings and packed matrices (module name -> ``(out, in)``); empty when they can."""
    why = []
    if bits not in VLLM_BITS:
        why.append(f"{bits}-bit codes (its WNA16 kernels take {' and '.join(map(str, VLLM_BITS))} bits)")
    elif not symmetric and bits not in VLLM_ZP_BITS:
        why.append(f"{bits}-bit codes with zero points (it takes zero points at 4 bits only; use --sym)")
    if group_size not in MARLIN_GROUPS:
        why.append(f"group size {group_size} (Marlin takes {', '.join(map(str, MARLIN_GROUPS))})")
    k = sorted({s[1] for s in shapes.values() if s[1] % MARLIN_K})
    n = sorted({s[0] for s in shapes.values() if s[0] % MARLIN_N})
    if k:
        why.append(f"input widths {', '.join(map(str, k))} (Marlin needs multiples of {MARLIN_K})")
    if n:
        why.append(f"output widths {', '.join(map(str, n))} (Marlin needs multiples of {MARLIN_N})")
    return why


def for_pack(bits: int, group_size: int, symmetric: bool, shapes: dict[str, tuple[int, int]]) -> dict:
    """The manifest's ``engines`` entry of a compressed-tensors pack: who serves it, and why not."""
    no = vllm_refusals(bits, group_size, symmetric, shapes)
    loads = "transformers" if symmetric else "transformers (CompressedTensorsConfig(dequantize=True))"
    return {"serve": [loads] + ([] if no else ["vLLM", "SGLang"]),
            "not": {"vLLM": "; ".join(no), "SGLang": "as vLLM (the same WNA16 kernels)"} if no else {}}


def for_dense() -> dict:
    return {"serve": list(DENSE), "not": {}}


def describe(engines: dict) -> list[str]:
    """The lines a command prints about who serves its output."""
    lines = [f"served by: {', '.join(engines['serve'])}"]
    if engines["not"].get("vLLM"):
        lines.append(f"warning: vLLM and SGLang cannot serve this pack: {engines['not']['vLLM']}")
    return lines


def vllm_names(directory: str | Path) -> list[str]:
    """What vLLM's Llama/Qwen2-style loader would refuse in a written checkpoint, replayed
    on its names (module docstring): a stored name that maps to no parameter, or a parameter
    nothing fills. Empty when it would load. Parameters are the transformers model's, built
    on the meta device from the checkpoint's config, with the quantized modules' tensors
    (``weight_packed``, ...) in place of their ``weight``."""
    import torch
    from accelerate import init_empty_weights
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    d = Path(directory)
    config = AutoConfig.from_pretrained(d)
    raw = json.loads((d / "config.json").read_text())
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    stored = set()
    for f in sorted(d.glob("*.safetensors")):
        with safe_open(str(f), "pt") as h:
            stored |= set(h.keys())
    packed = {k.rsplit(".", 1)[0] for k in stored if k.endswith(".weight_packed")}
    params = set()
    for name, _ in model.named_parameters():
        module, _, leaf = name.rpartition(".")
        if module in packed and leaf == "weight":
            extra = ["weight_zero_point"] if any(k == f"{module}.weight_zero_point" for k in stored) else []
            params |= {f"{module}.{t}" for t in ["weight_packed", "weight_scale", "weight_shape", *extra]}
        else:
            params.add(name)
    tied = bool(raw.get("tie_word_embeddings", getattr(config, "tie_word_embeddings", False)))

    def vllm(name: str) -> str:
        for fused, part in STACKED:
            if part in name:
                return name.replace(part, fused)
        return name

    want = {vllm(p) for p in params if not (tied and p.startswith("lm_head."))}
    problems, filled = [], set()
    for name in sorted(stored):
        if "rotary_emb.inv_freq" in name or tied and name.startswith("lm_head."):
            continue
        if vllm(name) not in want:
            problems.append(f"{name}: no such parameter in vLLM's model")
        filled.add(vllm(name))
    problems += [f"{p}: not in the checkpoint (vLLM refuses uninitialized weights)" for p in sorted(want - filled)]
    return problems
