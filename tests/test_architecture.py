"""The package layering that docs/architecture.md describes, checked on the import statements themselves.

Layers, lowest first: ``config``/``distributed``/``progress``/``imaging``/``drawing`` -> ``models``/``runtime`` (and
``cli_common``, the CLIs' model loading) -> ``data`` -> ``predictor`` -> ``eval`` -> ``export``/``distill`` -> ``run``.
A module may import from its own layer and the ones below, never from above, and no two modules of ``edgetam_train``
import each other (directly or through a longer circle).
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "edgetam_train"

LAYERS = {"config": 0, "distributed": 0, "progress": 0, "imaging": 0, "drawing": 0, "models": 1, "runtime": 1,
          "cli_common": 1, "data": 2, "predictor": 3, "eval": 4, "export": 5, "distill": 5, "run": 6, "callbacks": 6}


def _modules() -> dict[str, Path]:
    mods = {}
    for f in PKG.rglob("*.py"):
        name = ".".join(f.relative_to(PKG.parent).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = f
    return mods


def _imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the edgetam_train modules it imports (``from x import y`` counts y when y is a module)."""
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, f in mods.items():
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = m.split(".") if f.name == "__init__.py" else m.split(".")[:-1]
                    base = base[: len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                names = [target] + [f"{target}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for t in names:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and t != m and not m.startswith(t + ".") and t != "edgetam_train":
                    graph[m].add(t)
    return graph


def _layer(module: str) -> int:
    part = module.split(".")[1]
    return LAYERS[part]


def test_every_subpackage_has_a_layer():
    tops = {".".join(m.split(".")[:2]).split(".")[1] for m in _modules() if m != "edgetam_train"}
    assert tops <= set(LAYERS), f"packages without a layer: {sorted(tops - set(LAYERS))}"


def test_imports_point_down_the_layers():
    graph = _imports(_modules())
    upward = sorted(f"{m} -> {t}" for m, ts in graph.items() if m != "edgetam_train" for t in ts
                    if _layer(t) > _layer(m))
    assert not upward, "imports that point up the layers:\n" + "\n".join(upward)


def test_no_import_circles():
    graph = _imports(_modules())
    state: dict[str, int] = {}
    circles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_no_module_over_400_lines():
    """Small files, one concept each: no module of edgetam_train has more than 400 lines (no exceptions)."""
    long = sorted(f"{f.relative_to(PKG.parent)}: {n}" for f in PKG.rglob("*.py")
                  if (n := len(f.read_text().splitlines())) > 400)
    assert not long, long
