"""The scene VLM's pretraining: stage-1 patch labels and the word-aligned first stage."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from mmalign.experiments.pretrain_scene_vlm import (
    PretrainConfig,
    patch_labels,
    pretrain_vision_tower,
    scene_vlm_vocabulary,
)
from mmalign.scene.world import WorldConfig, scene_at

WORLD = WorldConfig(image_size=48)
TINY = dict(image_size=48, patch_size=16, vision_hidden=32, vision_layers=1, vision_heads=2, text_hidden=32,
            text_layers=1, text_heads=2)


def test_patch_labels_name_what_shows():
    world = replace(WORLD, partner_hidden_p=1.0)
    cats, colors, backgrounds = list(world.categories), list(world.colors), list(world.backgrounds)
    seen = 0
    for index in range(1, 300):
        scene = scene_at(world, index)
        cat, col, size = patch_labels(scene, 48, 16, cats, colors, backgrounds)
        labelled = {cats[c - 1] for c in cat.tolist() if c}
        visible = {o.category for o in scene.objects if not o.behind}
        assert labelled == visible  # every visible object labels a patch (its centre at least)
        background = len(colors) + 1 + backgrounds.index(scene.background)
        assert all(c == background for c, k in zip(col.tolist(), cat.tolist()) if k == 0)
        assert all((s == 0) == (k == 0) for s, k in zip(size.tolist(), cat.tolist()))
        seen += any(o.behind for o in scene.objects)
    assert seen > 5  # some scenes had a hidden partner, and it labelled nothing


def test_word_aligned_stage_one_trains_tower_and_projector_against_fixed_word_embeddings():
    from mmalign.models.scene_vlm import SceneVLMConfig, build_scene_vlm

    torch.manual_seed(0)
    model, processor = build_scene_vlm(scene_vlm_vocabulary(WORLD), SceneVLMConfig(**TINY))
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    config = PretrainConfig(vision_steps=40, vision_batch_size=8, n_scenes=200, vision_learning_rate=3e-3)
    losses = pretrain_vision_tower(model, processor, WORLD, config)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("model.vision_tower.") for k in changed)
    assert any(k.startswith("model.multi_modal_projector.") for k in changed)
    assert not any("language_model" in k or "lm_head" in k for k in changed)  # the words stay where they are
    assert losses[-1] < losses[0]


def test_fact_reading_accuracy_asks_about_the_pictured_scenes_facts_then_another_scenes():
    from mmalign.experiments.pretrain_scene_vlm import fact_reading_accuracy
    from mmalign.scene.ranges import BENCHMARK
    from mmalign.scene.text import facts_block, scene_facts

    class Always:
        def __init__(self, answer):
            self.answer, self.prompts = answer, []

        def generate(self, images, prompts, max_new_tokens):
            self.prompts += prompts
            return [self.answer] * len(prompts)

    world = WorldConfig()
    no, yes = Always("No"), Always(" yes.")
    said_no, said_yes = fact_reading_accuracy(no, world, 20), fact_reading_accuracy(yes, world, 20)
    assert (said_no["own_yes_ratio"], said_yes["other_yes_ratio"]) == (0, 100)
    for kind in ("own", "other"):
        assert said_no[f"{kind}_accuracy"] + said_yes[f"{kind}_accuracy"] == 100
        assert 50 <= said_no[f"{kind}_accuracy"] < 90  # more false statements than true ones
        for question in ("existence", "statement"):  # one of each per scene
            assert said_no[f"{kind}_{question}_accuracy"] + said_yes[f"{kind}_{question}_accuracy"] == 100
        per_kind = (said_no[f"{kind}_existence_accuracy"] + said_no[f"{kind}_statement_accuracy"]) / 2
        assert said_no[f"{kind}_accuracy"] == pytest.approx(per_kind)
    assert all("according to the facts, is there" in p.lower() for p in no.prompts[1::2])
    own, other = no.prompts[:40], no.prompts[40:]
    assert no.prompts == yes.prompts and len(other) == 40
    for i in range(20):
        pictured = facts_block(scene_facts(scene_at(world, BENCHMARK.start + i, BENCHMARK.split)))
        assert all(p.startswith(pictured + "\n") for p in own[2 * i : 2 * i + 2])
        assert not any(p.startswith(pictured + "\n") for p in other[2 * i : 2 * i + 2])


def _tiny_recipe(**changes) -> PretrainConfig:
    return PretrainConfig(n_scenes=48, turns=1, epochs=1.0, batch_size=8, warmup_steps=1, vision_steps=3,
                          vision_batch_size=4, model=TINY, **changes)


@pytest.mark.parametrize("killed_at", [4, 9], ids=["in stage 2", "in stage 3"])
def test_a_killed_pretraining_resumes_from_its_checkpoint_to_the_same_weights(killed_at, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from mmalign.experiments import pretrain_scene_vlm as pretraining
    from mmalign.sft import SFTTrainer

    recipe = _tiny_recipe(stage3_scenes=24)  # stage 2: 6 steps of 8 rows, stage 3: 3 steps
    straight = pretraining.pretrain_scene_vlm(tmp_path / "straight", recipe, WORLD, save_steps=2)
    assert not pretraining.pretrain_work_dir(straight).exists()  # removed once the model is written

    step = SFTTrainer.training_step
    calls = []

    def dies(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == killed_at:
            raise KeyboardInterrupt
        return step(self, *args, **kwargs)

    monkeypatch.setattr(SFTTrainer, "training_step", dies)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        pretraining.pretrain_scene_vlm(out, recipe, WORLD, save_steps=2)
    assert not out.exists()
    work = pretraining.pretrain_work_dir(out)
    run = work / ("run" if killed_at < 7 else "run3")
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("checkpoint-")) == ["checkpoint-2"]
    assert (work / "stage2").is_dir() == (killed_at > 6)

    # resumed: stage 1 is not run again, training goes on from step 2; other settings are refused
    monkeypatch.setattr(SFTTrainer, "training_step", step)
    monkeypatch.setattr(pretraining, "pretrain_vision_tower", lambda *a: 1 / 0)
    with pytest.raises(ValueError, match=r"other settings \(learning_rate 0.001 → 0.002\)"):
        pretraining.pretrain_scene_vlm(out, _tiny_recipe(stage3_scenes=24, learning_rate=2e-3), WORLD, save_steps=2)
    pretraining.pretrain_scene_vlm(out, recipe, WORLD, save_steps=2)
    assert not work.exists()
    a, b = load_file(straight / "model.safetensors"), load_file(out / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    logged = json.loads((out / "pretrain_log.json").read_text())
    assert set(logged) == {"vision_losses", "sft_log", "stage3_log"}
    assert logged["vision_losses"] == json.loads((straight / "pretrain_log.json").read_text())["vision_losses"]


def test_stage_three_trains_on_from_the_stage_two_model_and_its_mix_is_checked(tmp_path):
    from safetensors.torch import load_file

    from mmalign.experiments.pretrain_scene_vlm import pretrain_scene_vlm

    two = pretrain_scene_vlm(tmp_path / "two", _tiny_recipe(), WORLD)
    three = pretrain_scene_vlm(tmp_path / "three", _tiny_recipe(stage3_scenes=16), WORLD)
    a, b = load_file(two / "model.safetensors"), load_file(three / "model.safetensors")
    changed = {k for k in a if not torch.equal(a[k], b[k])}
    assert any("language_model" in k for k in changed) and not any("vision_tower" in k for k in changed)
    assert "stage3_log" not in json.loads((two / "pretrain_log.json").read_text())
    with pytest.raises(ValueError, match="stage3_mix: unknown share.*reading_shares"):
        PretrainConfig(stage3_mix={"reading_shares": 0.5})


def test_the_shipped_recipe_reads_back_into_the_settings_that_wrote_it(tmp_path):
    import yaml

    from mmalign.config_io import resolved_config
    from mmalign.experiments.pretrain_scene_vlm import read_pretrain_recipe
    from mmalign.models.scene_vlm import SceneVLMConfig

    shipped = Path(__file__).parents[2] / "models" / "scene-vlm" / "pretrain_recipe.yaml"
    config, world = read_pretrain_recipe(shipped)
    stored, resolved = yaml.safe_load(shipped.read_text()), resolved_config(config, world, SceneVLMConfig(**config.model))
    # a setting added after the recipe was written takes the value that recipe meant
    assert {k: v for k, v in resolved.items() if k in stored} == stored
    assert config.reading_share == 0.0 and config.stage3_scenes == 0
    assert world.category_weights["cup"] == 2.5 and config.existence_share == 0.5

    changed = tmp_path / "recipe.yaml"
    changed.write_text(yaml.safe_dump({"text_layers": 2, "reading_share": 0.2, "image_size": 48}))
    config, world = read_pretrain_recipe(changed)
    assert config.model == {"text_layers": 2, "image_size": 48} and config.reading_share == 0.2
    assert world.image_size == 48
    changed.write_text(yaml.safe_dump({"reading_shares": 0.2}))
    with pytest.raises(ValueError, match="unknown recipe setting.*reading_shares"):
        read_pretrain_recipe(changed)
