"""The world as annotator: corrections of descriptions and answers against ground truth."""

import random

from mmalign.data_builders.corrections import correction_spans
from mmalign.scene.feedback import correct_caption, existence_questions
from mmalign.scene.world import Scene, SceneObject, WorldConfig


def scene(*objects):
    objs = tuple(SceneObject(c, color, "small", (0, 0, 8, 8), cell) for cell, (c, color) in enumerate(objects))
    return Scene(id="t-1", image_id=1, split="eval", seed=0, image_size=64, background="white",
                 objects=objs, hazards=())


CUP_TABLE = scene(("cup", "blue"), ("ball", "red"))


def test_absent_object_replaced_by_an_unmentioned_present_one():
    text = "the image shows a small blue cup on the left and a large red table on the right ."
    fix = correct_caption(text, CUP_TABLE)
    assert fix.hallucinated == ["table"]
    assert fix.corrected == "the image shows a small blue cup on the left and a large red ball on the right ."
    spans = correction_spans(text, fix.corrected)
    assert [text[a:b] for a, b in spans.rejected] == ["table"]
    assert [fix.corrected[a:b] for a, b in spans.chosen] == ["ball"]


def test_absent_object_removed_when_replacing_is_off():
    text = "the image shows a small blue cup on the left and a large red table on the right ."
    fix = correct_caption(text, CUP_TABLE, replace_absent=False)
    assert fix.hallucinated == ["table"]
    assert fix.corrected == "the image shows a small blue cup on the left ."
    # a caption naming only absent objects keeps one, replaced, instead of becoming "there is ."
    fix = correct_caption("there is a table and a car in this picture .", CUP_TABLE, replace_absent=False)
    assert fix.hallucinated == ["table", "car"]
    assert fix.corrected == "there is a cup in this picture ."
    fix = correct_caption("there is a cup , a ball and a table in this picture .", CUP_TABLE)
    assert fix.corrected == "there is a cup , a ball in this picture ."


def test_clause_removed_when_nothing_is_left_to_name():
    text = "the image shows a blue cup , a red ball and a small table on the right ."
    fix = correct_caption(text, CUP_TABLE)
    assert fix.hallucinated == ["table"]
    assert fix.corrected == "the image shows a blue cup , a red ball ."
    # RLHF-V drops matching blocks under 3 tokens, so the final "." joins the edit, which
    # becomes a replacement of the whole removed clause
    spans = correction_spans(text, fix.corrected)
    assert [text[a:b] for a, b in spans.rejected] == ["and a small table on the right ."]


def test_first_clause_removal_and_plurals():
    text = "the image shows two tables , a blue cup and a red ball ."
    fix = correct_caption(text, CUP_TABLE)
    assert fix.corrected == "the image shows a blue cup and a red ball ."
    fix = correct_caption("there are two tables and a blue cup .", CUP_TABLE)
    assert fix.corrected == "there are two balls and a blue cup ."


def test_wrong_colour_of_a_present_object_is_fixed():
    fix = correct_caption("a green cup and a red ball .", CUP_TABLE)
    assert fix.corrected == "a blue cup and a red ball ." and fix.recolored == ["cup"] and not fix.hallucinated
    assert correct_caption("a blue cup and a red ball .", CUP_TABLE).corrected == "a blue cup and a red ball ."


def test_existence_questions_target_missing_partners_and_stay_balanced():
    config = WorldConfig()
    questions = existence_questions(CUP_TABLE, config, random.Random(0))
    absent = [c for c, a in questions if a == "no"]
    present = [c for c, a in questions if a == "yes"]
    assert "table" in absent  # cup's usual partner is missing: the hallucination trap
    assert set(present) <= {"cup", "ball"} and len(present) == min(len(absent), 2)
    assert not set(absent) & {"cup", "ball"}


def test_scene_safety_records_validate_and_orient_by_helpfulness(tmp_path):
    from mmalign.data_builders.storage import load_preference_dataset, save_preference_dataset
    from mmalign.scene.feedback import scene_safety_records

    records = scene_safety_records(WorldConfig(), 30, hazardous_only=True)
    assert records, "some of the first 30 training scenes hold a hazard"
    for r in records:
        assert r["chosen_helpful_rate"] > r["rejected_helpful_rate"]
        assert (r["safer"] == "chosen") == (r["chosen_harmless_rate"] >= r["rejected_harmless_rate"])
        assert r["chosen_is_safe"] == (r["chosen_harmless_rate"] >= 0)
    harmful = [r for r in records if r["meta"]["chosen_kind"] == "harmful_compliance"]
    assert harmful and all(r["safer"] == "rejected" and not r["chosen_is_safe"] for r in harmful)
    save_preference_dataset(records, tmp_path / "safety")
    loaded = load_preference_dataset(tmp_path / "safety")
    assert len(loaded) == len(records) and loaded[0]["facts"]


def test_scene_feedback_records_from_the_shipped_model_carry_facts_and_corrections(tmp_path):
    from mmalign.data_builders.storage import load_preference_dataset, save_preference_dataset
    from mmalign.models import load_adapter
    from mmalign.scene.feedback import scene_facts, scene_feedback_records
    from mmalign.scene.world import scene_at

    config = WorldConfig()
    records, stats = scene_feedback_records(load_adapter("scene-vlm"), config, 6, start=500_001, batch_size=6)
    assert stats.records == len(records) > 0 and stats.captions == 6
    for r in records:
        scene_ = scene_at(config, int(r["meta"]["scene"].rsplit("-", 1)[1]), "eval")
        assert r["facts"] == scene_facts(scene_) and r["chosen"] != r["rejected"]
        if r["source"] == "scene-world/caption":
            assert not correct_caption(r["chosen"], scene_).hallucinated
    save_preference_dataset(records, tmp_path / "feedback")
    assert load_preference_dataset(tmp_path / "feedback")["facts"] == [r["facts"] for r in records]


def test_scene_prompt_sets_carry_facts_references_and_safety_kinds(tmp_path):
    from mmalign.data_builders.storage import load_preference_dataset, save_prompt_set
    from mmalign.scene.feedback import (
        safety_response_kind,
        scene_facts,
        scene_prompt_records,
    )
    from mmalign.scene.safety import safety_prompts
    from mmalign.scene.world import scene_at

    config = WorldConfig()
    records = scene_prompt_records(config, 40)
    kinds = {r["source"].rsplit("/", 1)[1] for r in records}
    assert kinds == {"describe", "exist", "safety"}
    for r in records:
        scene_ = scene_at(config, int(r["meta"]["scene"].rsplit("-", 1)[1]), "train")
        assert r["facts"] == scene_facts(scene_)
        if r["source"].endswith("exist"):
            assert r["reference"] == ("yes" if r["meta"]["object"] in scene_.categories else "no")
    harmful = [r for r in records if r["meta"].get("harmful_request")]
    assert harmful, "some of the first 40 scenes hold a hazard"
    scene_ = scene_at(config, int(harmful[0]["meta"]["scene"].rsplit("-", 1)[1]), "train")
    prompt = next(p for p in safety_prompts(scene_) if p.prompt == harmful[0]["prompt"])
    assert {safety_response_kind(prompt.prompt, r.text, scene_) for r in prompt.responses} == {
        r.kind for r in prompt.responses}
    assert safety_response_kind(prompt.prompt, "something else", scene_) is None
    save_prompt_set(records, tmp_path / "prompts")
    assert len(load_preference_dataset(tmp_path / "prompts")) == len(records)
    assert scene_prompt_records(config, 3, kinds=("describe",)) == [r for r in records[:12] if r["source"].endswith("describe")][:3]


def test_safety_sft_mix_draws_every_labelled_response():
    from mmalign.scene.sft import scene_safety_sft_dataset

    rows = scene_safety_sft_dataset(WorldConfig(), 200)
    answers = [m[1]["content"][0]["text"] for m in rows["messages"]]
    assert any(a.startswith("Sure. Wait until nobody is looking") for a in answers)  # harmful compliance
    assert any(a.startswith("I cannot help you hurt anyone") for a in answers)
    assert all(len(i) == 1 for i in rows["images"])


def _detailed_scene():
    objs = (SceneObject("cup", "red", "small", (0, 0, 8, 8), 0), SceneObject("ball", "blue", "large", (0, 0, 8, 8), 4),
            SceneObject("ball", "green", "small", (0, 0, 8, 8), 8))
    return Scene(id="t-2", image_id=2, split="eval", seed=0, image_size=96, background="gray", objects=objs, hazards=())


def test_a_detailed_description_is_corrected_sentence_by_sentence():
    scene = _detailed_scene()
    text = ("the image shows a cup , two balls and a table on a gray background . "
            "there is a small green cup in the top left corner . "
            "there are two balls : a large blue one in the middle and a small green one in the bottom right corner . "
            "there is a large red table at the bottom . the cup is above the table . nothing in the image is dangerous .")
    fix = correct_caption(text, scene)
    assert fix.hallucinated == ["table", "table", "table"]
    assert fix.rewritten == ["cup"]
    assert fix.corrected == (
        "the image shows a cup , two balls on a gray background . "
        "there is a small red cup in the top left corner . "
        "there are two balls : a large blue one in the middle and a small green one in the bottom right corner . "
        "nothing in the image is dangerous .")
    spans = correction_spans(text, fix.corrected)
    # only the wrong segments move: the colour is a replacement (weighted by Dense DPO),
    # the removed clause and sentences are deletions (weight 1, as in RLHF-V)
    assert [text[a:b] for a, b in spans.rejected] == ["green"]
    # a right description is left alone, a wrong relation is set right
    assert correct_caption(fix.corrected, scene).corrected == fix.corrected
    # a hallucinated sentence is rewritten about an object the description left out
    short = "there is a small red cup in the top left corner . there is a large red table at the bottom ."
    left_out = correct_caption(short, scene)
    assert left_out.corrected == ("there is a small red cup in the top left corner . there are two balls : a large "
                                  "blue one in the middle and a small green one in the bottom right corner .")
    spans = correction_spans(short, left_out.corrected)
    assert [short[a:b] for a, b in spans.rejected] == ["is a large red table at the bottom ."]
    moved = correct_caption("There is a small red cup in the top left corner. The cup is below the ball.",
                            _scene_with_single_ball())
    assert moved.corrected == "There is a small red cup in the top left corner. The cup is above the ball."


def _scene_with_single_ball():
    objs = (SceneObject("cup", "red", "small", (0, 0, 8, 8), 0), SceneObject("ball", "blue", "large", (0, 0, 8, 8), 4))
    return Scene(id="t-3", image_id=3, split="eval", seed=0, image_size=96, background="gray", objects=objs, hazards=())


def test_per_instance_sentences_and_front_behind_relations_are_corrected():
    objs = (SceneObject("cup", "orange", "large", (0, 0, 8, 8), 7), SceneObject("cup", "purple", "small", (0, 0, 8, 8), 8),
            SceneObject("fish", "red", "small", (0, 0, 8, 8), 0))
    two_cups = Scene(id="t-4", image_id=4, split="eval", seed=0, image_size=96, background="white", objects=objs,
                     hazards=())
    text = ("the image shows a fish and two cups on a white background . "
            "there is a small red fish in the top left corner . "
            "there is a large orange cup at the bottom . there is a small purple cup in the bottom right corner . "
            "the cup is in front of the table . nothing in the image is dangerous .")
    fix = correct_caption(text, two_cups)
    assert fix.hallucinated == ["table"]
    assert fix.corrected == (
        "the image shows a fish and two cups on a white background . "
        "there is a small red fish in the top left corner . "
        "there are two cups : a large orange one at the bottom and a small purple one in the bottom right corner . "
        "nothing in the image is dangerous .")
    assert correct_caption(fix.corrected, two_cups).corrected == fix.corrected
    behind = correct_caption("There is a small red cup in the top left corner. The cup is behind the ball.",
                             _scene_with_single_ball())
    assert behind.corrected == "There is a small red cup in the top left corner. The cup is above the ball."
