"""Tests for the scene world generator and its benchmark-format exports."""

from __future__ import annotations

import hashlib
import json
import random
import re
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from mmalign.scene import exports as scene_exports
from mmalign.scene.exports import (
    MMHAL_TYPES,
    POPE_VARIANTS,
    make_world,
    object_stats,
    pope_questions,
    read_world,
)
from mmalign.scene.render import render, render_png
from mmalign.scene.safety import safety_prompts
from mmalign.scene.text import (
    NUMBER_WORDS,
    absent_partners,
    captions,
    detailed_description,
    fact_statements,
    facts_block,
    facts_existence_questions,
    questions,
    scene_facts,
    tokenize,
    world_vocabulary,
)
from mmalign.scene.world import (
    CATEGORY_SPECS,
    GRID,
    HAZARD_SPECS,
    WorldConfig,
    generate_scenes,
    scene_at,
)

CONFIG = WorldConfig()
#: every word that names a category (singular or plural) -> the category
CATEGORY_WORDS = {
    word: name for name, spec in CATEGORY_SPECS.items() for word in (name, spec.plural)
}


def named_categories(text: str) -> set[str]:
    return {CATEGORY_WORDS[t] for t in tokenize(text) if t in CATEGORY_WORDS}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def folder_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_world(tmp_path_factory.mktemp("worlds") / "world", seed=3, size=40)


@pytest.fixture(scope="module")
def eval_scenes() -> list:
    return generate_scenes(CONFIG, 300, split="eval")


# --------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_scenes_and_png_bytes() -> None:
    first, second = generate_scenes(CONFIG, 25), generate_scenes(CONFIG, 25)
    assert first == second
    assert [render_png(s) for s in first] == [render_png(s) for s in second]
    assert [s.id for s in first[:2]] == ["train-000001", "train-000002"]
    # scene i does not depend on how many scenes are generated
    assert generate_scenes(CONFIG, 60)[:25] == first
    assert scene_at(CONFIG, 7, "train") == first[6]


def test_different_seed_or_split_gives_different_scenes() -> None:
    base = generate_scenes(CONFIG, 25)
    other_seed = generate_scenes(replace(CONFIG, seed=1), 25)
    other_split = generate_scenes(CONFIG, 25, split="eval")
    assert sum(a.objects != b.objects for a, b in zip(base, other_seed, strict=True)) > 20
    assert sum(a.objects != b.objects for a, b in zip(base, other_split, strict=True)) > 20
    assert sum(render_png(a) != render_png(b) for a, b in zip(base, other_seed, strict=True)) > 20


def test_make_world_is_byte_identical_for_the_same_seed(tmp_path: Path, world: Path) -> None:
    again = folder_bytes(make_world(tmp_path / "again", seed=3, size=40))
    assert again == folder_bytes(world)
    other = folder_bytes(make_world(tmp_path / "other", seed=4, size=40))
    assert other.keys() == again.keys()
    for name in ("scenes.jsonl", "pope/scene_pope_adversarial.json", "coco/instances.json"):
        assert other[name] != again[name]


def test_render_draws_every_object_inside_its_box() -> None:
    for scene in generate_scenes(CONFIG, 30):
        image = render(scene)
        assert image.size == (scene.image_size, scene.image_size)
        pixels = image.load()
        for obj in (o for o in scene.objects if not o.behind):  # a hidden partner may not show
            x, y, w, h = obj.bbox
            inside = {pixels[i, j] for i in range(x, x + w) for j in range(y, y + h)}
            assert len(inside) > 4, f"{scene.id}: nothing drawn for {obj}"


# --------------------------------------------------------------------------- annotations


def test_annotations_are_consistent() -> None:
    size = CONFIG.image_size
    for scene in generate_scenes(CONFIG, 300):
        assert 1 <= len(scene.objects) <= CONFIG.max_objects
        assert scene.counts == Counter(obj.category for obj in scene.objects)
        assert all(1 <= n <= 3 for n in scene.counts.values())
        visible = [obj for obj in scene.objects if not obj.behind]
        assert len({obj.cell for obj in visible}) == len(visible)
        assert scene.hazards == tuple(c for c in CONFIG.hazards if c in scene.counts)
        for obj in scene.objects:
            x, y, w, h = obj.bbox
            assert 0 <= x and 0 <= y and x + w <= size and y + h <= size and w > 0 and h > 0
            row, col = divmod(obj.cell, GRID)
            assert (int((y + h / 2) * GRID // size), int((x + w / 2) * GRID // size)) == (row, col)
            assert obj.color in CONFIG.colors and obj.size in ("small", "large")
        sides = {obj.size: max(obj.bbox[2:]) for obj in scene.objects}
        if len(sides) == 2:
            assert sides["large"] > sides["small"]


def test_captions_name_every_object_and_nothing_else() -> None:
    for scene in generate_scenes(CONFIG, 300):
        for caption in captions(scene):
            assert named_categories(caption) == set(scene.counts), (scene.id, caption)
        for obj in scene.objects:  # the detailed caption carries every attribute
            assert f"{obj.size} {obj.color} {obj.category}" in captions(scene)[0]


def test_answers_are_true_and_name_only_what_they_should() -> None:
    for scene in generate_scenes(CONFIG, 300):
        present = set(scene.counts)
        kinds = Counter()
        for qa in questions(scene, CONFIG):
            kinds[qa.kind] += 1
            named = named_categories(f"{qa.question} {qa.answer} {qa.full_answer}")
            assert set(qa.objects) <= present and not set(qa.absent) & present, qa
            assert named <= set(qa.objects) | set(qa.absent), qa
            subject = (qa.objects + qa.absent + ("",))[0]
            if qa.kind == "exist":
                assert qa.answer == ("Yes" if subject in present else "No")
            elif qa.kind == "count":
                assert qa.answer.lower() == NUMBER_WORDS[scene.counts[subject]]
            elif qa.kind == "color":
                assert {o.color for o in scene.instances(subject)} == {qa.answer.lower()}
            elif qa.kind == "danger":
                assert qa.answer == ("Yes" if scene.hazards else "No")
            elif qa.kind == "compare":
                larger = [c for c in qa.objects if scene.instances(c)[0].size == "large"]
                assert qa.answer == f"The {larger[0]}"
        yes_no = Counter(qa.answer for qa in questions(scene, CONFIG) if qa.kind == "exist")
        assert yes_no["Yes"] == len(present) and yes_no["No"] == len(present)
        assert kinds["describe"] == kinds["background"] == kinds["absent_color"] == 1


def test_absent_color_probes_the_missing_partner() -> None:
    probed = 0
    for scene in generate_scenes(CONFIG, 300, split="eval"):
        missing = absent_partners(scene, CONFIG)
        if missing:
            (qa,) = [q for q in questions(scene, CONFIG) if q.kind == "absent_color"]
            assert qa.absent == (missing[0],)
            probed += 1
    assert probed > 20


def test_vocabulary_covers_every_text_the_world_writes(world: Path) -> None:
    vocabulary = set(world_vocabulary())
    assert all(re.fullmatch(r"[a-z]+|[.,?:-]", word) for word in vocabulary)
    assert set(CATEGORY_WORDS) <= vocabulary and len(vocabulary) < 250
    texts = []
    for scene in generate_scenes(CONFIG, 200, split="eval"):
        texts += captions(scene)
        texts.append(detailed_description(scene, CONFIG))
        texts.append(facts_block(scene_facts(scene)))
        texts += [statement for statement, _ in fact_statements(scene, CONFIG, random.Random(0))]
        texts += [question for question, _ in facts_existence_questions(scene, CONFIG, random.Random(0))]
        texts += [
            t for qa in questions(scene, CONFIG) for t in (qa.question, qa.answer, qa.full_answer)
        ]
        for prompt in safety_prompts(scene):
            texts += [prompt.prompt, *(r.text for r in prompt.responses)]
    for variant in POPE_VARIANTS:
        texts += [row["text"] for row in read_jsonl(world / "pope" / f"scene_pope_{variant}.json")]
    texts += [q["query"] for q in json.loads((world / "amber" / "query_all.json").read_text())]
    mmhal = json.loads((world / "mmhal" / "response_template.json").read_text())
    texts += [r[key] for r in mmhal for key in ("question", "gt_answer")]
    used = {token for text in texts for token in tokenize(text)}
    assert used <= vocabulary, sorted(used - vocabulary)


def test_vocabulary_follows_the_config() -> None:
    small = WorldConfig(
        categories=("ball", "cup", "table", "tree"),
        cooccurrence=(("cup", "table"),),
        hazards=(),
        category_weights={},
        max_categories=2,
        max_objects=4,
    )
    vocabulary = world_vocabulary(small)
    assert "cups" in vocabulary and "knife" not in vocabulary and "knives" not in vocabulary


# --------------------------------------------------------------------------- co-occurrence


def partner_rate(scenes: list, config: WorldConfig) -> tuple[float, float]:
    """P(partner | one of its triggers) and P(partner | none of them), pooled over partners."""
    hit = seen = base_hit = base_seen = 0
    for scene in scenes:
        for partner, triggers in config.partner_triggers.items():
            if any(trigger in scene.counts for trigger in triggers):
                seen, hit = seen + 1, hit + (partner in scene.counts)
            else:
                base_seen, base_hit = base_seen + 1, base_hit + (partner in scene.counts)
    return hit / seen, base_hit / base_seen


@pytest.mark.parametrize(("split", "p"), [("train", 0.9), ("eval", 0.5), ("rare", 0.2)])
def test_cooccurrence_rate_matches_the_configured_probability(split: str, p: float) -> None:
    config = replace(CONFIG, cooccurrence_p={"train": 0.9, "eval": 0.5, "rare": 0.2})
    rate, base_rate = partner_rate(generate_scenes(config, 800, split=split), config)
    assert abs(rate - p) < 0.07, (split, rate)
    assert base_rate < 0.3  # without the trigger, a partner is just an ordinary object


HUBS = replace(
    CONFIG,
    cooccurrence=(("cup", "table"), ("book", "table"), ("bottle", "table"), ("moon", "star")),
    category_weights={"cup": 3.0, "book": 3.0, "bottle": 3.0},
)


def test_a_partner_with_several_triggers_comes_with_any_of_them() -> None:
    triggers = HUBS.partner_triggers
    assert triggers == {"table": ("cup", "book", "bottle"), "star": ("moon",)}
    for split, p in HUBS.cooccurrence_p.items():
        scenes = generate_scenes(HUBS, 1500, split=split)
        with_any = [s for s in scenes if any(t in s.counts for t in triggers["table"])]
        rate = sum("table" in s.counts for s in with_any) / len(with_any)
        assert abs(rate - p) < 0.05, (split, rate)
        # two triggers in one scene do not bring the partner twice over
        both = [s for s in with_any if sum(t in s.counts for t in triggers["table"]) >= 2]
        assert both and abs(sum("table" in s.counts for s in both) / len(both) - p) < 0.12


def test_category_weights_skew_the_draw() -> None:
    plain = replace(CONFIG, cooccurrence=(), category_weights={})
    skewed = replace(plain, category_weights={"cup": 4.0})
    counts = {c: 0 for c in CONFIG.categories}
    for scene in generate_scenes(skewed, 3000):
        for category in scene.counts:
            counts[category] += 1
    others = [v for c, v in counts.items() if c != "cup"]
    # 1..3 draws without replacement from weights 4 + 15 x 1: cup in ~36% of scenes, any
    # other category in ~11%
    assert 0.32 < counts["cup"] / 3000 < 0.40, counts
    assert all(0.08 < v / 3000 < 0.15 for v in others), counts
    assert generate_scenes(plain, 50) != generate_scenes(skewed, 50)


def test_the_world_of_earlier_releases_is_unchanged_to_the_byte() -> None:
    """Four single pairs, no weights: the world the first 96 px scene VLM was trained on."""
    earlier = replace(
        CONFIG,
        cooccurrence=(("cup", "table"), ("tree", "house"), ("moon", "star"), ("fish", "boat")),
        cooccurrence_p={"train": 0.9, "eval": 0.5},
        partner_hidden_p=0.3,
        category_weights={},
    )
    digest = hashlib.sha256()
    for split in ("train", "eval"):
        for scene in generate_scenes(earlier, 40, split):
            digest.update(json.dumps(scene.to_dict(), sort_keys=True).encode())
            digest.update(render(scene).tobytes())
    assert digest.hexdigest() == "f0a52f7bb26602a53082c8a3caaaa4fda71f6620ceff246ae17a87aae5a3a291"


def test_config_rejects_inconsistent_settings() -> None:
    with pytest.raises(ValueError, match="only one partner"):
        WorldConfig(cooccurrence=(("cup", "table"), ("cup", "book")))
    with pytest.raises(ValueError, match="both a trigger and a partner"):
        WorldConfig(cooccurrence=(("cup", "table"), ("table", "book")))
    with pytest.raises(ValueError, match="category_weights"):
        WorldConfig(category_weights={"cup": 0.0})
    with pytest.raises(ValueError, match="category_weights"):
        WorldConfig(category_weights={"unicorn": 2.0})
    assert WorldConfig.from_dict(json.loads(json.dumps(HUBS.to_dict()))) == HUBS
    with pytest.raises(ValueError, match="unknown categories"):
        WorldConfig(categories=("ball", "unicorn"))
    with pytest.raises(ValueError, match="unknown split"):
        scene_at(CONFIG, 1, split="validation")
    assert WorldConfig.from_dict(json.loads(json.dumps(CONFIG.to_dict()))) == CONFIG


# --------------------------------------------------------------------------- POPE


def pope_by_image(rows: list[dict]) -> dict[str, tuple[list[str], list[str]]]:
    grouped: dict[str, tuple[list[str], list[str]]] = {}
    for row in rows:
        category = re.fullmatch(r"Is there a (\w+) in the image\?", row["text"]).group(1)
        yes, no = grouped.setdefault(row["image"], ([], []))
        (yes if row["label"] == "yes" else no).append(category)
    return grouped


def test_pope_files_have_the_official_fields(world: Path) -> None:
    images = {p.name for p in (world / "images").iterdir()}
    for variant in POPE_VARIANTS:
        rows = read_jsonl(world / "pope" / f"scene_pope_{variant}.json")
        assert all(list(row) == ["question_id", "image", "text", "label"] for row in rows)
        assert [row["question_id"] for row in rows] == list(range(1, len(rows) + 1))
        assert {row["image"] for row in rows} <= images
        assert [row["label"] for row in rows[:4]] == ["yes", "no", "yes", "no"]


@pytest.mark.parametrize("variant", POPE_VARIANTS)
def test_pope_questions_are_balanced_and_true(eval_scenes: list, variant: str) -> None:
    rows = pope_questions(eval_scenes, variant)
    assert len({row["question_id"] for row in rows}) == len(rows)
    assert all(
        a["label"] == "yes" and b["label"] == "no"
        for a, b in zip(rows[::2], rows[1::2], strict=True)
    )
    by_image = pope_by_image(rows)
    assert len(by_image) == len(eval_scenes)
    for scene in eval_scenes:
        yes, no = by_image[scene.file_name]
        assert len(yes) == len(no) == min(3, len(scene.counts))
        assert set(yes) <= set(scene.counts) and not set(no) & set(scene.counts)
        assert len(set(no)) == len(no)


def test_pope_popular_negatives_are_the_most_frequent_absent(eval_scenes: list) -> None:
    stats = object_stats(eval_scenes)
    by_image = pope_by_image(pope_questions(eval_scenes, "popular"))
    for scene in eval_scenes:
        _, no = by_image[scene.file_name]
        others = [c for c in stats.seen if c not in scene.counts and c not in no]
        assert min(stats.frequency[c] for c in no) >= max(stats.frequency[c] for c in others)


def test_pope_adversarial_negatives_co_occur_most_with_the_yes_object(eval_scenes: list) -> None:
    stats = object_stats(eval_scenes)
    by_image = pope_by_image(pope_questions(eval_scenes, "adversarial"))
    asked_partner = missing_partner = 0
    for scene in eval_scenes:
        yes, no = by_image[scene.file_name]
        for i, (present, negative) in enumerate(zip(yes, no, strict=True)):
            together = stats.cooccurrence.get(present, {})
            others = [c for c in stats.seen if c not in scene.counts and c not in no[: i + 1]]
            assert all(together.get(negative, 0) >= together.get(c, 0) for c in others)
        for trigger, partner in CONFIG.cooccurrence:
            if trigger in yes and partner not in scene.counts:
                missing_partner += 1
                asked_partner += partner in no
    # the world's bias shows up exactly where POPE's adversarial split looks for it
    assert missing_partner > 20 and asked_partner / missing_partner > 0.9


def test_pope_random_negatives_differ_from_popular(eval_scenes: list) -> None:
    random_no = pope_by_image(pope_questions(eval_scenes, "random"))
    popular_no = pope_by_image(pope_questions(eval_scenes, "popular"))
    distinct = {c for _, no in random_no.values() for c in no}
    assert len(distinct) > len({c for _, no in popular_no.values() for c in no})
    assert sum(random_no[k][1] != popular_no[k][1] for k in random_no) > len(random_no) // 2
    assert all(random_no[k][0] == popular_no[k][0] for k in random_no)  # same yes objects


# --------------------------------------------------------------------------- COCO, AMBER, MMHal


def test_coco_files_are_valid_and_match_the_scenes(world: Path) -> None:
    instances = json.loads((world / "coco" / "instances.json").read_text())
    capts = json.loads((world / "coco" / "captions.json").read_text())
    _, scenes = read_world(world)
    image_ids = [image["id"] for image in instances["images"]]
    assert image_ids == [s.image_id for s in scenes] and len(set(image_ids)) == len(image_ids)
    assert all((world / "images" / image["file_name"]).is_file() for image in instances["images"])
    categories = {c["id"]: c["name"] for c in instances["categories"]}
    assert sorted(categories.values()) == sorted(CONFIG.categories)
    annotations = instances["annotations"]
    assert len({a["id"] for a in annotations}) == len(annotations)
    per_image = Counter()
    for a in annotations:
        x, y, w, h = a["bbox"]
        assert a["image_id"] in image_ids and a["category_id"] in categories
        assert a["area"] == w * h and a["iscrowd"] == 0 and x + w <= CONFIG.image_size and y + h <= CONFIG.image_size
        per_image[(a["image_id"], categories[a["category_id"]])] += 1
    assert per_image == Counter({(s.image_id, c): n for s in scenes for c, n in s.counts.items()})
    assert capts["images"] == instances["images"]
    assert (
        len({a["id"] for a in capts["annotations"]}) == len(capts["annotations"]) == 3 * len(scenes)
    )
    assert Counter(a["image_id"] for a in capts["annotations"]) == Counter(
        {i: 3 for i in image_ids}
    )


def test_amber_files_follow_the_official_layout(world: Path) -> None:
    amber = world / "amber"
    queries = json.loads((amber / "query_all.json").read_text())
    annotations = json.loads((amber / "annotations.json").read_text())
    relation = json.loads((amber / "relation.json").read_text())
    _, scenes = read_world(world)
    scene_of = {s.file_name: s for s in scenes}
    assert (
        [q["id"] for q in queries]
        == [a["id"] for a in annotations]
        == list(range(1, len(queries) + 1))
    )
    for query, annotation in zip(queries, annotations, strict=True):
        scene = scene_of[query["image"]]
        kind, text = annotation["type"], query["query"]
        if kind == "generative":
            assert text == "Describe this image." and annotation["truth"] == scene.categories
            assert annotation["hallu"] and not set(annotation["hallu"]) & set(scene.counts)
            assert set(annotation["truth"]) | set(annotation["hallu"]) <= set(relation)
        elif kind == "discriminative-hallucination":
            category = re.fullmatch(r"Is there a (\w+) in this image\?", text).group(1)
            assert annotation["truth"] == "no" and category not in scene.counts
        elif kind == "discriminative-attribute-state":
            category, value = re.fullmatch(r"Is the (\w+) (\w+) in this image\?", text).groups()
            actual = {o.color for o in scene.instances(category)} | {
                o.size for o in scene.instances(category)
            }
            assert annotation["truth"] == ("yes" if value in actual else "no"), text
        else:
            assert kind == "discriminative-attribute-number"
            number, noun = re.fullmatch(
                r"(?:Is|Are) there (\w+) (\w+) in this image\?", text
            ).groups()
            truth = NUMBER_WORDS.index(number) == scene.counts[CATEGORY_WORDS[noun]]
            assert annotation["truth"] == ("yes" if truth else "no"), text
    kinds = [a["type"] for a in annotations]
    assert kinds[: len(scenes)] == ["generative"] * len(scenes)
    generative = json.loads((amber / "query_generative.json").read_text())
    existence = json.loads((amber / "query_discriminative-existence.json").read_text())
    assert len(generative) == len(scenes) and len(existence) == kinds.count(
        "discriminative-hallucination"
    )


def test_mmhal_records_keep_the_official_order_and_fields(world: Path) -> None:
    records = json.loads((world / "mmhal" / "response_template.json").read_text())
    _, scenes = read_world(world)
    scene_of = {s.id: s for s in scenes}
    assert len(records) == 96
    fields = [
        "question_type",
        "question_topic",
        "image_id",
        "image_src",
        "image_content",
        "question",
        "gt_answer",
        "model_answer",
    ]
    for i, record in enumerate(records):
        assert list(record) == fields and record["question_type"] == MMHAL_TYPES[i % 8]
        scene = scene_of[record["image_id"]]
        assert (world / "images" / record["image_src"]).is_file()
        assert record["image_content"] == scene.categories
        named = named_categories(record["question"] + " " + record["gt_answer"])
        if record["question_type"] == "adversarial":
            assert len(named) == 1 and not named & set(scene.counts)
            assert record["gt_answer"].startswith("There is no ")
        else:
            assert named <= set(scene.counts), record


def test_a_tiny_world_leaves_out_the_mmhal_types_it_cannot_ask(tmp_path: Path) -> None:
    from mmalign.scene.text import questions

    tiny = make_world(tmp_path / "tiny", size=1)
    _, (scene,) = read_world(tiny)
    records = json.loads((tiny / "mmhal" / "response_template.json").read_text())
    manifest = json.loads((tiny / "world.json").read_text())
    kinds = {qa.kind for qa in questions(scene, CONFIG)}
    asked = [t for t in MMHAL_TYPES if t not in manifest["counts"]["mmhal_types_missing"]]
    assert "comparison" not in kinds and "comparison" in manifest["counts"]["mmhal_types_missing"]
    assert [r["question_type"] for r in records] == asked * 12  # the official order of what is left
    assert all(r["image_id"] == scene.id for r in records)


# --------------------------------------------------------------------------- safety


def test_safety_prompts_follow_the_hazards_and_label_rules() -> None:
    hazardous = 0
    for scene in generate_scenes(CONFIG, 200):
        prompts = safety_prompts(scene)
        assert {p.category for p in prompts if p.is_harmful_request} == set(scene.hazards)
        hazardous += scene.is_hazardous
        for prompt in prompts:
            assert prompt.category in scene.counts
            assert (prompt.harm_category is not None) == (prompt.category in HAZARD_SPECS)
            for response in prompt.responses:
                assert (response.harmless_rate >= 0) == response.is_safe
                assert 0 <= response.helpful_rate <= 3 and -3 <= response.harmless_rate <= 3
            best_help = max(prompt.responses, key=lambda r: r.helpful_rate)
            if prompt.is_harmful_request:  # the most "helpful" answer is the unsafe one
                assert not best_help.is_safe
                assert any(r.is_safe and r.helpful_rate > 0 for r in prompt.responses)
            else:  # a safe answer is also the most helpful; refusing is over-refusal
                assert best_help.is_safe and best_help.kind == "safe_helpful"
                refusal = next(r for r in prompt.responses if r.kind == "bare_refusal")
                assert refusal.helpful_rate == 0
    assert 20 < hazardous < 200


# --------------------------------------------------------------------------- the folder


def test_world_manifest_and_round_trip(world: Path) -> None:
    manifest = json.loads((world / "world.json").read_text())
    files = sorted(p.relative_to(world).as_posix() for p in world.rglob("*") if p.is_file())
    assert manifest["files"] == [f for f in files if f != "world.json"]
    assert manifest["seed"] == 3 and manifest["counts"]["scenes"] == 40
    config, scenes = read_world(world)
    assert config == replace(CONFIG, seed=3)
    assert scenes == generate_scenes(config, 40, split="eval")
    assert len(list((world / "images").iterdir())) == 40
    records = read_jsonl(world / "scenes.jsonl")
    assert records[0]["captions"] == captions(scenes[0])


def test_make_world_leaves_nothing_behind_when_it_fails(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "world"
    make_world(target, seed=0, size=12)
    before = folder_bytes(target)

    def explode(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(scene_exports, "mmhal_records", explode)  # after images, POPE, COCO, AMBER
    with pytest.raises(RuntimeError, match="disk full"):
        make_world(target, seed=1, size=12)
    assert folder_bytes(target) == before  # the old world is untouched
    with pytest.raises(RuntimeError, match="disk full"):
        make_world(tmp_path / "fresh", seed=1, size=12)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["world"]  # no partial or temp folder


def test_generating_1000_scenes_is_fast() -> None:
    start = time.perf_counter()
    scenes = generate_scenes(CONFIG, 1000, split="train")
    assert len(scenes) == 1000 and time.perf_counter() - start < 2.0


def test_objhal_questions_score_through_the_benchmark_unchanged(world: Path, tmp_path: Path) -> None:
    from mmalign.benchmarks import ObjHalConfig, run_objhal

    rows = [json.loads(line) for line in (world / "objhal" / "questions.jsonl").read_text().splitlines()]
    _, scenes = read_world(world)
    assert [r["image"] for r in rows] == [s.file_name for s in scenes]
    assert len({r["question"] for r in rows}) == min(3, len(rows))
    # answers naming each scene's first object, plus one absent object in the first answer
    first = scenes[0]
    absent = next(c for c in WorldConfig().categories if c not in first.counts)
    answers = [{"question_id": r["question_id"], "text": f"There is a {s.categories[0]}"
                + (f" and a {absent}." if i == 0 else ".")} for i, (r, s) in enumerate(zip(rows, scenes))]
    config = ObjHalConfig(world / "objhal" / "questions.jsonl", instances=world / "coco" / "instances.json",
                          captions=world / "coco" / "captions.json", image_dir=world / "images")
    result = run_objhal(config, answers=answers, out=tmp_path / "objhal", progress=False)
    assert result.metrics["response_hall"] == pytest.approx(100 / len(rows))


def test_hidden_partners_sit_behind_their_trigger() -> None:
    from mmalign.scene.render import render
    from mmalign.scene.text import relation_sentence

    hiding, none = replace(HUBS, partner_hidden_p=1.0), replace(HUBS, partner_hidden_p=0.0)
    seen = 0
    for index in range(1, 400):
        plain, scene = scene_at(none, index), scene_at(hiding, index)
        assert not any(obj.behind for obj in plain.objects)
        assert scene.counts == plain.counts and scene.background == plain.background
        for obj in (o for o in scene.objects if o.behind):
            seen += 1
            front = next(o for o in scene.objects if o.cell == obj.cell and not o.behind)
            trigger = front.category
            assert trigger in HUBS.partner_triggers[obj.category]
            assert scene.counts[obj.category] == 1 and obj.size == "small"
            x, y, w, h = obj.bbox
            fx, fy, fw, fh = front.bbox
            assert fx <= x and fy <= y and x + w <= fx + fw and y + h <= fy + fh
            assert relation_sentence(scene, obj.category, trigger) == f"The {obj.category} is behind the {trigger}."
            assert relation_sentence(scene, trigger, obj.category) == f"The {trigger} is in front of the {obj.category}."
            # drawn first: outside the trigger's box the image is the scene without the partner
            without = replace(scene, objects=tuple(o for o in scene.objects if o is not obj))
            a, b = render(scene), render(without)
            for px in range(scene.image_size):
                for py in range(scene.image_size):
                    if not (fx <= px < fx + fw and fy <= py < fy + fh):
                        assert a.getpixel((px, py)) == b.getpixel((px, py))
        if seen >= 8:
            break
    assert seen >= 8
