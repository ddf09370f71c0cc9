"""One batched pass answers like separate passes with the weights really zeroed."""
from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch
from tiny import plant, tiny_model

import superweight as sw
from superweight.probe import passes
from superweight.probe import tokens
from superweight.probe.passes import real_log_probs
from superweight.probe.prompts import PROBE_SENTENCES
from superweight.probe.hooks import summarize, watch
from superweight.probe.passes import Group, stack


def probe_batch(lm):
    """The probe sentences as the proof encodes them: a right-padded batch (ids, mask)."""
    return stack(tokens.sentences(lm.tokenizer, PROBE_SENTENCES))


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
    ids, mask = probe_batch(lm)
    prompts, pmask = stack(tokens.prompts(lm.tokenizer, ("Apple Inc. is big.", "Hi")))
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


def test_token_budget_splits_passes_without_changing_answers(monkeypatch):
    lm = tiny_model("llama")
    ids, mask = probe_batch(lm)
    groups = [Group(ids, mask, zero=(sw.Coord(i % 4, i, i),)) for i in range(5)]
    calls = []
    real = passes._batched
    monkeypatch.setattr(passes, "_batched", lambda lm, gs, reduce=None: (calls.append(len(gs)), real(lm, gs, reduce))[1])
    one = passes.run(lm, groups, reduce=lambda lp: float(lp.sum()))
    assert calls == [5]
    monkeypatch.setattr(passes, "PASS_TOKENS", ids.shape[1] * ids.shape[0] * 2)  # two groups' tokens
    calls.clear()
    split = passes.run(lm, groups, reduce=lambda lp: float(lp.sum()))
    assert calls == [2, 2, 1]
    assert [x.value for x in split] == pytest.approx([x.value for x in one], rel=1e-5)


class _Sum(passes.Chunked):
    """Sums log-probs chunk by chunk, and says which positions it saw."""

    def start(self):
        self.total, self.seen = 0.0, []
        return self

    def add(self, lp, at):
        self.total += float(lp.double().sum())
        self.seen += list(range(at, at + lp.shape[0]))

    def result(self):
        return self.total, self.seen


@pytest.mark.parametrize("model_type", ["llama", "gemma2", "gpt2", "falcon", "qwen2_moe"])
def test_the_head_runs_a_chunk_at_a_time_with_the_same_answers(model_type, monkeypatch):
    """The head apart from the body (its own forward, soft-capping included), a few
    positions at a time: log-probs as a plain forward gives them, whole or chunked."""
    lm = tiny_model(model_type)
    ids, mask = probe_batch(lm)
    monkeypatch.setattr(passes, "HEAD_CHUNK", 5)
    assert passes._head_apart(lm)
    whole, summed = passes.run(lm, [Group(ids, mask), Group(ids, mask)], per_group=[None, _Sum()])
    ref = log_probs(lm.model, ids, mask)
    torch.testing.assert_close(whole.log_probs, ref, atol=1e-4, rtol=1e-4)
    total, seen = summed.value
    assert seen == list(range(ref.shape[0]))  # every real position once, in order
    assert total == pytest.approx(float(ref.double().sum()), rel=1e-5)


@pytest.mark.parametrize("model_type", ["llama", "gpt2", "opt", "falcon", "gemma2", "qwen2_moe"])
def test_edited_rows_resume_from_the_intact_layer_outputs(model_type):
    """A group whose edits sit at layer L starts there from the intact outputs a ``keep``
    group recorded: the layers before L do not run, and the answers are those of a pass
    from the embeddings."""
    lm = tiny_model(model_type)
    expert = 1 if lm.adapter.has_experts else None
    late = sw.Coord(lm.adapter.num_layers - 1, 5, 7, expert)
    plant(lm, late, 400.0)
    ids, mask = probe_batch(lm)
    (intact,) = passes.run(lm, [Group(ids, mask, keep=True)])
    assert intact.resume is not None and len(intact.resume.outputs) == lm.adapter.num_layers
    ran = []
    handles = [layer.register_forward_pre_hook(lambda m, a, i=i: ran.append(i)) for i, layer in enumerate(lm.adapter.layers)]
    try:
        resumed = Group(ids, mask, zero=(late,), resume=intact.resume)
        assert resumed.start == late.layer
        (fast,) = passes.run(lm, [resumed])
        assert ran == [late.layer]  # only the last layer ran
        ran.clear()
        (slow,) = passes.run(lm, [Group(ids, mask, zero=(late,))])
        assert ran == list(range(lm.adapter.num_layers))
    finally:
        for h in handles:
            h.remove()
    torch.testing.assert_close(fast.log_probs, slow.log_probs, atol=1e-4, rtol=1e-4)
    assert (fast.log_probs - intact.log_probs).abs().max() > 0.1  # the edit did something
