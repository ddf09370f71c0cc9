"""Golden outputs: a refactor must not change what a command writes.

``check(name, obj)`` compares ``obj`` (a JSON payload) with ``tests/golden/NAME.json``:
strings, integers, booleans, keys and list lengths exactly; floats to a relative 1e-3 or
1e-6 absolute. float32 sums differ in the last bits between machines and library builds:
on 2026-11-30 a fresh machine gave Qwen2.5-Coder's KLs up to 1.7e-4 (relative) away from
the golden file written two days earlier, with the code of that day too; a control's KL
near zero moved by 1e-7. Both are far below anything a grade depends on (the 1e-3 floor,
the 10x margins), and a behaviour change moves numbers by much more. Keys that change from
run to run by nature (timings, the tool's version) are dropped before both are compared.

A test run never writes a golden file. When an output differs (or has no golden yet), the
test fails and leaves what it got in ``tests/golden/.new/NAME.json`` (ignored by git);
``python tools/golden.py`` prints every difference, and ``python tools/golden.py --accept``
writes the candidates over the goldens, printing what changed. Accept only a change you
meant, and commit the files with the code they came from.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

DIR = Path(__file__).parent / "golden"
NEW = DIR / ".new"
VOLATILE = {"seconds", "tool"}


def normalize(obj):
    if isinstance(obj, dict):
        return {k: normalize(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, (list, tuple)):
        return [normalize(v) for v in obj]
    return obj


def diffs(a, b, path: str = "$"):
    """Every place where ``a`` (got) and ``b`` (golden) differ, as lines."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k not in b:
                yield f"{path}.{k}: new key, {json.dumps(a[k])[:120]}"
            elif k not in a:
                yield f"{path}.{k}: key gone (golden {json.dumps(b[k])[:120]})"
            else:
                yield from diffs(a[k], b[k], f"{path}.{k}")
        return
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            yield f"{path}: {len(a)} items, golden has {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            yield from diffs(x, y, f"{path}[{i}]")
        return
    if isinstance(a, float) or isinstance(b, float):
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b))
        if not numbers or not math.isclose(a, b, rel_tol=1e-3, abs_tol=1e-6):
            yield f"{path}: {a!r} != golden {b!r}"
        return
    if not (a == b and type(a) is type(b)):
        yield f"{path}: {a!r} != golden {b!r}"


def diff(a, b, path: str = "$") -> str | None:
    """Where ``a`` and ``b`` first differ, or None."""
    return next(diffs(a, b, path), None)


def check(name: str, obj) -> None:
    got = normalize(json.loads(json.dumps(obj)))
    f = DIR / f"{name}.json"
    want = json.loads(f.read_text()) if f.is_file() else None
    d = "no golden file yet" if want is None else diff(got, want)
    if d is None:
        return
    NEW.mkdir(exist_ok=True)
    (NEW / f"{name}.json").write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    raise AssertionError(f"{name}: output changed at {d} (what it got: tests/golden/.new/{name}.json; "
                         "python tools/golden.py shows every difference)")
