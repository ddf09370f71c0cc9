"""Compare detect golden files with an earlier commit's, apart from the controls' staging.

The staged controls (docs/detection.md, "Controls, in stages") leave some control sets
unmeasured and add a ``largest+random`` union; everything else must stay as it was. This
prints, per golden file: the first difference outside the controls (none expected; a
margin is then taken against a union of controls, so its change is shown), and for every control set measured in both, the largest relative change of its
numbers.

    python tools/golden_controls.py [REV]     # default REV: HEAD
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import golden  # noqa: E402


def strip(obj, controls: list, margins: list, path: str = "$"):
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if k == "controls" and isinstance(v, list):
                controls.append((path, v))
                continue
            if k == "control_margin" and isinstance(v, dict):
                margins.append((path, v))
                continue
            if k == "reason" and isinstance(v, str):
                v = v.replace("strongest measured control's", "strongest control's")
            out[k] = strip(v, controls, margins, f"{path}.{k}")
        return out
    if isinstance(obj, list):
        return [strip(v, controls, margins, f"{path}[{i}]") for i, v in enumerate(obj)]
    return obj


def main() -> None:
    rev = sys.argv[1] if len(sys.argv) > 1 else "HEAD"
    root = Path(__file__).resolve().parents[1]
    bad = 0
    for f in sorted((root / "tests" / "golden").glob("detect-*.json")):
        rel = f.relative_to(root)
        old = json.loads(subprocess.run(["git", "show", f"{rev}:{rel}"], cwd=root, capture_output=True, text=True,
                                        check=True).stdout)
        new = json.loads(f.read_text())
        oc, nc, om, nm = [], [], [], []
        d = golden.diff(strip(new, nc, nm), strip(old, oc, om))
        # against a union of controls the margin is a new number: how far it moved
        ratios = [nm_[c] / om_[c] for (_, nm_), (_, om_) in zip(nm, om) for c in nm_ if om_.get(c)]
        worst, measured, skipped = 0.0, 0, 0
        for (pa, a), (pb, b) in zip(nc, oc):
            assert pa == pb, (pa, pb)
            olds = {c["kind"]: c for c in b}
            for c in a:
                if c.get("text") is None:
                    skipped += 1
                    continue
                if c["kind"] not in olds:
                    continue
                measured += 1
                for cond, v in c["text"].items():
                    for k, x in v.items():
                        y = (olds[c["kind"]]["text"] or {}).get(cond, {}).get(k)
                        if y is None:
                            continue
                        if abs(x - y) > 1e-6:
                            worst = max(worst, abs(x - y) / abs(y))
        bad += d is not None
        span = f"margins x{min(ratios):.2f}..x{max(ratios):.2f}" if ratios else "no margins"
        print(f"{f.name}: {'same outside the controls' if d is None else 'DIFFERS at ' + d}; {span}; "
              f"{measured} control sets measured in both (largest relative change {worst:.1e}), "
              f"{skipped} not measured now")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
