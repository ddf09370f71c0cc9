"""`superweight audit` (audit.py): values, blocks, peaks and perplexity of a quantized copy
against its original, on tiny models and on both real models; bad input in one line."""
from __future__ import annotations

import json
import math

import pytest
import torch
from tiny import plant, tiny_model

import superweight as sw
from superweight.audit import AuditConfig, audit, block_errors
from superweight.edit import Edit, save_edited
from superweight.errors import UsageError
from superweight.quant.export import save_quantized
from superweight.quant.rtn import QuantConfig

SMALL = AuditConfig(window=32)


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    """A tiny llama with a planted super weight, and its 3-bit RTN copy in groups of 16
    (the super weight not held out)."""
    d = tmp_path_factory.mktemp("audit")
    lm = tiny_model("llama")
    coord = sw.Coord(1, 5, 7)
    plant(lm, coord, 30)
    lm.model.save_pretrained(d / "orig")
    lm.tokenizer.save_pretrained(d / "orig")
    orig = sw.load(str(d / "orig"), stream=True)
    save_quantized(orig, QuantConfig(bits=3, layout="group", size=16), d / "q3")
    save_quantized(orig, QuantConfig(bits=3, layout="group", size=16), d / "q3held", keep=[coord])
    return d, coord


def test_block_errors_measure_the_rest_of_the_block():
    o = torch.ones(4, 8)
    q = o.clone()
    q[1, 2:4] = 1.5  # the block of 4 holding (1, 1): elements 4..7 of row 1
    own, typical = block_errors(o, q, 4, 1 * 8 + 1, skip={1 * 8 + 1})
    assert own == pytest.approx(math.sqrt(2 * 0.25) / math.sqrt(3))
    assert typical == 0.0
    assert block_errors(o, q, None, 0, set()) == (None, None)
    z = torch.zeros(2, 8)
    z[0, 1] = 5.0  # a super weight whose block is otherwise all zero
    assert block_errors(z, z.clone(), 4, 1, skip={1}) == (None, 0.0)


def test_audit_of_our_rtn_output(tiny_pair):
    d, coord = tiny_pair
    orig = sw.load(str(d / "orig"), stream=True)
    plain = audit(orig, sw.load(str(d / "q3"), stream=True), [(coord, "given")], SMALL)
    held = audit(orig, sw.load(str(d / "q3held"), stream=True), [(coord, "given")], SMALL)
    f, h = plain.findings[0], held.findings[0]
    assert f.block.kind == "group 16" and f.block.size == 16
    assert f.original == h.original == h.quantized  # held out: exact
    assert h.rel_error == 0
    # the planted weight stretches its group: the rest of it is quantized worse than the median group
    assert f.block_error > f.typical_block_error
    assert h.block_error < f.block_error
    for a in (plain, held):
        assert set(a.ppl) == {"original", "quantized", "restored"}
        assert all(v > 1 for k in a.ppl for v in a.ppl[k].values())
    assert held.ppl["restored"] == held.ppl["quantized"]  # nothing to put back
    assert set(f.peak) == {"original", "quantized", "restored"}
    json.dumps(plain.to_dict(), allow_nan=False)


def test_different_models_are_refused(tiny_pair, tmp_path):
    d, coord = tiny_pair
    other = tiny_model("gpt2")
    other.model.save_pretrained(tmp_path / "gpt2")
    other.tokenizer.save_pretrained(tmp_path / "gpt2")
    with pytest.raises(UsageError, match="not the same model"):
        audit(sw.load(str(d / "orig")), sw.load(str(tmp_path / "gpt2")), [(coord, "given")], SMALL)


def test_cli_audit_json_and_errors(tiny_pair, tmp_path, capsys):
    from superweight.cli import main

    d, coord = tiny_pair
    assert main(["audit", str(d / "orig"), str(d / "q3"), "--coords", str(coord), "--window", "32",
                 "--json", str(tmp_path / "a.json")]) == 0
    out = json.loads((tmp_path / "a.json").read_text())
    assert out["findings"][0]["coord"] == str(coord) and out["findings"][0]["block"]["kind"] == "group 16"
    assert "loss recovered" in capsys.readouterr().out
    for args, message in ((["--coords", "9:1:1"], "layer 9 out of range"),
                          (["--window", "0"], "--window must be"),
                          (["--coords", "1:1:1", "--json", str(tmp_path)], "is a directory")):
        assert main(["audit", str(d / "orig"), str(d / "q3"), *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert main(["audit", str(d / "orig"), str(tmp_path / "missing")]) == 2
    assert "no such file or directory" in capsys.readouterr().err


def test_smollm2_gguf_requantized_to_q8_0(smol, smol_gguf, tmp_path):
    """gguf's own Q8_0 quantizer over the real model: the super weight is the largest of its
    block, so it is kept to float16 precision of the block scale; the audit reads the file's
    own blocks (32 weights) and the perplexity barely moves."""
    import gguf
    from gguf import GGMLQuantizationType as T

    from superweight.models import gguf_file

    reader = smol_gguf.adapter.streamer.ckpt.reader
    rep = {t.name: (gguf.quantize(gguf_file.values(t), T.Q8_0), T.Q8_0) for t in reader.tensors
           if t.name.startswith("blk.") and t.name.endswith("ffn_down.weight")}
    gguf_file.write_copy(reader, tmp_path / "q8.gguf", rep, {})
    coord = sw.Coord(11, 507, 1229)
    a = audit(smol, sw.load(str(tmp_path / "q8.gguf"), stream=True), [(coord, "super")], AuditConfig(window=128))
    f = a.findings[0]
    assert f.block.kind == "gguf Q8_0" and f.block.size == 32
    assert f.rel_error < 1e-3
    assert f.block_error > f.typical_block_error  # its block's scale is set by it
    for c in ("bos", "mid"):
        assert a.ppl["quantized"][c] == pytest.approx(a.ppl["original"][c], rel=0.05)
    assert f.verdict() == "kept"
    words = a.conclusion()
    assert words[0].startswith("11:507:1229 (super) kept: value within ") and "super activation " in words[0]
    assert words[-1].startswith("conclusion: ") and "keeps all 1 weight(s)" in words[-1]


def test_smollm2_edited_copy_audits_to_the_weight_it_lost(smol, tmp_path):
    """An edited copy (safetensors, from the converted checkpoint) is a "quantization" whose
    only error is the zeroed super weight: the audit finds a 100% error there, the super
    activation gone, and putting the weight back gives the original's numbers."""
    coord = sw.Coord(11, 507, 1229)
    save_edited(smol, [Edit(coord)], tmp_path / "z")
    edited = sw.load(str(tmp_path / "z"), stream=True)
    a = audit(smol, edited, [(coord, "super")], AuditConfig(window=128))
    f = a.findings[0]
    assert f.quantized == 0 and f.rel_error == 1 and f.block.kind == "assumed group 32"
    assert f.peak["quantized"] < f.peak["original"] / 3
    assert f.peak["restored"] == pytest.approx(f.peak["original"], rel=1e-5)
    for c in ("bos", "mid"):
        assert a.ppl["quantized"][c] > 2 * a.ppl["original"][c]
        assert a.ppl["restored"][c] == pytest.approx(a.ppl["original"][c], rel=1e-5)
        assert a.recovered(c) == pytest.approx(1.0, abs=1e-4)
    assert f.verdict() == "lost"
    first, last = a.conclusion()
    assert first.startswith("11:507:1229 (super) lost: value 5.876 -> 0 (-100%), super activation down ")
    assert "`superweight quantize --coords 11:507:1229 --out " in first  # the default model: no argument
    assert last.startswith("conclusion: ") and "keeps 0 of 1 weight(s) audited; 11:507:1229 lost (value -100%, " in last


# -- issue 24: refused before any work, in one line ------------------------------------------

def _one_line(capsys, code: int, pattern: str) -> None:
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == 2 and len(err) == 1 and err[0].startswith("superweight: error:") and pattern in err[0], (code, err)


@pytest.fixture
def no_detection(monkeypatch):
    """Detection is the expensive part: these refusals must come before it."""
    import superweight.verdicts as verdicts

    def banned(*a, **k):
        raise AssertionError("detection ran before the refusal")

    monkeypatch.setattr(verdicts, "detection", banned)


def test_mismatched_models_are_refused_before_detection(tiny_pair, tmp_path, capsys, no_detection):
    from superweight.cli import main

    d, _ = tiny_pair
    small = tiny_model("llama")
    small.model.config.num_hidden_layers = 3
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_config(small.model.config).save_pretrained(tmp_path / "three")
    small.tokenizer.save_pretrained(tmp_path / "three")
    capsys.readouterr()  # the save's own progress bar, when this test runs first
    _one_line(capsys, main(["audit", str(d / "orig"), str(tmp_path / "three")]), "not the same model")
    _one_line(capsys, main(["report", str(d / "orig"), "--audit", str(tmp_path / "three"),
                            "--out", str(tmp_path / "r.html")]), "not the same model")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["three"]


@pytest.mark.parametrize("manifest", ["{not json", "[1, 2]", '{"config": {"layout": "group", "size": "x"}}',
                                      '{"config": {"layout": "rows", "size": 16}}',
                                      '{"config": {"layout": "block", "size": 100000000000000000000000000000}}'])
def test_a_malformed_quantize_manifest_is_one_line(tiny_pair, tmp_path, capsys, no_detection, manifest):
    import shutil

    from superweight.cli import main
    from superweight.quant.export import MANIFEST

    d, _ = tiny_pair
    shutil.copytree(d / "q3", tmp_path / "q3")
    (tmp_path / "q3" / MANIFEST).write_text(manifest)
    _one_line(capsys, main(["audit", str(d / "orig"), str(tmp_path / "q3")]), f"{tmp_path / 'q3' / MANIFEST} is not")
    assert (tmp_path / "q3" / MANIFEST).read_text() == manifest


@pytest.mark.parametrize("prompt", ["Paris is nice", "Paris"])
def test_audit_prompt_is_one_prompt(tiny_pair, tmp_path, prompt):
    from superweight.cli import main

    d, coord = tiny_pair
    assert main(["audit", str(d / "orig"), str(d / "q3"), "--coords", str(coord), "--window", "32",
                 "--prompt", prompt, "--json", str(tmp_path / "a.json")]) == 0
    out = json.loads((tmp_path / "a.json").read_text())
    assert out["prompt"] == prompt and out["findings"][0]["peak"]["original"] > 0


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_named_in_one_line(tiny_pair, tmp_path, capsys, value):
    from superweight.cli import main

    d, coord = tiny_pair
    lm = sw.load(str(d / "orig"), stream=False)
    with torch.no_grad():
        lm.model.model.layers[2].self_attn.v_proj.weight[3, 4] = value
    lm.model.save_pretrained(tmp_path / "bad")
    lm.tokenizer.save_pretrained(tmp_path / "bad")
    source = (tmp_path / "bad" / "model.safetensors").read_bytes()
    capsys.readouterr()
    want = "model.layers.2.self_attn.v_proj.weight holds 1 non-finite value(s)"
    for args in (["detect", str(tmp_path / "bad"), "--json", str(tmp_path / "d.json"), "--window", "32"],
                 ["audit", str(d / "orig"), str(tmp_path / "bad"), "--coords", str(coord), "--window", "32",
                  "--json", str(tmp_path / "a.json")],
                 ["audit", str(d / "orig"), str(tmp_path / "bad"), "--window", "32"],
                 ["audit", str(tmp_path / "bad"), str(d / "q3"), "--coords", str(coord), "--window", "32"]):
        _one_line(capsys, main(args), want)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad"]
    assert (tmp_path / "bad" / "model.safetensors").read_bytes() == source
    # a NaN at the audited weight of the copy names the copy, not the original
    with torch.no_grad():
        lm.model.model.layers[2].self_attn.v_proj.weight[3, 4] = 0.0
        lm.model.model.layers[coord.layer].mlp.down_proj.weight[coord.row, coord.col] = value
    lm.model.save_pretrained(tmp_path / "bad")
    _one_line(capsys, main(["audit", str(d / "orig"), str(tmp_path / "bad"), "--coords", str(coord), "--window",
                            "32"]), f"model.layers.{coord.layer}.mlp.down_proj.weight holds 1 non-finite value(s)")


def test_percentages_are_never_minus_zero_nor_exponents():
    from superweight.numbers import fmt_pct

    assert [fmt_pct(x) for x in (-1e-9, -0.004, 1.0, 0.9996, 1e-7, 0, None)] == \
        [">-0.01%", "-0.4%", "100%", "100%", "<0.01%", "0%", "-"]


def _finding(rel: float, peak_quantized: float, block_error: float = 0.1):
    from superweight.audit import Block, FindingAudit

    return FindingAudit(sw.Coord(11, 507, 1229), "super", 5.876, 5.876 * (1 - rel), Block("group 64", 64), block_error,
                        0.1, {"original": 24058.0, "quantized": peak_quantized, "restored": peak_quantized})


def test_a_kept_value_with_a_fallen_activation_is_not_told_to_hold_it_out():
    """Held out (value exact) but its super activation down 15%: holding it out again cannot
    help; the conclusion says what can. A damaged value is told to be held out, with a
    command that runs: the model as the user named it (quoted), the default with none."""
    from superweight.audit import AuditResult

    ppl = {k: {"bos": 50.0, "mid": 60.0} for k in ("original", "quantized", "restored")}
    held = AuditResult("SmolLM2 (GGUF)", "my out/", [_finding(0.0, 20504.0)], ppl, {}, model_arg="smollm2")
    (first, last) = held.conclusion()
    assert "moved: value exact, super activation down 15%" in first and "holding it out cannot help" in first
    assert "superweight quantize" not in first
    assert last.endswith("keeps 0 of 1 weight(s) audited; 11:507:1229 moved (value 0%, activation -15%): it kept "
                         "its value but not its activation: the weights that build the activation need more bits or "
                         "smaller groups")
    both = AuditResult("SmolLM2 (GGUF)", "q", [_finding(0.0, 20504.0), _finding(0.2, 20504.0)], ppl, {}, model_arg="")
    assert both.conclusion()[-1].endswith("requantize with 11:507:1229 held out; 11:507:1229 kept its value but not "
                                          "its activation: the weights that build the activation need more bits or "
                                          "smaller groups")
    moved = AuditResult("SmolLM2 (GGUF)", "my out/", [_finding(0.2, 20504.0)], ppl, {}, model_arg="/m/a b")
    first, last = moved.conclusion()
    assert "`superweight quantize '/m/a b' --coords 11:507:1229 --out 'my out-held/'`" in first
    assert last.endswith("requantize with 11:507:1229 held out")
    default = AuditResult("SmolLM2 (GGUF)", "q", [_finding(0.2, 20504.0)], ppl, {}, model_arg="")
    assert "`superweight quantize --coords 11:507:1229 --out q-held/`" in default.conclusion()[0]



def test_an_exact_outlier_whose_block_was_crushed_is_still_not_told_to_hold_it_out():
    """Qwen2.5-Coder's 2:62:1980 in a 4-bit group-128 pack: value exact, the rest of its block
    100% off (the matrix's median block 11%), activation down 15%. Leaving its matrix
    unquantized did not bring the activation back (docs/benchmarks.md), so the advice stays
    "more bits or smaller groups"."""
    from superweight.audit import AuditResult

    ppl = {k: {"bos": 50.0, "mid": 60.0} for k in ("original", "quantized", "restored")}
    a = AuditResult("Qwen (GGUF)", "q", [_finding(0.0, 20504.0, block_error=1.0)], ppl, {}, model_arg="qwen2.5-coder-0.5b")
    first, _ = a.conclusion()
    assert "holding it out cannot help" in first and "superweight quantize" not in first


def test_an_assumed_block_is_said_and_an_engines_copy_is_told_its_recipe():
    """Issue 39: "assumed" only when the checkpoint says nothing, and then the conclusion says
    so; a damaged value in an engine's copy is told the recipe for that engine."""
    from superweight.audit import AuditResult, Block

    ppl = {k: {"bos": 50.0, "mid": 60.0} for k in ("original", "quantized", "restored")}
    f = _finding(0.2, 20504.0)
    f.block = Block("assumed group 32", 32)
    a = AuditResult("SmolLM2 (GGUF)", "q", [f], ppl, {}, model_arg="smollm2")
    assert a.conclusion()[-1].endswith("(the checkpoint does not say how it was quantized: block errors assume "
                                       "groups of 32 weights of a row)")
    f.block = Block("compressed-tensors int4 sym group 64", 64)
    b = AuditResult("SmolLM2 (GGUF)", "q", [f], ppl, {}, model_arg="smollm2", engine="llmcompressor")
    first, last = b.conclusion()
    assert first.endswith("requantize with its matrix protected, `superweight recipe smollm2 --for llmcompressor`")
    assert "does not say" not in last and "(`superweight recipe smollm2 --for llmcompressor`)" in last
