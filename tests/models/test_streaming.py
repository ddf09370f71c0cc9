"""Streaming decoder layers from disk gives the same answer as holding the model in memory."""
from __future__ import annotations

import pytest
import torch
from tiny import graded, plant, tiny_model, tiny_moe_gguf

import superweight as sw


def _summary(result):
    return (
        [(str(f.coord), f.grade, round(f.value, 5), round(f.effect.kl, 3)) for f in result.super_weights + result.strong],
        [(str(f.coord), {c: round(v, 3) for c, v in f.effect.text.kl.items()}) for f in result.super_weights + result.strong],
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
    assert graded(a) == graded(b) == [coord]
    assert _summary(a) == _summary(b)


def _stored_keys(directory):
    from safetensors import safe_open

    return sorted(k for f in directory.glob("*.safetensors") for k in safe_open(str(f), "pt").keys())


@pytest.mark.parametrize("model_type,expert_key", [
    ("mixtral", "model.layers.1.block_sparse_moe.experts.2.w2.weight"),
    ("qwen2_moe", "model.layers.1.mlp.experts.2.down_proj.weight"),
])
def test_per_expert_checkpoints_stream_through_transformers_fusion(tmp_path, model_type, expert_key):
    """Hub MoE checkpoints keep one tensor per expert; the model holds them fused. They are
    read layer by layer through transformers' own conversion mapping, with the answer of
    the whole load, and a zeroed expert weight lands in the right expert and row."""
    lm = tiny_model(model_type)
    coord = sw.Coord(1, 5, 7, 2)
    plant(lm, coord, 2000.0)
    lm.model.save_pretrained(tmp_path)
    lm.tokenizer.save_pretrained(tmp_path)
    assert expert_key in _stored_keys(tmp_path)  # the layout on disk is per expert
    streamed = sw.load(str(tmp_path), stream=True)
    whole = sw.load(str(tmp_path), stream=False)
    assert streamed.adapter.streamer is not None
    a, b = sw.detect(streamed), sw.detect(whole)
    assert graded(a) == graded(b) == [coord]
    assert _summary(a) == _summary(b)
    assert streamed.adapter.value(coord) == whole.adapter.value(coord)
    ids = torch.tensor([[3, 70, 101, 32, 9, 200]])
    with torch.no_grad():
        assert torch.equal(streamed.model(input_ids=ids).logits, whole.model(input_ids=ids).logits)
        with sw.zeroed(streamed.adapter, [coord]), sw.zeroed(whole.adapter, [coord]):
            assert torch.equal(streamed.model(input_ids=ids).logits, whole.model(input_ids=ids).logits)
    experts = streamed.model.get_submodule(streamed.adapter.family.layers)[1].mlp.experts
    assert experts.down_proj.is_meta  # released after the forward


def test_a_moe_gguf_streams_layer_by_layer(tmp_path, monkeypatch):
    """llama.cpp stores a layer's experts stacked, gate and up apart; the model holds gate
    and up fused. Streamed straight from the file it gives the answer of the converted load,
    and quantizing it writes the hub's per-expert layout with the super weight held."""
    from safetensors import safe_open

    from superweight.quant.export import save_quantized
    from superweight.quant.rtn import QuantConfig
    from superweight.models.streaming import GGUFCheckpoint

    monkeypatch.setenv("SUPERWEIGHT_CACHE", str(tmp_path / "cache"))
    f = tmp_path / "tiny-moe.gguf"
    coord = sw.Coord(1, 5, 7, 2)
    tiny_moe_gguf(f, coord, 20000.0)
    streamed = sw.load(str(f), stream=True)
    whole = sw.load(str(f), stream=False)
    assert isinstance(streamed.adapter.streamer.ckpt, GGUFCheckpoint)
    assert len(streamed.adapter.streamer.ckpt.spans("model.layers.1.mlp.experts.gate_up_proj")) == 2  # gate, up
    a, b = sw.detect(streamed), sw.detect(whole)
    assert graded(a) == graded(b) == [coord]
    assert _summary(a) == _summary(b)
    ids = torch.tensor([[3, 70, 101, 32, 9, 200]])
    with torch.no_grad():
        assert torch.equal(streamed.model(input_ids=ids).logits, whole.model(input_ids=ids).logits)
    out = tmp_path / "q"
    save_quantized(streamed, QuantConfig(bits=4, layout="group", size=16), out, keep=[coord])
    keys = {k for p in out.glob("*.safetensors") for k in safe_open(str(p), "pt").keys()}
    assert "model.layers.1.mlp.experts.2.down_proj.weight" in keys
    q = sw.load(str(out), stream=True)
    assert q.adapter.value(coord) == whole.adapter.value(coord)


def test_a_base_model_checkpoint_streams_under_the_causal_lm_prefix(tmp_path):
    """GPT-2's hub checkpoint is the base model's (``h.0...``, no ``transformer.``):
    transformers adds the prefix when loading, and so does streaming."""
    from safetensors.torch import load_file, save_file

    lm = tiny_model("gpt2")
    coord = sw.Coord(1, 5, 7)
    plant(lm, coord, 400.0)
    lm.model.save_pretrained(tmp_path)
    lm.tokenizer.save_pretrained(tmp_path)
    f = tmp_path / "model.safetensors"
    sd = {k.removeprefix("transformer."): v for k, v in load_file(f).items()}
    assert "h.1.mlp.c_proj.weight" in sd
    save_file(sd, f, metadata={"format": "pt"})
    streamed = sw.load(str(tmp_path), stream=True)
    whole = sw.load(str(tmp_path), stream=False)
    assert streamed.adapter.streamer is not None
    assert _summary(sw.detect(streamed)) == _summary(sw.detect(whole))


@pytest.mark.parametrize("stream", [True, False, None])
def test_a_checkpoint_lacking_a_weight_is_refused(tmp_path, stream):
    """transformers fills a weight the checkpoint lacks with random values and goes on;
    every measurement after that would be of noise, so it is one line and an error."""
    from safetensors.torch import load_file, save_file

    lm = tiny_model("llama")
    lm.model.save_pretrained(tmp_path)
    lm.tokenizer.save_pretrained(tmp_path)
    f = tmp_path / "model.safetensors"
    sd = load_file(f)
    sd["model.final_norm.weight"] = sd.pop("model.norm.weight")
    save_file(sd, f, metadata={"format": "pt"})
    with pytest.raises(sw.ModelLoadError, match="no tensor for model.norm.weight"):
        sw.load(str(tmp_path), stream=stream)


# a short proof (two windows of 64 tokens, one look): these compare two ways of reading the
# weights, which must give the same numbers, not the proof itself
SHORT = sw.DetectConfig(window=64, windows=2, max_windows=2)


@pytest.fixture(scope="module")
def smol_short(smol):
    return sw.detect(smol, SHORT)


def test_streamed_equals_in_memory_on_the_real_model(smol, smol_short, smol_whole):
    assert smol.adapter.streamer is not None  # the default path streams on CPU
    other = sw.detect(smol_whole, SHORT)
    assert other.coords == smol_short.coords == [sw.Coord(11, 507, 1229)]
    assert _summary(other) == _summary(smol_short)


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


def test_gguf_read_layer_by_layer_equals_the_converted_checkpoint(smol_gguf, smol_short):
    """``stream=True`` on a GGUF file dequantizes one layer at a time from the memory-mapped
    file (no conversion); the answer is the converted checkpoint's, to the last digit shown."""
    from superweight.models.streaming import GGUFCheckpoint

    assert isinstance(smol_gguf.adapter.streamer.ckpt, GGUFCheckpoint)
    assert smol_gguf.model.model.layers[0].mlp.down_proj.weight.is_meta
    other = sw.detect(smol_gguf, SHORT)
    assert other.coords == smol_short.coords
    assert _summary(other) == _summary(smol_short)


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


@pytest.mark.slow
def test_a_tensor_whose_shape_disagrees_with_the_config_is_one_line(tmp_path, cli_here, error_line):
    from safetensors.torch import load_file, save_file

    lm = tiny_model("llama")
    lm.model.save_pretrained(tmp_path)
    lm.tokenizer.save_pretrained(tmp_path)
    f = tmp_path / "model.safetensors"
    t = load_file(f)
    t["model.layers.2.mlp.down_proj.weight"] = t["model.layers.2.mlp.down_proj.weight"][:, :-1].contiguous()
    save_file(t, f, metadata={"format": "pt"})
    error_line(cli_here("detect", str(tmp_path), "--stream"), "model.layers.2.mlp.down_proj.weight has shape (64, 127)")


def test_cache_plan_keeps_the_longest_prefix_that_fits():
    from superweight.models.streaming import cache_plan

    assert cache_plan([10, 10, 10], None) == set()  # unknown memory: leave the cache alone
    assert cache_plan([10, 10, 10], 30) == set()
    assert cache_plan([10, 10, 10], 25) == {2}
    assert cache_plan([10, 10, 10], 5) == {0, 1, 2}
    assert cache_plan([10, 10, 10], -3) == {0, 1, 2}


def test_spans_point_at_each_tensors_bytes(tmp_path, smol_gguf):
    """Page-cache advice covers exactly the bytes a layer's tensors are stored in."""
    import numpy as np

    from superweight.models.streaming import Checkpoint

    lm = tiny_model("llama")
    lm.model.save_pretrained(tmp_path)
    ck = Checkpoint(tmp_path)
    for name in ("model.layers.1.mlp.down_proj.weight", "model.layers.3.self_attn.q_proj.weight"):
        f, off, n = ck.span(name)
        t = ck.read_many([name])[name]
        with open(f, "rb") as h:
            h.seek(off)
            assert h.read(n) == t.contiguous().view(torch.uint8).numpy().tobytes()
    g = smol_gguf.adapter.streamer.ckpt
    name = "model.layers.11.mlp.down_proj.weight"
    f, off, n = g.span(name)
    with open(f, "rb") as h:
        h.seek(off)
        assert h.read(n) == np.asarray(g.where[name][0].data).tobytes()


def test_layers_that_do_not_fit_are_dropped_from_the_page_cache(tmp_path, monkeypatch):
    """With no room, every layer's bytes are dropped after it runs and the next layer's are
    requested ahead; the answer does not change."""
    import os

    from superweight.models import streaming

    lm = tiny_model("llama")
    coord = sw.Coord(1, 5, 7)
    plant(lm, coord, 400.0)
    lm.model.save_pretrained(tmp_path)
    lm.tokenizer.save_pretrained(tmp_path)
    calls = []
    real = os.posix_fadvise
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, off, n, adv: (calls.append((off, n, adv)), real(fd, off, n, adv)))
    monkeypatch.setattr(streaming, "available_memory", lambda: 0)
    tight = sw.load(str(tmp_path), stream=True)
    assert tight.adapter.streamer.drop == {0, 1, 2, 3}
    with torch.no_grad():
        tight.model(torch.tensor([[256, 65, 66]]))
    tight.adapter.streamer._ahead.submit(lambda: None).result()  # read-ahead runs on one helper thread, in order
    dropped = {(off, n) for off, n, adv in calls if adv == os.POSIX_FADV_DONTNEED}
    ahead = {(off, n) for off, n, adv in calls if adv == os.POSIX_FADV_WILLNEED}
    every = {(off, n) for layer in tight.adapter.streamer.spans for _, off, n in layer}
    assert dropped == ahead == every
    monkeypatch.setattr(streaming, "available_memory", lambda: 1 << 40)
    roomy = sw.load(str(tmp_path), stream=True)
    assert roomy.adapter.streamer.drop == set()
    assert _summary(sw.detect(tight)) == _summary(sw.detect(roomy))


def test_populating_a_view_falls_back_quietly_where_the_kernel_cannot(tmp_path, monkeypatch):
    """A layer's pages are mapped in one call (MADV_POPULATE_READ) before its pass; a kernel
    that refuses the advice is asked once, and the pages are then faulted in as used."""
    import mmap as _mmap

    from superweight.models import streaming

    f = tmp_path / "blob"
    f.write_bytes(bytes(range(256)) * 64)
    with open(f, "rb") as h:
        mm = _mmap.mmap(h.fileno(), 0, access=_mmap.ACCESS_COPY)
    monkeypatch.setattr(streaming, "POPULATE_READ", 12345)  # no such advice
    streaming._populate(mm, 100, 5000)
    assert streaming.POPULATE_READ is None
    streaming._populate(mm, 100, 5000)  # and not asked again
    assert mm[100] == 100
