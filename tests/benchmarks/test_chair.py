"""CHAIR and Object HalBench on small hand-made COCO files."""

import base64
import io
import json

import pytest
from PIL import Image

from mmalign.benchmarks.chair import ChairBenchmark, ChairConfig, load_ground_truth, run_chair
from mmalign.benchmarks.objhal import ObjHalBenchmark, ObjHalConfig, objhal_metrics, run_objhal

CAPTIONS = [
    # GT {dog, person}: man, woman -> person; dogs, dog -> dog; bench hallucinated. 14 words.
    {"image_id": 1, "caption": "A man and a woman walk two dogs past a bench and a dog."},
    # GT {hot dog, cup (from the reference caption)}. 5 words.
    {"image_id": 2, "caption": "A hot dog with mustard."},
    # GT {toilet}: "toilet seat" -> toilet, the other seat dropped; sink hallucinated. 12 words.
    {"image_id": 3, "caption": "The toilet seat is up next to a sink and a seat."},
]


def test_ground_truth_is_instances_and_reference_captions(coco_files):
    truth = load_ground_truth(*coco_files)
    assert truth.vocabulary.name == "mmalign-coco-v2"
    assert truth.objects == {"1": {"dog", "person"}, "2": {"hot dog", "cup"}, "3": {"toilet"}}


def test_chair_by_hand(coco_files):
    instances, captions = coco_files
    result = run_chair(ChairConfig(instances, captions), answers=CAPTIONS, progress=False)
    m = result.metrics
    assert (m["mentions"], m["hallucinated_mentions"], m["captions"]) == (8, 2, 3)
    assert m["chair_i"] == pytest.approx(25.0)
    assert m["chair_s"] == pytest.approx(200 / 3)
    assert m["recall"] == pytest.approx(80.0)  # (2 + 1 + 1) / (2 + 2 + 1)
    assert m["length"] == pytest.approx(31 / 3)
    assert result.details[0]["mentions"] == ["person", "person", "dog", "bench", "dog"]
    assert result.details[2]["hallucinated"] == ["sink"]


def test_a_caption_without_objects_counts_as_clean(coco_files):
    result = run_chair(ChairConfig(*coco_files), answers=[{"image_id": 1, "caption": "Nothing to see."}],
                       progress=False)
    assert result.metrics["chair_s"] == 0.0 and result.metrics["captions"] == 1


def test_chair_object_extractor_hook(coco_files):
    def extractor(caption):
        return ["two cats", "a dog"] if "dog" in caption else []

    result = run_chair(ChairConfig(*coco_files, extract_objects=extractor), answers=CAPTIONS, progress=False)
    assert [d["mentions"] for d in result.details] == [["cat", "dog"], ["cat", "dog"], []]
    # image 1 (dog, person): cat hallucinated; image 2 (hot dog, cup): cat and dog hallucinated
    assert result.metrics["chair_i"] == pytest.approx(75.0)
    assert result.protocol["object_extractor"] == "extractor"


def test_shuffled_answers_file_gives_the_same_metrics(coco_files, tmp_path):
    shuffled = CAPTIONS[::-1]
    path = tmp_path / "captions.jsonl"
    path.write_text("".join(json.dumps(c) + "\n" for c in shuffled))
    a = run_chair(ChairConfig(*coco_files), answers=CAPTIONS, progress=False)
    b = run_chair(ChairConfig(*coco_files), answers=path, progress=False)
    assert a.metrics == b.metrics and a.details == b.details


def test_unknown_image_and_missing_selection_are_errors(coco_files):
    with pytest.raises(ValueError, match=r"answers record 1: there is no annotated image 42"):
        run_chair(ChairConfig(*coco_files), answers=[CAPTIONS[0], {"image_id": 42, "caption": "x"}], progress=False)
    with pytest.raises(ValueError, match=r"no answer for 1 annotated image\(s\): 2"):
        run_chair(ChairConfig(*coco_files, image_ids=[1, 2]), answers=[CAPTIONS[0]], progress=False)


def test_sampled_selection_is_seeded(coco_files):
    a = ChairBenchmark(ChairConfig(*coco_files, num_images=2, seed=5)).selection
    b = ChairBenchmark(ChairConfig(*coco_files, num_images=2, seed=5)).selection
    assert a == b and len(a) == 2 and set(a) <= {"1", "2", "3"}


def test_non_coco_categories_get_their_own_vocabulary(tmp_path, files):
    instances = files.json(tmp_path / "i.json", {
        "images": [{"id": 7, "file_name": "s.png"}],
        "categories": [{"id": 1, "name": "circle"}, {"id": 2, "name": "star"}],
        "annotations": [{"image_id": 7, "category_id": 1}],
    })
    result = run_chair(ChairConfig(instances), answers=[{"image_id": 7, "caption": "Two circles and a star."}],
                       progress=False)
    assert result.protocol["vocabulary"]["name"] == "instances"
    assert result.metrics["chair_i"] == pytest.approx(50.0)  # circle right, star hallucinated
    with pytest.raises(ValueError, match=r"annotations\[0\]: category 'circle' is not in vocabulary"):
        load_ground_truth(instances, vocabulary="coco")


def test_generation_writes_captions_keyed_by_image(coco_files, fake_adapter, tmp_path):
    adapter = fake_adapter()
    out = tmp_path / "run"
    run_chair(ChairConfig(*coco_files, image_dir=tmp_path / "val2014"), adapter=adapter, out=out, progress=False)
    rows = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert [r["image_id"] for r in rows] == [1, 2, 3]
    assert all(r["prompt"] == "Please describe this image in detail." and "caption" in r for r in rows)


# --------------------------------------------------------------------------- Object HalBench

QUESTIONS = [
    {"question_id": 11, "image_id": 1, "question": "Describe the image in detail."},
    {"question_id": 12, "image_id": 2, "question": "What is happening in the image?"},
    {"question_id": 13, "image_id": 3, "question": "Describe the image in detail."},
    {"question_id": 14, "image_id": 1, "question": "Give a detailed description."},
]
RESPONSES = [
    {"question_id": 11, "text": "A dog and a dog and a cat."},  # {dog, cat}: cat hallucinated
    {"question_id": 12, "text": "A hot dog."},  # {hot dog}: clean
    {"question_id": 13, "text": "A clean bathroom."},  # no object: not in the response-level base
    {"question_id": 14, "text": "A man with a frisbee and a kite."},  # {person, frisbee, kite}: 2 hallucinated
]


def test_object_halbench_by_hand(coco_files, tmp_path, files):
    questions = files.jsonl(tmp_path / "objhal.jsonl", QUESTIONS)
    result = run_objhal(ObjHalConfig(questions, *coco_files), answers=RESPONSES[::-1], progress=False)
    m = result.metrics
    assert (m["responses"], m["responses_with_objects"], m["unique_objects"], m["hallucinated_objects"]) == (4, 3, 6, 3)
    assert m["response_hall"] == pytest.approx(200 / 3)
    assert m["object_hall"] == pytest.approx(50.0)
    assert [d["question_id"] for d in result.details] == [11, 12, 13, 14]  # question order kept
    assert result.protocol["object_extractor"].startswith("none")


def test_object_extractor_hook(coco_files, tmp_path, files):
    questions = files.jsonl(tmp_path / "objhal.jsonl", QUESTIONS)

    def llm_extractor(response):
        return ["kittens"] if "dog" in response else []

    config = ObjHalConfig(questions, *coco_files, extract_objects=llm_extractor)
    result = run_objhal(config, answers=RESPONSES, progress=False)
    # Only q11 and q12 mention "dog": both become {cat}, hallucinated for images 1 and 2.
    assert result.metrics["responses_with_objects"] == 2
    assert result.metrics["response_hall"] == pytest.approx(100.0)
    assert result.protocol["object_extractor"] == "llm_extractor"


def test_objhal_metrics_function():
    m = objhal_metrics([{"dog"}, set(), {"cat", "dog"}], [{"dog"}, {"dog"}, {"dog"}])
    assert m["response_hall"] == pytest.approx(50.0) and m["object_hall"] == pytest.approx(100 / 3)


def test_inline_base64_images_and_image_id_keys(coco_files, tmp_path, files):
    buffer = io.BytesIO()
    Image.new("RGB", (300, 300), "red").save(buffer, format="PNG")
    encoded = base64.b64encode(buffer.getvalue()).decode()
    assert len(encoded) > 512
    questions = files.jsonl(tmp_path / "q.jsonl", [{"image_id": 1, "question": "Describe.", "image": encoded},
                                                   {"image_id": 2, "question": "Describe."}])
    bench = ObjHalBenchmark(ObjHalConfig(questions, *coco_files, image_dir=tmp_path / "val2014"))
    items = bench.items()
    assert bench.key_field == "image_id"
    assert isinstance(items[0].image, bytes) and items[1].image.name == "COCO_val2014_000000000002.jpg"
    with pytest.raises(ValueError, match=r"answers record 0: there is no image_id 3"):
        bench.score([{"image_id": 3, "text": "x"}], None)


def test_objhal_question_errors(coco_files, tmp_path, files):
    bad = files.jsonl(tmp_path / "bad.jsonl", [{"question_id": 1, "image_id": 99, "question": "Describe."}])
    with pytest.raises(ValueError, match=r"bad.jsonl record 0: image_id 99 is not in the annotation files"):
        ObjHalBenchmark(ObjHalConfig(bad, *coco_files))


def test_chair_rejects_a_second_caption_for_an_image(coco_files):
    answers = CAPTIONS + [dict(CAPTIONS[1])]
    with pytest.raises(ValueError, match="a second answer"):
        run_chair(ChairConfig(*coco_files), answers=answers, progress=False)
