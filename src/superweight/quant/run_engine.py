"""A recipe applied by its real engine, ready for ``audit``: what the tests and
bench/bench_engines.py run, and what a user can run to check a recipe before using it.

    r = recipe(lm, findings, RecipeConfig(engine="hqq"))
    q = applied(r, source_dir)                 # a LoadedModel of the engine's output
    audit(lm, q, findings)

llmcompressor: ``oneshot`` with the YAML as written, into ``out`` (a compressed-tensors
checkpoint), loaded back by ``load``. bitsandbytes: the recipe's ``load`` (transformers'
``from_pretrained`` with its ``BitsAndBytesConfig``). hqq and torchao: the recipe's
``quantize(model)`` on the model loaded from ``source``. Each Python recipe is executed as
printed. llama.cpp: ``llama-quantize`` is not here, so its Q8_0 protection is applied by
gguf-py (``gguf_out.quantize_gguf``) in a legacy type (``gguf_type``) from the GGUF ``gguf_source``.
The engine-quantized modules are read back through ``LoadedModel.from_engine``.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch


def applied(r, source: str | Path, out: str | Path | None = None, dtype: torch.dtype = torch.float32,
            gguf_source: str | Path | None = None, gguf_type: str = "Q4_0", log=None):
    """The engine's output of recipe ``r`` on the Hugging Face checkpoint ``source`` (a
    directory), as a LoadedModel. ``out``: where llmcompressor and llama.cpp write (default:
    a temporary directory that lives as long as the process)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from superweight.models.load import LoadedModel, load

    out = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix=f"superweight-{r.engine}-"))
    name = f"{r.model} ({r.engine}{', protected' if r.protected else ''})"
    if r.engine == "llama.cpp":
        from superweight.quant.gguf_out import quantize_gguf

        if gguf_source is None:
            raise ValueError("llama.cpp recipes are applied to a GGUF file: give gguf_source")
        keep = [m.gguf for m in r.protected]
        dest = out / f"{Path(gguf_source).stem}-{gguf_type}.gguf"
        out.mkdir(parents=True, exist_ok=True)
        quantize_gguf(Path(gguf_source), dest, gguf_type, keep, "F16" if r.config.protect == "skip" else "Q8_0", log)
        return load(str(dest), dtype=dtype, stream=True)
    tokenizer = AutoTokenizer.from_pretrained(source)
    if r.engine == "llmcompressor":
        from llmcompressor import oneshot

        out.mkdir(parents=True, exist_ok=True)
        path = out.parent / f"{out.name}.recipe.yaml"
        path.write_text(r.text)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
        oneshot(model=model, recipe=str(path), output_dir=str(out))
        tokenizer.save_pretrained(out)
        return load(str(out), dtype=dtype)
    ns: dict = {}
    exec(compile(r.text, r.filename, "exec"), ns)  # the recipe as printed
    if r.engine == "bitsandbytes":
        ns["quantization_config"].bnb_4bit_compute_dtype = dtype  # computed at dtype, as the other engines here
        model = ns["load"](str(source), dtype=dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
        ns["quantize"](model, **({"compute_dtype": dtype, "device": "cpu"} if r.engine == "hqq" else {}))
    return LoadedModel.from_engine(model.eval(), tokenizer, name)
