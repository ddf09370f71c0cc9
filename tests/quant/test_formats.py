"""The output formats' seam (quant/formats.py): every registered format answers the same
interface, a new one is one class plus its registry line, and the names cost no torch."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from tiny import plant, saved, tiny_model
from transformers import AutoModelForCausalLM

import superweight as sw
from superweight.errors import UsageError
from superweight.quant import formats
from superweight.quant.export import MANIFEST, save_quantized
from superweight.quant.formats import Format
from superweight.quant.rtn import QuantConfig


class Rounded(Format):
    """A format written for this test only: the quantized values stored at float16, and a
    file of its own beside them."""

    name = "rounded"

    def write(self, name, w, cfg, quantize):
        values, q = quantize(w)
        return {name: values.to(torch.float16)}, q

    packs = True  # its tensors go to the shards as written, under the names given

    def finish(self, out, lm, cfg, quantized_modules):
        (out / "rounded.txt").write_text("\n".join(sorted(quantized_modules)))

    def engines(self, cfg, shapes):
        return {"serve": ["this test"], "not": {}}


@pytest.mark.parametrize("name", list(formats.FORMATS))
def test_every_registered_format_answers_the_interface(name):
    fmt = formats.get(name)
    assert isinstance(fmt, Format) and fmt.name == name and fmt.holds_out in ("columns", "matrices")
    cfg = QuantConfig.for_format(name, bits=4, size=32)
    assert all(getattr(cfg, k) == v for k, v in fmt.defaults().items())
    assert QuantConfig.for_format(name, symmetric=False).symmetric is False  # what the user gives wins


def test_an_unknown_format_is_one_line():
    with pytest.raises(UsageError, match="unknown format 'ggml': dequantized, compressed-tensors, gguf"):
        formats.get("ggml")


def test_a_new_format_is_one_class_and_its_registry_line(tmp_path, monkeypatch):
    monkeypatch.setitem(formats.FORMATS, "rounded", f"{__name__}:Rounded")
    lm = tiny_model("llama")
    coord = sw.Coord(1, 5, 7)
    plant(lm, coord, 50)
    streamed = sw.load(str(saved(lm, tmp_path / "src")), stream=True)
    out = tmp_path / "q"
    rep = save_quantized(streamed, QuantConfig(bits=4, size=16), out, keep=[coord], format="rounded")
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["format"] == "rounded" and manifest["engines"]["serve"] == ["this test"]
    assert "model.layers.1.mlp.down_proj" in (out / "rounded.txt").read_text().split()
    loaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    w = loaded.model.layers[1].mlp.down_proj.weight
    assert w[5, 7] == torch.tensor(lm.adapter.value(coord)).half().float()  # held out exactly, stored at float16
    assert torch.equal(w, w.half().float()) and rep.held >= 1


def test_the_format_names_cost_no_torch():
    code = ("import sys, superweight.quant.formats as f; "
            "assert 'torch' not in sys.modules, 'torch imported'; print(','.join(f.FORMATS))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "dequantized,compressed-tensors,gguf"


def test_a_config_the_pack_cannot_store_is_refused_before_the_model_is_loaded(tmp_path, cli_here, error_line,
                                                                             monkeypatch):
    """Issue 42 (minor): ``--format compressed-tensors --block-size 64`` was refused only after
    the model was loaded."""
    import superweight.cli as cli

    def no_load(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(cli, "_load", no_load)
    error_line(cli_here("quantize", "--format", "compressed-tensors", "--block-size", "64", "--out",
                        str(tmp_path / "q")), "compressed-tensors stores groups")
    assert not (tmp_path / "q").exists()
