"""The output formats' seam (quant/format.py, quant/formats.py): every registered format
answers the same interface, a new one is one class plus its registry line (one that needs its
own loading too), and the names cost no torch."""
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
from superweight.models.load import load as load_model
from superweight.quant.format import Format
from superweight.quant.rtn import QuantConfig


class Rounded(Format):
    """A format written for this test only: the quantized values stored at float16, and a
    file of its own beside them."""

    name = "rounded"

    def store(self, name, w, cfg, quantize):
        values, q = quantize(w)
        return {name: values.to(torch.float16)}, q

    def finish(self, out, lm, cfg, quantized_modules):
        (out / "rounded.txt").write_text("\n".join(sorted(quantized_modules)))

    def engines(self, cfg, shapes):
        return {"serve": ["this test"], "not": {}}


@pytest.mark.parametrize("name", list(formats.FORMATS))
def test_every_registered_format_answers_the_interface(name):
    fmt = formats.get(name)
    assert isinstance(fmt, Format) and fmt.name == name and isinstance(fmt.leaves(True), bool)
    cfg = fmt.config(bits=8, size=32)
    assert all(getattr(cfg, k) == v for k, v in fmt.defaults().items()) and cfg.bits == 8
    assert fmt.config(bits=8, symmetric=not cfg.symmetric, zero="int").symmetric is not cfg.symmetric  # the user's wins
    assert fmt.config(symmetric=None).symmetric == cfg.symmetric  # None: not given


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


class Doubled(Format):
    """A format written for this test only, whose outputs need loading of their own: each
    quantized weight stored times two, and a ``quantization_config`` that says so; read back
    through its reader (``after``), which halves them."""

    name = "doubled"
    quant_method = "superweight-test-doubled"

    def store(self, name, w, cfg, quantize):
        values, q = quantize(w)
        return {name: values * 2}, q

    def finish(self, out, lm, cfg, quantized_modules):
        config = json.loads((out / "config.json").read_text())
        config["quantization_config"] = {"quant_method": self.quant_method, "doubled": sorted(quantized_modules)}
        (out / "config.json").write_text(json.dumps(config))

    def after(self, model, quantization_config):
        modules = dict(model.named_modules())
        for m in quantization_config["doubled"]:
            modules[m].weight.data /= 2


def test_a_format_that_needs_its_own_loading_is_one_class_and_its_registry_line(tmp_path, monkeypatch, cli_here):
    """Issue 41: reading back is the format's too; ``load`` (the package's, the command
    line's) takes it from the registry, with nothing else touched."""
    monkeypatch.setitem(formats.FORMATS, "doubled", f"{__name__}:Doubled")
    lm = tiny_model("llama")
    coord = sw.Coord(1, 5, 7)
    plant(lm, coord, 50)
    streamed = sw.load(str(saved(lm, tmp_path / "src")), stream=True)
    cfg = QuantConfig(bits=4, size=16)
    save_quantized(streamed, cfg, tmp_path / "plain", keep=[coord])
    save_quantized(streamed, cfg, tmp_path / "doubled", keep=[coord], format="doubled")
    plain = sw.load(str(tmp_path / "plain"), stream=False)
    read = sw.load(str(tmp_path / "doubled"))  # whole: a checkpoint saved quantized is read whole
    raw = load_model(str(tmp_path / "doubled"), stream=False)  # the loader without the registry's readers
    for name, w in plain.adapter.linear_weights():
        got = dict(read.adapter.linear_weights())[name]
        assert torch.equal(got, w), name
        assert torch.equal(dict(raw.adapter.linear_weights())[name], 2 * w), name  # what the reader undoes
    assert read.adapter.value(coord) == lm.adapter.value(coord)
    with pytest.raises(UsageError, match="superweight-test-doubled checkpoint is read whole"):
        sw.load(str(tmp_path / "doubled"), stream=True)


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
