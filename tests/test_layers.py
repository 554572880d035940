"""The import contracts of pyproject.toml (one-way layers, no cycles, the bench extra kept
out of the library) hold, and break on a reversed import or a cycle hidden in a function.

import-linter finds a package's modules by walking its folder, but ``mmalign.models``,
``mmalign.data_builders`` and ``mmalign.benchmarks`` live in top-level folders of the
repository. The check therefore runs on the installed layout, assembled from symlinks.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def installed_tree(tmp: Path, edits: dict[str, str] | None = None) -> Path:
    """``tmp/mmalign`` laid out as pip installs it; ``edits`` appends text to some files
    (paths inside the installed package), which are then copied rather than linked."""
    package_dirs = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]["package-dir"]
    package = tmp / "mmalign"
    package.mkdir()
    sources = {entry.name: entry for entry in (ROOT / "mmalign").iterdir() if entry.name != "__pycache__"}
    for name, folder in package_dirs.items():
        if name != "mmalign":
            sources[name.removeprefix("mmalign.")] = ROOT / folder
    for name, source in sources.items():
        edited = [path for path in edits or {} if path.split("/")[0] == name]
        if edited:
            shutil.copytree(source, package / name, ignore=shutil.ignore_patterns("__pycache__"))
            for path in edited:
                with open(package / path, "a", encoding="utf-8") as f:
                    f.write(edits[path])
        else:
            (package / name).symlink_to(source, target_is_directory=source.is_dir())
    return tmp


def lint(tree: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--no-logo", str(PYPROJECT)], cwd=tree,
                          env=env, capture_output=True, text=True, timeout=300)


def test_the_tree_keeps_every_import_contract(tmp_path):
    result = lint(installed_tree(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_a_reversed_import_breaks_the_layers(tmp_path):
    tree = installed_tree(tmp_path, {"losses/dpo.py": "\nfrom mmalign.benchmarks import pope  # noqa\n"})
    result = lint(tree)
    assert result.returncode == 1
    assert "one-way layers" in result.stdout and "BROKEN" in result.stdout
    assert "mmalign.losses.dpo -> mmalign.benchmarks.pope" in result.stdout


def test_a_cycle_hidden_in_a_function_breaks_the_acyclic_contract(tmp_path):
    hidden = "\n\ndef _late():\n    from mmalign.benchmarks.runner import run_benchmark  # noqa\n"
    result = lint(installed_tree(tmp_path, {"benchmarks/report.py": hidden}))
    assert result.returncode == 1
    assert "No cycles are allowed in mmalign.benchmarks" in result.stdout


def test_the_bench_extra_stays_out_of_the_library(tmp_path):
    result = lint(installed_tree(tmp_path, {"benchmarks/pope.py": "\nimport trl  # noqa\n"}))
    assert result.returncode == 1
    assert "mmalign.benchmarks.pope -> trl" in result.stdout
