"""The shipped scene VLM loads like any llava-hf checkpoint and knows the scene world."""

import pytest
import torch

from mmalign.models import get_card, load_adapter
from mmalign.models.scene_vlm import SceneVLMConfig, build_scene_vlm
from mmalign.qlora import QuantizationConfig
from mmalign.scene.render import render
from mmalign.scene.text import world_vocabulary
from mmalign.scene.world import WorldConfig, scene_at


@pytest.fixture(scope="module")
def scene_vlm():
    return load_adapter("scene-vlm")


def test_card_points_at_shipped_weights():
    card = get_card("scene-vlm")
    path = card.local_path()
    assert card.family == "llava" and (path / "model.safetensors").exists()
    assert (path / "pretrain_recipe.yaml").exists()
    assert "measured" in card.extra, "the card records the model's measured benchmark numbers"


def test_loads_through_the_llava_adapter_in_4bit():
    adapter = load_adapter("scene-vlm", quantization=QuantizationConfig(compute_dtype="float32"))
    assert adapter.family == "llava" and adapter.quantized
    params = sum(p.numel() for p in adapter.base_model.parameters())
    assert params < 10_000_000


def test_tokenizer_covers_the_world_vocabulary(scene_vlm):
    unk = scene_vlm.tokenizer.unk_token_id
    ids = scene_vlm.tokenizer(" ".join(world_vocabulary()), add_special_tokens=False)["input_ids"]
    assert unk not in ids


def test_answers_existence_questions_with_yes_or_no(scene_vlm):
    world = WorldConfig()
    scenes = [scene_at(world, i, "eval") for i in range(1, 21)]
    prompts = [f"Is there a {s.categories[0]} in the image? Answer the question using a single word or phrase."
               for s in scenes]
    answers = scene_vlm.generate([render(s) for s in scenes], prompts, max_new_tokens=3)
    assert {a.split()[0].strip(",.").lower() for a in answers} <= {"yes", "no"}


def test_weights_are_trained_and_use_the_image(scene_vlm):
    """Instruction data from the world: low loss with the right images, higher with shuffled ones."""
    from mmalign.models import EncodedBatch
    from mmalign.scene.sft import scene_sft_dataset
    from mmalign.sft import SFTCollator, sft_loss

    rows = [dict(r) for r in scene_sft_dataset(WorldConfig(), 32, split="eval")]
    collator = SFTCollator(scene_vlm, 512)

    def loss(batch_rows):
        batch = EncodedBatch.from_features(collator(batch_rows), scene_vlm.inputs)
        with torch.no_grad():
            return sft_loss(*scene_vlm.response_logprobs(batch)).item()

    right = loss(rows)
    shuffled = loss([dict(r, images=rows[(i + 1) % len(rows)]["images"]) for i, r in enumerate(rows)])
    assert right < 0.7 < shuffled + 0.2 and right < shuffled - 0.1


def test_describes_a_scene_with_world_words(scene_vlm):
    scene = scene_at(WorldConfig(), 1, "eval")
    caption = scene_vlm.generate([render(scene)], ["Describe the image."], max_new_tokens=30)[0]
    words = caption.replace(".", " ").replace(",", " ").split()
    assert len(words) >= 4 and set(words) <= set(world_vocabulary())


def test_builder_makes_the_same_architecture():
    from mmalign.experiments.pretrain_scene_vlm import scene_vlm_vocabulary

    model, processor = build_scene_vlm(scene_vlm_vocabulary(WorldConfig()), SceneVLMConfig())
    shipped = load_adapter("scene-vlm").base_model
    assert model.config.text_config.hidden_size == shipped.config.text_config.hidden_size
    assert len(processor.tokenizer) == shipped.config.text_config.vocab_size
    with torch.no_grad():
        assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in shipped.parameters())


def test_looks_up_the_object_a_question_names(scene_vlm):
    """Present and absent objects of held-out scenes, asked POPE's way: far above chance, no yes-bias."""
    import random

    world = WorldConfig()
    rng = random.Random(0)
    images, prompts, truth = [], [], []
    for i in range(1, 41):
        scene = scene_at(world, i, "eval")
        absent = [c for c in world.categories if c not in scene.counts]
        for category, present in ((rng.choice(scene.categories), True), (rng.choice(absent), False)):
            images.append(render(scene))
            prompts.append(f"Is there a {category} in the image? Answer the question using a single word or phrase.")
            truth.append(present)
    answers = [a.split()[0].strip(",.").lower() == "yes" for a in scene_vlm.generate(images, prompts, max_new_tokens=2)]
    accuracy = sum(a == t for a, t in zip(answers, truth)) / len(truth)
    assert accuracy >= 0.75 and 0.3 <= sum(answers) / len(answers) <= 0.7
