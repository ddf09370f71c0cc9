"""`quantize --format compressed-tensors` (quant/packed.py): a packed checkpoint that
transformers loads, equal to our simulation of the same configuration, as small on disk
as the manifest says."""
from __future__ import annotations

import json
import warnings

import pytest
import torch
from safetensors import safe_open
from tiny import plant, tiny_model
from transformers import AutoModelForCausalLM, CompressedTensorsConfig

import superweight as sw
from superweight.cli import main
from superweight.probe.measures import perplexity
from superweight.quant.apply import quantized
from superweight.quant.export import MANIFEST
from superweight.quant.packed import check, pack
from superweight.quant.rtn import QuantConfig, quantize_tensor

SW = sw.Coord(1, 5, 7)


def load_packed(path, symmetric: bool):
    """Symmetric packs load as they are; asymmetric ones need dequantize=True (packed.py)."""
    kw = {} if symmetric else {"quantization_config": CompressedTensorsConfig(dequantize=True)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AutoModelForCausalLM.from_pretrained(path, **kw).eval()


def stored_bits(path, names: list[str]) -> int:
    """Bits on disk of the tensors of the named weights (packed, scales, zero points, shape; or dense)."""
    total = 0
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        for k in f.keys():
            if any(k == n or k.startswith(n.removesuffix("weight")) and k.rsplit(".", 1)[-1].startswith("weight_")
                   for n in names):
                t = f.get_tensor(k)
                total += t.numel() * t.element_size() * 8
    return total


@pytest.fixture
def saved(tmp_path):
    lm = tiny_model("llama")
    plant(lm, SW, 50)
    lm.model.save_pretrained(tmp_path / "m")
    lm.tokenizer.save_pretrained(tmp_path / "m")
    return lm, tmp_path


@pytest.mark.parametrize("symmetric", [False, True])
def test_packed_checkpoint_loads_and_equals_the_simulation(saved, symmetric):
    lm, tmp = saved
    out = tmp / "q"
    args = ["quantize", str(tmp / "m"), "--coords", "1:5:7", "--bits", "4", "--group-size", "32",
            "--format", "compressed-tensors", "--out", str(out)] + ([] if symmetric else ["--no-sym"])
    assert main(args) == 0  # symmetric is the default: the pack plain from_pretrained loads
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert config["format"] == "pack-quantized" and config["quant_method"] == "compressed-tensors"
    assert config["config_groups"]["group_0"]["weights"]["symmetric"] is symmetric
    assert config["ignore"] == ["lm_head", "model.layers.1.mlp.down_proj"]  # the super weight's matrix
    got = load_packed(out, symmetric)
    held = "model.layers.1.mlp.down_proj.weight"
    cfg = QuantConfig(4, "group", 32, symmetric=symmetric, zero="int", scale_dtype="float32")
    ids = torch.randint(0, 256, (1, 48), generator=torch.Generator().manual_seed(0))
    ours = sw.load(str(out))  # our loader reads it too (dequantized on load), for audit and detect
    with torch.no_grad(), quantized(lm, cfg, exclude=[held]):
        want = lm.model(ids).logits
        assert torch.equal(got(ids).logits, want)
        assert torch.equal(ours.model(ids).logits, want)
    other = "model.layers.0.mlp.down_proj.weight"
    assert not torch.equal(got.get_parameter(other), lm.model.get_parameter(other))  # quantized
    assert torch.equal(got.get_parameter(held), lm.model.get_parameter(held))  # left exact
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["format"] == "compressed-tensors" and manifest["unquantized_matrices"] == [held]
    names = [t["name"] for t in manifest["tensors"]]
    # the manifest's bits are what the file holds for those weights (weight_shape: 128 bits each)
    assert stored_bits(out, names) == pytest.approx(manifest["bits_per_weight"] * manifest["quantized_weights"]
                                                   + 128 * (len(names) - 1), rel=1e-3)


def test_packed_codes_are_the_libraries_and_match_our_values():
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor

    from superweight.quant.packed import scheme

    w = torch.randn(64, 96, generator=torch.Generator().manual_seed(1)) * 0.05
    w[3, 40] = 2.0
    for symmetric in (False, True):
        cfg = QuantConfig(3, "group", 32, symmetric=symmetric, zero="int", scale_dtype="float32")
        tensors, q = pack("m", w, cfg)
        local = {k.removeprefix("m."): v for k, v in tensors.items()}
        back = PackedQuantizationCompressor.decompress(local, scheme(cfg))["weight"]
        assert torch.equal(back, q.dequantized)  # the library unpacks exactly what we simulated
        assert torch.equal(q.dequantized, quantize_tensor(w, cfg).dequantized)
        assert q.bits_per_weight == pytest.approx(3 + (32 + (0 if symmetric else 3)) / 32)
    # the integer zero point keeps zero exact
    assert (quantize_tensor(torch.zeros(4, 32).index_fill_(1, torch.tensor([3]), 1.0),
                            QuantConfig(4, "group", 32, zero="int")).dequantized[:, 0] == 0).all()


@pytest.mark.parametrize("args,msg", [
    (["--group-size", "48"], "group size 48 does not divide its input width"),
    (["--block-size", "256"], "compressed-tensors stores groups"),
    (["--act-ratio", "5"], "stores no sparse weights"),
    (["--keep-outliers", "0.001"], "stores no sparse weights"),
    (["--clip", "z:3"], "takes no --clip"),
])
def test_packed_refusals_are_one_line_and_write_nothing(saved, args, msg, capsys):
    _, tmp = saved
    out = tmp / "q"
    assert main(["quantize", str(tmp / "m"), "--coords", "1:5:7", "--format", "compressed-tensors",
                 "--out", str(out), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and msg in err[0]
    assert not out.exists()


def test_a_packed_checkpoint_is_not_streamed(saved, capsys):
    _, tmp = saved
    assert main(["quantize", str(tmp / "m"), "--coords", "1:5:7", "--group-size", "32", "--format",
                 "compressed-tensors", "--out", str(tmp / "q")]) == 0
    assert main(["verify", str(tmp / "q"), "--coords", "1:5:7", "--stream"]) == 2
    assert "read whole (dequantized on load); drop --stream" in capsys.readouterr().err


def test_check_accepts_what_it_can_store():
    assert check(QuantConfig(4, "group", 64, zero="int")).zero == "int"
    assert check(QuantConfig(8, "group", 64, symmetric=True)).symmetric
    with pytest.raises(sw.SuperweightError, match="integer zero points"):
        check(QuantConfig(4, "group", 64))


def test_packed_real_smollm2_loads_with_the_simulations_perplexity(smol_whole, tmp_path, gpl3_text, capsys):
    """The README's example on the embedded model, packed straight from its GGUF (streamed)
    at 4 bits in groups of 64: plain ``from_pretrained``, as the command prints it, loads it,
    and gives our simulation's perplexity to 1e-5."""
    out = tmp_path / "q"
    assert main(["quantize", "--bits", "4", "--group-size", "64", "--format", "compressed-tensors",
                 "--out", str(out), "--coords", "11:507:1229"]) == 0
    assert f"load it with: AutoModelForCausalLM.from_pretrained({str(out)!r})\n" in capsys.readouterr().out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    held = "model.layers.11.mlp.down_proj.weight"
    cfg = QuantConfig(4, "group", 64, symmetric=True, zero="int", scale_dtype="float32")
    ppl = lambda m: perplexity(m, smol_whole.tokenizer, gpl3_text, 256, 1)  # noqa: E731
    with quantized(smol_whole, cfg, exclude=[held]):
        want = ppl(smol_whole.model)
    fp = ppl(smol_whole.model)
    assert ppl(got) == pytest.approx(want, rel=1e-5)
    assert fp < want < 1.5 * fp
    manifest = json.loads((out / MANIFEST).read_text())
    size = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    assert size < 0.45 * 4 * sum(p.numel() for p in smol_whole.model.parameters())  # well under float32
    assert 4.5 < manifest["bits_per_weight"] < 5.0  # 4 + 32 / 64 (no zero points), and the one float32 matrix
    # vLLM's Marlin kernels need input widths divisible by 128: SmolLM2's 576 is not
    assert manifest["engines"]["serve"] == ["transformers"]
    assert manifest["engines"]["not"]["vLLM"] == "input widths 576 (Marlin needs multiples of 128)"
    from superweight.quant.engines import vllm_names

    assert vllm_names(out) == []  # its names would still load


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_pack_codes_is_the_libraries_layout_bit_for_bit(bits):
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    from superweight.quant.packed import pack_codes

    u = torch.randint(0, 2 ** bits, (37, 96), generator=torch.Generator().manual_seed(bits), dtype=torch.uint8)
    want = pack_to_int32((u.to(torch.int16) - 2 ** (bits - 1)).to(torch.int8), bits)
    assert torch.equal(pack_codes(u, bits), want)


def test_an_asymmetric_pack_is_asked_for_and_prints_its_loading_line(saved, capsys):
    """--no-sym: the command prints the one line that loads it; plain from_pretrained does not
    (the sizes of the packed zero points do not match what transformers allocates)."""
    _, tmp = saved
    out = tmp / "q"
    assert main(["quantize", str(tmp / "m"), "--coords", "1:5:7", "--group-size", "32", "--no-sym",
                 "--format", "compressed-tensors", "--out", str(out)]) == 0
    line = capsys.readouterr().out.splitlines()[-1]
    assert line == ("load it with: from transformers import AutoModelForCausalLM, CompressedTensorsConfig; "
                    f"AutoModelForCausalLM.from_pretrained({str(out)!r}, "
                    "quantization_config=CompressedTensorsConfig(dequantize=True))")
    code = line.removeprefix("load it with: ")
    assert exec(code, {}) is None  # the printed line runs as it is: its import included
    assert load_packed(out, symmetric=False) is not None
    with pytest.raises(Exception), warnings.catch_warnings():  # noqa: B017 - whatever transformers raises
        warnings.simplefilter("ignore")
        AutoModelForCausalLM.from_pretrained(out)


def test_a_3_bit_pack_says_vllm_cannot_serve_it(saved, capsys):
    _, tmp = saved
    out = tmp / "q3"
    assert main(["quantize", str(tmp / "m"), "--coords", "1:5:7", "--bits", "3", "--group-size", "32",
                 "--format", "compressed-tensors", "--out", f"{out}/"]) == 0
    text = capsys.readouterr().out
    assert "warning: vLLM and SGLang cannot serve this pack: 3-bit codes" in text
    assert f"written to {out}/ in" in text and "//" not in text.replace("://", "")
    assert json.loads((out / MANIFEST).read_text())["engines"]["serve"] == ["transformers"]


def test_a_group_size_that_does_not_divide_is_refused_before_detection(saved, capsys, monkeypatch):
    import superweight.verdicts as verdicts

    def banned(*a, **k):
        raise AssertionError("detection ran before the refusal")

    monkeypatch.setattr(verdicts, "detection", banned)
    _, tmp = saved
    assert main(["quantize", str(tmp / "m"), "--format", "compressed-tensors", "--group-size", "48",
                 "--out", str(tmp / "q")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "group size 48 does not divide its input width 64" in err[0]
    assert "pick a divisor: --group-size 64 or 32" in err[0]  # sizes that fit, the largest first
    assert not (tmp / "q").exists()


def test_audit_reads_a_packed_output(saved, capsys):
    """quantize --format compressed-tensors, then audit it: the pack is read whole,
    dequantized (no "drop --stream" for a flag the user never gave), and its held-out
    weight is exact."""
    _, tmp = saved
    out = tmp / "q"
    assert main(["quantize", str(tmp / "m"), "--coords", "1:5:7", "--group-size", "32",
                 "--format", "compressed-tensors", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["audit", str(tmp / "m"), str(out), "--coords", "1:5:7", "--window", "32",
                 "--json", str(tmp / "a.json")]) == 0, capsys.readouterr().err
    f, = json.loads((tmp / "a.json").read_text())["findings"]
    assert f["coord"] == "1:5:7" and f["rel_error"] == 0  # its matrix left unquantized: the value exact


def test_edit_refuses_a_packed_output_in_one_line_that_says_what_to_do(saved, capsys):
    _, tmp = saved
    out = tmp / "q"
    assert main(["quantize", str(tmp / "m"), "--coords", "1:5:7", "--group-size", "32",
                 "--format", "compressed-tensors", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["edit", str(out), "--zero", "1:5:7", "--out", str(tmp / "e")]) != 0
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "compressed-tensors checkpoint, read dequantized: edit the original, then quantize it" in err[0]
    assert not (tmp / "e").exists()
