"""How tight the proof's KL is: exact KL(intact || zeroed) against the top-K bound that
``probe/realtext.py`` keeps (K = 256), and K = 1,024 to 16,384, on the first four mid-text
windows of 128 tokens that ``detect`` reads (docs/detection.md, Limits).

    python bench/kl_bound.py [qwen2.5-coder-0.5b]
"""
import sys

import torch
import superweight as sw
from superweight.texts import read_text
from superweight.probe.realtext import make_windows, context_of
from superweight.coords import Coord
lm = sw.load(sys.argv[1] if len(sys.argv) > 1 else "qwen2.5-coder-0.5b")
win = make_windows(lm.tokenizer, read_text("lambada"), 128, 4, "cpu", "lambada", context_of(lm.model), lm.model.get_input_embeddings().num_embeddings)
ids = win.ids["mid"]
with torch.no_grad():
    base = torch.log_softmax(lm.model(input_ids=ids, use_cache=False).logits.float(), -1)
    for e in (["2:62:1980"], ["3:62:2247", "3:62:3016"], ["5:62:956"]):
        with sw.zeroed(lm.adapter, [Coord.parse(x) for x in e]):
            lp = torch.log_softmax(lm.model(input_ids=ids, use_cache=False).logits.float(), -1)
        p = base.exp()
        exact = float((p * (base - lp)).sum(-1).mean())
        row = [f"exact {exact:.4f}"]
        for K in (256, 1024, 4096, 16384):
            tp, top = base.topk(K, -1)
            q = lp.gather(-1, top).exp(); pp = tp.exp()
            rest = (1 - pp.sum(-1)).clamp_min(0); qr = (1 - q.sum(-1)).clamp_min(1e-12)
            kl = (pp * (tp - q.log())).sum(-1) + rest * (rest.clamp_min(1e-12).log() - qr.log())
            row.append(f"K{K} {float(kl.mean()):.4f} (tail {float(rest.mean()):.3f})")
        print(e, *row, flush=True)
