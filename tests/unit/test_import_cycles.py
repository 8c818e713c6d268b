"""No import cycles in app/ and tools/: every import counts (late ones inside functions and TYPE_CHECKING ones
too), since a cycle is a knot in the design whether or not Python happens to resolve it at run time."""

from __future__ import annotations

import ast
from pathlib import Path

from support.server_process import REPO

ROOTS = (REPO / "app", REPO / "tools")


def module_files(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for the packages under `root` (a package is its __init__.py)."""
    modules = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _imported(module: str, path: Path, known: set[str]) -> set[str]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from a import b` imports the module a.b when there is one, else a name from a.
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:  # `import a.b.c` of a module we know as a.b
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def import_graph(roots: tuple[Path, ...]) -> dict[str, set[str]]:
    files = {name: path for root in roots for name, path in module_files(root).items()}
    known = set(files)
    return {name: _imported(name, path, known) for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles_in_app_and_tools() -> None:
    graph = import_graph(ROOTS)
    assert "hxp_enterprise_llm.api.app" in graph  # the walk found the package
    assert "hxp_tools.capacity" in graph
    assert cycles(graph) == []


def test_the_check_finds_a_cycle_through_a_late_import(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.b import thing\n")
    (package / "b.py").write_text("def thing():\n    from . import c\n")
    (package / "c.py").write_text("import pkg.a\n")
    (package / "d.py").write_text("from pkg import a\n")
    assert cycles(import_graph((tmp_path,))) == [["pkg.a", "pkg.b", "pkg.c"]]
