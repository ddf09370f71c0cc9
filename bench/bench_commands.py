"""Commands of two source trees side by side: wall time and peak RSS, one run each, alternating.

    python bench/bench_commands.py --base /tmp/base/src [--write docs/benchmarks.md]

Each command runs in a fresh process, ``python -m superweight.cli ...`` with PYTHONPATH set
to the tree's ``src`` (ahead of the editable install), under ``/usr/bin/time -v``; one
untimed warm-up of each first (page cache, the GGUF conversion cache, the verdict cache).
Outputs go to a temporary folder, removed after. The commands are those the change touched
(issues 23 and 24): the verdict cache's second command (the CLI's start and dispatch), a
full detection, a quantize (the outputs transaction, its locks and their record), an edit
of the GGUF file, an audit of a re-quantized copy and of the edited GGUF (read from the file,
as an audit reads a quantized copy), an edit of the second real model's GGUF, a report, a short ablation with lm-eval's tasks, and
the second real model's detection (``--only`` picks commands by their label).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def commands(tmp: Path) -> list[tuple[str, list[str]]]:
    q = str(tmp / "q")
    return [
        ("detect (verdict cached)", ["detect", "--json", os.devnull]),
        ("detect --recompute", ["detect", "--recompute", "--json", os.devnull]),
        ("quantize --bits 4 (super weights from the cache)", ["quantize", "--bits", "4", "--out", q, "--overwrite"]),
        ("edit --zero 11:507:1229 (GGUF)", ["edit", "--zero", "11:507:1229", "--out", str(tmp / "e"), "--overwrite"]),
        ("audit default vs its 4-bit copy (--coords)", ["audit", "smollm2", q, "--coords", "11:507:1229"]),
        ("audit default vs its edited GGUF (read from the file)",
         ["audit", "smollm2", str(tmp / "e" / "SmolLM2-135M-Instruct.Q4_1.gguf"), "--coords", "11:507:1229"]),
        ("edit qwen2.5-coder-0.5b --zero 5:62:956 (GGUF)",
         ["edit", "qwen2.5-coder-0.5b", "--zero", "5:62:956", "--out", str(tmp / "eq"), "--overwrite"]),
        ("report (verdict cached)", ["report", "--out", str(tmp / "r.html")]),
        ("ablate --tasks piqa lambada_openai --limit 8 (lm-eval, in memory)",
         ["ablate", "--coords", "11:507:1229", "--tasks", "piqa", "lambada_openai", "--limit", "8", "--texts", "gpl3",
          "--seqlen", "512", "--max-windows", "1", "--stopword-prompts", "8", "--out", str(tmp / "a")]),
        ("detect qwen2.5-coder-0.5b --recompute", ["detect", "qwen2.5-coder-0.5b", "--recompute", "--json", os.devnull]),
    ]


def timed(src: str, argv: list[str]) -> tuple[float, float]:
    env = {**os.environ, "PYTHONPATH": src}
    proc = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-m", "superweight.cli", *argv], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{src}: {' '.join(argv)} failed:\n{proc.stderr[-2000:]}")
    wall = re.search(r"Elapsed \(wall clock\) time .*: (?:(\d+):)?(\d+):([\d.]+)", proc.stderr)
    h, m, s = (float(x) if x else 0.0 for x in wall.groups())
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    return h * 3600 + m * 60 + s, rss / 1024


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True, help="the baseline tree's src folder")
    ap.add_argument("--write", help="append the table to this markdown file")
    ap.add_argument("--only", nargs="+", metavar="TEXT", help="only the commands whose label holds one of these")
    args = ap.parse_args()
    trees = {"baseline": args.base, "now": str(HERE / "src")}
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for label, argv in commands(tmp):
            if args.only and not any(t in label for t in args.only):
                continue
            # warm-up: caches filled, outputs made for the commands after; a command that
            # recomputes shares every cache between the trees, so one warm-up does
            for src in list(trees.values())[-1:] if "--recompute" in argv else trees.values():
                timed(src, argv)
            got = {name: timed(src, argv) for name, src in trees.items()}
            (bw, br), (nw, nr) = got["baseline"], got["now"]
            rows.append(f"| `{label}` | {bw:.1f} | {nw:.1f} | {nw / bw:.2f}x | {br:.0f} | {nr:.0f} |")
            print(rows[-1], flush=True)
        shutil.rmtree(tmp, ignore_errors=True)
    table = "\n".join(["| command | wall s, baseline | wall s, now | now / baseline | peak RSS MiB, baseline | "
                       "peak RSS MiB, now |", "|---|---:|---:|---:|---:|---:|", *rows])
    if args.write:
        with open(args.write, "a") as f:
            f.write("\n" + table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
