"""Detailed descriptions, fact statements and the partner-size bias follow the annotations."""

from __future__ import annotations

import random
import re
from dataclasses import replace
from statistics import mean

from mmalign.scene.sft import fact_check_conversation, fact_reading_conversation, scene_sft_dataset
from mmalign.scene.text import (
    NUMBER_WORDS,
    WHERE_PHRASES,
    detail_sentences,
    detailed_description,
    fact_statements,
    facts_block,
    scene_facts,
)
from mmalign.scene.world import (
    CATEGORY_SPECS,
    GRID,
    Scene,
    SceneObject,
    WorldConfig,
    generate_scenes,
    scene_at,
)

CONFIG = WorldConfig()


def _scene(objects: list[tuple[str, str, str, int]], background: str = "gray") -> Scene:
    built = tuple(SceneObject(c, colour, size, (0, 0, 4, 4), cell)
                  for c, colour, size, cell in sorted(objects, key=lambda o: o[3]))  # reading order
    return Scene(id="eval-000001", image_id=1, split="eval", seed=0, image_size=96, background=background,
                 objects=built, hazards=tuple(c for c in ("knife",) if any(o.category == c for o in built)))


def test_a_detailed_description_written_out_by_hand() -> None:
    scene = _scene([("cup", "red", "small", 0), ("knife", "blue", "large", 2), ("table", "green", "large", 7),
                    ("star", "yellow", "small", 5), ("star", "purple", "large", 8)])
    assert detailed_description(scene, CONFIG) == (
        "The image shows a cup, a knife, two stars and a table on a gray background. "
        "There is a small red cup in the top left corner. "
        "There is a large blue knife in the top right corner. "
        "There are two stars: a small yellow one on the right and a large purple one in the bottom right corner. "
        "There is a large green table at the bottom. "
        "The cup is above the table. "
        "The knife is dangerous."
    )


def test_descriptions_are_long_and_name_every_instance_with_its_attributes() -> None:
    scenes = generate_scenes(CONFIG, 300, split="eval")
    words = [len(detailed_description(s, CONFIG).split()) for s in scenes]
    assert mean(words) >= 40
    for scene in scenes:
        sentences = detail_sentences(scene, CONFIG)
        text = " ".join(sentences).lower()
        for obj in scene.objects:
            assert f"{obj.size} {obj.color}" in text and WHERE_PHRASES[obj.cell] in text
        for category, n in scene.counts.items():
            noun = category if n == 1 else CATEGORY_SPECS[category].plural
            assert re.search(rf"\b{NUMBER_WORDS[n] if n > 1 else 'an?'} {noun}\b", sentences[0].lower())
        assert scene.background in sentences[0]
        assert ("dangerous" in sentences[-1]) and (("nothing" in sentences[-1].lower()) != bool(scene.hazards))


def test_relations_are_true_and_prefer_the_cooccurring_pair() -> None:
    scene = _scene([("cup", "red", "small", 6), ("ball", "blue", "large", 1), ("table", "green", "large", 3)])
    assert "The cup is below the table." in detail_sentences(scene, CONFIG)
    checked = 0
    for scene in generate_scenes(CONFIG, 300, split="eval"):
        for sentence in detail_sentences(scene, CONFIG):
            m = re.fullmatch(r"The (\w+) is (to the left of|to the right of|above|below) the (\w+)\.", sentence)
            if not m:
                continue
            (ra, ca), (rb, cb) = (divmod(scene.instances(c)[0].cell, GRID) for c in (m[1], m[3]))
            holds = {"above": ra < rb, "below": ra > rb, "to the left of": ra == rb and ca < cb,
                     "to the right of": ra == rb and ca > cb}
            assert holds[m[2]], (scene.id, sentence)
            checked += 1
    assert checked > 50


def test_fact_statements_are_true_exactly_when_marked_true() -> None:
    scene = _scene([("cup", "red", "small", 0), ("star", "yellow", "small", 5), ("star", "purple", "large", 8)])
    statements = dict(fact_statements(scene, CONFIG, random.Random(0)))
    assert statements["There is one cup in the image."] is True
    assert statements["There are two stars in the image."] is True
    assert statements["The cup is red."] is True
    assert statements["The cup is in the top left corner."] is True
    assert statements["There is no cup in the image."] is False
    assert statements["There is one table in the image."] is False  # the cup's missing partner
    assert statements["There is no table in the image."] is True
    assert not any(s.startswith("The star is") for s in statements)  # two colours, two places
    facts = " ".join(scene_facts(scene)).lower()
    for statement, true in statements.items():
        if statement.startswith("The cup is") and true:
            assert statement.split()[-1].rstrip(".") in facts or "corner" in statement


def test_fact_check_rows_list_the_facts_first_and_answer_yes_or_no() -> None:
    scene = generate_scenes(CONFIG, 1, split="train")[0]
    messages = fact_check_conversation(scene, CONFIG, random.Random(1), turns=3)
    first = messages[0]["content"]
    assert first[0]["type"] == "image" and first[1]["text"].startswith("Facts about the image:\n- ")
    assert all(m["content"][0]["text"] in ("Yes", "No") for m in messages[1::2])
    rows = scene_sft_dataset(CONFIG, 200, facts_share=0.5, describe_share=0.2)
    kinds = [row["messages"][0]["content"][-1]["text"] for row in rows]
    assert sum(k.startswith("Facts about the image:") for k in kinds) > 60


def test_partners_brought_by_their_trigger_are_mostly_small() -> None:
    def share_small(config: WorldConfig) -> float:
        sizes = [o.size for s in generate_scenes(config, 2000, split="train") for a, b in config.cooccurrence
                 if a in s.counts for o in s.instances(b)]
        return sum(size == "small" for size in sizes) / len(sizes)

    # hidden partners are small by construction; this is about the ones in plain sight
    visible = replace(CONFIG, partner_hidden_p=0.0)
    biased, unbiased = share_small(visible), share_small(replace(visible, partner_small_p=0.0))
    assert biased > 0.8 and 0.4 < unbiased < 0.6


def test_fact_reading_rows_are_answered_from_the_listed_facts_not_the_image() -> None:
    pictured, listed = generate_scenes(CONFIG, 2, split="train")
    messages = fact_reading_conversation(pictured, listed, CONFIG, random.Random(3), turns=40)
    first = messages[0]["content"]
    assert first[0]["type"] == "image"
    assert first[1]["text"].startswith(facts_block(scene_facts(listed)) + "\n")
    asked = 0
    for question, answer in zip(messages[0::2], messages[1::2]):
        match = re.search(r"According to the facts, is there an? (\w+) in the image\?", question["content"][-1]["text"])
        if match:
            asked += 1
            assert answer["content"][0]["text"] == ("Yes" if match[1] in listed.counts else "No")
    assert asked == 2 * len(listed.counts)  # every listed category and as many absent ones
    rows = scene_sft_dataset(CONFIG, 300, describe_share=0.0, facts_share=0.0, reading_share=1.0)
    firsts = [row["messages"][0]["content"][-1]["text"] for row in rows]
    own = [first.startswith(facts_block(scene_facts(scene_at(CONFIG, i + 1, "train"))) + "\n")
           for i, first in enumerate(firsts)]
    assert all(first.startswith("Facts about the image:") for first in firsts)
    assert 0.4 < sum(own) / len(own) < 0.6  # the rest list another scene's facts
