"""The command-line path: canonical dataset -> precompute-ref -> train dpo -> adapter."""

import json

import yaml

from mmalign.cli import main
from mmalign.data_builders.corrections import correction_record
from mmalign.data_builders.storage import load_preference_dataset, save_preference_dataset

from .conftest import PAIRS


def test_precompute_then_train_ddpo_from_a_recipe(tiny_dirs, tmp_path, capsys):
    from PIL import Image

    records = [
        correction_record(rejected, chosen, prompt=prompt, images=[Image.new("RGB", (32, 32), color)])
        for color, prompt, chosen, rejected, *_ in PAIRS
    ]
    save_preference_dataset(records, tmp_path / "pairs")
    assert main(["precompute-ref", "--model", str(tiny_dirs["llava"]), "--data", str(tmp_path / "pairs"),
                 "--out", str(tmp_path / "pairs-ref"), "--max-length", "256"]) == 0
    with_ref = load_preference_dataset(tmp_path / "pairs-ref")
    assert len(with_ref) == len(PAIRS) and len(with_ref[0]["ref_chosen_logps"]) > 0

    recipe = tmp_path / "ddpo.yaml"
    recipe.write_text(yaml.safe_dump({
        "model_name_or_path": str(tiny_dirs["llava"]), "load_in_4bit": True, "bnb_4bit_compute_dtype": "float32",
        "lora_r": 4, "dataset_path": str(tmp_path / "pairs-ref"), "output_dir": str(tmp_path / "run"),
        "loss_type": "ddpo", "gamma": 5.0, "share_prefix": True, "max_steps": 2, "max_length": 256,
        "per_device_train_batch_size": 2, "report_to": "none", "use_cpu": True, "save_strategy": "no",
        "logging_steps": 1,
    }))
    assert main(["train", "dpo", "--config", str(recipe), "--beta", "0.2"]) == 0
    final = tmp_path / "run" / "final"
    assert (final / "adapter_model.safetensors").exists()
    resolved = yaml.safe_load((final / "mmalign_config.yaml").read_text())
    assert resolved["beta"] == 0.2 and resolved["gamma"] == 5.0 and resolved["loss_type"] == "ddpo"
    assert json.loads((final / "adapter_config.json").read_text())["r"] == 4
