import os

import pytest
import torch

# Tests never touch the network; the hub client must not try.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

FAMILIES = [
    "llava", "llava_next", "llava_onevision", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "gemma3", "internvl",
    "smolvlm", "idefics3",
]


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """One saved tiny checkpoint per family, built once per test session."""
    from mmalign.models.tiny import save_tiny

    root = tmp_path_factory.mktemp("tiny")
    return {fam: save_tiny(fam, root / fam, seed=0) for fam in FAMILIES}


@pytest.fixture(scope="session")
def save_scorers(tiny_dirs, tmp_path_factory):
    """``save_scorers(cost_bias)`` -> folder with a reward and a cost model (random LoRA + head)
    on the tiny LLaVA; the cost head's bias sets how unsafe everything looks."""
    from mmalign.models import ScalarHeadModel, load_adapter
    from mmalign.qlora import LoraSettings

    def save(cost_bias: float):
        root = tmp_path_factory.mktemp("scorers")
        for kind, bias in (("reward", 0.0), ("cost", cost_bias)):
            torch.manual_seed(1)
            adapter = load_adapter(tiny_dirs["llava"])
            adapter.add_lora(LoraSettings(r=4, alpha=8, dropout=0.0))
            model = ScalarHeadModel(adapter, kind=kind)
            with torch.no_grad():
                model.head.bias.fill_(bias)
            model.save_pretrained(root / kind)
        return root

    return save


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
