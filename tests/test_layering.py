"""The import contract of src/hotspare (README, "Layout"), read from the source with `ast`:

    core  <-  formats, home  <-  models, agents  <-  upstream  <-  engine  <-  router  <-  api  <-  ops
          <-  config, app, cli, cli_models, __main__ (composition: they wire everything together)

A package imports only from its own layer or below. Above `engine`, the local backends are reached
through `engine.protocol` only. No module-level import circles, no source file over 400 lines, and
the README's layout names every top-level package. These fail when a change breaks the layering.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "hotspare"

LAYERS: dict[str, int] = {
    "core": 0,
    "formats": 1,
    "home": 1,
    "models": 2,
    "agents": 2,
    "upstream": 3,
    "engine": 4,  # the vLLM backend is reached over HTTP with the upstream client
    "router": 5,
    "api": 6,
    "ops": 7,  # observes the others through their interfaces
    "config": 8,
    "app": 8,
    "cli": 8,
    "cli_models": 8,
    "__main__": 8,
    "__init__": 0,  # the package root holds only __version__
}

KNOWN_UPWARD: dict[tuple[str, str], str] = {}
"""Upward imports that are still there, each with why; the test fails when one disappears too, so
this list only shrinks."""

MAX_LINES = 400


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(tree: ast.AST, module: str, *, top_level_only: bool) -> Iterator[str]:
    nodes = _top_level(tree) if top_level_only else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("hotspare"))
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, module)
            if base.startswith("hotspare"):
                yield base
                yield from (f"{base}.{a.name}" for a in node.names)  # `from pkg import module`


def _top_level(tree: ast.AST) -> Iterator[ast.AST]:
    """Statements run at import: the module body and its if/try blocks, not `if TYPE_CHECKING`."""
    todo = list(getattr(tree, "body", []))
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, ast.If | ast.Try):
            todo.extend(node.body)
            todo.extend(getattr(node, "orelse", []))
            todo.extend(h for handler in getattr(node, "handlers", []) for h in handler.body)
            continue
        yield node


def _absolute(node: ast.ImportFrom, module: str) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")[: -node.level] if node.level else []
    return ".".join([*base, node.module] if node.module else base)


def _sources() -> dict[str, ast.AST]:
    return {_module_name(p): ast.parse(p.read_text()) for p in SRC.rglob("*.py")}


def test_every_package_has_a_layer() -> None:
    packages = {_package(m) for m in _sources()}
    assert packages <= set(LAYERS), f"give these a layer: {sorted(packages - set(LAYERS))}"


def test_no_package_imports_from_a_layer_above_it() -> None:
    modules = set(_sources())
    upward: dict[tuple[str, str], list[str]] = {}
    for module, tree in _sources().items():
        for target in _imports(tree, module, top_level_only=False):
            if target not in modules:
                continue  # a name imported from a module, counted through the module itself
            src, dst = _package(module), _package(target)
            if src != dst and LAYERS[dst] > LAYERS[src]:
                upward.setdefault((src, dst), []).append(f"{module} -> {target}")
    unexpected = {k: v for k, v in upward.items() if k not in KNOWN_UPWARD}
    assert not unexpected, f"imports against the layering: {unexpected}"
    gone = set(KNOWN_UPWARD) - set(upward)
    assert not gone, f"no longer imported upward, remove from KNOWN_UPWARD: {sorted(gone)}"


@pytest.mark.parametrize("package", ["router", "api", "ops"])
def test_above_the_engine_local_backends_are_reached_through_its_protocol(package: str) -> None:
    modules = set(_sources())
    reached = {
        target
        for module, tree in _sources().items()
        if _package(module) == package
        for target in _imports(tree, module, top_level_only=False)
        if target in modules and _package(target) == "engine"
    }
    assert reached <= {"hotspare.engine", "hotspare.engine.protocol"}


def test_no_module_level_import_circles() -> None:
    sources = _sources()
    graph = {
        m: {t for t in _imports(tree, m, top_level_only=True) if t in sources and t != m}
        for m, tree in sources.items()
    }
    cycles = [c for c in _strongly_connected(graph) if len(c) > 1]
    assert not cycles, f"import circles: {cycles}"


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                found.append(component)
    return found


def test_no_source_file_over_400_lines() -> None:
    lines = {str(p.relative_to(SRC)): len(p.read_text().splitlines()) for p in SRC.rglob("*.py")}
    assert not {name: n for name, n in lines.items() if n > MAX_LINES}


def test_the_readme_layout_names_every_top_level_package() -> None:
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout") :]
    packages = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    missing = {p for p in packages if f"`{p}/`" not in layout}
    assert not missing


def test_the_contract_sees_an_upward_import(tmp_path: Path) -> None:
    """The checker itself: an import of api from core is reported as against the layering."""
    tree = ast.parse("from hotspare.api import routes\n")
    targets = set(_imports(tree, "hotspare.core.x", top_level_only=True))
    assert "hotspare.api" in targets
    assert LAYERS[_package("hotspare.api.routes")] > LAYERS[_package("hotspare.core.x")]
