"""The benchmark pages' Python examples must run as written (tests/test_docs.py covers docs/*.md)."""

import re
from pathlib import Path

import pytest

PAGES = sorted((Path(__file__).resolve().parents[2] / "docs" / "benchmarks").glob("*.md"))


def python_blocks(page: Path) -> str:
    return "\n".join(re.findall(r"```python\n(.*?)```", page.read_text(), re.S))


def test_every_benchmark_has_a_page():
    names = {p.stem for p in PAGES}
    assert {"pope", "chair", "objhal", "amber", "mmhal", "safety", "reward-bench"} <= names


@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p)], ids=lambda p: p.name)
def test_examples_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(python_blocks(page), str(page), "exec"), {"__name__": "__docs__"})
