"""GPTQ on the super weight's matrix, with and without `superweight recipe`'s protection.

llmcompressor's symmetric int4 scale is max/7.5, so a group's largest weight rounds to code
+-8 and a positive one is clamped to 7 (-6.7%). Does GPTQ undo it? Full-model GPTQ is hours
on 2 cores, so only the matrices that hold the model's graded weights are quantized (every
other matrix stays as it is): RTN (QuantizationModifier) and GPTQ (GPTQModifier, calibrated
on LAMBADA windows) at 4 bits in the model's default group, then the same with the recipe's
8 bits; each audited (value, super activation) on LAMBADA.

    .venv/bin/python bench/bench_gptq_clamp.py --models smollm2 qwen2.5-coder-0.5b --out docs/results/gptq-clamp.json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["smollm2"])
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--out", default="bench/out/gptq-clamp.json")
    args = ap.parse_args()
    import yaml
    from datasets import Dataset
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM

    import superweight as sw
    from superweight.audit import AuditConfig, audit
    from superweight.models.load import load
    from superweight.quant.recipes import RecipeConfig, default_group, recipe
    from superweight.texts import read_text
    from superweight.verdicts import detection

    rows = []
    for name in args.models:
        lm = sw.load(name, stream=False)
        det = detection(lm).result
        findings = [(f.coord, f.grade) for f in det.super_weights + det.strong]
        group = default_group(lm.adapter.linears())
        mats = sorted({lm.adapter.site(c).path for c, _ in findings})
        ids = lm.tokenizer(read_text("lambada"), return_tensors="pt").input_ids[0]
        n = args.seqlen
        data = Dataset.from_dict({"input_ids": [ids[i * n:(i + 1) * n].tolist() for i in range(args.samples)],
                                  "attention_mask": [[1] * n] * args.samples})
        for modifier in ("QuantizationModifier", "GPTQModifier"):
            for bits in (4, 8):
                base = yaml.safe_load(recipe(lm, [], RecipeConfig(engine="llmcompressor")).text)
                body = base["quant_stage"]["quant_modifiers"]["QuantizationModifier"]
                body["config_groups"]["base"]["targets"] = mats  # only the graded weights' matrices
                body["config_groups"]["base"]["weights"]["num_bits"] = bits
                r = {"quant_stage": {"quant_modifiers": {modifier: body}}}
                out = Path(tempfile.mkdtemp(prefix="gptq-"))
                (out / "r.yaml").write_text(yaml.safe_dump(r))
                model = AutoModelForCausalLM.from_pretrained(lm.source, dtype=torch.float32)
                t0 = time.perf_counter()
                kw = {"dataset": data, "num_calibration_samples": args.samples, "max_seq_length": n} \
                    if modifier == "GPTQModifier" else {}
                oneshot(model=model, recipe=str(out / "r.yaml"), output_dir=str(out / "q"), **kw)
                secs = time.perf_counter() - t0
                lm.tokenizer.save_pretrained(out / "q")
                a = audit(lm, load(str(out / "q")), findings, AuditConfig(window=256, windows=4))
                row = {"model": name, "modifier": modifier, "bits": bits, "group": group, "matrices": mats,
                       "seconds": round(secs, 1),
                       "findings": [{"coord": str(f.coord), "grade": f.grade, "original": f.original,
                                     "quantized": f.quantized, "rel_error": f.rel_error,
                                     "activation_change": f.activation_change, "verdict": f.verdict()}
                                    for f in a.findings],
                       "perplexity": a.ppl["quantized"], "original_perplexity": a.ppl["original"]}
                rows.append(row)
                print(name, modifier, bits, f"{secs:.0f} s", "; ".join(
                    f"{f['coord']} {100 * f['rel_error']:.2f}% act {100 * (f['activation_change'] or 0):+.1f}%"
                    for f in row["findings"]), row["perplexity"], flush=True)
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
