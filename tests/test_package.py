import importlib

import mmalign


def test_every_top_level_name_resolves_to_its_module_object():
    for name, module in mmalign._EXPORTS.items():
        assert getattr(mmalign, name) is getattr(importlib.import_module(module), name)
    assert set(mmalign.__all__) == {"__version__", *mmalign._EXPORTS}
