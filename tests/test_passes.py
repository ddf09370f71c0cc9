"""One batched pass answers like separate passes with the weights really zeroed."""
from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch
from tiny import plant, tiny_model

import superweight as sw
from superweight.probe import passes
from superweight.probe.measures import Probe, real_log_probs
from superweight.probe.hooks import summarize, watch
from superweight.probe.passes import Group, stack


def log_probs(model, ids, mask):
    """The reference log-probs: a plain forward pass."""
    return real_log_probs(model(input_ids=ids, attention_mask=mask.long(), use_cache=False).logits, mask)


@contextmanager
def capture(adapter):
    """The reference scan: every site's largest spike over the passes inside the block, one
    prompt per pass, keyed by (layer, expert)."""
    records = {}

    def keep(site, x, y, tokens):
        rec = summarize(site, x, y, tokens)
        key = (rec.layer, rec.expert)
        if key not in records or rec.max_output > records[key].max_output:
            records[key] = rec

    with watch(adapter, keep):
        yield records


@torch.no_grad()
def _really_zeroed(lm, g: Group) -> passes.Answer:
    """The reference: a group on its own, its weights really zeroed, one prompt at a time."""
    ans = passes.Answer()
    with sw.zeroed(lm.adapter, list(g.zero)):
        if not g.scan:
            ans.log_probs = log_probs(lm.model, g.ids, g.mask)
            return ans
        for b in range(g.ids.shape[0]):
            ids = g.ids[b : b + 1, : int(g.mask[b].sum())]
            want = g.residual and b == 0
            with capture(lm.adapter) as rec:
                o = lm.model(input_ids=ids, use_cache=False, output_hidden_states=want)
            if want:
                ans.residual = passes._residual([h[0] for h in o.hidden_states], slice(None))
            for r in rec.values():
                passes._keep(ans, r, b)
    return ans


@pytest.mark.parametrize("model_type,expert", [
    ("llama", None), ("gpt2", None), ("opt", None),
    ("mixtral", 2), ("qwen2_moe", 1),  # fused experts: each expert sees only its routed rows
])
def test_batched_groups_equal_separate_passes(model_type, expert):
    lm = tiny_model(model_type)
    a, b = sw.Coord(1, 5, 7, expert), sw.Coord(2, 9, 3, expert)
    plant(lm, a, 400.0 if expert is None else 2000.0)
    ids, mask = Probe.encode(lm.model, lm.tokenizer)
    prompts, pmask = stack([lm.tokenizer(p, return_tensors="pt")["input_ids"] for p in ("Apple Inc. is big.", "Hi")])
    groups = [
        Group(ids, mask),
        Group(ids, mask, zero=(a,)),
        Group(ids, mask, zero=(a, b)),
        Group(prompts, pmask, scan=True, residual=True),
        Group(prompts, pmask, zero=(a,), scan=True),
    ]
    batched = passes.run(lm, groups)
    alone = [_really_zeroed(lm, g) for g in groups]
    for x, y in zip(batched[:3], alone[:3]):
        torch.testing.assert_close(x.log_probs, y.log_probs, atol=2e-3, rtol=1e-3)  # subtracting vs zeroing: rounding only
    assert (batched[0].log_probs - batched[1].log_probs).abs().max() > 0.1  # the ablation did something
    assert len(batched) == len(alone) == len(groups)
    for x, y in zip(batched[3:], alone[3:]):
        assert x.records  # every site recorded: the comparison below is not over nothing
        assert x.records.keys() == y.records.keys()
        for key in x.records:
            rx, ry = x.records[key], y.records[key]
            assert (rx.output_channel, rx.col, rx.output_token, x.which[key]) == (ry.output_channel, ry.col, ry.output_token, y.which[key])
            assert rx.max_output == pytest.approx(ry.max_output, rel=1e-4)
    # zeroed for the scan: layer 1's spike is no longer the planted weight
    site = (1, expert)
    assert (batched[3].records[site].output_channel, batched[3].records[site].col) == (5, 7)
    assert (batched[4].records[site].output_channel, batched[4].records[site].col) != (5, 7)
    assert len(batched[3].residual) == len(alone[3].residual) == lm.adapter.num_layers
    for (mx, tok), (my, toy) in zip(batched[3].residual, alone[3].residual):
        torch.testing.assert_close(mx, my, atol=1e-3, rtol=1e-4)


def test_logits_budget_splits_passes_without_changing_answers(monkeypatch):
    lm = tiny_model("llama")
    ids, mask = Probe.encode(lm.model, lm.tokenizer)
    groups = [Group(ids, mask, zero=(sw.Coord(i % 4, i, i),)) for i in range(5)]
    calls = []
    real = passes._batched
    monkeypatch.setattr(passes, "_batched", lambda lm, gs, reduce=None: (calls.append(len(gs)), real(lm, gs, reduce))[1])
    one = passes.run(lm, groups, reduce=lambda lp: float(lp.sum()))
    assert calls == [5]
    monkeypatch.setattr(passes, "LOGITS_BUDGET", ids.numel() * 258 * 4 * 2)  # two groups' logits
    calls.clear()
    split = passes.run(lm, groups, reduce=lambda lp: float(lp.sum()))
    assert calls == [2, 2, 1]
    assert [x.value for x in split] == pytest.approx([x.value for x in one], rel=1e-5)
