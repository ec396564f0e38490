"""The package layout is the pipeline, and its floors hold: every module's imports, read with ast.

A module may import from its own floor or the floors below it, never above; only deltaimg.engine
talks to an engine's API (docker, requests); no module reaches into another's private names.
"""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass

import deltaimg

PACKAGE_DIR = os.path.dirname(os.path.abspath(deltaimg.__file__))

# The floors, lowest first: a module's floor is that of its package (or of itself, on the ground
# and the front). docs/architecture.md says the same in words.
FLOORS: list[tuple[str, ...]] = [
    ("deltaimg", "deltaimg.errors", "deltaimg.progress", "deltaimg.units", "deltaimg.streams",
     "deltaimg.safejson", "deltaimg.zstdlib", "deltaimg.faults", "deltaimg.interrupts"),
    ("deltaimg.tar", "deltaimg.codec", "deltaimg.engine"),
    ("deltaimg.images",),
    ("deltaimg.delta", "deltaimg.diff", "deltaimg.bundle"),
    ("deltaimg.make", "deltaimg.apply"),
    ("deltaimg.cli", "deltaimg.report", "deltaimg.example", "deltaimg.__main__"),
]
ENGINE_LIBRARIES = ("docker", "requests", "urllib3")


@dataclass(frozen=True)
class Import:
    module: str  # the module imported (for ``from P import name``: P.name when that is a module, else P)
    names: tuple[str, ...]  # the names taken from it (empty for ``import module``)
    line: int


def module_name(path: str) -> str:
    relative = os.path.relpath(path, os.path.dirname(PACKAGE_DIR))[:-3].split(os.sep)
    if relative[-1] == "__init__":
        relative.pop()
    return ".".join(relative)


def all_sources() -> dict[str, str]:
    sources = {}
    for folder, _, files in os.walk(PACKAGE_DIR):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                with open(path, encoding="utf-8") as f:
                    sources[module_name(path)] = f.read()
    return sources


def imports_of(module: str, source: str, modules: set[str]) -> list[Import]:
    """Every import in ``source``, absolute or relative, at any depth (imports inside functions count)."""
    is_package = module in modules and any(other.startswith(module + ".") for other in modules)
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [Import(alias.name, (), node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append(Import(sub, (), node.lineno) if sub in modules else Import(base, (alias.name,), node.lineno))
    return found


def floor_of(module: str) -> int | None:
    best: tuple[int, int] | None = None  # (length of the matching prefix, floor)
    for floor, prefixes in enumerate(FLOORS):
        for prefix in prefixes:
            if module == prefix or (prefix != "deltaimg" and module.startswith(prefix + ".")):
                if best is None or len(prefix) > best[0]:
                    best = (len(prefix), floor)
    return best[1] if best else None


def private_attributes(source: str, imported_modules: dict[str, str]) -> list[tuple[str, int]]:
    """``alias._name`` where ``alias`` is a deltaimg module this source imported."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in imported_modules
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            found.append((f"{imported_modules[node.value.id]}.{node.attr}", node.lineno))
    return found


def local_names(source: str, modules: set[str]) -> dict[str, str]:
    """The local names this source binds to deltaimg modules."""
    names = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                if f"{node.module}.{alias.name}" in modules:
                    names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules and alias.asname:
                    names[alias.asname] = alias.name
    return names


def violations(sources: dict[str, str]) -> list[str]:
    modules = set(sources)
    problems = []
    for module, source in sorted(sources.items()):
        here = floor_of(module)
        if here is None:
            problems.append(f"{module}: on no floor; add it to FLOORS and docs/architecture.md")
            continue
        for imp in imports_of(module, source, modules):
            top = imp.module.split(".")[0]
            if top in ENGINE_LIBRARIES and not (module == "deltaimg.engine" or module.startswith("deltaimg.engine.")):
                problems.append(f"{module}:{imp.line}: imports {imp.module}; only deltaimg.engine talks to an engine's API")
            if top != "deltaimg":
                continue
            there = floor_of(imp.module)
            if there is not None and there > here:
                problems.append(f"{module}:{imp.line}: imports {imp.module}, a higher floor ({there} > {here})")
            owner = imp.module
            for name in imp.names:
                if name.startswith("_") and not name.startswith("__") and owner != module:
                    problems.append(f"{module}:{imp.line}: imports the private name {owner}.{name}")
        for name, line in private_attributes(source, local_names(source, modules)):
            problems.append(f"{module}:{line}: uses the private name {name}")
    return problems


def test_no_module_imports_a_higher_floor_an_engine_library_or_a_private_name():
    assert violations(all_sources()) == []


def new_violations(edit) -> list[str]:
    """What the check reports for the sources as ``edit`` changed them, beyond what it reports today."""
    sources = all_sources()
    today = violations(sources)
    edit(sources)
    return [problem for problem in violations(sources) if problem not in today]


def test_the_check_catches_the_ground_floor_importing_the_cli():
    lines = all_sources()["deltaimg.errors"].count("\n") + 2

    def edit(sources):
        sources["deltaimg.errors"] += "\nfrom deltaimg import cli\n"
    assert new_violations(edit) == [f"deltaimg.errors:{lines}: imports deltaimg.cli, a higher floor (5 > 0)"]


def test_the_check_catches_docker_outside_the_engine_package_and_private_names_across_modules():
    chain_line = all_sources()["deltaimg.apply.chain"].count("\n") + 2
    report_line = all_sources()["deltaimg.report"].count("\n") + 4

    def edit(sources):
        sources["deltaimg.apply.chain"] += "\nimport docker.errors\n"
        sources["deltaimg.report"] += "\nfrom deltaimg.tar.split import _hidden\nfrom deltaimg.tar import split\nsplit._other\n"
    assert new_violations(edit) == [
        f"deltaimg.apply.chain:{chain_line}: imports docker.errors; only deltaimg.engine talks to an engine's API",
        f"deltaimg.report:{report_line - 2}: imports the private name deltaimg.tar.split._hidden",
        f"deltaimg.report:{report_line}: uses the private name deltaimg.tar.split._other",
    ]


def test_every_module_is_on_a_floor_and_none_is_over_450_lines():
    sources = all_sources()
    assert [module for module in sources if floor_of(module) is None] == []
    assert {module: source.count("\n") for module, source in sources.items() if source.count("\n") > 450} == {}
