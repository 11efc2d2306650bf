"""No import cycles: every module imports on its own, and the module-level import graph is acyclic."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pyramid_cli

PACKAGE = Path(pyramid_cli.__file__).resolve().parent
ROOT = PACKAGE.parent

# Each module imported into an interpreter holding no other pyramid_cli module (torch and the other
# dependencies stay loaded, so one process is enough): a module that needs another to be imported
# first, the usual symptom of a cycle, fails here.
ISOLATED_IMPORTS = """
import importlib, json, pkgutil, sys, traceback
import pyramid_cli
names = sorted(m.name for m in pkgutil.walk_packages(pyramid_cli.__path__, "pyramid_cli."))
failures = []
for name in names:
    for key in [k for k in sys.modules if k == "pyramid_cli" or k.startswith("pyramid_cli.")]:
        del sys.modules[key]
    try:
        importlib.import_module(name)
    except Exception as error:
        failures.append(f"{name}: {type(error).__name__}: {error}")
print(json.dumps({"modules": names, "failures": failures}))
"""


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def module_level_imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The pyramid_cli modules ``name`` imports when it is imported (not in functions or TYPE_CHECKING
    blocks), with the packages whose ``__init__`` that runs."""
    found: set[str] = set()
    body = list(ast.parse(path.read_text(encoding="utf-8")).body)
    while body:
        node = body.pop()
        if isinstance(node, ast.If) and not _is_type_checking(node):
            body += node.body + node.orelse
        elif isinstance(node, ast.Try):
            body += node.body + node.orelse + node.finalbody + [n for h in node.handlers for n in h.body]
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("pyramid_cli")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pyramid_cli"):
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names} & known
    with_parents = set()
    for target in found:
        parts = target.split(".")
        with_parents |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    return (with_parents & known) - {name} - {p for p in with_parents if name.startswith(p + ".")}


def test_the_module_level_import_graph_has_no_cycle() -> None:
    known = modules()
    graph = {name: module_level_imports(name, path, set(known)) for name, path in known.items()}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_every_module_imports_on_its_own() -> None:
    done = subprocess.run([sys.executable, "-c", ISOLATED_IMPORTS], capture_output=True, text=True, timeout=300,
                          cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(report["modules"]) == set(modules()) - {"pyramid_cli"}
    assert not report["failures"], "\n".join(report["failures"])
