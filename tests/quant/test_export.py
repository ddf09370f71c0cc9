"""Writing a quantized checkpoint (quant/export.py and `superweight quantize`): transformers loads it as it is, every layout, nothing left on failure, bad input in one line."""
from __future__ import annotations

import json
import os

import golden
import pytest
import torch
from tiny import plant, saved, tiny_model
from transformers import AutoModelForCausalLM

import superweight as sw
from superweight.errors import UsageError
from superweight.quant.export import MANIFEST, save_quantized
from superweight.quant.rtn import QuantConfig
from superweight.quant.apply import quantized

IDS = torch.tensor([[256, 72, 101, 108, 108, 111, 32, 119, 111, 114, 108, 100]])


def _logits(lm):
    with torch.no_grad():
        return lm.model(IDS).logits


def test_saved_checkpoint_loads_with_transformers_and_matches(tmp_path):
    lm = tiny_model("llama")
    coord = sw.Coord(1, 5, 7)
    plant(lm, coord, 50)
    src = saved(lm, tmp_path / "src", max_shard_size="100KB")  # sharded, with an index
    src_bytes = {f.name: f.read_bytes() for f in src.iterdir()}
    streamed = sw.load(str(src), stream=True)
    cfg = QuantConfig(bits=4, layout="group", size=16, keep_fraction=0.01)
    out = tmp_path / "q"
    rep = save_quantized(streamed, cfg, out, keep=[coord], max_shard_bytes=60_000)
    assert {f.name: f.read_bytes() for f in src.iterdir()} == src_bytes  # the source is only read
    assert len(list(out.glob("model-*.safetensors"))) > 1 and (out / "model.safetensors.index.json").is_file()
    assert not [f for f in out.parent.iterdir() if f.name.startswith(".")]  # no temp left
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["config"]["bits"] == 4 and manifest["super_weights_held"] == [str(coord)]
    assert manifest["bits_per_weight"] == pytest.approx(rep.bits_per_weight, abs=1e-4)
    loaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert loaded.model.layers[1].mlp.down_proj.weight[5, 7] == lm.adapter.value(coord)
    # the same numbers as quantizing the in-memory model
    with quantized(lm, cfg, keep=[coord]):
        expected = _logits(lm)
    with torch.no_grad():
        got = loaded(IDS).logits
    torch.testing.assert_close(got, expected)
    # an existing output is refused, and replaced only with overwrite
    with pytest.raises(UsageError, match="exists"):
        save_quantized(streamed, cfg, out)
    save_quantized(streamed, QuantConfig(bits=8), out, overwrite=True)
    assert json.loads((out / MANIFEST).read_text())["config"]["bits"] == 8


def test_a_per_expert_checkpoint_is_quantized_streamed_in_its_own_layout(tmp_path):
    """Mixtral on disk keeps one tensor per expert; streamed quantization reads a layer's
    experts fused, as the model holds them, and writes them back per expert: the output
    has the source's tensor names, the held super weight intact, and the numbers of
    quantizing the in-memory model."""
    from safetensors import safe_open

    lm = tiny_model("mixtral")
    coord = sw.Coord(1, 5, 7, expert=2)
    plant(lm, coord, 50)
    src = saved(lm, tmp_path / "src")
    streamed = sw.load(str(src), stream=True)
    cfg = QuantConfig(bits=4, layout="group", size=16)
    out = tmp_path / "q"
    save_quantized(streamed, cfg, out, keep=[coord])

    def keys(d):
        return sorted(k for f in d.glob("*.safetensors") for k in safe_open(str(f), "pt").keys())
    assert keys(out) == keys(src)
    assert "model.layers.1.block_sparse_moe.experts.2.w2.weight" in keys(out)
    loaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert loaded.model.layers[1].mlp.experts.down_proj[2, 5, 7] == lm.adapter.value(coord)
    with quantized(lm, cfg, keep=[coord]):
        expected = _logits(lm)
    with torch.no_grad():
        got = loaded(IDS).logits
    torch.testing.assert_close(got, expected)


def test_failure_while_writing_leaves_nothing(tmp_path, monkeypatch):
    import errno

    import superweight.quant.export as export

    lm = tiny_model("llama")
    src = saved(lm, tmp_path / "src")
    streamed = sw.load(str(src))

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(export, "save_file", full)
    threads = torch.get_num_threads()
    with pytest.raises(sw.SuperweightError, match="no space left on the device while writing .*q; nothing was written"):
        save_quantized(streamed, QuantConfig(), tmp_path / "q")
    assert sorted(f.name for f in tmp_path.iterdir()) == ["src"]
    assert torch.get_num_threads() == threads  # the streamed loop's thread count is given back


def test_the_streamed_loop_leaves_a_core_to_the_io_threads(tmp_path, monkeypatch):
    import superweight.quant.export as export

    assert [export.compute_threads(n) for n in (1, 2, 16)] == [1, 1, 15]
    lm = tiny_model("llama")
    saved(lm, tmp_path / "src")
    seen = []
    quantize_param = export.quantize_param
    monkeypatch.setattr(export, "quantize_param", lambda *a, **k: (seen.append(torch.get_num_threads()), quantize_param(*a, **k))[1])
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        save_quantized(sw.load(str(tmp_path / "src")), QuantConfig(), tmp_path / "q")
        assert seen and set(seen) == {2}
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow
def test_quantize_cli_writes_a_checkpoint(tmp_path, cli, error_line):
    lm = tiny_model("qwen2")
    plant(lm, sw.Coord(2, 11, 13), 400)
    saved(lm, tmp_path / "m")
    out = tmp_path / "q"
    proc = cli("quantize", str(tmp_path / "m"), "--bits", "3", "--block-size", "whole", "--clip", "z:auto",
               "--keep-outliers", "0.001", "--act-ratio", "0", "--out", str(out), "--json", "-")
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(proc.stdout)
    # detection ran; on a random model the planted weight is graded strong, not super (its
    # perplexity says little: docs/detection.md), and quantize holds out super weights only
    assert rep["verdict"]["source"] in ("computed", "cache")
    assert rep["super_weights_held"] == [] and rep["acted_on"]["coords"] == []
    golden.check("quantize-cli-tiny-qwen2", {k: v for k, v in rep.items() if k not in ("model", "out", "acted_on", "verdict")})
    assert rep["config"]["layout"] == "block" and rep["config"]["size"] is None
    assert 3.0 < rep["bits_per_weight"] < 3.2
    assert (out / "model.safetensors").is_file() and (out / "tokenizer_config.json").is_file()
    assert (out / MANIFEST).is_file()
    assert oct((out / "model.safetensors").stat().st_mode & 0o777) != "0o600"
    # refused the second time; the first output is untouched
    mtime = os.stat(out / "model.safetensors").st_mtime_ns
    error_line(cli("quantize", str(tmp_path / "m"), "--out", str(out)), "exists")
    assert os.stat(out / "model.safetensors").st_mtime_ns == mtime


@pytest.mark.parametrize("args,msg", [
    (["--bits", "1"], "bits must be an integer from 2 to 8"),
    (["--bits", "9"], "bits must be"),
    (["--group-size", "0"], "size must be a positive integer"),
    (["--block-size", "abc"], "--block-size must be a positive integer or whole"),
    (["--clip", "z:-3"], "clip"),
    (["--keep-outliers", "1.5"], "keep fraction"),
    (["--include", "*nothing*"], "no decoder linear weight matches"),
    (["--coords", "99:0:0"], "out of range"),
    (["--max-shard-size", "lots"], "--max-shard-size"),
])
@pytest.mark.slow
def test_quantize_bad_input_is_one_line_and_writes_nothing(tmp_path, args, msg, cli_here, error_line):
    lm = tiny_model("llama")
    saved(lm, tmp_path / "m")
    out = tmp_path / "q"
    extra = [] if "--coords" in args else ["--no-keep-super"]
    error_line(cli_here("quantize", str(tmp_path / "m"), "--out", str(out), *extra, *args), msg)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["m"]


@pytest.mark.parametrize("how,want", [(["--coords", "1:5:7"], {"coords": ["1:5:7"], "from": "given"}),
                                      (["--no-keep-super"], {"coords": [], "from": "none (--no-keep-super)"})])
def test_quantize_json_names_the_weights_it_held_and_their_source(tmp_path, cli_here, how, want):
    """``acted_on`` in quantize's JSON, as verify, audit and report write it; no ``verdict``
    when no detection ran."""
    saved(tiny_model("llama"), tmp_path / "m")
    proc = cli_here("quantize", str(tmp_path / "m"), "--bits", "4", "--out", str(tmp_path / "q"), *how, "--json", "-")
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(proc.stdout)
    assert rep["acted_on"] == want and "verdict" not in rep
    assert rep["super_weights_held"] == want["coords"]


def test_the_api_overwrites_only_its_own_outputs(tmp_path):
    """``save_quantized(..., overwrite=True)`` replaces an earlier quantize output, never a
    folder of the user's (the CLI's rule, now the API's too)."""
    lm = tiny_model("llama")
    src = saved(lm, tmp_path / "src")
    streamed = sw.load(str(src), stream=True)
    cfg = QuantConfig(bits=4, layout="group", size=16)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="not a superweight output"):
        save_quantized(streamed, cfg, theirs, overwrite=True)
    assert [f.name for f in theirs.iterdir()] == ["notes.txt"]
    ours = tmp_path / "q"
    save_quantized(streamed, cfg, ours)
    save_quantized(streamed, QuantConfig(bits=3, layout="group", size=16), ours, overwrite=True)
    assert json.loads((ours / MANIFEST).read_text())["config"]["bits"] == 3
