"""Streaming decoder layers from disk gives the same answer as holding the model in memory."""
from __future__ import annotations

import pytest
import torch
from tiny import tiny_model, plant

import superweight as sw


def _summary(result):
    return (
        [(str(f.coord), round(f.value, 5), round(f.effect.kl, 3)) for f in result.super_weights],
        [(str(f.coord), (f.reason or "")[:40]) for f in result.rejected],
        [(r.layer, r.output_channel, r.col, round(r.max_output, 2)) for r in result.layers],
    )


@pytest.mark.parametrize("model_type,coord,factor", [
    ("llama", sw.Coord(1, 5, 7), 400.0),
    ("gpt2", sw.Coord(1, 5, 7), 400.0),
    ("opt", sw.Coord(2, 9, 3), 400.0),
])
def test_streamed_equals_in_memory_on_tiny_models(tmp_path, model_type, coord, factor):
    lm = tiny_model(model_type)
    plant(lm, coord, factor)
    lm.model.save_pretrained(tmp_path)
    lm.tokenizer.save_pretrained(tmp_path)
    streamed = sw.load(str(tmp_path), stream=True)
    whole = sw.load(str(tmp_path), stream=False)
    assert streamed.adapter.streamer is not None and whole.adapter.streamer is None
    assert streamed.model.get_submodule(streamed.adapter.family.layers)[0].state_dict()  # meta, but present
    a, b = sw.detect(streamed), sw.detect(whole)
    assert a.coords == b.coords == [coord]
    assert _summary(a) == _summary(b)


def test_checkpoint_in_an_older_layout_is_loaded_whole(tmp_path):
    """transformers saves Mixtral per expert and fuses the experts when loading: such a
    checkpoint cannot be streamed tensor by tensor. Asked for, that is an error; by
    default the model is loaded whole."""
    lm = tiny_model("mixtral")
    coord = sw.Coord(1, 5, 7, 2)
    plant(lm, coord, 2000.0)
    lm.model.save_pretrained(tmp_path)
    lm.tokenizer.save_pretrained(tmp_path)
    with pytest.raises(sw.UsageError, match="cannot stream.*--no-stream"):
        sw.load(str(tmp_path), stream=True)
    auto = sw.load(str(tmp_path))
    assert auto.adapter.streamer is None
    assert sw.detect(auto).coords == [coord]


def test_streamed_equals_in_memory_on_the_real_model(smol, smol_result, smol_whole):
    assert smol.adapter.streamer is not None  # the default path streams on CPU
    other = sw.detect(smol_whole)
    assert other.coords == smol_result.coords
    assert _summary(other) == _summary(smol_result)


def test_edits_on_streamed_layers_are_applied_and_undone(smol):
    c = sw.Coord(11, 507, 1229)
    ids = smol.tokenizer("Apple Inc. is a worldwide tech company.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        intact = smol.model(input_ids=ids).logits
        with sw.zeroed(smol.adapter, [c]):
            with sw.zeroed(smol.adapter, [c]):  # nested edits of one weight
                pass
            assert smol.adapter.streamer.edits  # still zeroed after the inner block
            assert smol.adapter.value(c) == 0.0  # reads see the edit, as in memory
            broken = smol.model(input_ids=ids).logits
        assert not smol.adapter.streamer.edits
        again = smol.model(input_ids=ids).logits
    assert not torch.allclose(intact, broken, atol=1e-2)
    assert torch.equal(intact, again)
    assert smol.adapter.value(c) == pytest.approx(5.876, abs=1e-3)  # read from disk, edit undone
    layer = smol.model.model.layers[11]
    assert layer.mlp.down_proj.weight.is_meta  # released after the forward


def test_stream_requires_a_local_checkpoint():
    with pytest.raises(sw.UsageError, match="streaming needs a local safetensors"):
        sw.load("HuggingFaceTB/SmolLM2-135M-Instruct", stream=True)


def test_gguf_read_layer_by_layer_equals_the_converted_checkpoint(smol_gguf, smol_result):
    """``stream=True`` on a GGUF file dequantizes one layer at a time from the memory-mapped
    file (no conversion); the answer is the converted checkpoint's, to the last digit shown."""
    from superweight.streaming import GGUFCheckpoint

    assert isinstance(smol_gguf.adapter.streamer.ckpt, GGUFCheckpoint)
    assert smol_gguf.model.model.layers[0].mlp.down_proj.weight.is_meta
    other = sw.detect(smol_gguf)
    assert other.coords == smol_result.coords
    assert _summary(other) == _summary(smol_result)


def test_progress_is_reported_per_layer(tmp_path):
    lm = tiny_model("llama")
    lm.model.save_pretrained(tmp_path)
    lm.tokenizer.save_pretrained(tmp_path)
    seen = []

    class Log:
        def __call__(self, msg):
            pass

        def layer(self, i, n):
            seen.append((i, n))
    streamed = sw.load(str(tmp_path), stream=True, log=Log())
    with torch.no_grad():
        streamed.model(torch.tensor([[256, 65, 66]]))
    assert seen == [(i, 4) for i in range(1, 5)]


def test_a_tensor_whose_shape_disagrees_with_the_config_is_one_line(tmp_path):
    from safetensors.torch import load_file, save_file
    from test_cli import one_error_line, run

    lm = tiny_model("llama")
    lm.model.save_pretrained(tmp_path)
    lm.tokenizer.save_pretrained(tmp_path)
    f = tmp_path / "model.safetensors"
    t = load_file(f)
    t["model.layers.2.mlp.down_proj.weight"] = t["model.layers.2.mlp.down_proj.weight"][:, :-1].contiguous()
    save_file(t, f, metadata={"format": "pt"})
    one_error_line(run("detect", str(tmp_path), "--stream"), "model.layers.2.mlp.down_proj.weight has shape (64, 127)")
