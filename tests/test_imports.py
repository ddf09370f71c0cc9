"""The package's import graph keeps its shape (tools/import_graph.py): no circle, at most
three imports that run back up a layer, no private name taken from another module, and
argparse only in the command line."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import import_graph  # noqa: E402


def test_the_import_graph_has_no_circle_and_few_imports_back_up():
    edges, private, argparse_users, back_up = import_graph.graph()
    assert import_graph.cycles(edges) == []
    assert len(back_up) <= 3, back_up
    assert private == []
    assert argparse_users == []
    assert "superweight.detect" not in edges["superweight.audit"]  # audit takes types, not the algorithm
    assert "superweight.detect" not in edges["superweight.output.html"]
