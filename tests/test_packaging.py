"""The package runs on what pyproject.toml declares, not on what the test machine merely happens to have."""

from __future__ import annotations

import ast
import importlib.metadata
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
STDLIB_FROM_3_14 = ("compression",)  # compression.zstd; backports.zstd (declared) before 3.14


def declared_distributions() -> set[str]:
    """The names in [project] dependencies (parsed by hand: tomllib is 3.11+, and the list is simple)."""
    text = (ROOT / "pyproject.toml").read_text()
    block = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M).group(1)
    names = re.findall(r"^\s*\"([A-Za-z0-9_.\-]+)", block, re.M)
    return {name.lower().replace("_", "-") for name in names}


def imported_top_level_modules() -> set[str]:
    modules = set()
    for path in (ROOT / "deltaimg").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    return modules


def test_every_third_party_module_the_package_imports_is_a_declared_dependency():
    owners = importlib.metadata.packages_distributions()
    declared = declared_distributions()
    undeclared = {}
    for module in imported_top_level_modules():
        if module in ("deltaimg", *STDLIB_FROM_3_14) or module in sys.stdlib_module_names:
            continue
        distributions = {d.lower().replace("_", "-") for d in owners.get(module, [module])}
        if not distributions & declared:
            undeclared[module] = sorted(distributions)
    assert undeclared == {}, "imported but not in pyproject.toml dependencies"
