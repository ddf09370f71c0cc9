"""Simulated W8A8 with and without the super activation held out, with a noise estimate.

The paper's activation experiment (quant/w8a8.py) on each model, per window: the mean NLL of
every window in five states (full precision, W8A8 naive, W8A8 with the super activation
held out, and the activations alone, A8, both ways), on real prose, in both ways a window
can start (``bos``: the model's start token then a passage; ``mid``: mid-passage; see
probe/realtext.py). The share of the gap closed is ``(naive - held) / (naive - fp)`` on the
log-perplexity over all windows; its noise is the spread of that share over bootstrap
resamples of the windows (2,000, the same resample for every state), reported as the 5th
to 95th percentile. A share whose interval holds 0 is no effect.

    python bench/w8a8_noise.py --out docs/results/w8a8-noise.json
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

import superweight as sw
from superweight.texts import read_text
from superweight.probe.realtext import make_windows
from superweight.quant.w8a8 import w8a8

# the weights whose super activation is held out: SmolLM2's super weight; Qwen2.5-Coder has
# none, so its three strong weights, which write its massive channel 62 (docs/detection.md)
MODELS = {"smollm2": ["11:507:1229"], "qwen2.5-coder-0.5b": ["3:62:2247", "3:62:3016", "5:62:956"]}
STATES = {"full precision": None, "W8A8 naive": (True, False), "W8A8 SA hold-out": (True, True),
          "A8 naive": (False, False), "A8 SA hold-out": (False, True)}


@torch.no_grad()
def window_nll(lm, ids: torch.Tensor, mask: torch.Tensor) -> list[float]:
    """Mean next-token NLL of each window (rows of ``ids``), one window at a time."""
    out = []
    for i in range(ids.shape[0]):
        x, m = ids[i: i + 1], mask[i: i + 1]
        lp = torch.log_softmax(lm.model(input_ids=x, attention_mask=m, use_cache=False).logits.float(), -1)
        ok = (m[:, 1:] & m[:, :-1]).bool()
        nll = -lp[:, :-1].gather(-1, x[:, 1:, None])[..., 0]
        out.append(float(nll[ok].mean()))
    return out


def gap_closed(fp, naive, held, idx) -> float:
    f, n, h = (sum(v[i] for i in idx) / len(idx) for v in (fp, naive, held))
    return (n - h) / (n - f) if n != f else 0.0


def summarize(nll: dict[str, list[float]], boot: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    n = len(nll["full precision"])
    samples = [torch.randint(0, n, (n,), generator=g).tolist() for _ in range(boot)]
    out = {"windows": n, "perplexity": {k: math.exp(sum(v) / n) for k, v in nll.items()}}
    for prefix in ("W8A8", "A8"):
        fp, naive, held = nll["full precision"], nll[f"{prefix} naive"], nll[f"{prefix} SA hold-out"]
        share = gap_closed(fp, naive, held, range(n))
        spread = sorted(gap_closed(fp, naive, held, s) for s in samples)
        out[f"{prefix} gap closed"] = {"share": share, "p05": spread[int(0.05 * boot)], "p95": spread[int(0.95 * boot) - 1],
                                       "gap": math.exp(sum(naive) / n) / math.exp(sum(fp) / n) - 1}
    return out


def run(model: str, texts: list[str], window: int, count: int, boot: int, log) -> dict:
    lm = sw.load(model, stream=False)
    coords = [sw.Coord.parse(c) for c in MODELS[model]]
    result = {"model": model, "holdout": MODELS[model], "window": window, "results": {}}
    for src in texts:
        w = make_windows(lm.tokenizer, read_text(src), window, count, lm.device, src,
                         vocab_size=lm.model.config.vocab_size)
        for cond in ("bos", "mid"):
            nll = {}
            for state, how in STATES.items():
                t0 = time.perf_counter()
                if how is None:
                    nll[state] = window_nll(lm, w.ids[cond], w.mask[cond])
                else:
                    with w8a8(lm, holdout=coords if how[1] else (), weights=how[0]):
                        nll[state] = window_nll(lm, w.ids[cond], w.mask[cond])
                log(f"{model} {src} {cond} {state}: {time.perf_counter() - t0:.0f} s")
            result["results"][f"{src}/{cond}"] = {**summarize(nll, boot), "nll": nll}
    return result


def markdown(results: list[dict]) -> str:
    rows = ["| model | text / start | windows | fp | W8A8 naive | W8A8 held | gap closed (5-95%) | A8 naive | A8 held | "
            "A8 gap closed (5-95%) |", "|---|---|---:|---:|---:|---:|---|---:|---:|---|"]
    for r in results:
        for key, v in r["results"].items():
            p, w, a = v["perplexity"], v["W8A8 gap closed"], v["A8 gap closed"]
            rows.append(f"| {r['model']} | {key} | {v['windows']} | {p['full precision']:.3f} | {p['W8A8 naive']:.3f} | "
                        f"{p['W8A8 SA hold-out']:.3f} | {100 * w['share']:.0f}% ({100 * w['p05']:.0f} to {100 * w['p95']:.0f}) | "
                        f"{p['A8 naive']:.3f} | {p['A8 SA hold-out']:.3f} | "
                        f"{100 * a['share']:.0f}% ({100 * a['p05']:.0f} to {100 * a['p95']:.0f}) |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--texts", nargs="+", default=["lambada", "boolq"])
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--windows", type=int, default=8, help="windows per condition and text (default 8)")
    ap.add_argument("--boot", type=int, default=2000)
    ap.add_argument("--out", required=True, help="JSON results; the table goes to stdout")
    args = ap.parse_args()
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    results = [run(m, args.texts, args.window, args.windows, args.boot, log) for m in args.models]
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(markdown(results))


if __name__ == "__main__":
    main()
