"""The shape of the code, kept: no import cycles in any package (not even under
TYPE_CHECKING), no module over 400 lines, no function of the kernel over 60 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGES = Path(__file__).resolve().parents[2] / "packages"
SOURCES = {
    "stagewise": PACKAGES / "kernel/src/stagewise",
    "stagewise_sql": PACKAGES / "persistence-sql/src/stagewise_sql",
    "stagewise_node": PACKAGES / "host-node/src/stagewise_node",
    "stagewise_serverless": PACKAGES / "host-serverless/src/stagewise_serverless",
}


def modules(package: str) -> dict[str, Path]:
    root = SOURCES[package]
    found = {}
    for path in root.rglob("*.py"):
        if "migrations" in path.parts:
            continue
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(path: Path, known: set[str]) -> set[str]:
    """Every module of `known` that `path` imports, anywhere in it (TYPE_CHECKING blocks
    and function bodies included); `from package import module` imports the module."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                names.add(sub if sub in known else node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names & known


def cycle_in(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                return [*stack[stack.index(dep) :], dep]
            if dep not in state and (found := visit(dep)) is not None:
                return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


@pytest.mark.parametrize("package", list(SOURCES))
def test_no_package_has_an_import_cycle(package: str) -> None:
    found = modules(package)
    # A package's __init__ re-exports its modules; a module importing the package's public
    # names would close a cycle through it, and that counts too.
    graph = {name: imports(path, set(found)) - {name} for name, path in found.items()}
    graph[package] -= {n for n in graph[package] if n.startswith(f"{package}.testing")}
    assert cycle_in(graph) is None, " -> ".join(cycle_in(graph) or [])


@pytest.mark.parametrize("package", list(SOURCES))
def test_no_module_is_over_400_lines(package: str) -> None:
    long = {
        name: lines
        for name, path in modules(package).items()
        if (lines := len(path.read_text().splitlines())) > 400
    }
    assert long == {}


def test_no_function_of_the_kernel_is_over_60_lines() -> None:
    long = {}
    for name, path in modules("stagewise").items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                if size > 60:
                    long[f"{name}.{node.name}"] = size
    assert long == {}
