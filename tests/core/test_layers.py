"""The import layers: io -> transforms -> models -> inference/engine -> pipelines -> cli, and no cycles.

Every import counts, also those made inside functions. Today's known exceptions are listed below; the test
fails on a new one and also when a listed one is gone (so the list only shrinks). ARCHITECTURE.md explains the layers.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

#: layer of each module, by the longest matching prefix (0 lowest)
LAYERS: dict[str, int] = {
    "medcnn._version": 0, "medcnn.errors": 0, "medcnn.device": 0, "medcnn.data": 0,
    "medcnn.io": 1, "medcnn.cases": 1,
    "medcnn.transforms": 2, "medcnn.preprocessing": 2,
    "medcnn.models": 3, "medcnn.prompt.modeling": 3,
    "medcnn": 4,  # the facade and everything not listed: inference, engine, metrics, explain, predictor, foreign, prompt
    "medcnn.pipelines": 5, "medcnn.batch": 5, "medcnn.validation": 5, "medcnn.demo": 5, "medcnn.synth": 5,
    "medcnn.prompt.apply": 5, "medcnn.prompt.evaluate": 5, "medcnn.evaluation": 5,
    "medcnn.cli": 6,
}

#: imports against the layers that exist today (importer, imported)
KNOWN_UPWARD: set[tuple[str, str]] = set()

#: import cycles that exist today, each as its sorted modules
KNOWN_CYCLES: set[tuple[str, ...]] = set()


def _modules() -> dict[str, Path]:
    mods = {}
    for p in [*REPO.glob("medcnn/**/*.py"), *REPO.glob("pipelines/**/*.py")]:
        parts = list(p.relative_to(REPO).with_suffix("").parts)
        if parts[0] == "pipelines":
            parts = ["medcnn", *parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = p
    return mods


def _edges(mods: dict[str, Path]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, *([node.module] if node.module else [])])
                # `from pkg import sub` imports the submodule; `from pkg import name` the package itself
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            else:
                continue
            for t in targets:
                # reaching into its own package's __init__ (re-exports) is no edge, except the top-level facade
                if t in mods and t != name and (t == "medcnn" or not name.startswith(t + ".")):
                    edges[name].add(t)
    return edges


def _layer(module: str) -> int:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[best]


def _cycles(edges: dict[str, set[str]]) -> set[tuple[str, ...]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: set[tuple[str, ...]] = set()
    counter = 0
    nodes = set(edges) | {t for ts in edges.values() for t in ts}
    for root in sorted(nodes):
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(edges.get(w, ())))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.add(tuple(sorted(comp)))
    return found


def test_no_import_runs_against_the_layers() -> None:
    edges = _edges(_modules())
    upward = {(a, b) for a, bs in edges.items() for b in bs if _layer(b) > _layer(a)}
    assert upward - KNOWN_UPWARD == set(), "imports against the layers (see ARCHITECTURE.md)"
    assert KNOWN_UPWARD - upward == set(), "a known exception is gone: remove it from KNOWN_UPWARD"


def test_no_new_import_cycle() -> None:
    cycles = _cycles(_edges(_modules()))
    assert cycles - KNOWN_CYCLES == set(), "new import cycles"
    assert KNOWN_CYCLES - cycles == set(), "a known cycle is gone: remove it from KNOWN_CYCLES"


def test_the_checks_see_a_violation() -> None:
    edges = {"medcnn.io.api": {"medcnn.cli.main"}, "medcnn.cli.main": {"medcnn.io.api"}}
    assert _layer("medcnn.io.api") < _layer("medcnn.cli.main")
    assert _cycles(edges) == {("medcnn.cli.main", "medcnn.io.api")}
    assert _layer("medcnn.prompt.modeling.sam") == 3 and _layer("medcnn.prompt.apply") == 5
    assert _layer("medcnn.inference.ood") == 4
