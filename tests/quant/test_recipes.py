"""`superweight recipe` (quant/recipes.py): each engine's own configuration, read by the
engine's own rules on tiny models, then applied by the real engine on both real models'
weights and proven by the audit (quant/run_engine.py, models/dense.py)."""
from __future__ import annotations

import json
import re

import pytest
import torch
import yaml
from tiny import plant, saved, tiny_model

import superweight as sw
from superweight.audit import AuditConfig, audit
from superweight.errors import UsageError
from superweight.quant.recipes import ENGINES_NAMES, RecipeConfig, default_group, linears, recipe
from superweight.quant.run_engine import applied

SW = sw.Coord(1, 5, 7)
SHORT = AuditConfig(window=64, windows=1)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    lm = tiny_model("llama")
    plant(lm, SW, 30)
    d = saved(lm, tmp_path_factory.mktemp("recipes") / "tiny")
    return sw.load(str(d), stream=False)


def test_every_engine_names_the_super_weights_matrix(planted):
    for engine in ENGINES_NAMES:
        r = recipe(planted, [(SW, "super")], RecipeConfig(engine=engine))
        assert [m.module for m in r.protected] == ["model.layers.1.mlp.down_proj"], engine
        assert "model.layers.1.mlp.down_proj" in r.text or "blk\\.1\\.ffn_down\\.weight" in r.text, engine
        assert r.bits["extra"] > 0 and r.bits["with"] == pytest.approx(r.bits["without"] + r.bits["extra"], abs=1e-3)
        assert r.cannot, engine
        plain = recipe(planted, [], RecipeConfig(engine=engine))
        assert plain.protected == [] and plain.bits["extra"] == 0


def test_llmcompressor_recipe_targets_the_matrix_by_compressed_tensors_rules(planted):
    from compressed_tensors.utils.match import match_name, match_targets

    r = recipe(planted, [(SW, "super")], RecipeConfig(engine="llmcompressor"))
    body = yaml.safe_load(r.text)["quant_stage"]["quant_modifiers"]["QuantizationModifier"]
    groups = body["config_groups"]
    targets = {t: g for g in groups.values() for t in g["targets"]}
    for name, module in planted.model.named_modules():
        if not isinstance(module, torch.nn.Linear) or any(match_name(name, i) for i in body["ignore"]):
            continue
        hit = match_targets(name, module, list(targets))  # the library's order: exact name, regex, class
        bits = targets[hit[0]]["weights"]["num_bits"]
        assert bits == (8 if name == "model.layers.1.mlp.down_proj" else 4), name
    assert "lm_head" in body["ignore"]
    assert groups["base"]["weights"]["group_size"] == default_group(linears(planted)) == 64
    skip = yaml.safe_load(recipe(planted, [(SW, "super")], RecipeConfig(engine="llmcompressor", protect="skip")).text)
    assert "model.layers.1.mlp.down_proj" in skip["quant_stage"]["quant_modifiers"]["QuantizationModifier"]["ignore"]
    w8a8 = recipe(planted, [(SW, "super")], RecipeConfig(engine="llmcompressor", scheme="W8A8"))
    mod = yaml.safe_load(w8a8.text)["quant_stage"]["quant_modifiers"]["QuantizationModifier"]
    assert "model.layers.1.mlp.down_proj" in mod["ignore"]  # its input is the super activation: never per-token int8
    gptq = recipe(planted, [(SW, "super")], RecipeConfig(engine="llmcompressor", modifier="gptq"))
    assert "GPTQModifier" in yaml.safe_load(gptq.text)["quant_stage"]["quant_modifiers"]


def test_llama_cpp_patterns_match_exactly_the_protected_tensor(planted):
    """llama-quantize lowercases each --tensor-type name and regex_searches it in every
    tensor name, first match wins (src/llama-quant.cpp)."""
    r = recipe(planted, [(SW, "super")], RecipeConfig(engine="llama.cpp"))
    pats = re.findall(r"--tensor-type '([^=]+)=(\w+)'", r.text)
    assert pats == [(re.escape("blk.1.ffn_down.weight"), "q8_0")]
    names = [f"blk.{i}.{t}.weight" for i in range(12) for t in ("ffn_down", "ffn_up", "ffn_gate", "attn_q")]
    hits = [n for n in names if re.search(pats[0][0].lower(), n)]
    assert hits == ["blk.1.ffn_down.weight"]
    assert r.text.rstrip().endswith("Q4_K_M")
    with pytest.raises(UsageError, match="llama-quantize type"):
        RecipeConfig(engine="llama.cpp", scheme="Q9_Z")


def test_bitsandbytes_skip_list_by_transformers_rule(planted):
    from transformers.quantizers.quantizers_utils import should_convert_module

    r = recipe(planted, [(SW, "super")], RecipeConfig(engine="bitsandbytes"))
    skip = r.data["llm_int8_skip_modules"]
    converted = [n for n, m in planted.model.named_modules()
                 if isinstance(m, torch.nn.Linear) and should_convert_module(n, skip)]
    assert "model.layers.1.mlp.down_proj" not in converted and "lm_head" not in converted
    assert "model.layers.2.mlp.down_proj" in converted  # layer 1 does not match layer 1x
    assert json.loads(json.dumps(r.data)) == r.data
    assert r.config.protect == "skip"  # its only means


def test_bad_options_are_one_line():
    for kw, pat in (({"engine": "gptq"}, "--for"), ({"engine": "hqq", "bits": 9}, "--bits"),
                    ({"engine": "bitsandbytes", "bits": 3}, "4 bits"), ({"engine": "hqq", "modifier": "gptq"}, "--modifier"),
                    ({"engine": "llmcompressor", "scheme": "W5A5"}, "--scheme"), ({"engine": "torchao", "scheme": "x"}, "--scheme")):
        with pytest.raises(UsageError, match=pat):
            RecipeConfig(**kw)


def test_llmcompressor_group_that_does_not_divide_is_refused(planted):
    with pytest.raises(UsageError, match="--group-size"):
        recipe(planted, [(SW, "super")], RecipeConfig(engine="llmcompressor", group_size=48))


@pytest.mark.parametrize("engine", ["hqq", "torchao", "bitsandbytes"])
def test_python_recipes_run_as_printed_and_read_back_exactly(planted, engine):
    """The engine applies the printed recipe; the dense copy computes what the engine's own
    modules compute, and the audit reads each block from the engine's record."""
    from transformers import AutoModelForCausalLM

    r = recipe(planted, [(SW, "super")], RecipeConfig(engine=engine))
    q = applied(r, planted.source)
    kept = q.blocks.get("model.layers.1.mlp.down_proj", ("none (skipped)", None))[0]
    assert re.search(r"8-bit|int8|none", kept) and not re.search(r"4-bit|int4|nf4", kept), kept  # not the base block
    assert any(re.search(r"4-bit|int4|nf4", k) for k, _ in q.blocks.values())
    assert all(not k.startswith("lm_head") for k in q.blocks)
    ns = {}
    exec(compile(r.text, r.filename, "exec"), ns)
    if engine == "bitsandbytes":
        ns["quantization_config"].bnb_4bit_compute_dtype = torch.float32  # the recipe's bfloat16 rounds the inputs
        eng = ns["load"](str(planted.source), dtype=torch.float32)
    else:
        eng = AutoModelForCausalLM.from_pretrained(planted.source, dtype=torch.float32)
        ns["quantize"](eng, **({"compute_dtype": torch.float32, "device": "cpu"} if engine == "hqq" else {}))
    from superweight.models.dense import engine_weight

    mod = eng.model.layers[0].mlp.down_proj
    w, _ = engine_weight(mod)  # before any forward: bitsandbytes repacks its CPU weights on the first one
    x = torch.randn(2, 3, mod.in_features if hasattr(mod, "in_features") else w.shape[1])
    tol = 1e-2 if engine == "bitsandbytes" else 1e-4  # its CPU kernel rounds to bfloat16 whatever the compute dtype
    with torch.no_grad():
        assert torch.allclose(mod(x).float(), torch.nn.functional.linear(x, w.float()), rtol=tol, atol=tol * 10)
        if engine != "bitsandbytes":  # the whole model: the dense copy computes what the engine computes
            ids = torch.tensor([[1, 5, 9, 17, 33, 65]])
            assert torch.allclose(eng(ids).logits, q.model(ids).logits, atol=1e-3, rtol=1e-3)
    a = audit(planted, q, [(SW, "super")], AuditConfig(window=32))
    assert a.engine == engine
    assert a.findings[0].rel_error < 0.01  # protected
    assert not a.findings[0].block.kind.startswith("assumed")


# -- the real engines on the real weights -------------------------------------------------------

def _graded(result):
    return [(f.coord, f.grade) for f in result.super_weights + result.strong]


@pytest.fixture(scope="module")
def smol_findings(smol_result):
    return _graded(smol_result)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["llmcompressor", "hqq", "torchao", "bitsandbytes"])
def test_real_engine_keeps_smollm2s_super_weights_with_the_recipe(smol_whole, smol_findings, engine, tmp_path):
    """SmolLM2 at 4 bits by each real engine with the recipe: every finding's value within
    1% and the block read from the checkpoint; the cost within 0.15 bits per weight."""
    r = recipe(smol_whole, smol_findings, RecipeConfig(engine=engine))
    assert r.bits["extra"] <= (0.2 if engine == "bitsandbytes" else 0.15)  # bnb can only skip: 16 bits
    q = applied(r, smol_whole.source, out=tmp_path / "q")
    a = audit(smol_whole, q, smol_findings, SHORT)
    for f in a.findings:
        assert f.rel_error < 0.01, (engine, str(f.coord), f.rel_error)
        assert not f.block.kind.startswith("assumed"), f.block.kind
    sup = next(f for f in a.findings if f.grade == "super")
    assert abs(sup.activation_change) < 0.10, (engine, sup.activation_change)


@pytest.mark.slow
def test_llmcompressor_without_the_recipe_loses_what_the_audit_names(smol_whole, smol_findings, tmp_path):
    """The clamp: llmcompressor's symmetric int4 scale is max/7.5, so a group's positive
    maximum rounds to code 8 and is clamped to 7 (-6.7%). The audit reads the group from the
    checkpoint's config, says the value was damaged and names the recipe."""
    r = recipe(smol_whole, [], RecipeConfig(engine="llmcompressor"))
    q = applied(r, smol_whole.source, out=tmp_path / "plain")
    a = audit(smol_whole, q, smol_findings, SHORT)
    sup = next(f for f in a.findings if f.grade == "super")
    assert sup.quantized / sup.original == pytest.approx(7 / 7.5, rel=1e-3)
    assert sup.block.kind == "compressed-tensors int4 sym group 64" and sup.block.size == 64
    assert sup.verdict() != "kept"
    assert "superweight recipe" in a.conclusion()[-1] and "--for llmcompressor" in a.conclusion()[-1]


@pytest.mark.slow
def test_gguf_format_writes_what_llama_cpp_reads(smol_whole, smol_findings, tmp_path, cli_here):
    """quantize --format gguf: Q4_0 by gguf-py, the super weight's matrix at Q8_0; gguf-py's
    reader (llama.cpp's format) and transformers read it back, and the audit keeps the value."""
    from gguf import GGUFReader

    coords = [str(c) for c, g in smol_findings if g == "super"]
    out = tmp_path / "g"
    proc = cli_here("quantize", "--format", "gguf", "--coords", *coords, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    files = list(out.glob("*.gguf"))
    assert len(files) == 1
    types = {t.name: t.tensor_type.name for t in GGUFReader(str(files[0])).tensors}
    assert types["blk.11.ffn_down.weight"] == "Q8_0" and types["blk.10.ffn_down.weight"] == "Q4_0"
    q = sw.load(str(files[0]), stream=True)
    a = audit(smol_whole, q, smol_findings, SHORT)
    sup = next(f for f in a.findings if f.grade == "super")
    assert sup.rel_error < 0.01 and sup.block.kind == "gguf Q8_0"
    assert a.engine == "llama.cpp"


@pytest.mark.slow
def test_recipe_command_prints_and_writes(smol_findings, tmp_path, cli_here):
    coords = [str(c) for c, _ in smol_findings]
    out = tmp_path / "recipe.yaml"
    proc = cli_here("recipe", "--for", "llmcompressor", "--coords", *coords, "--out", str(out), "--json", "-")
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    assert yaml.safe_load(out.read_text()) == yaml.safe_load(d["recipe"])
    assert {m["module"] for m in d["protected"]} == {f"model.layers.{c.layer}.mlp.down_proj" for c, _ in smol_findings}
    assert "bits per weight" in proc.stderr and "cannot protect" in proc.stderr
    proc = cli_here("recipe", "--for", "llama.cpp", "--coords", *coords)
    assert proc.returncode == 0 and "llama-quantize" in proc.stdout and "blk\\.11\\.ffn_down\\.weight=q8_0" in proc.stdout


def test_a_saved_bitsandbytes_checkpoint_is_audited_in_its_own_blocks(planted, tmp_path):
    """transformers loads a bitsandbytes-serialized directory into bnb's modules; ``load``
    reads them back dense, each with the block bitsandbytes recorded, and audit uses it."""
    r = recipe(planted, [], RecipeConfig(engine="bitsandbytes"))
    ns = {}
    exec(compile(r.text, r.filename, "exec"), ns)
    eng = ns["load"](str(planted.source), dtype=torch.float32)
    eng.save_pretrained(tmp_path / "nf4")  # before any forward (its CPU kernels repack the weights)
    planted.tokenizer.save_pretrained(tmp_path / "nf4")
    q = sw.load(str(tmp_path / "nf4"))
    assert q.blocks["model.layers.1.mlp.down_proj"] == ("bitsandbytes nf4 block 64", 64)
    a = audit(planted, q, [(SW, "super")], AuditConfig(window=32))
    f = a.findings[0]
    assert f.block.kind == "bitsandbytes nf4 block 64" and a.engine == "bitsandbytes"
    assert f.rel_error < 1e-3  # nf4 keeps a block's absmax exactly (its code 1.0)
    assert f.block_error > f.typical_block_error  # and the rest of its block pays


@pytest.mark.parametrize("scheme,group,protect,want", [
    ("W4A16", 32, "8bit", "compressed-tensors int4 sym group 32"),
    ("W4A16_ASYM", 64, "8bit", "compressed-tensors int4 asym group 64"),
    ("W4A16", 0, "8bit", "compressed-tensors int4 sym per channel"),
    ("W8A8", None, "8bit", "compressed-tensors int8 sym per channel"),
    ("W4A16", 64, "skip", "compressed-tensors int4 sym group 64"),
])
def test_audit_reads_llmcompressors_layout_from_the_checkpoint(planted, tmp_path, scheme, group, protect, want):
    """llmcompressor writes each recipe (pack-quantized, or int-quantized for W8A8); ``load``
    reads it back with each matrix decoded by its own group's scheme, and the audit's block
    is the config group that targets the matrix (the protected one: 8 bits, or ignored)."""
    from superweight.audit import block_of

    r = recipe(planted, [(SW, "super")], RecipeConfig(engine="llmcompressor", scheme=scheme, group_size=group,
                                                     protect=protect))
    q = applied(r, planted.source, out=tmp_path / "q")
    other = block_of(q, sw.Coord(2, 5, 7))
    assert other.kind == want and other.size == {32: 32, 64: 64}.get(group, 128)
    mine = block_of(q, SW)
    if protect == "skip" or scheme in ("W8A8", "W4A16_ASYM"):  # ASYM: transformers loads no mixed asymmetric pack
        assert mine.kind.startswith("none (ignored") and mine.size is None
    else:
        assert mine.kind == want.replace("int4", "int8") and mine.size == other.size
    a = audit(planted, q, [(SW, "super")], AuditConfig(window=32))
    assert a.findings[0].rel_error < 0.01 and a.engine == "llmcompressor"


def test_a_per_tensor_group_is_read_as_one_block(planted, tmp_path):
    """A hand-written recipe in the tensor strategy: one block of the whole matrix."""
    from superweight.audit import block_of

    r = recipe(planted, [], RecipeConfig(engine="llmcompressor", scheme="W8A16"))
    r.text = r.text.replace("strategy: group", "strategy: tensor").replace("group_size: 64\n", "")
    q = applied(r, planted.source, out=tmp_path / "t")
    b = block_of(q, SW)
    assert b.kind == "compressed-tensors int8 sym per tensor" and b.size == 128 * 64


def test_the_mlp_scope_adds_the_layers_gate_and_up(planted):
    r = recipe(planted, [(SW, "super")], RecipeConfig(engine="torchao", scope="mlp"))
    assert sorted(m.module for m in r.protected) == [f"model.layers.1.mlp.{p}_proj" for p in ("down", "gate", "up")]
    down = recipe(planted, [(SW, "super")], RecipeConfig(engine="torchao"))
    assert r.bits["extra"] == pytest.approx(3 * down.bits["extra"], rel=1e-3)
    with pytest.raises(UsageError, match="--scope"):
        RecipeConfig(engine="torchao", scope="layer")


def test_hqq_and_torchao_refuse_per_channel_instead_of_falling_back(planted):
    for engine in ("hqq", "torchao"):
        with pytest.raises(UsageError, match="quantizes in groups: give --group-size"):
            recipe(planted, [(SW, "super")], RecipeConfig(engine=engine, group_size=0))
