"""The layout keeps its promises: the package imports lightly, and architecture knowledge
stays in the adapter."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import superweight as sw

SRC = Path(sw.__file__).parent
ADAPTER_SIDE = {"models/adapters.py", "models/streaming.py",  # the adapter and the reader it calls
                "quant/engines.py"}  # vLLM's own names, replayed to check what it would load
# names of modules and parameters that differ between families
FAMILY_NAMES = ("down_proj", "gate_up_proj", "c_proj", "dense_4h_to_h", "fc_out", "block_sparse_moe",
                "model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers")


def test_the_package_imports_its_public_names_on_first_use_without_torch():
    code = ("import sys, superweight as sw; assert 'torch' not in sys.modules; "
            "assert sw.Coord.parse('1:2:3').layer == 1 and callable(sw.detect) and callable(sw.index); "
            "import superweight.find, superweight.catalog; assert callable(sw.detect) and callable(sw.index); "
            "assert type(sw).__name__ == 'module'; "  # no class swapped in to keep the names
            "assert sw.DetectResult.__name__ == 'DetectResult'; print(sorted(set(sw.__all__) - set(dir(sw)) - set(sw._PUBLIC)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _code_strings_and_attributes(tree: ast.AST):
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            yield node.lineno, node.attr
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.lineno, node.value


def test_no_module_outside_the_adapter_names_a_family_layout():
    leaks = []
    for f in sorted(SRC.rglob("*.py")):
        rel = f.relative_to(SRC).as_posix()
        if rel in ADAPTER_SIDE:
            continue
        for line, text in _code_strings_and_attributes(ast.parse(f.read_text())):
            if text == "family" or any(name in text for name in FAMILY_NAMES) and not text.startswith("*"):
                leaks.append(f"{rel}:{line}: {text[:60]!r}")
    assert not leaks, leaks


# -- the adapter: where each family keeps its layers and down projections, and how stored
def test_sites_are_range_checked_and_read_in_output_input_terms():
    import pytest
    import torch
    from tiny import tiny_model

    for family, storage in (("llama", "linear"), ("gpt2", "conv1d"), ("mixtral", "experts")):
        lm = tiny_model(family)
        a = lm.adapter
        expert = 0 if family == "mixtral" else None
        site = a.site(sw.Coord(1, 3, 5, expert))
        out, inp = site.shape
        w = a.weight(site)  # [out, in] whatever the storage
        assert tuple(w.shape) == (out, inp)
        assert a.value(sw.Coord(1, 3, 5, expert)) == float(w[3, 5])
        stored = a.read(site.param_name)
        assert a.storage(stored).kind == storage
        rows = a.storage(stored).matrix(stored)  # [rows, in]: an expert's rows are stacked after the one before
        assert torch.equal(rows[:out], w)
        with pytest.raises(sw.UsageError, match="out of range"):
            a.site(sw.Coord(1, out, 0, expert))
        with pytest.raises(sw.UsageError, match="layer 99 out of range"):
            a.site(sw.Coord(99, 0, 0, expert))
        names = [n for n, _ in a.linear_weights()]
        assert site.param_name in names and not any("embed" in n or "norm" in n or "wte" in n for n in names)


def test_a_new_family_is_one_entry(monkeypatch):
    """README, "What a change touches": a family is its ``Family`` line in models/adapters.py.
    BLOOM (not supported: ``transformer.h``, ``mlp.dense_4h_to_h``, its own attention with
    ALiBi) with that one line added: detect finds and grades the weight planted in it."""
    import pytest
    import torch
    from tiny import byte_tokenizer, graded, plant
    from transformers import BloomConfig, BloomForCausalLM

    from superweight.models import adapters

    with pytest.raises(sw.UnsupportedModelError, match="unsupported architecture 'bloom'"):
        adapters.family_for("bloom")
    monkeypatch.setattr(adapters, "FAMILIES", adapters.FAMILIES + (
        adapters.Family("bloom", ("bloom",), "transformer.h", ("mlp.dense_4h_to_h",)),))
    torch.manual_seed(0)
    model = BloomForCausalLM(BloomConfig(vocab_size=258, hidden_size=64, n_layer=4, n_head=4, initializer_range=1.0,
                                         bos_token_id=256, eos_token_id=257, pad_token_id=257))
    lm = sw.LoadedModel.wrap(model.eval(), byte_tokenizer(), name="tiny-bloom")
    planted = sw.Coord(1, 5, 7)
    plant(lm, planted, 400)
    result = sw.detect(lm, sw.DetectConfig(window=32))
    assert graded(result) == [planted] and result.architecture == "bloom"
