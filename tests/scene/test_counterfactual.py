"""Counterfactual scenes and their image-contrast pairs: deterministic, annotations that match
the pixels, edits that show, and a dataset every exporter and loader accepts."""

import io
import json

import numpy as np
import pytest
from datasets import load_from_disk
from PIL import Image

from mmalign.cli import main
from mmalign.data_builders.export import export_dataset
from mmalign.data_builders.storage import iter_records, load_preference_dataset, validate_dataset
from mmalign.scene import counterfactual_scene, save_counterfactual_dataset
from mmalign.scene.counterfactual import SUMMARY_FILE, contrast_records
from mmalign.scene.render import render_png
from mmalign.scene.text import WHERE_PHRASES, detailed_description, questions
from mmalign.scene.world import COLORS, Scene, SceneObject, WorldConfig, scene_at

WORLD = WorldConfig()
SCENES = [scene_at(WORLD, i, "train") for i in range(1, 81)]


def hand_scene(*objects: SceneObject, hazards: tuple[str, ...] = ()) -> Scene:
    return Scene(id="train-000001", image_id=1, split="train", seed=0, image_size=96, background="white",
                 objects=objects, hazards=hazards)


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def rows(path) -> list[dict]:
    """The stored rows with images as encoded bytes (``{"bytes", "path"}``) and meta parsed."""
    out = list(iter_records(load_from_disk(str(path))))
    for row in out:
        row["meta"] = json.loads(row["meta"])
    return out


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    out = tmp_path_factory.mktemp("cf") / "pairs"
    report, summary = save_counterfactual_dataset(out, WORLD, 12, split="eval", seed=3, with_questions=True)
    return out, report, summary


# ---------------------------------------------------------------------------- the edit
def test_same_arguments_give_the_same_counterfactual_and_another_seed_another_edit():
    for kind in ("remove", "recolour"):
        edits = [counterfactual_scene(s, kind, seed=0) for s in SCENES]
        again = [counterfactual_scene(scene_at(WORLD, s.image_id, "train"), kind, seed=0) for s in SCENES]
        assert edits == again
        assert all(render_png(a.scene) == render_png(b.scene) for a, b in zip(edits, again) if a)
        other = [counterfactual_scene(s, kind, seed=1) for s in SCENES]
        assert any(a != b for a, b in zip(edits, other)), kind
    assert SCENES == [scene_at(WORLD, i, "train") for i in range(1, 81)]  # the inputs are untouched


def test_a_removal_drops_the_category_of_a_single_instance_or_one_from_its_count():
    gone = fewer = hazards_gone = 0
    for scene in SCENES:
        edit = counterfactual_scene(scene, "remove", seed=0)
        if edit is None:
            continue
        category, after = edit.target.category, edit.scene
        assert edit.kind == "remove" and edit.target in scene.objects and edit.target not in after.objects
        assert len(after.objects) == len(scene.objects) - 1
        assert [o for o in scene.objects if o != edit.target] == list(after.objects)
        if scene.counts[category] == 1:
            gone += 1
            assert category not in after.counts and category not in after.categories
        else:
            fewer += 1
            assert after.counts[category] == scene.counts[category] - 1
        assert after.hazards == tuple(h for h in scene.hazards if h in after.counts)
        hazards_gone += after.hazards != scene.hazards
        assert (after.id, after.seed, after.background) == (scene.id, scene.seed, scene.background)
        o = edit.target
        assert edit.description == f"removed the {o.size} {o.color} {category} {WHERE_PHRASES[o.cell]}"
    assert gone and fewer and hazards_gone  # every case was met


def test_a_recolour_takes_a_palette_colour_no_other_instance_of_its_category_has():
    for scene in SCENES:
        edit = counterfactual_scene(scene, "recolour", seed=0, colors=WORLD.colors)
        assert edit is not None and edit.kind == "recolour"
        index = scene.objects.index(edit.target)
        changed = edit.scene.objects[index]
        assert changed.color == edit.new_color != edit.target.color and edit.new_color in WORLD.colors
        others = [o for o in edit.scene.instances(changed.category) if o is not changed]
        assert edit.new_color not in {o.color for o in others}
        assert edit.new_color not in {o.color for o in scene.instances(changed.category)}  # a claim made false
        assert [o for i, o in enumerate(edit.scene.objects) if i != index] == \
               [o for i, o in enumerate(scene.objects) if i != index]
        assert edit.scene.hazards == scene.hazards
        assert f"from {edit.target.color} to {edit.new_color}" in edit.description


def test_scenes_without_a_visible_edit_have_none():
    ball = SceneObject("ball", "red", "large", (40, 40, 20, 20), 4)
    assert counterfactual_scene(hand_scene(ball), "remove") is None
    # a cup in front of a hidden table: removing the cup would reveal a table annotated as hidden,
    # and the hidden table's pixels may not show at all
    cup = SceneObject("cup", "blue", "large", (36, 36, 24, 24), 4)
    table = SceneObject("table", "green", "small", (42, 42, 12, 9), 4, behind=True)
    assert counterfactual_scene(hand_scene(table, cup), "remove") is None
    recoloured = counterfactual_scene(hand_scene(table, cup), "recolour", seed=5)
    assert recoloured.target == cup
    # two balls already take both colours of a two-colour palette
    other = SceneObject("ball", "blue", "small", (5, 5, 10, 10), 0)
    assert counterfactual_scene(hand_scene(other, ball), "recolour", colors=("red", "blue")) is None
    with pytest.raises(ValueError, match="unknown counterfactual kind 'blur'"):
        counterfactual_scene(hand_scene(ball), "blur")


def test_the_edit_shows_in_the_pixels_and_nowhere_else():
    for scene in SCENES[:40]:
        before = pixels(render_png(scene))
        for kind in ("remove", "recolour"):
            edit = counterfactual_scene(scene, kind, seed=0, colors=tuple(COLORS))
            if edit is None:
                continue
            changed = np.abs(pixels(render_png(edit.scene)) - before).sum(-1) > 0
            assert changed.any(), (scene.id, kind)
            x, y, w, h = edit.target.bbox
            inside = np.zeros_like(changed)
            inside[max(0, y - 1):y + h + 1, max(0, x - 1):x + w + 1] = True
            assert not (changed & ~inside).any(), (scene.id, kind)


# ---------------------------------------------------------------------------- the pairs
def test_pairs_hold_the_true_image_and_the_rendered_counterfactual(pairs):
    path, report, summary = pairs
    stored = rows(path)
    assert report.rows == summary.pairs == len(stored) > 0
    for row in stored:
        meta = row["meta"]
        scene = scene_at(WORLD, int(meta["scene"].split("-")[1]), "eval")
        edit = counterfactual_scene(scene, meta["edit"], seed=3, colors=WORLD.colors)
        assert row["images"][0]["bytes"] == render_png(scene)
        assert row["rejected_images"][0]["bytes"] == render_png(edit.scene)
        assert (pixels(row["images"][0]["bytes"]) != pixels(row["rejected_images"][0]["bytes"])).any()
        assert meta["counterfactual_objects"] == edit.scene.to_dict()["objects"]
        assert meta["object"]["category"] == edit.target.category and meta["new_color"] == edit.new_color
        assert meta["edit_description"] == edit.description
        assert row["chosen"] == row["rejected"] and row["source"] == "scene-counterfactual"
        if meta["prompt_kind"] == "describe":
            assert row["chosen"] == detailed_description(scene, WORLD)
        else:  # the world's question whose true answer the edit makes wrong
            truth = {q.question: q.full_answer for q in questions(scene, WORLD)}
            after = {q.question: q.full_answer for q in questions(edit.scene, WORLD)}
            assert truth[row["prompt"]] == row["chosen"] != after.get(row["prompt"])
    kinds = {(r["meta"]["edit"], r["meta"]["prompt_kind"]) for r in stored}
    assert {("remove", "describe"), ("recolour", "describe"), ("recolour", "color")} <= kinds
    assert {("remove", "exist"), ("remove", "count")} & kinds


def test_the_summary_counts_every_scene_and_pair(pairs):
    path, _, summary = pairs
    written = json.loads((path / SUMMARY_FILE).read_text())
    assert written["pairs"] == summary.pairs and written["scenes"] == 12 and written["split"] == "eval"
    assert written["start"] == 100_001  # the eval split's preference scenes, not the benchmark's
    described = [r["meta"]["edit"] for r in rows(path) if r["meta"]["prompt_kind"] == "describe"]
    for kind in ("remove", "recolour"):
        assert described.count(kind) + sum(written["skipped"][kind].values()) == 12


def test_the_dataset_loads_validates_and_exports_with_rejected_images(pairs, tmp_path):
    path, report, _ = pairs
    assert len(load_preference_dataset(path)) == report.rows
    assert validate_dataset(path).ok
    first = rows(path)[0]
    export_dataset(path, tmp_path / "trl", "trl")
    trl = load_from_disk(str(tmp_path / "trl"))[0]
    assert np.array_equal(np.asarray(trl["rejected_images"][0].convert("RGB"), dtype=np.int16),
                          pixels(first["rejected_images"][0]["bytes"]))
    assert trl["images"][0].tobytes() != trl["rejected_images"][0].tobytes()
    export_dataset(path, tmp_path / "swift", "ms-swift")
    swift = json.loads((tmp_path / "swift" / "train.jsonl").read_text().splitlines()[0])
    assert (tmp_path / "swift" / swift["rejected_images"][0]).read_bytes() == first["rejected_images"][0]["bytes"]
    assert (tmp_path / "swift" / swift["images"][0]).read_bytes() == first["images"][0]["bytes"]


def test_the_dataset_is_the_same_for_the_same_arguments_and_another_seed_edits_otherwise(pairs, tmp_path):
    path, _, _ = pairs
    save_counterfactual_dataset(tmp_path / "again", WORLD, 12, split="eval", seed=3, with_questions=True)
    assert rows(tmp_path / "again") == rows(path)
    save_counterfactual_dataset(tmp_path / "other", WORLD, 12, split="eval", seed=4, with_questions=True)
    assert [r["meta"] for r in rows(tmp_path / "other")] != [r["meta"] for r in rows(path)]


def test_contrast_records_skip_a_kind_and_say_why():
    ball = SceneObject("ball", "red", "large", (40, 40, 20, 20), 4)
    records, skipped = contrast_records(hand_scene(ball), WORLD)
    assert skipped == {"remove": "one object only"}
    assert [r["meta"]["edit"] for r in records] == ["recolour"]


# ---------------------------------------------------------------------------- the command
def test_cli_builds_pairs_on_a_few_scenes(tmp_path, capsys):
    out = tmp_path / "cf"
    argv = ["world", "counterfactual", "--out", str(out), "--scenes", "5", "--kind", "remove", "--seed", "2",
            "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert f"wrote {summary['pairs']} image-contrast (scene-world counterfactual) rows to {out}" in printed
    assert summary["pairs"] + sum(summary["skipped"]["remove"].values()) == 5
    assert summary["start"] == 1 and summary["split"] == "train"
    assert {r["meta"]["edit"] for r in rows(out)} == {"remove"}
    expected = WorldConfig(seed=2)  # --seed seeds the world and the edits, as in the other world builders
    for row in rows(out):
        scene = scene_at(expected, int(row["meta"]["scene"].split("-")[1]), "train")
        assert row["rejected_images"][0]["bytes"] == render_png(counterfactual_scene(scene, "remove", seed=2).scene)
    assert main(argv) == 0  # an earlier dataset is replaced
    with pytest.raises(SystemExit):
        main(["world", "counterfactual", "--out", str(out), "--kind", "blur"])
    assert "invalid choice: 'blur'" in capsys.readouterr().err
