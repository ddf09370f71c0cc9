"""The layout keeps its promises: old import paths still work, and architecture knowledge
stays in the adapter."""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import superweight as sw

SRC = Path(sw.__file__).parent
ADAPTER_SIDE = {"models/adapters.py", "models/streaming.py"}  # the adapter and the reader it calls
# names of modules and parameters that differ between families
FAMILY_NAMES = ("down_proj", "gate_up_proj", "c_proj", "dense_4h_to_h", "fc_out", "block_sparse_moe",
                "model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers")


def test_the_flat_module_paths_of_0_1_import_the_same_modules():
    for old, new in sw._MOVED.items():
        assert importlib.import_module(f"superweight.{old}") is importlib.import_module(f"superweight.{new}")
        assert getattr(sw, old) is importlib.import_module(f"superweight.{new}")  # sw.model, sw.export, ...
    from superweight.quant import QuantConfig, quantize_tensor
    from superweight.quant.rtn import QuantConfig as Q, quantize_tensor as qt

    assert QuantConfig is Q and quantize_tensor is qt


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
