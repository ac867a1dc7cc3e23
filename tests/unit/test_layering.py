"""The layers of DESIGN.md hold: the store knows no service, no service knows the backend.

Layer 4: the store is one interface with two implementations, and nothing
above it knows which one it talks to, so a PostgreSQL backend slots in
without touching ``receive/``, ``deliver/`` or ``access/``.  The store in
turn never imports from the layers above it.  Every import is counted,
including those inside functions and under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "pillarbox"

ABOVE_THE_STORE = ("deliver", "receive", "queue", "access", "net", "protocols",
                   "admin", "serve", "cli")
BACKEND_FREE = ("receive", "deliver", "access")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports (absolute names; relative ones resolved)."""
    return imports_in(path.read_text(), _module_name(path), path.name == "__init__.py")


def imports_in(text: str, module: str, is_package: bool = False) -> set[str]:
    package = module.split(".") if is_package else module.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1])
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            found.add(name)
            # ``from pillarbox.store import sqlite`` imports a module too
            found.update(f"{name}.{alias.name}" for alias in node.names)
    return found


def modules_under(*subpackages: str) -> list[Path]:
    paths: list[Path] = []
    for sub in subpackages:
        root = PACKAGE / sub
        paths += sorted(root.rglob("*.py")) if root.is_dir() else []
    return paths


def _violations_in(names: set[str], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(n for n in names if any(n == f or n.startswith(f + ".") for f in forbidden))


def _violations(paths: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    out = []
    for path in paths:
        names = _violations_in(imports_of(path), forbidden)
        # ``from a.b import c`` counts as a.b and a.b.c: name a.b once.
        out += [f"{path.relative_to(SRC)} imports {n}" for n in names
                if n.rpartition(".")[0] not in names]
    return out


def test_the_store_imports_nothing_from_the_layers_above_it():
    paths = modules_under("store")
    assert len(paths) >= 8  # base, blobs, lock, directory, sqlite/…
    forbidden = tuple(f"pillarbox.{name}" for name in ABOVE_THE_STORE)
    assert _violations(paths, forbidden) == []


@pytest.mark.parametrize("layer", BACKEND_FREE)
def test_services_never_name_a_store_backend(layer):
    paths = modules_under(layer)
    if layer != "access":   # the access layer arrives with IMAP
        assert paths
    assert _violations(paths, ("pillarbox.store.sqlite", "pillarbox.store.postgres")) == []


def test_the_checker_sees_imports_in_functions_and_relative_ones():
    """The scanner is not blind: it finds the imports the rules are about."""
    # The queue manager owns the SQLite commit pipeline and names the backend.
    assert "pillarbox.store.sqlite.store" in imports_of(PACKAGE / "queue" / "manager.py")
    # serve.py imports its services inside functions.
    assert "pillarbox.queue.manager" in imports_of(PACKAGE / "serve.py")
    text = "def f():\n    from ...deliver import local\n    import pillarbox.net.smtp\n"
    found = imports_in(text, "pillarbox.store.sqlite.probe")
    assert {"pillarbox.deliver", "pillarbox.deliver.local", "pillarbox.net.smtp"} <= found
    assert _violations_in(found, ("pillarbox.deliver",)) == ["pillarbox.deliver",
                                                              "pillarbox.deliver.local"]
