"""probe/hooks.py: every down projection is seen, with its real X and Y, and a spike is
traced to the weight that explains it."""
from __future__ import annotations

import pytest
import torch
from tiny import plant, tiny_model

import superweight as sw
from superweight.probe.hooks import summarize, watch


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])  # nn.Linear, and GPT-2's transposed Conv1D
def test_watch_sees_every_down_projection_with_its_inputs_and_outputs(model_type):
    lm = tiny_model(model_type)
    seen = []

    def fn(site, x, y, tokens):
        seen.append(site.layer)
        w = site.weight()  # [out, in] whatever the storage
        bias = getattr(site.module, "bias", None)
        torch.testing.assert_close(y, x @ w.T + (0 if bias is None else bias), rtol=1e-4, atol=1e-4)
        assert tokens.tolist() == list(range(x.shape[0]))

    ids = torch.tensor([[256, 72, 105, 33]])
    with torch.no_grad(), watch(lm.adapter, fn):
        lm.model(input_ids=ids)
    assert seen == list(range(lm.adapter.num_layers))


def test_a_changed_output_goes_on_through_the_model():
    lm = tiny_model("llama")
    ids = torch.tensor([[256, 72, 105, 33]])
    with torch.no_grad():
        before = lm.model(input_ids=ids).logits
        with watch(lm.adapter, lambda site, x, y, t: y.mul_(0) if site.layer == 1 else None):
            after = lm.model(input_ids=ids).logits
        again = lm.model(input_ids=ids).logits
    assert (before - after).abs().max() > 1e-3
    torch.testing.assert_close(before, again)  # nothing left behind


def test_summarize_traces_the_spike_to_the_planted_weight():
    lm = tiny_model("llama")
    coord = sw.Coord(1, 5, 7)
    plant(lm, coord, 400.0)
    got = {}
    with torch.no_grad(), watch(lm.adapter, lambda s, x, y, t: got.setdefault(s.layer, summarize(s, x, y, t))):
        lm.model(input_ids=torch.tensor([[256, 72, 105, 33]]))
    r = got[1]
    assert (r.output_channel, r.col) == (5, 7)
    assert r.share > 0.5 and r.weight == pytest.approx(lm.adapter.value(coord))
    assert abs(r.output_value) == pytest.approx(r.max_output)
    # counting the weight as zeroed, it no longer explains the spike
    with torch.no_grad(), watch(lm.adapter, lambda s, x, y, t: got.__setitem__(
            s.layer, summarize(s, x, y, t, zeroed=[(5, 7)]))):
        lm.model(input_ids=torch.tensor([[256, 72, 105, 33]]))
    assert got[1].col != 7
