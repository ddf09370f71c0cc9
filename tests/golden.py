"""Golden outputs: a refactor must not change what a command writes.

``check(name, obj)`` compares ``obj`` (a JSON payload) with ``tests/golden/NAME.json``:
strings, integers, booleans, keys and list lengths exactly; floats to a relative 1e-3 or
1e-6 absolute. float32 sums differ in the last bits between machines and library builds:
on 2026-11-30 a fresh machine gave Qwen2.5-Coder's KLs up to 1.7e-4 (relative) away from
the golden file written two days earlier, with the code of that day too; a control's KL
near zero moved by 1e-7. Both are far below anything a grade depends on (the 1e-3 floor,
the 10x margins), and a behaviour change moves numbers by much more. Keys that change from run to run by
nature (timings, the tool's version) are dropped before both are compared.
``SUPERWEIGHT_GOLDEN=write`` writes the files instead (do that only before a refactor,
and commit them with the code they came from).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

DIR = Path(__file__).parent / "golden"
VOLATILE = {"seconds", "tool"}


def normalize(obj):
    if isinstance(obj, dict):
        return {k: normalize(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, (list, tuple)):
        return [normalize(v) for v in obj]
    return obj


def diff(a, b, path: str = "$") -> str | None:
    """Where ``a`` and ``b`` first differ, or None."""
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return f"{path}: keys {sorted(set(a) ^ set(b))} differ"
        for k in a:
            d = diff(a[k], b[k], f"{path}.{k}")
            if d:
                return d
        return None
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{path}: {len(a)} items, golden has {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            d = diff(x, y, f"{path}[{i}]")
            if d:
                return d
        return None
    if isinstance(a, float) or isinstance(b, float):
        if isinstance(a, bool) or isinstance(b, bool) or not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
            return f"{path}: {a!r} != {b!r}"
        if math.isclose(a, b, rel_tol=1e-3, abs_tol=1e-6):
            return None
        return f"{path}: {a!r} != {b!r}"
    return None if a == b and type(a) is type(b) else f"{path}: {a!r} != golden {b!r}"


def check(name: str, obj) -> None:
    got = normalize(json.loads(json.dumps(obj)))
    f = DIR / f"{name}.json"
    if os.environ.get("SUPERWEIGHT_GOLDEN") == "write":
        DIR.mkdir(exist_ok=True)
        f.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
        return
    want = json.loads(f.read_text())
    d = diff(got, want)
    assert d is None, f"{name}: output changed at {d}"
