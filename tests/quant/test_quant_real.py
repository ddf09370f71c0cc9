"""Quantization on real weights: SmolLM2-135M-Instruct, small configurations (the full
comparison lives in docs/results/quantization.md)."""
from __future__ import annotations

import json

import golden
import pytest
import torch
from transformers import AutoModelForCausalLM

import superweight as sw
from superweight.quant.w8a8 import w8a8
from superweight.probe.measures import perplexity
from superweight.quant.export import MANIFEST, save_quantized
from superweight.quant.rtn import QuantConfig
from superweight.quant.apply import massive_input_columns, quantized, quantizable

SW = sw.Coord(11, 507, 1229)
SEQLEN, WINDOWS = 512, 2


@pytest.fixture(scope="module")
def ppl(smol_whole, gpl3_text):
    return lambda model=None: perplexity(model or smol_whole.model, smol_whole.tokenizer, gpl3_text, SEQLEN, WINDOWS)


@pytest.fixture(scope="module")
def ppl_fp(ppl):
    return ppl()


def test_the_super_activation_channel_is_a_massive_input(smol_whole):
    cols = massive_input_columns(smol_whole, [n for n, _ in quantizable(smol_whole)], ratio=10, max_cols=8)
    assert 1229 in cols["model.layers.11.mlp.down_proj.weight"]  # the super weight's own input
    after = [n for n in cols if int(n.split(".")[2]) > 11 and n.endswith(("q_proj.weight", "up_proj.weight"))]
    assert sum(507 in cols[n] for n in after) > len(after) / 2  # the residual channel it writes


def test_holding_out_super_weight_and_massive_columns_beats_plain_rtn(smol_whole, ppl, ppl_fp):
    value = smol_whole.adapter.value(SW)
    with quantized(smol_whole, QuantConfig(bits=4, layout="group", size=128)) as plain:
        p_plain = ppl()
    with quantized(smol_whole, QuantConfig(bits=4, layout="group", size=128, act_ratio=10), keep=[SW]) as ours:
        assert smol_whole.adapter.value(SW) == value
        p_ours = ppl()
    assert smol_whole.adapter.value(SW) == value and ppl() == pytest.approx(ppl_fp)  # undone
    # measured (2 x 512 tokens): fp 23.3, plain 37, ours 28 at +0.14 bits per weight
    assert ppl_fp < p_ours < p_plain
    assert (p_plain - p_ours) > 0.3 * (p_plain - ppl_fp)
    assert ours.bits_per_weight - plain.bits_per_weight < 0.2


def test_paper_blocks_collapse_without_holdout(smol_whole, ppl, ppl_fp):
    with quantized(smol_whole, QuantConfig(bits=4, layout="block", size=None)):
        assert ppl() > 100 * ppl_fp  # one scale for the whole tensor


def test_w8a8_is_close_to_full_precision_and_undone(smol_whole, ppl, ppl_fp):
    with w8a8(smol_whole, holdout=[SW]):
        p = ppl()
    assert ppl_fp < p < 1.2 * ppl_fp
    assert ppl() == pytest.approx(ppl_fp)


def test_streamed_quantize_writes_a_checkpoint_transformers_loads(smol, tmp_path, ppl, ppl_fp):
    out = tmp_path / "q8"
    rep = save_quantized(smol, QuantConfig(bits=8, layout="group", size=128), out, keep=[SW])
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["super_weights_held"] == [str(SW)] and len(manifest["tensors"]) == 210
    golden.check("quantize-manifest-smollm2-q8", manifest)
    assert rep.bits_per_weight == pytest.approx(8 + 32 / 128, abs=0.05)
    _serves_as_an_hf_checkpoint(out, manifest)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert float(model.model.layers[11].mlp.down_proj.weight[507, 1229]) == smol.adapter.value(SW)
    assert ppl(model) == pytest.approx(ppl_fp, rel=0.02)  # 8-bit groups: nearly lossless


def test_quantize_straight_from_the_gguf_file(smol_gguf, tmp_path, ppl, ppl_fp):
    """No conversion: tensors are dequantized from the GGUF file one at a time, quantized and
    written; transformers loads the result."""
    out = tmp_path / "from-gguf"
    save_quantized(smol_gguf, QuantConfig(bits=8, layout="group", size=64), out, keep=[SW],
                   include=["*.mlp.*"], max_shard_bytes=200_000_000)
    assert len(list(out.glob("model-*.safetensors"))) >= 2
    _serves_as_an_hf_checkpoint(out, json.loads((out / MANIFEST).read_text()))
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert float(model.model.layers[11].mlp.down_proj.weight[507, 1229]) == pytest.approx(5.8757, abs=1e-4)
    assert ppl(model) == pytest.approx(ppl_fp, rel=0.02)


def _serves_as_an_hf_checkpoint(out, manifest):
    """What vLLM's loader and an HF checkpoint of the family need (quant/engines.py): the
    names vLLM maps (a tied embedding as embed_tokens), a config naming its architecture and
    carrying no stale quantization_config, a generation config."""
    from superweight.quant.engines import vllm_names

    assert vllm_names(out) == []
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["tie_word_embeddings"] is True
    assert "quantization_config" not in config
    assert (out / "generation_config.json").is_file()
    assert manifest["engines"] == {"serve": ["transformers", "vLLM", "SGLang"], "not": {}}
