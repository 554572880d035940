import importlib

import mmalign


def test_every_top_level_name_resolves_to_its_module_object():
    for name, module in mmalign._EXPORTS.items():
        assert getattr(mmalign, name) is getattr(importlib.import_module(module), name)
    assert set(mmalign.__all__) == {"__version__", *mmalign._EXPORTS}


def test_every_package_folder_is_listed_for_wheels():
    """A regular (non-editable) install ships only the packages pyproject.toml lists."""
    from pathlib import Path

    import pytest

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    root = Path(__file__).resolve().parents[1]
    config = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    folders = {v: k for k, v in config["package-dir"].items()}
    found = set()
    for top, name in folders.items():
        for init in (root / top).rglob("__init__.py"):
            rel = init.parent.relative_to(root / top).parts
            found.add(".".join((name, *rel)))
    assert found == listed
