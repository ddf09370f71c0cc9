"""The quantizers people use, with and without `superweight recipe`, on the real models.

For each model, engine and scheme: the recipe's engine applies it (quant/run_engine.py),
then ``audit`` compares the output with the original on two texts (LAMBADA and GPL-3,
windows from the start token and mid-text): each finding's value and super activation,
perplexity with its 95% bootstrap interval over windows, bits per weight (the recipe's
count over the decoder's linear weights), and the engine's wall time.

    .venv/bin/python bench/bench_engines.py --models smollm2 qwen2.5-coder-0.5b --out docs/results/engines.json
    .venv/bin/python bench/bench_engines.py --models smollm2 --quick     # one window, a smoke run

Writes the JSON and a Markdown table next to it (``.md``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

# (engine, config fields, gguf type for llama.cpp)
CORE = {("llmcompressor", "W4A16", None), ("llmcompressor", "W3A16", None), ("llama.cpp", None, "Q4_0"),
        ("bitsandbytes", 4, None), ("hqq", 4, None), ("torchao", 4, None)}  # --plan core: one 4-bit scheme each
PLAN = [
    ("llmcompressor", {"bits": 4, "scheme": "W4A16"}, None),
    ("llmcompressor", {"bits": 4, "scheme": "W4A16", "group_size": 32}, None),
    ("llmcompressor", {"bits": 3, "scheme": "W3A16"}, None),
    ("llama.cpp", {"bits": 4}, "Q4_0"),
    ("llama.cpp", {"bits": 4}, "Q4_1"),
    ("llama.cpp", {"bits": 5}, "Q5_0"),
    ("bitsandbytes", {"bits": 4}, None),
    ("bitsandbytes", {"bits": 8}, None),
    ("hqq", {"bits": 4}, None),
    ("hqq", {"bits": 3}, None),
    ("torchao", {"bits": 4}, None),
    ("torchao", {"bits": 4, "group_size": 32}, None),
    ("torchao", {"bits": 3}, None),
]


def label(engine, fields, gtype, group) -> str:
    if engine == "llama.cpp":
        return gtype
    if engine == "bitsandbytes":
        return "nf4 (block 64)" if fields["bits"] == 4 else "LLM.int8 (per row)"
    return f"{fields.get('scheme') or str(fields['bits']) + '-bit'} g{fields.get('group_size') or group}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["smollm2"])
    ap.add_argument("--engines", nargs="+", default=None)
    ap.add_argument("--out", default="bench/out/engines.json")
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--quick", action="store_true", help="one 128-token window per condition and text")
    ap.add_argument("--plan", choices=["all", "core"], default="all", help="core: one 4-bit scheme per engine, and W3A16")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    import superweight as sw
    from superweight.audit import AuditConfig, audit
    from superweight.quant.recipes import RecipeConfig, default_group, linears, recipe
    from superweight.quant.run_engine import applied
    from superweight.verdicts import detection

    window, windows = (128, 1) if args.quick else (args.window, args.windows)
    rows = []
    for name in args.models:
        lm = sw.load(name, stream=False)
        det = detection(lm).result
        findings = [(f.coord, f.grade) for f in det.super_weights + det.strong]
        group = default_group(linears(lm))
        gguf_src = lm.origin.path if lm.origin is not None and str(lm.origin.path).endswith(".gguf") else None
        print(f"{name}: findings {[str(c) for c, _ in findings]}, default group {group}", flush=True)
        for engine, fields, gtype in PLAN:
            if args.engines and engine not in args.engines:
                continue
            key = (engine, fields.get("scheme") or (None if engine == "llama.cpp" else fields["bits"]), gtype)
            if args.plan == "core" and (key not in CORE or fields.get("group_size") or
                                        engine in ("hqq", "torchao") and fields["bits"] != 4):
                continue
            for protect in (False, True):
                r = recipe(lm, findings if protect else [], RecipeConfig(engine=engine, **fields))
                t0 = time.perf_counter()
                q = applied(r, lm.source, gguf_source=gguf_src, gguf_type=gtype or "Q4_0")
                secs = time.perf_counter() - t0
                row = {"model": name, "engine": engine, "scheme": label(engine, fields, gtype, group),
                       "recipe": protect, "bits_per_weight": r.bits["with"], "seconds": round(secs, 1), "texts": {}}
                for text in ("lambada", "gpl3"):
                    a = audit(lm, q, findings, AuditConfig(text=text, window=window, windows=windows))
                    row["texts"][text] = {"perplexity": a.ppl, "interval": a.ppl_interval}
                    if text == "lambada":
                        row["findings"] = [{"coord": str(f.coord), "grade": f.grade, "rel_error": f.rel_error,
                                            "activation_change": f.activation_change, "verdict": f.verdict(),
                                            "block": f.block.kind} for f in a.findings]
                        row["conclusion"] = a.conclusion()[-1]
                rows.append(row)
                v = ", ".join(f"{f['coord']} {f['verdict']} ({100 * f['rel_error']:.2f}%, act "
                              f"{100 * (f['activation_change'] or 0):+.1f}%)" for f in row["findings"])
                ppl = row["texts"]["lambada"]["perplexity"]["quantized"]
                print(f"  {engine:13} {row['scheme']:20} recipe={protect!s:5} {row['bits_per_weight']:.3f} bpw "
                      f"{secs:6.1f} s  ppl bos {ppl['bos']:.2f} mid {ppl['mid']:.2f}  {v}", flush=True)
                del q
                write(Path(args.out), rows, window, windows)  # after each row: a long run keeps what it measured
        del lm
    print(f"written {args.out} and {Path(args.out).with_suffix('.md')}")


def write(out: Path, rows, window, windows) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"window": window, "windows": windows, "rows": rows}, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(rows, window, windows) + "\n")


def markdown(rows, window, windows) -> str:
    def ppl(t, key, cond):
        p, (lo, hi) = t["perplexity"][key][cond], t["interval"][key][cond]
        return f"{p:.2f} [{lo:.2f}-{hi:.2f}]"

    lines = [f"Perplexity: {windows} window(s) of {window} tokens per condition, bos = from the start token, mid = "
             "mid-text; [lo-hi] the 95% bootstrap interval over windows. Findings: value change, super activation "
             "change, the audit's verdict.", "",
             "| model | engine | scheme | recipe | bits/weight | s | findings | LAMBADA bos | LAMBADA mid | GPL-3 bos "
             "| GPL-3 mid |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        f = "; ".join(f"{x['coord']} {x['verdict']} ({100 * x['rel_error']:.1f}%, {100 * (x['activation_change'] or 0):+.1f}%)"
                      for x in r["findings"])
        la, gp = r["texts"]["lambada"], r["texts"]["gpl3"]
        lines.append(f"| {r['model']} | {r['engine']} | {r['scheme']} | {'yes' if r['recipe'] else 'no'} | "
                     f"{r['bits_per_weight']:.3f} | {r['seconds']} | {f} | {ppl(la, 'quantized', 'bos')} | "
                     f"{ppl(la, 'quantized', 'mid')} | {ppl(gp, 'quantized', 'bos')} | {ppl(gp, 'quantized', 'mid')} |")
    orig = {}
    for r in rows:
        orig.setdefault(r["model"], r["texts"])
    lines += ["", "Originals:"]
    for m, t in orig.items():
        lines.append(f"- {m}: LAMBADA bos {ppl(t['lambada'], 'original', 'bos')}, mid {ppl(t['lambada'], 'original', 'mid')}; "
                     f"GPL-3 bos {ppl(t['gpl3'], 'original', 'bos')}, mid {ppl(t['gpl3'], 'original', 'mid')}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
