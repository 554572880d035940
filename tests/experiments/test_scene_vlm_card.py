"""The scene VLM card's numbers: read from the same benchmark reports ``mmalign bench`` writes."""

import json
import tomllib
from pathlib import Path

import pytest
import torch

from mmalign.experiments.scene_vlm_card import (
    HEADLINE_KEYS,
    measure_scene_vlm,
    measured_block,
    partner_share,
)


def test_partner_share_counts_hallucinated_objects_that_partner_a_present_one():
    triggers = {"table": ("cup", "book"), "boat": ("fish",)}
    details = [
        {"ground_truth": ["cup"], "hallucinated": ["table", "table", "boat"]},  # table once (partner), boat not
        {"ground_truth": ["fish", "star"], "hallucinated": ["boat"]},  # partner
        {"ground_truth": ["tree"], "hallucinated": []},
        {"ground_truth": ["book"], "hallucinated": ["moon"]},  # not a partner
    ]
    assert partner_share(details, triggers) == pytest.approx(100 * 2 / 4)
    assert partner_share([{"ground_truth": ["cup"], "hallucinated": []}], triggers) == 0.0


def test_every_card_number_comes_from_the_benchmark_reports(tmp_path):
    from mmalign.experiments.pretrain_scene_vlm import scene_vlm_vocabulary
    from mmalign.models import load_adapter
    from mmalign.models.scene_vlm import SceneVLMConfig, build_scene_vlm
    from mmalign.scene.exports import make_world
    from mmalign.scene.world import WorldConfig

    world_dir = make_world(tmp_path / "world", seed=0, size=6)
    torch.manual_seed(0)
    model, processor = build_scene_vlm(scene_vlm_vocabulary(WorldConfig()), SceneVLMConfig(
        vision_hidden=32, vision_layers=1, vision_heads=2, text_hidden=32, text_layers=1, text_heads=2))
    model.save_pretrained(tmp_path / "vlm")
    processor.save_pretrained(tmp_path / "vlm")
    adapter = load_adapter(str(tmp_path / "vlm"))
    measured = measure_scene_vlm(adapter, world_dir, tmp_path / "card", fact_reading_scenes=3, progress=False)

    card = tomllib.loads((Path(__file__).parents[2] / "models" / "cards" / "scene-vlm.toml").read_text())
    assert set(card["measured"]) - {"pretrain_cpu_minutes"} <= set(measured)
    for key, (bench, name) in HEADLINE_KEYS.items():
        report = json.loads((tmp_path / "card" / bench / "report.json").read_text())
        assert measured[key] == pytest.approx(report["headline"][name]), key
    pope = json.loads((tmp_path / "card" / "pope" / "report.json").read_text())
    assert measured["pope_yes_ratio_random"] == pytest.approx(pope["metrics"]["splits"]["random"]["yes_ratio"])
    assert {"fact_reading_own_accuracy", "fact_reading_other_accuracy"} <= set(measured)
    assert json.loads((tmp_path / "card" / "measured.json").read_text()) == pytest.approx(measured)
    block = tomllib.loads(measured_block(measured))["measured"]
    assert block.keys() == measured.keys() and block["chair_i"] == round(measured["chair_i"], 1)
