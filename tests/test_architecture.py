"""The package structure docs/architecture.md draws: no import cycle, no oversized module.

The one-way layers themselves (bigmind imports no app, signals_app does not import events_app,
events_app's stage packages) are import-linter contracts in pyproject.toml, run by `make lint`.
Those contracts see a cycle only where it crosses a layer; this module checks the whole project
for cycles, counting imports inside functions (the only exception is an `AppConfig.ready()`,
where Django's documentation says signal handlers and checks are registered, after every app is
loaded), because an import hidden in a function to dodge a cycle is still a cycle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("bigmind", "signals_app", "events_app")
MAX_LINES = 600


def _project_modules() -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT)
            if "migrations" in relative.parts:
                continue
            parts = list(relative.with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _imports(module: str, path: Path, modules: dict[str, Path]) -> Iterator[tuple[str, int]]:
    """(imported project module, line) for every import in the file, at any depth."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    skipped: set[int] = set()
    if path.name == "apps.py":
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name == "ready":
                skipped.update(id(inner) for inner in ast.walk(node))
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules:
                    yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                if candidate in modules:
                    yield candidate, node.lineno
                elif base in modules:
                    yield base, node.lineno


def _graph() -> dict[str, set[str]]:
    modules = _project_modules()
    return {
        module: {target for target, _ in _imports(module, path, modules) if target != module}
        for module, path in modules.items()
    }


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
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
    return found


def test_no_project_module_takes_part_in_an_import_cycle() -> None:
    assert _cycles(_graph()) == []


def test_the_cycle_finder_sees_a_cycle_through_an_import_inside_a_function() -> None:
    # Guards the check above against passing because it reads nothing.
    graph = _graph()
    assert "events_app.ingest.services" in graph["events_app.ingest.batch"]
    graph["events_app.models"] = {*graph["events_app.models"], "events_app.ingest.batch"}
    assert any("events_app.models" in cycle for cycle in _cycles(graph))


def test_imports_inside_functions_are_counted_and_ready_is_not(tmp_path: Path) -> None:
    source = (
        "def f():\n    import bigmind.errors\n"
        "class C:\n    def ready(self):\n        from events_app import models\n"
    )
    modules = {"bigmind.errors": tmp_path, "events_app.models": tmp_path}
    plain = tmp_path / "mod.py"
    plain.write_text(source)
    apps = tmp_path / "apps.py"
    apps.write_text(source)
    assert {m for m, _ in _imports("x.mod", plain, modules)} == {
        "bigmind.errors",
        "events_app.models",
    }
    assert {m for m, _ in _imports("x.apps", apps, modules)} == {"bigmind.errors"}


def test_no_project_module_is_over_600_lines() -> None:
    long = {
        str(path.relative_to(ROOT)): lines
        for path in _project_modules().values()
        if (lines := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}
