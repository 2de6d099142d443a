"""The package's import graph: layers import one way, with no cycles and no private reach-ins.

Layers, bottom up: base modules (``errors``, ``validate``, ``progress``, ``cache``), then
``sim`` and ``io`` (peers that do not import each other), ``fit``, ``summarize``,
``study``, ``cli``.
Every import counts, at module top or inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "llmnas_transfer"
BASE = ("errors", "validate", "progress", "cache")
RANK = {"base": 0, "sim": 1, "io": 1, "fit": 2,
        "summarize": 3, "study": 4, "cli": 5}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(module, imported names, line) for every llmnas_transfer import in ``path``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.split(".")[0] == "llmnas_transfer":
            out.append((node.module, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "llmnas_transfer":
                    out.append((a.name, [], node.lineno))
    return out


MODULES = {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    if len(parts) < 2:
        return None
    return "base" if parts[1] in BASE else parts[1]


def _target(module: str, names: list[str]) -> list[str]:
    """The modules an import statement loads (a name may itself be a submodule)."""
    out = []
    for n in names:
        if f"{module}.{n}" in MODULES:
            out.append(f"{module}.{n}")
    return out or [module]


def _edges() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for mod, path in MODULES.items():
        for target, names, _ in _imports(path):
            for t in _target(target, names):
                if t != mod and t in MODULES:
                    graph[mod].add(t)
    return graph


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _layer(m) in RANK))
def test_imports_go_down_the_layers(module):
    own = _layer(module)
    for target, names, line in _imports(MODULES[module]):
        if target == "llmnas_transfer":
            assert names == ["__version__"], (
                f"{module}:{line} imports {names} from the package root; import from the "
                "defining module")
            continue
        other = _layer(target)
        if other is None or other == own or other == "data":
            continue
        assert other in RANK, f"{module}:{line} imports unknown layer {target}"
        assert RANK[other] < RANK[own], f"{module}:{line} imports {target} (layer {other})"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_private_names_imported_across_modules(module):
    for target, names, line in _imports(MODULES[module]):
        private = [n for n in names if n.startswith("_") and n != "__version__"]
        assert not private, f"{module}:{line} imports private {private} from {target}"


def test_import_graph_has_no_cycles():
    graph = _edges()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if n == "llmnas_transfer":
                continue
            if state.get(n) == 1:
                cycle = stack[stack.index(n):] + [n]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_every_module_states_its_job():
    for mod, path in MODULES.items():
        doc = ast.get_docstring(ast.parse(path.read_text()))
        if mod.endswith("__main__"):
            continue
        assert doc and doc.strip().splitlines()[0].strip(), f"{mod} has no one-line docstring"
