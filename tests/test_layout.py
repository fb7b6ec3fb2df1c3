"""The layout's import contracts ([tool.importlinter] in pyproject.toml, README "What is where"):
they hold today, and they fail when someone adds an import that runs back up the flow, makes
a pure core import Dagster, or closes an import circle."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("quant_assets", "resources", "sensors")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(tree: Path) -> subprocess.CompletedProcess:
    # the copy comes first on the path, so grimp analyses it rather than the installed checkout
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo"], cwd=tree, env=env,
        capture_output=True, text=True, timeout=300,
    )


@pytest.fixture()
def tree(tmp_path) -> Path:
    """A copy of the packages and of pyproject.toml (the contracts) to break on purpose."""
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _append(path: Path, line: str) -> None:
    path.write_text(path.read_text() + f"\n{line}\n")


def test_contracts_hold_on_the_checkout(tree):
    result = _lint(tree)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        # a stage importing one above it (the data stage reading the serving stage)
        ("quant_assets/data/simulator.py", "import quant_assets.serving.drift  # noqa",
         "Imports run down the golden flow"),
        # a pure core importing Dagster
        ("quant_assets/backtest/portfolio.py", "import dagster  # noqa",
         "Pure cores import neither Dagster"),
        # a stage's assets importing another stage's assets
        ("quant_assets/backtest/assets.py", "import quant_assets.models.assets  # noqa",
         "No stage's assets.py imports another stage's assets.py"),
        # something other than the command line importing definitions.py
        ("sensors/landing.py", "import quant_assets.definitions  # noqa",
         "Nothing but the command line imports definitions.py"),
        # a circle between two modules of one package
        ("quant_assets/features/pit.py", "import quant_assets.features.labels  # noqa",
         "No import cycle"),
    ],
)
def test_a_violation_breaks_a_contract(tree, module, line, broken):
    _append(tree / module, line)
    result = _lint(tree)
    assert result.returncode != 0
    report = result.stdout.split("Broken contracts")[-1]
    assert broken in report, result.stdout


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    modules = sorted(graph.modules)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in modules:
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in graph.modules:
                    continue
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
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


def test_no_module_level_import_cycle_anywhere():
    """Every import statement counts, those inside functions too (grimp reads them all)."""
    graph = grimp.build_graph(*PACKAGES, include_external_packages=False)
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    graph = grimp.ImportGraph()
    for a, b in (("p.a", "p.b"), ("p.b", "p.c"), ("p.c", "p.a"), ("p.c", "p.d")):
        graph.add_import(importer=a, imported=b)
    assert _cycles(graph) == [["p.a", "p.b", "p.c"]]
