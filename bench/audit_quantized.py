"""Audit quantized copies of the real models (docs/results/audit.md).

    python bench/audit_quantized.py [--models smollm2 qwen2.5-coder-0.5b] [--write docs/results/audit.md]

For each model: detect its findings (super and strong weights), then write and audit
- our RTN output (``save_quantized``) at 3 and 4 bits in groups of 128, plain and with our
  hold-out (the findings plus the weight columns of massive input channels);
- re-quantizations of the GGUF's decoder weights with the ``gguf`` package's own
  quantizers (Q4_0, Q5_0, Q8_0: the types it can write), every other tensor copied.
Each audit compares the original (dequantized) with the copy at the findings, and measures
perplexity on the LAMBADA passages, bos and mid, with the findings put back. Minutes per
model on 2 cores; nothing is written into the package or the tests.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import superweight as sw
from superweight.audit import AuditConfig, audit
from superweight.targets import ACCEPTS, which_weights
from superweight.quant.export import save_quantized
from superweight.quant.rtn import QuantConfig

GGUF_TYPES = ("Q4_0", "Q5_0", "Q8_0")


def requantize(src_path: Path, dest: Path, qname: str) -> None:
    """The GGUF with every decoder 2-D weight re-quantized to ``qname`` by gguf's quantizer."""
    import gguf

    from superweight.models import gguf_file

    r = gguf.GGUFReader(str(src_path))
    qt = gguf.GGMLQuantizationType[qname]
    rep = {t.name: (gguf.quantize(gguf_file.values(t), qt), qt) for t in r.tensors
           if t.name.startswith("blk.") and len(t.data.shape) == 2}
    gguf_file.write_copy(r, dest, rep, {})


def variants(model: str, lm, gguf_lm, findings, work: Path):
    coords = [c for c, _ in findings]
    for bits in (3, 4):
        for held in (False, True):
            out = work / f"rtn{bits}{'h' if held else ''}"
            cfg = QuantConfig(bits, "group", 128, act_ratio=10.0 if held else 0.0)
            save_quantized(lm, cfg, out, keep=coords if held else ())
            yield (f"RTN {bits}-bit groups of 128" + (", our hold-out" if held else ", plain"), out)
    for q in GGUF_TYPES:
        out = work / f"{q}.gguf"
        requantize(gguf_lm.adapter.streamer.ckpt.dir, out, q)
        yield (f"gguf {q} (decoder weights re-quantized by gguf)", out)


def run(model: str, cfg: AuditConfig) -> dict:
    t0 = time.time()
    lm = sw.load(model)  # the dequantized original, streamed from its converted cache
    gguf_lm = sw.load(model, stream=True)  # the GGUF itself, to re-quantize
    result = sw.detect(lm)
    t = which_weights(lm, None, ACCEPTS["audit"], result=result)
    findings = list(zip(t.coords, t.grades))
    print(f"{model}: findings {[f'{c} {g}' for c, g in findings]} ({time.time() - t0:.0f} s)", file=sys.stderr)
    rows = []
    with tempfile.TemporaryDirectory(dir=Path.home()) as tmp:
        for label, path in variants(model, lm, gguf_lm, findings, Path(tmp)):
            t1 = time.time()
            q = sw.load(str(path), stream=True)
            a = audit(lm, q, findings, cfg)
            rows.append({"variant": label, **a.to_dict()})
            print(f"  {label}: ppl {a.ppl['quantized']} restored {a.ppl['restored']} ({time.time() - t1:.0f} s)",
                  file=sys.stderr)
    return {"model": lm.name, "findings": [[str(c), g] for c, g in findings], "rows": rows,
            "seconds": round(time.time() - t0)}


def pct(x) -> str:
    return "-" if x is None else f"{100 * x:.2g}%"


def markdown(res: dict) -> str:
    lines = [f"### {res['model']}", "",
             "Findings: " + ", ".join(f"`{c}` ({g})" for c, g in res["findings"]) + ".", "",
             "| copy | weight | original | copy's value | rel. error | block | rest of block | median block "
             "| super act. orig / copy / restored |", "|---|---|---:|---:|---:|---|---:|---:|---|"]
    for r in res["rows"]:
        for f in r["findings"]:
            p = f["peak"]
            lines.append(f"| {r['variant']} | `{f['coord']}` | {f['original']:.4g} | {f['quantized']:.4g} | "
                         f"{pct(f['rel_error'])} | {f['block']['kind']} | {pct(f['block_error'])} | "
                         f"{pct(f['typical_block_error'])} | {p['original']:.4g} / {p['quantized']:.4g} / "
                         f"{p['restored']:.4g} |")
    lines += ["", "| copy | ppl bos: original / copy / findings restored | recovered | "
                  "ppl mid: original / copy / findings restored | recovered |", "|---|---|---:|---|---:|"]
    for r in res["rows"]:
        pp, rec = r["perplexity"], r["recovered"]
        cells = [f"{pp['original'][c]:.4g} / {pp['quantized'][c]:.4g} / {pp['restored'][c]:.4g} | {pct(rec[c])}"
                 for c in ("bos", "mid")]
        lines.append(f"| {r['variant']} | " + " | ".join(cells) + " |")
    lines.append(f"\n({res['seconds']} s on 2 cores)\n")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["smollm2", "qwen2.5-coder-0.5b"])
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--windows", type=int, default=2)
    ap.add_argument("--json", help="write the raw results here")
    ap.add_argument("--write", help="write the markdown tables here")
    args = ap.parse_args()
    cfg = AuditConfig(window=args.window, windows=args.windows)
    results = [run(m, cfg) for m in args.models]
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, allow_nan=False) + "\n")
    text = "\n".join(markdown(r) for r in results)
    if args.write:
        Path(args.write).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
