"""The layout's import rules (DESIGN.md section 2), checked on the source: `models` imports none of the
other packages, `training` and `serving` never import each other, `optimization` stands alone, and no
module imports another in a cycle. Imports inside functions count too (they cycle all the same)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("models", "training", "serving", "optimization", "energyopt")
FORBIDDEN = {  # package -> packages of the project it must not import
    "models": {"training", "serving", "optimization", "energyopt"},
    "training": {"serving", "energyopt"},
    "serving": {"training", "energyopt"},
    "optimization": {"models", "training", "serving", "energyopt"},
}


def import_graph() -> dict[str, set[str]]:
    """Module -> the project's modules it imports (module- and function-level)."""
    graph: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if "api" in path.relative_to(ROOT).parts:  # generated gRPC stubs
                continue
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            names: set[str] = set()
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names |= {a.name for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
            graph[module] = {n for n in names if n.split(".")[0] in PACKAGES}
    return {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}


def test_packages_import_only_what_the_layout_allows() -> None:
    graph = import_graph()
    assert len(graph) > 40  # the walk found the tree
    broken = sorted((m, d) for m, deps in graph.items() for d in deps
                    if d.split(".")[0] in FORBIDDEN.get(m.split(".")[0], ()))
    assert not broken, broken


def test_no_import_cycle() -> None:
    graph = import_graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        path.append(module)
        for dep in sorted(graph[module]):
            if state.get(dep) == 1:
                cycles.append(path[path.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, path)
        path.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    assert not cycles, [" -> ".join(c) for c in cycles]
