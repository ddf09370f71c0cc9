"""Quantizing a model: in place and reversible, held-out super weights, the written checkpoint
(transformers loads it as it is), W8A8, the comparison, and bad input on the command line."""
from __future__ import annotations

import json
import os

import golden
import pytest
import torch
from test_cli import one_error_line, run
from tiny import plant, tiny_model
from transformers import AutoModelForCausalLM

import superweight as sw
from superweight.quant.w8a8 import fake_quant_per_token, quant_with_holdout, w8a8
from superweight.errors import UsageError
from superweight.quant.export import MANIFEST, save_quantized
from superweight.quant.sweep import markdown, pareto, plan, sweep
from superweight.quant.rtn import QuantConfig
from superweight.quant.apply import massive_input_columns, quantize_, quantized, targets

IDS = torch.tensor([[256, 72, 101, 108, 108, 111, 32, 119, 111, 114, 108, 100]])


def _logits(lm):
    with torch.no_grad():
        return lm.model(IDS).logits


@pytest.mark.parametrize("model_type,coord", [
    ("llama", sw.Coord(1, 5, 7)),
    ("gpt2", sw.Coord(1, 5, 7)),  # Conv1D: stored transposed
    ("qwen2_moe", sw.Coord(1, 5, 7, expert=2)),  # fused 3-D experts
])
def test_quantize_in_place_holds_super_weights_and_is_undone(model_type, coord):
    lm = tiny_model(model_type)
    plant(lm, coord, 50)
    before = {n: p.detach().clone() for n, p in targets(lm)}
    others = {n: p.detach().clone() for n, p in lm.model.named_parameters() if n not in before}
    assert any("embed" in n or "wte" in n for n in others) and any(p.dim() == 1 for p in others.values())
    sw_value = lm.adapter.value(coord)
    cfg = QuantConfig(bits=3, layout="block", size=64)
    with quantized(lm, cfg, keep=[coord]) as rep:
        assert lm.adapter.value(coord) == sw_value  # exact
        changed = [n for n, p in targets(lm) if not torch.equal(p, before[n])]
        assert len(changed) == len(before)  # every decoder linear weight was quantized
        assert rep.held == 1 and len(rep.tensors) == len(before)
        assert 3.0 < rep.bits_per_weight < 3.6
        # embeddings, norms, biases and the head untouched, bit for bit
        for n, p in lm.model.named_parameters():
            if n in others:
                assert torch.equal(p, others[n]), n
    for n, p in targets(lm):
        assert torch.equal(p, before[n])  # undone
    without = QuantConfig(bits=3, layout="block", size=64)
    with quantized(lm, without) as rep2:
        assert lm.adapter.value(coord) != sw_value  # a 3-bit grid does not keep a planted outlier by chance
        assert rep2.held == 0


def test_patterns_choose_the_weights_and_a_pattern_matching_nothing_is_an_error():
    lm = tiny_model("llama")
    rep = quantize_(lm, QuantConfig(bits=4), include=["*mlp*"], exclude=["*gate_proj*"])
    names = {t.name for t in rep.tensors}
    assert names and all(".mlp." in n and "gate_proj" not in n for n in names)
    with pytest.raises(UsageError, match="no decoder linear weight matches"):
        quantize_(lm, QuantConfig(bits=4), include=["*nothing*"])


def test_massive_input_columns_find_the_planted_super_activation_channel():
    lm = tiny_model("llama")
    coord = sw.Coord(1, 5, 7)
    plant(lm, coord, 400)
    cols = massive_input_columns(lm, [n for n, _ in targets(lm)], ratio=3, max_cols=2)
    # the layers after the super weight read channel 5 of the residual stream, hugely
    later = [n for n in cols if n.startswith("model.layers.2.") and ("q_proj" in n or "up_proj" in n)]
    assert later and all(5 in cols[n] for n in later)


def test_saved_checkpoint_loads_with_transformers_and_matches(tmp_path):
    lm = tiny_model("llama")
    coord = sw.Coord(1, 5, 7)
    plant(lm, coord, 50)
    src = tmp_path / "src"
    lm.model.save_pretrained(src, max_shard_size="100KB")  # sharded, with an index
    lm.tokenizer.save_pretrained(src)
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
    src = tmp_path / "src"
    lm.model.save_pretrained(src)
    lm.tokenizer.save_pretrained(src)
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
    src = tmp_path / "src"
    lm.model.save_pretrained(src)
    lm.tokenizer.save_pretrained(src)
    streamed = sw.load(str(src))

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(export, "save_file", full)
    with pytest.raises(sw.SuperweightError, match="disk full"):
        save_quantized(streamed, QuantConfig(), tmp_path / "q")
    assert sorted(f.name for f in tmp_path.iterdir()) == ["src"]


def test_w8a8_context_changes_outputs_and_is_undone():
    lm = tiny_model("llama")
    coord = sw.Coord(1, 5, 7)
    plant(lm, coord, 400)
    ref = _logits(lm)
    with w8a8(lm):
        naive = _logits(lm)
    with w8a8(lm, holdout=[coord]):
        held = _logits(lm)
    assert torch.equal(_logits(lm), ref)
    assert not torch.equal(naive, ref)
    # keeping the super activation in full precision brings the outputs closer
    assert (held - ref).abs().mean() < (naive - ref).abs().mean()


def test_per_token_quantizer_and_holdout():
    x = torch.randn(2, 5, 16)
    x[0, 0, 3] = 1000.0
    q = fake_quant_per_token(x)
    assert (q - x).abs().max() <= x.abs().amax(-1, keepdim=True).max() / 127 / 2 + 1e-4
    h = quant_with_holdout(x, [3])
    assert torch.equal(h[..., 3], x[..., 3])
    assert (h[0, 0] - x[0, 0]).abs().max() < (q[0, 0] - x[0, 0]).abs().max()


def test_compare_on_a_tiny_model_with_hqq():
    lm = tiny_model("llama")
    coord = sw.Coord(1, 5, 7)
    plant(lm, coord, 50)
    text = "The quick brown fox jumps over the lazy dog. " * 20
    points = plan(bits=(4,), block_sizes=(256, None), group_sizes=(32,), hqq_groups=(32,))
    ref, pts = sweep(lm, [coord], {"t": text}, points, seqlen=64, max_windows=2)
    methods = {p.method for p in pts}
    assert methods == {"RTN blocks", "paper", "ours blocks", "RTN groups", "ours", "HQQ"}
    hqq = next(p for p in pts if p.method == "HQQ")
    assert hqq.bits_per_weight == pytest.approx(4 + 32 / 32)
    for p in pts:
        assert p.perplexity["t"] > 0 and p.bits_per_weight > 4
    assert pareto(pts, "t")
    table = markdown(ref, pts)
    assert "full precision" in table and "HQQ" in table


# ---- the command line ----

@pytest.mark.slow
def test_quantize_cli_writes_a_checkpoint(tmp_path):
    lm = tiny_model("qwen2")
    plant(lm, sw.Coord(2, 11, 13), 400)
    lm.model.save_pretrained(tmp_path / "m")
    lm.tokenizer.save_pretrained(tmp_path / "m")
    out = tmp_path / "q"
    proc = run("quantize", str(tmp_path / "m"), "--bits", "3", "--block-size", "whole", "--clip", "z:auto",
               "--keep-outliers", "0.001", "--act-ratio", "0", "--out", str(out), "--json", "-")
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(proc.stdout)
    assert rep["super_weights_held"] == ["2:11:13"]  # detected, then held out
    golden.check("quantize-cli-tiny-qwen2", {k: v for k, v in rep.items() if k not in ("model", "out")})
    assert rep["config"]["layout"] == "block" and rep["config"]["size"] is None
    assert 3.0 < rep["bits_per_weight"] < 3.2
    assert (out / "model.safetensors").is_file() and (out / "tokenizer_config.json").is_file()
    assert (out / MANIFEST).is_file()
    assert oct((out / "model.safetensors").stat().st_mode & 0o777) != "0o600"
    # refused the second time; the first output is untouched
    mtime = os.stat(out / "model.safetensors").st_mtime_ns
    one_error_line(run("quantize", str(tmp_path / "m"), "--out", str(out)), "exists")
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
def test_quantize_bad_input_is_one_line_and_writes_nothing(tmp_path, args, msg):
    lm = tiny_model("llama")
    lm.model.save_pretrained(tmp_path / "m")
    lm.tokenizer.save_pretrained(tmp_path / "m")
    out = tmp_path / "q"
    extra = [] if "--coords" in args else ["--no-keep-super"]
    one_error_line(run("quantize", str(tmp_path / "m"), "--out", str(out), *extra, *args), msg)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["m"]


def test_w8a8_table_reports_the_gap_closed():
    from superweight.quant.sweep import w8a8_markdown, w8a8_table

    lm = tiny_model("llama")
    coord = sw.Coord(1, 5, 7)
    plant(lm, coord, 400)
    table = w8a8_table(lm, [coord], {"t": "The quick brown fox jumps over the lazy dog. " * 10}, seqlen=64, max_windows=2)
    assert set(table) == {"full precision", "W8A8 naive", "W8A8 SA hold-out", "A8 naive", "A8 SA hold-out",
                          "W8A8 gap closed", "A8 gap closed"}
    t = table["W8A8 naive"]["t"], table["W8A8 SA hold-out"]["t"], table["full precision"]["t"]
    assert table["W8A8 gap closed"]["t"] == pytest.approx((t[0] - t[1]) / (t[0] - t[2]))
    assert "| W8A8 gap closed |" in w8a8_markdown(table)


def test_quant_compare_and_scale_cli_write_their_payloads(tmp_path, capsys):
    """The two commands' JSON come from their result objects (SweepResult, ScaleResult)."""
    from superweight.cli import main

    lm = tiny_model("llama")
    plant(lm, sw.Coord(1, 5, 7), 400)
    lm.model.save_pretrained(tmp_path / "m")
    lm.tokenizer.save_pretrained(tmp_path / "m")
    text = tmp_path / "t.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 40)
    common = [str(tmp_path / "m"), "--coords", "1:5:7", "--texts", str(text), "--seqlen", "64", "--max-windows", "1"]
    assert main(["quant-compare", *common, "--bits", "4", "--block-sizes", "whole", "--group-sizes", "32",
                 "--hqq-groups", "--no-w8a8", "--out", str(tmp_path / "qc"), "--json", str(tmp_path / "qc.json")]) == 0
    got = json.loads((tmp_path / "qc.json").read_text())
    assert got == json.loads((tmp_path / "qc" / "compare.json").read_text())
    assert got["super_weights"] == ["1:5:7"] and got["w8a8"] is None
    assert {p["method"] for p in got["points"]} == {"RTN blocks", "paper", "ours blocks", "RTN groups", "ours"}
    assert got["pareto"]["t.txt" if "t.txt" in got["pareto"] else str(text)]
    assert sorted(p.name for p in (tmp_path / "qc").iterdir()) == ["compare.json", "compare.md", "compare.png"]
    assert main(["scale", *common, "--tasks", "none", "--factors", "0", "1", "--out", str(tmp_path / "sc")]) == 0
    sc = json.loads((tmp_path / "sc" / "scale.json").read_text())
    assert sc["factors"] == [0.0, 1.0] and [r["condition"] for r in sc["results"]] == ["x0", "x1"]
    ppl = [next(iter(r["perplexity"].values())) for r in sc["results"]]
    assert ppl[0] != pytest.approx(ppl[1], rel=1e-3)  # zeroing the planted weight changes the model
