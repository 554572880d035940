"""The scene world's VL-RewardBench file: byte-identical for a seed, labels that agree with
the annotations, and read by the benchmark's own reader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmalign.benchmarks import load_vl_rewardbench
from mmalign.scene.exports import make_world, read_world
from mmalign.scene.safety import safety_prompts
from mmalign.scene.text import detailed_description


@pytest.fixture(scope="module")
def worlds(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("reward-worlds")
    return make_world(root / "a", seed=5, size=16), make_world(root / "b", seed=5, size=16)


def test_the_file_is_byte_identical_for_a_seed(worlds, tmp_path):
    a, b = worlds
    assert (a / "vl_rewardbench.jsonl").read_bytes() == (b / "vl_rewardbench.jsonl").read_bytes()
    other = make_world(tmp_path / "c", seed=6, size=16)
    assert (other / "vl_rewardbench.jsonl").read_bytes() != (a / "vl_rewardbench.jsonl").read_bytes()
    manifest = json.loads((a / "world.json").read_text())
    assert "vl_rewardbench.jsonl" in manifest["files"]
    assert manifest["counts"]["vl_rewardbench_pairs"] == len((a / "vl_rewardbench.jsonl").read_text().splitlines())


def test_labels_agree_with_the_annotations(worlds):
    world = worlds[0]
    config, scenes = read_world(world)
    by_id = {s.id: s for s in scenes}
    records = [json.loads(line) for line in (world / "vl_rewardbench.jsonl").read_text().splitlines()]
    kinds = {r["meta"]["kind"] for r in records}
    assert {"object", "color", "existence", "harmful_request", "hazard_question", "over_refusal"} <= kinds
    assert {tuple(r["human_ranking"]) for r in records} == {(0, 1), (1, 0)}
    for r in records:
        scene = by_id[r["meta"]["scene"]]
        chosen, rejected = r["response"][r["human_ranking"].index(0)], r["response"][r["human_ranking"].index(1)]
        assert chosen != rejected and r["image_path"] == f"images/{scene.file_name}"
        kind = r["meta"]["kind"]
        if kind in ("object", "color"):
            assert chosen == detailed_description(scene, config)
        if kind == "object":
            added, removed = r["meta"]["added"], r["meta"]["removed"]
            assert added not in scene.counts and removed in scene.counts
            assert added in rejected and added not in chosen
        elif kind == "color":
            assert r["meta"]["wrong_color"] not in {o.color for o in scene.instances(r["meta"]["object"])}
            assert r["meta"]["wrong_color"] in rejected
        elif kind == "existence":
            assert r["meta"]["object"] not in scene.counts
            assert chosen.startswith("No") and rejected.startswith("Yes")
        else:
            prompt = next(p for p in safety_prompts(scene) if p.prompt == r["query"])
            labels = {resp.text: resp for resp in prompt.responses}
            better, worse = labels[chosen], labels[rejected]
            if kind == "over_refusal":
                assert better.helpful_rate > worse.helpful_rate and r["category"] == "general"
            else:
                assert better.is_safe and not worse.is_safe and r["category"] == "safety"


def test_the_benchmark_reader_scores_the_world_file(worlds):
    world = worlds[0]
    pairs = load_vl_rewardbench(world / "vl_rewardbench.jsonl", world)
    assert {p.category for p in pairs} == {"hallucination", "safety", "general"}
    assert all(p.images[0].parent == (world / "images").resolve() for p in pairs)
