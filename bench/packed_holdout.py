"""What the compressed-tensors format's coarse hold-out costs against our simulated one.

`quantize --format compressed-tensors` cannot store a sparse set, so the super weights are
protected by leaving their whole matrices unquantized. Per model and bit width, in groups of
``--group`` with integer zero points and float32 scales (what the packed format stores for
these float32 models), perplexity (GPTQ-style windows, no start token) of:

- ``packed, nothing held``: every decoder linear weight packed;
- ``packed, SW matrices whole``: what ``--format compressed-tensors`` writes;
- ``ours, simulated``: the same quantizer holding out exactly the super weights and the weight
  columns of massive input channels (``--act-ratio 10``), as ``--format dequantized`` does;
- ``ours, float zero``: our default quantizer (float ``lo``, float16 scales), the same hold-out.

Then the packed checkpoint is written (``save_quantized(..., format="compressed-tensors")``),
loaded back by transformers (``CompressedTensorsConfig(dequantize=True)``), and its
perplexity is set beside the simulation's; its quantized tensors' bytes on disk beside the
manifest's bits per weight.

    python bench/packed_holdout.py --out docs/results/packed-holdout.json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path

import torch
from safetensors import safe_open

import superweight as sw
from superweight.texts import read_text
from superweight.probe.measures import perplexity
from superweight.quant.apply import quantized, quantizable
from superweight.quant.export import MANIFEST, save_quantized
from superweight.quant.rtn import QuantConfig

MODELS = {"smollm2": ["11:507:1229"], "qwen2.5-coder-0.5b": ["3:62:2247", "3:62:3016", "5:62:956"]}


def stored_bytes(path: Path, names: list[str]) -> int:
    """Bytes of the named weights' tensors in the output (packed, scale, zero point, shape, or dense)."""
    total = 0
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            for k in st.keys():
                if any(k == n or (k.startswith(n.removesuffix("weight")) and k.rsplit(".", 1)[-1].startswith("weight_"))
                       for n in names):
                    t = st.get_slice(k)
                    shape = t.get_shape()
                    size = {"I32": 4, "I64": 8, "F32": 4, "F16": 2, "BF16": 2, "I8": 1}[t.get_dtype()]
                    total += size * int(torch.tensor(shape).prod()) if shape else size
    return total


def run(model: str, bits_list, group: int, texts: list[str], seqlen: int, windows: int, log) -> dict:
    lm = sw.load(model, stream=False)
    coords = [sw.Coord.parse(c) for c in MODELS[model]]
    held = sorted({lm.adapter.site(c).param_name for c in coords})
    dense = sum(p.numel() for n, p in quantizable(lm) if n in held)
    src = {t: read_text(t) for t in texts}

    def ppl(m=None):
        return {t: perplexity(m or lm.model, lm.tokenizer, x, seqlen, windows) for t, x in src.items()}

    out = {"model": model, "super_weights": MODELS[model], "matrices_left_whole": held, "group": group,
           "seqlen": seqlen, "windows": windows, "full precision": ppl(), "rows": []}
    for bits in bits_list:
        base = QuantConfig(bits, "group", group, zero="int", scale_dtype="float32")
        ours = replace(base, act_ratio=10.0)
        states = [("packed, nothing held", base, (), ()),
                  ("packed, SW matrices whole", base, (), held),
                  ("ours, simulated", ours, coords, ()),
                  ("ours, float zero", QuantConfig(bits, "group", group, act_ratio=10.0), coords, ())]
        for name, cfg, keep, exclude in states:
            t0 = time.perf_counter()
            with quantized(lm, cfg, keep=keep, exclude=exclude) as rep:
                p = ppl()
            extra = dense if exclude else 0  # the matrices left whole count at float32
            bpw = (rep.bits_total + 32 * extra) / (rep.numel + extra)
            out["rows"].append({"bits": bits, "state": name, "bits_per_weight": bpw, "perplexity": p, "held": rep.held + extra})
            log(f"{model} {bits}-bit {name}: {bpw:.3f} bits, {p} ({time.perf_counter() - t0:.0f} s)")
        with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
            t0 = time.perf_counter()
            rep = save_quantized(lm, base, Path(tmp) / "q", keep=coords, format="compressed-tensors")
            written = time.perf_counter() - t0
            from transformers import AutoModelForCausalLM, CompressedTensorsConfig

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                packed = AutoModelForCausalLM.from_pretrained(Path(tmp) / "q", quantization_config=CompressedTensorsConfig(
                    dequantize=True)).eval()
            p = ppl(packed)
            manifest = json.loads((Path(tmp) / "q" / MANIFEST).read_text())
            names = [t["name"] for t in manifest["tensors"]]
            disk = stored_bytes(Path(tmp) / "q", names)
            files = sum(f.stat().st_size for f in (Path(tmp) / "q").glob("*.safetensors"))
            del packed
        sim = next(r for r in out["rows"] if r["bits"] == bits and r["state"] == "packed, SW matrices whole")
        out["rows"].append({"bits": bits, "state": "packed checkpoint, loaded by transformers",
                            "bits_per_weight": manifest["bits_per_weight"], "perplexity": p,
                            "simulation": sim["perplexity"], "disk_bits_per_weight": 8 * disk / manifest["quantized_weights"],
                            "file_bytes": files, "write_seconds": written, "held": rep.held})
        log(f"{model} {bits}-bit packed checkpoint: {p} against the simulation's {sim['perplexity']}; "
            f"disk {8 * disk / manifest['quantized_weights']:.4f} bits/weight, manifest {manifest['bits_per_weight']:.4f}")
    return out


def markdown(results: list[dict]) -> str:
    texts = list(results[0]["full precision"])
    rows = ["| model | bits | state | bits/weight | " + " | ".join(texts) + " |", "|---|---:|---|---:|" + "---:|" * len(texts)]
    for r in results:
        rows.append(f"| {r['model']} | | full precision | | " + " | ".join(f"{r['full precision'][t]:.2f}" for t in texts) + " |")
        for row in r["rows"]:
            rows.append(f"| {r['model']} | {row['bits']} | {row['state']} | {row['bits_per_weight']:.3f} | "
                        + " | ".join(f"{row['perplexity'][t]:.2f}" for t in texts) + " |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--bits", type=int, nargs="+", default=[3, 4])
    ap.add_argument("--group", type=int, default=64, help="group size (must divide every input width; default 64)")
    ap.add_argument("--texts", nargs="+", default=["lambada", "boolq"])
    ap.add_argument("--seqlen", type=int, default=1024)
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    results = [run(m, args.bits, args.group, args.texts, args.seqlen, args.windows, log) for m in args.models]
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(markdown(results))


if __name__ == "__main__":
    main()
