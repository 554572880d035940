import os

import pytest
import torch

# Tests never touch the network; the hub client must not try.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

FAMILIES = ["llava", "llava_next", "qwen2_vl", "qwen2_5_vl"]


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """One saved tiny checkpoint per family, built once per test session."""
    from mmalign.models.tiny import save_tiny

    root = tmp_path_factory.mktemp("tiny")
    return {fam: save_tiny(fam, root / fam, seed=0) for fam in FAMILIES}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
