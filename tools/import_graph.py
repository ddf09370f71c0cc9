"""The package's import graph: cycles, imports that run back up, private names, argparse.

    python tools/import_graph.py            # a summary; exit 1 when a rule is broken
    python tools/import_graph.py --edges    # every edge, importer -> imported

Every ``import`` of a superweight module counts, at module level or inside a function (a
deferred import is still a dependency), and so does a registry's ``"superweight.x.y:Class"``
string (a class loaded by name is imported all the same: issue 41's hidden circle went
through one). The package is layered, lowest first (``LAYERS``):

0. leaves: errors, paths, version, coords, atomic (writes files whole), progress (how far a step is),
   hashing (a file's content identity), numbers, signing, wheels: each imports only leaves
1. reading models and data: models/*, index, texts
2. measuring: probe/*
3. detecting and proving: results, residual, detect, verification, verdicts, targets
4. what the commands do with it: quant/*, paper/*, audit, edit, overview
5. what the commands write: output/*
6. the face: cli, the package ``__init__``

An import "runs back up" when it goes from a lower layer to a higher one. At folder scale
(issue 41) every module of a folder (``models/``, ``probe/``, ``quant/``, ``paper/``, ``output/``)
sits in its folder's layer: a leaf lives on the ground floor, not in a folder above it, so no
folder imports from a folder above its own.
"""
from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "src" / "superweight"
LAYERS = [
    ("superweight.errors", "superweight.paths", "superweight.version", "superweight.coords", "superweight.atomic",
     "superweight.numbers", "superweight.signing", "superweight.wheels", "superweight.progress", "superweight.hashing"),
    ("superweight.models", "superweight.catalog", "superweight.texts"),
    ("superweight.probe",),
    ("superweight.results", "superweight.residual", "superweight.proof", "superweight.find", "superweight.verification",
     "superweight.verdicts", "superweight.targets"),
    ("superweight.quant", "superweight.paper", "superweight.audit", "superweight.edit", "superweight.overview"),
    ("superweight.output",),
    ("superweight.cli", "superweight"),
]


def layer(module: str) -> int:
    """The layer of ``module``: the longest prefix named in LAYERS decides."""
    best, found = -1, None
    for i, names in enumerate(LAYERS):
        for n in names:
            if (module == n or module.startswith(n + ".")) and len(n) > best:
                best, found = len(n), i
    if found is None:
        raise SystemExit(f"{module} is in no layer: add it to LAYERS")
    return found


def modules() -> dict[str, Path]:
    out = {}
    for f in ROOT.rglob("*.py"):
        parts = list(f.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def imports(name: str, path: Path, known: set[str]) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for each superweight import in ``path``."""
    tree = ast.parse(path.read_text())
    out = []
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("superweight"):
                    out.append((a.name, [], node.lineno))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(pkg.split(".")[: len(pkg.split(".")) - node.level + 1] + ([base] if base else []))
            if not base.startswith("superweight"):
                continue
            for a in node.names:
                sub = f"{base}.{a.name}"
                if sub in known:  # ``from superweight.models import load``: the module itself
                    out.append((sub, [], node.lineno))
                else:
                    out.append((base, [a.name], node.lineno))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and BY_NAME.match(node.value):
            out.append((node.value.split(":")[0], [], node.lineno))  # a registry's "module:class", loaded by name
    return out


BY_NAME = re.compile(r"^superweight(\.\w+)+:\w+$")


def folder(module: str) -> str | None:
    """``superweight.models`` for ``superweight.models.load``; None for a module at the top."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 else None


def folders_out_of_layer(mods) -> list[str]:
    """Modules that sit in another layer than their folder's (a leaf kept inside a folder above it)."""
    return [f"{m} (layer {layer(m)}) in {folder(m)} (layer {layer(folder(m))})"
            for m in sorted(mods) if folder(m) and layer(m) != layer(folder(m))]


def graph():
    mods = modules()
    edges: dict[str, set[str]] = {m: set() for m in mods}
    private, argparse_users, back_up = [], [], []
    for m, p in mods.items():
        src = p.read_text()
        if ("import argparse" in src or "from argparse" in src) and m != "superweight.cli":
            argparse_users.append(m)
        for target, names, line in imports(m, p, set(mods)):
            if target not in mods or target == m:
                continue
            edges[m].add(target)
            for n in names:
                if n.startswith("_") and not n.startswith("__"):
                    private.append(f"{m}:{line} imports {target}.{n}")
            if layer(target) > layer(m):
                back_up.append(f"{m}:{line} -> {target} (layer {layer(m)} -> {layer(target)})")
    return edges, private, argparse_users, back_up


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in edges:
        if v not in index:
            visit(v)
    return out


def main(argv: list[str]) -> int:
    edges, private, argparse_users, back_up = graph()
    if "--edges" in argv:
        for m in sorted(edges):
            for t in sorted(edges[m]):
                print(f"{m} -> {t}")
        return 0
    circles = cycles(edges)
    print(f"{len(edges)} modules, {sum(map(len, edges.values()))} imports")
    print(f"cycles: {len(circles)}")
    for c in circles:
        print("  " + " <-> ".join(c))
    print(f"imports that run back up: {len(back_up)} (none allowed)")
    for b in back_up:
        print("  " + b)
    print(f"private names imported from another module: {len(private)}")
    for p in private:
        print("  " + p)
    print(f"modules other than cli importing argparse: {argparse_users or 'none'}")
    misplaced = folders_out_of_layer(edges)
    print(f"modules out of their folder's layer: {len(misplaced)} (none allowed)")
    for m in misplaced:
        print("  " + m)
    broken = circles or back_up or private or argparse_users or misplaced
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
