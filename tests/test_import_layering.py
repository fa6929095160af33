"""The import graph of the two packages: no cycles between modules, and arrayjit never imports
ocannl_py. Read from the source (module-level imports and imports inside functions alike; imports
under `if TYPE_CHECKING:` aside), so an import done lazily to dodge a cycle still counts."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("arrayjit", "ocannl_py")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported(tree: ast.AST, modules: dict[str, Path]) -> set[str]:
    """The project modules an import statement of `tree` names."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            # ast.walk cannot prune; the body's imports are removed below.
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                out.add(full if full in modules else node.module)
    return {m for m in out if m in modules}


def _type_checking_imports(tree: ast.AST, modules: dict[str, Path]) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            for stmt in node.body:
                out |= _imported(stmt, modules)
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules its import statements run: each named module and the packages
    above it (their `__init__` runs first), except the importer's own packages."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        named = _imported(tree, modules) - _type_checking_imports(tree, modules)
        own = {".".join(name.split(".")[:k]) for k in range(1, name.count(".") + 1)}
        edges = set()
        for target in named:
            parts = target.split(".")
            edges.update(".".join(parts[:k]) for k in range(1, len(parts) + 1))
        graph[name] = {e for e in edges if e in modules and e not in own and e != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_checker_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_imports_another_that_imports_it_back():
    cycle = _cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_arrayjit_never_imports_ocannl_py():
    graph = import_graph()
    for module, targets in graph.items():
        if module.startswith("arrayjit"):
            assert not any(t.startswith("ocannl_py") for t in targets), (module, targets)
