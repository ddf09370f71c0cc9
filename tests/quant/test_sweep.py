"""The method sweep (quant/sweep.py and `superweight quant-compare`): points, Pareto front, payloads."""
from __future__ import annotations

import json

import pytest
import torch
from tiny import plant, tiny_model

import superweight as sw
from superweight.quant.sweep import markdown, pareto, plan, sweep


def test_compare_on_a_tiny_model_with_hqq_and_quanto():
    lm = tiny_model("llama")
    coord = sw.Coord(1, 5, 7)
    plant(lm, coord, 50)
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    text = "The quick brown fox jumps over the lazy dog. " * 20
    points = plan(bits=(4,), block_sizes=(256, None), group_sizes=(32,), hqq_groups=(32,))
    ref, pts = sweep(lm, [coord], {"t": text}, points, seqlen=64, max_windows=2)
    methods = {p.method for p in pts}
    assert methods == {"RTN blocks", "paper", "ours blocks", "RTN groups", "ours", "HQQ", "quanto"}
    hqq = next(p for p in pts if p.method == "HQQ")
    assert hqq.bits_per_weight == pytest.approx(4 + 32 / 32)
    quanto = next(p for p in pts if p.method == "quanto")
    # the tiny model's rows are 64 and 128 wide: quanto's group of 128 falls to 64 where it must
    assert 4 + 32 / 128 <= quanto.bits_per_weight <= 4 + 32 / 64
    assert quanto.perplexity["t"] != pytest.approx(ref.perplexity["t"], rel=1e-6)  # it did quantize
    assert all(torch.equal(p, before[n]) for n, p in lm.model.named_parameters())  # and every point was undone
    for p in pts:
        assert p.perplexity["t"] > 0 and p.bits_per_weight > 4
    front = pareto(pts, "t")
    # the front: no point beats one of its points on both bits and perplexity, and every
    # point left out is beaten by one of them
    beats = lambda a, b: (a.bits_per_weight <= b.bits_per_weight and a.perplexity["t"] < b.perplexity["t"])  # noqa: E731
    assert front and not any(beats(p, f) for f in front for p in pts if p is not f)
    assert all(any(beats(f, p) or f.bits_per_weight < p.bits_per_weight and f.perplexity["t"] <= p.perplexity["t"]
                   for f in front) for p in pts if p not in front)
    table = markdown(ref, pts)
    assert "full precision" in table and "HQQ" in table


# ---- the command line ----


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
                 "--hqq-groups", "--no-quanto", "--no-w8a8", "--out", str(tmp_path / "qc"), "--json", str(tmp_path / "qc.json")]) == 0
    got = json.loads((tmp_path / "qc.json").read_text())
    assert got == json.loads((tmp_path / "qc" / "compare.json").read_text())
    assert got["super_weights"] == ["1:5:7"] and got["w8a8"] is None
    assert {p["method"] for p in got["points"]} == {"RTN blocks", "paper", "ours blocks", "RTN groups", "ours"}
    front = got["pareto"]["t.txt" if "t.txt" in got["pareto"] else str(text)]
    labels = {f"{p['method']} {p['bits']}-bit {p['size']}" for p in got["points"]}
    assert front and set(front) <= labels  # the front names measured points, at least one
    assert sorted(p.name for p in (tmp_path / "qc").iterdir()) == ["compare.json", "compare.md", "compare.png"]
    assert main(["scale", *common, "--tasks", "none", "--factors", "0", "1", "--out", str(tmp_path / "sc")]) == 0
    sc = json.loads((tmp_path / "sc" / "scale.json").read_text())
    assert sc["factors"] == [0.0, 1.0] and [r["condition"] for r in sc["results"]] == ["x0", "x1"]
    ppl = [next(iter(r["perplexity"].values())) for r in sc["results"]]
    assert ppl[0] != pytest.approx(ppl[1], rel=1e-3)  # zeroing the planted weight changes the model
