"""Per-window effects of zeroing a model's examined weights, exact KL, on windows of 128
and 512 tokens, and the 512-token windows' KL by quarter of positions: the measurements
behind the grades that changed on 2026-12-04 (docs/detection.md).

    python bench/window_effects.py [MODEL] [TEXT]      # MODEL: smollm2 (default) or qwen2.5-coder-0.5b
"""
import json
import math
import sys

import torch

import superweight as sw
from superweight.texts import read_text
from superweight.probe.realtext import make_windows, context_of
from superweight.coords import Coord
torch.set_num_threads(2)
model = sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] != "smollm2" else None
text = sys.argv[2] if len(sys.argv) > 2 else "lambada"
lm = sw.load(model) if model else sw.load()
C = lambda s: Coord.parse(s)
edits = {
 None: [["11:507:1229"], ["11:507:1487"], ["2:507:90"], ["9:507:200"], ["28:507:678"], ["2:507:1000"]],
 "qwen2.5-coder-0.5b": [["5:62:956"], ["3:62:2247", "3:62:3016"], ["2:62:1980"], ["21:62:567"], ["5:100:100"]],
}[model]
out = {}
for W in (128, 512):
    win = make_windows(lm.tokenizer, read_text(text), W, 16 if W == 128 else 6, "cpu", text, context_of(lm.model), lm.model.get_input_embeddings().num_embeddings)
    res = {}
    with torch.no_grad():
        for cond in ("bos", "mid"):
            ids = win.ids[cond]
            base = torch.log_softmax(lm.model(input_ids=ids, use_cache=False).logits.float(), -1)
            tgt = ids[:, 1:]
            bnll = -base[:, :-1].gather(-1, tgt[..., None])[..., 0].mean(1)
            for e in edits:
                with sw.zeroed(lm.adapter, [C(x) for x in e]):
                    lp = torch.log_softmax(lm.model(input_ids=ids, use_cache=False).logits.float(), -1)
                nll = -lp[:, :-1].gather(-1, tgt[..., None])[..., 0].mean(1)
                klp = (base.exp() * (base - lp)).sum(-1)[:, :-1]
                kl = klp.mean(1)
                if W == 512:
                    print("  pos buckets", "+".join(e), cond, [round(float(klp[:, a:a+128].mean()), 4) for a in range(0, 511, 128)], flush=True)
                res.setdefault("+".join(e), {})[cond] = {"dnll": (nll - bnll).tolist(), "kl": kl.tolist()}
    out[W] = res
    for e, r in res.items():
        for cond, v in r.items():
            k = v["kl"]; d = v["dnll"]
            print(W, e, cond, "kl mean %.4f min %.4f max %.4f" % (sum(k)/len(k), min(k), max(k)),
                  "ppl x%.3f [%.3f-%.3f]" % (math.exp(sum(d)/len(d)), math.exp(min(d)), math.exp(max(d))), flush=True)
json.dump(out, open(f"window-effects-{model or 'smol'}-{text}.json", "w"))
