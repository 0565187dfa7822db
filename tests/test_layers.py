"""The layers of DESIGN.md hold (import-linter contracts in pyproject.toml) and no module of
`assetbox` imports in a cycle, lazy imports inside functions included."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(project: Path, src: Path) -> subprocess.CompletedProcess[str]:
    """`lint-imports` on the contracts in `project`'s pyproject.toml, for the package in `src`."""
    env = {**os.environ, "PYTHONPATH": str(src)}  # before the editable install's path
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def cycles(edges: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Groups of modules that import each other, directly or through others (Tarjan's strongly
    connected components of more than one module, and modules that import themselves)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in edges.get(module, ()):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == module:
                    break
            if len(group) > 1 or module in edges.get(module, ()):
                found.append(sorted(group))

    for module in sorted(edges):
        if module not in index:
            visit(module)
    return found


def module_edges(graph: grimp.ImportGraph) -> dict[str, list[str]]:
    return {m: sorted(graph.find_modules_directly_imported_by(m)) for m in sorted(graph.modules)}


def test_the_contracts_are_kept() -> None:
    result = lint_imports(ROOT, ROOT / "src")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "BROKEN" not in result.stdout


def lint_a_changed_copy(tmp_path: Path, module: str, added: str) -> str:
    """lint-imports' report on a copy of the project with `added` at the end of `module` (a
    path under src/assetbox); asserts that it failed."""
    shutil.copytree(ROOT / "src" / "assetbox", tmp_path / "src" / "assetbox")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    path = tmp_path / "src" / "assetbox" / module
    path.write_text(path.read_text() + added)
    result = lint_imports(tmp_path, tmp_path / "src")
    assert result.returncode != 0, result.stdout
    return result.stdout


def test_a_kind_imported_by_the_engine_breaks_the_contracts(tmp_path: Path) -> None:
    report = lint_a_changed_copy(
        tmp_path, "engine/engine.py", "\nfrom assetbox.kinds import PLANNERS  # noqa\n"
    )

    assert "The engine knows no job kind (kinds are handed to it) BROKEN" in report
    assert "Imports point downward only (DESIGN.md's layers) BROKEN" in report
    assert "assetbox.engine.engine -> assetbox.kinds" in report


def test_torch_in_imaging_breaks_the_contracts(tmp_path: Path) -> None:
    report = lint_a_changed_copy(
        tmp_path, "imaging/tiles.py", "\n\ndef _f():\n    import torch  # noqa\n"
    )
    assert "imaging/ is numpy, PIL and pyvips only BROKEN" in report


def test_every_layer_is_in_the_contract() -> None:
    """`exhaustive`: a new top-level module must be placed in a layer (lint-imports fails
    otherwise); the contract names the layers of DESIGN.md."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = next(c for c in config["contracts"] if c["id"] == "layers")
    assert layers["exhaustive"] is True
    names = {part.strip(" ()") for layer in layers["layers"] for part in layer.split("|")}
    design = {"cli", "client", "ui", "compat", "server", "kinds", "engine", "pipelines"}
    assert design | {"models", "imaging", "config", "errors"} <= names


def test_no_module_imports_in_a_cycle() -> None:
    graph = grimp.build_graph("assetbox", exclude_type_checking_imports=True)
    assert graph.direct_import_exists(  # lazy imports in functions count
        importer="assetbox.kinds.diffusion", imported="assetbox.pipelines.diffusion"
    )
    assert cycles(module_edges(graph)) == []


@pytest.mark.parametrize(
    ("edges", "expected"),
    [
        ({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}, [["a", "b", "c"]]),
        ({"a": ["a"]}, [["a"]]),
        ({"a": ["b"], "b": ["c"], "c": []}, []),
        ({"a": ["b"], "b": ["a"], "c": ["d"], "d": ["c"]}, [["a", "b"], ["c", "d"]]),
    ],
)
def test_cycles_are_found(edges: dict[str, list[str]], expected: list[list[str]]) -> None:
    assert sorted(cycles(edges)) == expected
