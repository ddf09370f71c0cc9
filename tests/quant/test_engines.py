"""Who serves what ``quantize`` writes (quant/engines.py): vLLM's WNA16 and Marlin rules,
the manifest's ``engines`` entry and its console lines; ``vllm_names`` on written packs is
tested with every export (tests/quant/test_packed.py, the real models' tests)."""
from __future__ import annotations

from superweight.quant.engines import DENSE, describe, for_dense, for_pack, vllm_refusals
from superweight.quant.format import Dequantized
from superweight.quant.packed import CompressedTensors


def test_engine_rules_follow_vllms_wna16_and_marlin_limits():
    qwen = {"mlp.down_proj": (896, 4864), "mlp.up_proj": (4864, 896), "self_attn.k_proj": (128, 896)}
    assert vllm_refusals(4, 128, True, qwen) == [] and vllm_refusals(8, 64, True, qwen) == []
    assert vllm_refusals(4, 128, False, qwen) == []
    assert vllm_refusals(3, 128, True, qwen) == ["3-bit codes (its WNA16 kernels take 4 and 8 bits)"]
    assert "zero points at 4 bits only" in vllm_refusals(8, 128, False, qwen)[0]
    assert vllm_refusals(4, 256, True, qwen) == ["group size 256 (Marlin takes 32, 64, 128)"]
    assert vllm_refusals(4, 64, True, {"a": (576, 576)}) == ["input widths 576 (Marlin needs multiples of 128)"]
    assert vllm_refusals(4, 64, True, {"a": (96, 128)}) == ["output widths 96 (Marlin needs multiples of 64)"]
    e = for_pack(3, 128, True, qwen)
    assert e["serve"] == ["transformers"] and describe(e)[1].startswith("warning: vLLM and SGLang cannot serve")
    assert for_pack(4, 128, False, qwen)["serve"][0].startswith("transformers (CompressedTensorsConfig")


def test_a_float_checkpoint_is_served_by_every_engine_and_says_so_in_one_line():
    e = for_dense()
    assert e == {"serve": list(DENSE), "not": {}} and describe(e) == ["served by: transformers, vLLM, SGLang"]


def test_the_engines_line_comes_from_the_format():
    shapes = {"model.layers.0.mlp.down_proj": (896, 4864)}
    assert Dequantized().engines(None, shapes) == for_dense()
    pack = CompressedTensors()
    cfg = pack.config(bits=3, size=128)
    assert pack.engines(cfg, shapes) == for_pack(3, 128, True, shapes) and "vLLM" in pack.engines(cfg, shapes)["not"]
