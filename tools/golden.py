"""Golden files: show what the last test run got that differs from them, and accept it.

    python tools/golden.py              # every difference of each candidate in tests/golden/.new/
    python tools/golden.py --accept     # write the candidates over the goldens, printing what changed
    python tools/golden.py --accept detect-tiny-llama   # only these

The candidates come from a test run whose golden check failed (tests/golden.py); a test run
itself never writes a golden file.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import golden  # noqa: E402


def main(argv: list[str]) -> int:
    accept = "--accept" in argv
    names = [a for a in argv if not a.startswith("--")]
    found = sorted(golden.NEW.glob("*.json")) if golden.NEW.is_dir() else []
    if names:
        found = [f for f in found if f.stem in names]
    if not found:
        print("no candidates: every golden check of the last run passed (or none ran)")
        return 0
    for f in found:
        got = json.loads(f.read_text())
        dest = golden.DIR / f.name
        want = json.loads(dest.read_text()) if dest.is_file() else None
        lines = ["new golden file"] if want is None else list(golden.diffs(got, want))
        print(f"{f.stem}: {len(lines)} difference(s)")
        for line in lines[:50]:
            print(f"  {line}")
        if len(lines) > 50:
            print(f"  ... and {len(lines) - 50} more")
        if accept:
            dest.write_text(f.read_text())
            f.unlink()
            print(f"  accepted: {dest.relative_to(Path.cwd()) if dest.is_relative_to(Path.cwd()) else dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
