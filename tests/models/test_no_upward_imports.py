"""`hotspare.models` is the model catalogue library: the local backends (engine/) and the CLI use it,
and it imports neither (read from the source, so an import inside a function counts too)."""

from __future__ import annotations

import ast
from pathlib import Path

import hotspare

PACKAGE = Path(hotspare.__file__).parent


def imported_modules(package: str) -> dict[str, set[str]]:
    """Each module of `package` (a folder of src/hotspare) and the hotspare modules it imports."""
    found: dict[str, set[str]] = {}
    for path in sorted((PACKAGE / package).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
        found[path.relative_to(PACKAGE).as_posix()] = {n for n in names if n.startswith("hotspare")}
    return found


def test_the_catalogue_imports_no_engine_and_no_command() -> None:
    upward = ("hotspare.engine", "hotspare.cli", "hotspare.app", "hotspare.api", "hotspare.router")
    offenders = {
        module: sorted(n for n in names if n.startswith(upward))
        for module, names in imported_modules("models").items()
        if any(n.startswith(upward) for n in names)
    }
    assert offenders == {}
