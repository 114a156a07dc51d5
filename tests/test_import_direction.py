"""Imports flow one way: cli -> replay -> recorder <- addons (docs: design, "Layout").

Read from the source with ast, so an import inside a function or under
TYPE_CHECKING counts as much as one at the top: a plain library that reaches
for mitmproxy or the addons only sometimes still drags the proxy into the CLI.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import hoopgw.addons
import hoopgw.cli
import hoopgw.recorder
import hoopgw.replay

PACKAGES = {
    "addons": hoopgw.addons,
    "recorder": hoopgw.recorder,
    "replay": hoopgw.replay,
    "cli": hoopgw.cli,
}

FORBIDDEN = {
    "recorder": ("mitmproxy", "hoopgw.addons", "hoopgw.replay", "hoopgw.cli"),
    "replay": ("mitmproxy", "hoopgw.addons", "hoopgw.cli"),
    "cli": ("mitmproxy", "hoopgw.addons"),
    "addons": ("hoopgw.replay", "hoopgw.cli"),
}

KNOWN_EXCEPTIONS = {
    # Its whole job is writing a mitmproxy flow file (mitmproxy.io.FlowWriter and the
    # flow classes); the design lists that export under replay/. Kept until it moves.
    "replay/export.py imports mitmproxy",
}


def _imports_in_source(package: str) -> dict[str, set[str]]:
    """Each module of a package (by path under it) with the absolute names it imports."""
    root = Path(PACKAGES[package].__path__[0])
    found: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*.py")):
        module = ".".join(path.relative_to(root).with_suffix("").parts)
        dotted = f"hoopgw.{package}.{module}".removesuffix(".__init__")
        tree = ast.parse(path.read_text(), str(path))
        found[f"{package}/{path.relative_to(root)}"] = _imported_names(
            tree, dotted, is_package=path.name == "__init__.py"
        )
    return found


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add(_absolute(node, module, is_package))
    return names


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base[: len(base) - node.level + (1 if is_package else 0)]
    return ".".join([*base, node.module] if node.module else base)


def _violations(package: str) -> list[str]:
    return sorted(
        f"{path} imports {name}"
        for path, names in _imports_in_source(package).items()
        for name in names
        for forbidden in FORBIDDEN[package]
        if name == forbidden or name.startswith(forbidden + ".")
    )


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_flow_one_way(package: str) -> None:
    assert [v for v in _violations(package) if v not in KNOWN_EXCEPTIONS] == []


def test_each_known_exception_still_exists() -> None:
    """An exception that no longer applies is removed, so it cannot hide a new import."""
    found = {v for package in FORBIDDEN for v in _violations(package)}
    assert found >= KNOWN_EXCEPTIONS


def test_the_check_sees_imports_wherever_they_are_written() -> None:
    source = (
        "import mitmproxy.http\n"
        "def late():\n"
        "    from hoopgw.addons import identity\n"
        "    from ...cli import main\n"
        "    from . import segment\n"
    )
    names = _imported_names(ast.parse(source), "hoopgw.recorder.spool.writer", is_package=False)
    assert names == {"mitmproxy.http", "hoopgw.addons", "hoopgw.cli", "hoopgw.recorder.spool"}
