"""The package's import graph keeps its shape (tools/import_graph.py): no circle, no
import that runs back up a layer, no private name taken from another module, and
argparse only in the command line."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import import_graph  # noqa: E402


def test_the_import_graph_has_no_circle_and_no_import_back_up():
    edges, private, argparse_users, back_up = import_graph.graph()
    assert import_graph.cycles(edges) == []
    assert back_up == []  # issue 33: no import runs back up a layer
    assert import_graph.folders_out_of_layer(edges) == []  # issue 41: nor a folder, by a leaf kept in it
    assert private == []
    assert argparse_users == []
    assert "superweight.find" not in edges["superweight.audit"]  # audit takes types, not the algorithm
    assert "superweight.find" not in edges["superweight.output.html"]
    # the proof's set-up is shared: verify and audit build a Judge, neither runs the algorithm
    assert "superweight.find" not in edges["superweight.proof"]
    assert "superweight.find" not in edges["superweight.verification"]


def test_one_detect_call_makes_few_stops():
    """Issue 33: the walk of ``lm`` through ``detect`` (tools/follow_detect.py) is at most 15
    stops in at most 5 files: the algorithm, its proof, and the probing engine below them."""
    import follow_detect

    stops, files = follow_detect.follow()
    assert len(stops) <= 15 and len(files) <= 5, stops
    where = {s.split(":")[0] for s in stops}
    assert where <= {"find.py", "proof.py", "probe/passes.py", "probe/realtext.py", "residual.py"}, where


def test_no_module_re_exports_another_modules_names():
    """Issue 41: each name is imported from the module that defines it; no ``# noqa: F401``
    import of ours kept "because it was here" (third-party imports that only probe for a
    package are not re-exports)."""
    root = Path(import_graph.ROOT)
    kept = [f"{p.relative_to(root)}:{i}" for p in root.rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1)
            if "noqa: F401" in line and line.lstrip().startswith(("from superweight", "import superweight"))]
    assert kept == []
