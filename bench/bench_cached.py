"""A cached verdict against ``superweight --version``, side by side (issue 30, item 7).

Each row is a fresh process (wall clock and the child's peak RSS via os.wait4), the rows
interleaved ``--repeat`` times after one untimed warm-up each (which also proves and caches
the verdict when it is not cached yet); medians. With ``--baseline`` (another checkout's
``src``, e.g. ``git worktree add /tmp/base <rev>``) that checkout's cached ``detect`` too.

    python bench/bench_cached.py [--repeat 15] [--qwen] [--baseline /tmp/base/src]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_detect import run_once  # noqa: E402 - a timed child


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--qwen", action="store_true", help="also Qwen2.5-Coder-0.5B (its first proof takes minutes)")
    ap.add_argument("--baseline", help="a baseline checkout's src folder: its cached detect as a row too")
    args = ap.parse_args()
    exe = shutil.which("superweight") or str(Path(sys.executable).parent / "superweight")
    rows = {"`superweight --version`": ([exe, "--version"], None)}
    for name in ["smollm2"] + (["qwen2.5-coder-0.5b"] if args.qwen else []):
        rows[f"`superweight detect {name}` (cached verdict)"] = ([exe, "detect", name], None)
        if args.baseline:
            rows[f"baseline `detect {name}` (cached verdict)"] = (
                [exe, "detect", name], {**os.environ, "PYTHONPATH": args.baseline})
    for cmd, env in rows.values():
        run_once(cmd, env)  # warm-up (and the proof, when nothing is cached)
    got: dict[str, list] = {k: [] for k in rows}
    for _ in range(args.repeat):
        for k, (cmd, env) in rows.items():
            got[k].append(run_once(cmd, env))
    ref = statistics.median(w for w, _ in got["`superweight --version`"])
    print(f"| command | wall (s), median of {args.repeat} | x `--version` | peak RSS (MiB) |\n|---|---:|---:|---:|")
    for k, runs in got.items():
        wall = statistics.median(w for w, _ in runs)
        print(f"| {k} | {wall:.3f} | {wall / ref:.2f} | {max(r for _, r in runs):.0f} |")


if __name__ == "__main__":
    main()
