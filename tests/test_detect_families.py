"""Every supported family, on a tiny random model with a planted super weight."""
from __future__ import annotations

import pytest
import torch
import golden
from tiny import FAMILIES, graded, plant, tiny_model, weaken

import superweight as sw

# OLMo 2 feeds the raw residual (massive activation included) into every later MLP, which
# then spikes everywhere in a random model: plant in its last layer. MoE experts see only
# the tokens routed to them and are scaled by the router: plant bigger.
PLANT_LAYER = {"olmo2": 3}
PLANT_FACTOR = {"mixtral": 2000.0, "qwen2_moe": 2000.0}


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_detects_planted_super_weight(model_type):
    lm = tiny_model(model_type)
    expert = 1 if lm.adapter.has_experts else None
    coord = sw.Coord(PLANT_LAYER.get(model_type, 1), 5, 7, expert)
    plant(lm, coord, PLANT_FACTOR.get(model_type, 400.0))
    result = sw.detect(lm)
    assert graded(result) == [coord]  # a random model's perplexity says little: super or strong
    (found,) = result.super_weights + result.strong
    cfg = result.config
    for cond in found.effect.matters_in:
        assert found.effect.text.kl[cond] >= cfg.strong_kl
        assert found.effect.text.kl[cond] >= cfg.min_control_ratio * max(found.effect.control_kl_text(cond), cfg.kl_floor)
    kinds = {c.kind for c in found.effect.controls}
    assert found.effect.matters_in and kinds >= {"largest", "random", "neighbours"}
    measured = [c for c in found.effect.controls if c.text is not None]
    # a graded weight's controls: every set measured, or its largest and random zeroed together
    assert {c.kind for c in measured} in ({"largest", "random", "neighbours"}, {"neighbours", "largest+random"},
                                          {"largest", "random", "neighbours", "largest+random"})
    assert found.share > 0.5
    assert found.value == pytest.approx(lm.adapter.value(coord))
    assert result.architecture == model_type
    d = result.to_dict()
    (entry,) = d["super_weights"] + d["strong"]
    assert entry["row"] == 5 and entry["col"] == 7 and entry["grade"] == found.grade
    assert entry.get("expert") == expert
    assert set(entry["effect"]["text"]) == {"bos", "mid"}
    assert len(d["layers"]) == lm.adapter.num_layers
    assert d["text"]["window"] == 128 and d["text"]["first"] == 4  # the tiny context; four windows first ...
    assert d["text"]["windows"]["bos"] in (4, 8, 16) and d["text"]["budget"] == 16  # ... doubled while open
    for cond, v in entry["effect"]["text"].items():  # the interval over the windows it was measured on
        assert v["spread"]["windows"] == d["text"]["windows"][cond] or v["spread"]["windows"] in (4, 8)
        assert v["spread"]["kl"][0] <= v["kl"] <= v["spread"]["kl"][1]
    golden.check(f"detect-tiny-{model_type}", d)


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_a_weak_but_specific_planted_weight_is_found(model_type):
    """About 0.5 nats of KL against about 0 for every control: graded strong, not lost
    under a fixed threshold tuned on one real model."""
    lm = tiny_model(model_type)
    expert = 1 if lm.adapter.has_experts else None
    coord = sw.Coord(PLANT_LAYER.get(model_type, 1), 5, 7, expert)
    plant(lm, coord, PLANT_FACTOR.get(model_type, 400.0))
    kl = weaken(lm, coord)
    assert 0.4 < kl < 0.6
    result = sw.detect(lm)
    assert graded(result) == [coord]
    (found,) = result.strong + result.super_weights
    assert found.effect.kl == pytest.approx(kl, abs=1e-3)
    assert found.effect.control_kl < 0.02
    measured = [c for c in found.effect.controls if c.text is not None]
    assert measured and all(max(c.text.kl.values()) < 0.05 for c in measured)


def test_gpt2_conv1d_coordinates_are_output_row_input_col():
    """Conv1D stores [in, out]: the planted stored element c_proj.weight[col, row] is reported as (row, col)."""
    lm = tiny_model("gpt2")
    w = lm.model.transformer.h[1].mlp.c_proj.weight  # [in=128, out=64]
    assert tuple(w.shape) == (128, 64)
    with torch.no_grad():
        w[100, 3] = 400 * float(w.abs().max())  # input channel 100 -> output channel 3
    result = sw.detect(lm)
    assert graded(result) == [sw.Coord(1, 3, 100)]
    assert (result.super_weights + result.strong)[0].param == "transformer.h.1.mlp.c_proj.weight"
    site = lm.adapter.site(sw.Coord(1, 3, 100))
    assert site.stored_index(sw.Coord(1, 3, 100)) == (100, 3)


def test_moe_reports_expert_and_token():
    lm = tiny_model("mixtral")
    coord = sw.Coord(1, 5, 7, 2)
    plant(lm, coord, 2000.0)
    result = sw.detect(lm)
    assert graded(result) == [coord]
    f = (result.super_weights + result.strong)[0]
    assert f.param == "model.layers.1.mlp.experts.down_proj"
    assert f.token >= 0  # routed rows were mapped back to prompt positions


def test_rows_shared_by_two_super_weights_found_by_iteration():
    lm = tiny_model("llama")
    base = plant(lm, sw.Coord(1, 5, 7), 400)
    plant(lm, sw.Coord(1, 5, 9), -380, base)
    result = sw.detect(lm)
    assert set(graded(result)) == {sw.Coord(1, 5, 7), sw.Coord(1, 5, 9)}
    assert {f.round for f in result.super_weights + result.strong} == {1, 2}  # the second hides behind the first


def test_interchangeable_pair_is_proven_jointly():
    """Two weights in one column whose channels the head reads identically: zeroing either
    alone does little, zeroing both matters. Both are reported, jointly."""
    lm = tiny_model("llama")
    a, b = sw.Coord(1, 5, 7), sw.Coord(1, 9, 7)
    base = plant(lm, a, 400)
    plant(lm, b, 400, base)
    with torch.no_grad():
        lm.model.lm_head.weight[:, 9] = lm.model.lm_head.weight[:, 5]
    assert weaken(lm, a, 0.015) < 0.03  # alone: under the screen (each stands in for the other)
    result = sw.detect(lm)
    assert set(graded(result)) == {a, b}
    by = {f.coord: f for f in result.super_weights + result.strong}
    assert by[a].jointly_with == [b] and by[b].jointly_with == [a]
    assert by[a].effect.kl > result.config.screen_kl and by[a].effect.matters_in  # together they matter
    assert not any(f.coord in (a, b) for f in result.rejected)


def test_random_model_without_plant_has_no_super_weight():
    lm = tiny_model("llama", seed=3)
    result = sw.detect(lm)
    assert result.super_weights == [] and result.strong == []


def test_detect_is_deterministic():
    lm = tiny_model("qwen2")
    plant(lm, sw.Coord(2, 11, 13), 400)
    a, b = sw.detect(lm).to_dict(), sw.detect(lm).to_dict()
    assert a == b


def test_zeroed_restores_weights_even_on_error():
    lm = tiny_model("llama")
    before = lm.model.model.layers[1].mlp.down_proj.weight.clone()
    with pytest.raises(RuntimeError):
        with sw.zeroed(lm.adapter, [sw.Coord(1, 5, 7), sw.Coord(1, 6, 8)]):
            assert lm.adapter.value(sw.Coord(1, 5, 7)) == 0.0
            raise RuntimeError("boom")
    assert torch.equal(before, lm.model.model.layers[1].mlp.down_proj.weight)


@pytest.mark.parametrize("coord,msg", [
    (sw.Coord(4, 0, 0), "layer 4 out of range"),
    (sw.Coord(0, 64, 0), "out of range"),
    (sw.Coord(0, 0, 128), "out of range"),
    (sw.Coord(0, 0, 0, 1), "no routed experts"),
])
def test_coordinates_out_of_range_are_clear_errors(coord, msg):
    lm = tiny_model("llama")
    with pytest.raises(sw.UsageError, match=msg):
        sw.verify(lm, [coord])


def test_unsupported_architecture_names_the_supported_ones():
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model("bloom", vocab_size=100, hidden_size=32, n_layer=2, n_head=2)
    model = AutoModelForCausalLM.from_config(cfg)
    with pytest.raises(sw.UnsupportedModelError, match="unsupported architecture 'bloom'.*llama"):
        sw.LoadedModel.wrap(model, None)


@pytest.mark.parametrize("model_type", ["gemma2", "olmo2"])
def test_a_massive_activation_made_by_the_post_mlp_norm_is_explained(model_type):
    """Gemma 2 and OLMo 2 normalize the MLP output before the residual add: a large norm
    gain on one channel makes it massive with no down-projection spike at all."""
    lm = tiny_model(model_type)
    with torch.no_grad():
        lm.adapter.layers[1].post_feedforward_layernorm.weight[5] = 3000.0
    result = sw.detect(lm)
    found = [m for m in result.massive if m["channel"] == 5]  # every token: the gain is per channel
    assert found and {m["channel"] for m in result.massive} == {5}
    for m in found:
        assert m["begins"] == 1 and m["source_layer"] == 1 and m["made_by"] == "norm"
        assert m["post_mlp_norm_gain"] == pytest.approx(3000.0 + (model_type == "gemma2"))
        assert "norm" in m["explanation"]
    assert result.super_weights == []


def test_a_massive_channel_built_over_layers_is_said_so():
    """The pure function over hidden states: equal growth in four layers, no single source."""
    from superweight.residual import massive_channels

    lm = tiny_model("llama")
    hidden = [torch.ones(6, 64) * 0.5 for _ in range(5)]
    for layer in range(1, 5):
        hidden[layer][2, 9] = 300.0 * layer  # each layer adds 300 on token 2, channel 9
    (m,) = massive_channels(lm, hidden, [])
    assert (m["channel"], m["token"], m["begins"], m["peak_layer"]) == (9, 2, 0, 3)
    assert m["made_by"] == "layers" and max(float(v) for v in m["contributions"].values()) < 0.3 * m["peak"]
    assert "no single layer" in m["explanation"]
