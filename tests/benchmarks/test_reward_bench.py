"""VL-RewardBench and Multimodal RewardBench: readers of the public layouts, accuracy against
hand-computed numbers, the command with a real tiny reward model, and errors naming the record."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mmalign.benchmarks import (
    load_mm_rewardbench,
    load_reward_scorer,
    load_vl_rewardbench,
    run_reward_bench,
)
from mmalign.benchmarks.reward_bench import pair_accuracy
from mmalign.cli import main

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "reward_bench"
VL = FIXTURES / "vl_rewardbench.jsonl"
MM = FIXTURES / "mm_rewardbench.json"


def word_scorer(images, prompts, responses, facts=None):
    """More words, higher score: deterministic, and ties when the word counts are equal."""
    assert len(images) == len(prompts) == len(responses)
    assert all(len(row) == 1 and row[0].size == (16, 16) for row in images)
    return [float(len(r.split())) for r in responses]


word_scorer.name = "words"


def records(path: Path) -> list[dict]:
    text = path.read_text()
    return json.loads(text) if text.lstrip().startswith("[") else [json.loads(line) for line in text.splitlines()]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# --------------------------------------------------------------------------- readers


def test_vl_reader_decodes_human_ranking_in_both_orders():
    pairs = {p.key: p for p in load_vl_rewardbench(VL, FIXTURES)}
    assert pairs["RLAIF-V-1"].chosen == "A cat on a mat." and pairs["RLAIF-V-1"].rejected == "A cat."  # [0, 1]
    assert pairs["wildvision_3"].chosen == "A longer answer here." and pairs["wildvision_3"].rejected == "Short."
    assert pairs["mathverse_5"].prompt == "Solve for x."
    assert pairs["RLAIF-V-1"].images == ((FIXTURES / "images/rlaif-v/RLAIF-V-1.png").resolve(),)
    categories = {k: p.category for k, p in pairs.items()}
    assert categories == {"RLAIF-V-1": "hallucination", "RLHF-V-2": "hallucination", "wildvision_3": "general",
                          "LRVInstruction-4": "general", "mathverse_5": "reasoning", "mmmu-6": "reasoning",
                          "hallucination-7": "hallucination"}


def test_vl_reader_reads_the_parquet_layout_with_image_bytes(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = []
    for record in records(VL):
        image = (FIXTURES / record.pop("image_path")).read_bytes()
        rows.append({**record, "image": {"bytes": image, "path": None}, "meta": json.dumps(record["meta"])})
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "test.parquet")
    pairs = load_vl_rewardbench(tmp_path / "test.parquet")  # no image folder: the bytes are inside
    from_jsonl = load_vl_rewardbench(VL, FIXTURES)
    assert [(p.key, p.chosen, p.rejected, p.category) for p in pairs] == \
        [(p.key, p.chosen, p.rejected, p.category) for p in from_jsonl]  # categories from the id prefixes
    assert pairs[0].images[0] == from_jsonl[0].images[0].read_bytes()


def test_mm_reader_decodes_better_in_both_orders():
    pairs = {p.key: p for p in load_mm_rewardbench(MM, FIXTURES)}
    assert (pairs["nocaps_1"].chosen, pairs["nocaps_1"].rejected) == ("a b c", "a")  # Output1
    assert (pairs["visitbench_2"].chosen, pairs["visitbench_2"].rejected) == ("a b c d", "a b")  # Output2
    assert pairs["nocaps_1"].prompt == "Question 0?"
    assert pairs["nocaps_1"].category == "open_generation/correctness_task"
    assert {k: p.subcategory for k, p in pairs.items() if p.subcategory} == {
        "pairs_3": "safety/bias", "hatefulmemes_4": "safety/toxicity", "mathvista_5": "reasoning/math",
        "EMMA-Coding_6": "reasoning/coding"}


# --------------------------------------------------------------------------- accuracy


def test_vl_accuracy_overall_per_category_and_macro_by_hand(tmp_path):
    result = run_reward_bench("vl-rewardbench", VL, word_scorer, image_dir=FIXTURES, out=tmp_path, progress=False)
    # right: RLAIF-V-1, wildvision_3, mathverse_5, mmmu-6; wrong: RLHF-V-2, hallucination-7, and
    # LRVInstruction-4, a tie (three words each)
    assert result.headline["Overall accuracy"] == pytest.approx(100 * 4 / 7)
    assert result.headline["hallucination"] == pytest.approx(100 / 3)
    assert result.headline["general"] == pytest.approx(50.0)
    assert result.headline["reasoning"] == pytest.approx(100.0)
    assert result.headline["Macro accuracy"] == pytest.approx((100 / 3 + 50 + 100) / 3)
    assert list(result.headline) == ["Overall accuracy", "Macro accuracy", "general", "hallucination", "reasoning"]
    assert result.metrics["overall"]["ties"] == 1 and result.metrics["per_category"]["general"]["ties"] == 1
    assert result.model == "words"
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["headline"] == pytest.approx(result.headline)
    assert report["card"]["questions"] == 7 and report["card"]["images"] == 7
    details = [json.loads(line) for line in (tmp_path / "details.jsonl").read_text().splitlines()]
    assert [d["correct"] for d in details] == [True, False, True, False, True, True, False]


def test_mm_accuracy_overall_per_category_and_subcategory_by_hand():
    result = run_reward_bench("mm-rewardbench", MM, word_scorer, image_dir=FIXTURES, progress=False)
    # wrong: pairs_3 (the rejected output is longer) and mathvista_5 (a tie)
    assert result.headline == pytest.approx({
        "Overall accuracy": 100 * 5 / 7, "General Correctness": 100.0, "General Preference": 100.0,
        "Reasoning": 50.0, "Safety": 50.0, "VQA": 100.0})
    assert list(result.headline)[:3] == ["Overall accuracy", "General Correctness", "General Preference"]
    sub = result.metrics["per_subcategory"]
    assert {k: v["accuracy"] for k, v in sub.items()} == pytest.approx(
        {"safety/bias": 0.0, "safety/toxicity": 100.0, "reasoning/math": 0.0, "reasoning/coding": 100.0})


def test_a_tie_counts_as_wrong():
    pairs = load_mm_rewardbench(MM, FIXTURES)[:2]
    metrics = pair_accuracy(pairs, [1.0, 2.0], [1.0, 1.0])
    assert metrics["overall"]["accuracy"] == pytest.approx(50.0) and metrics["overall"]["ties"] == 1


def test_a_rerun_reads_the_cached_scores(tmp_path):
    calls = []

    def counting(images, prompts, responses, facts=None):
        calls.append(len(responses))
        return word_scorer(images, prompts, responses)

    first = run_reward_bench("vl-rewardbench", VL, counting, image_dir=FIXTURES, out=tmp_path, batch_size=3,
                             progress=False)
    assert calls == [6, 6, 2]
    again = run_reward_bench("vl-rewardbench", VL, counting, image_dir=FIXTURES, out=tmp_path, batch_size=3,
                             progress=False)
    assert calls == [6, 6, 2] and again.headline == first.headline
    with pytest.raises(ValueError, match="other settings"):
        run_reward_bench("vl-rewardbench", VL, counting, image_dir=FIXTURES, out=tmp_path, batch_size=2,
                         progress=False)


def test_scorer_returning_too_few_scores_is_an_error():
    with pytest.raises(RuntimeError, match="returned 1 scores for 14 responses"):
        run_reward_bench("vl-rewardbench", VL, lambda *a, **k: [0.0], image_dir=FIXTURES, batch_size=7,
                         progress=False)


# --------------------------------------------------------------------------- bad records


def _bad_vl(tmp_path: Path, **change) -> Path:
    row = records(VL)[1]
    row.update(change)
    return write_jsonl(tmp_path / "bad.jsonl", [records(VL)[0], {k: v for k, v in row.items() if v is not None}])


@pytest.mark.parametrize(("change", "message"), [
    ({"human_ranking": [0, 0]}, r"record 1 \(id RLHF-V-2\): field 'human_ranking' must be \[0, 1\]"),
    ({"response": ["only one"]}, r"record 1 \(id RLHF-V-2\): field 'response' must be a list of two strings"),
    ({"query": None}, r"record 1 \(id RLHF-V-2\): missing field 'query'"),
    ({"id": "RLAIF-V-1"}, r"record 1 \(id RLAIF-V-1\): duplicate id"),
    ({"image_path": "../vl_rewardbench.jsonl"}, r"record 1 \(id RLHF-V-2\), field 'image_path': .*escapes"),
    ({"image_path": "images/none.png"}, r"record 1 \(id RLHF-V-2\), field 'image_path': image file .* not found"),
])
def test_bad_vl_records_name_record_and_field(tmp_path, change, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        load_vl_rewardbench(_bad_vl(tmp_path, **change), FIXTURES)


@pytest.mark.parametrize(("change", "message"), [
    ({"Better": "A"}, r"record 0 \(ID nocaps_1\): field 'Better' must be 'Output1' or 'Output2', got 'A'"),
    ({"Output1": 3}, r"record 0 \(ID nocaps_1\): field 'Output1' must be str"),
    ({"Image": "/etc/passwd"}, r"record 0 \(ID nocaps_1\), field 'Image': .*escapes"),
    ({"Category": ""}, r"record 0 \(ID nocaps_1\): field 'Category' is empty"),
])
def test_bad_mm_records_name_record_and_field(tmp_path, change, message):
    path = tmp_path / "all_data.json"
    path.write_text(json.dumps([{**records(MM)[0], **change}]))
    with pytest.raises(ValueError, match=message):
        load_mm_rewardbench(path, FIXTURES)


def test_image_path_needs_an_image_folder():
    with pytest.raises(ValueError, match=r"record 0 \(ID nocaps_1\), field 'Image'.*no image folder"):
        load_mm_rewardbench(MM)


# --------------------------------------------------------------------------- the command, a real reward model


@pytest.fixture(scope="module")
def reward_model(tiny_llava_dir, tmp_path_factory):
    import torch

    from mmalign.models import ScalarHeadModel, load_adapter
    from mmalign.qlora import LoraSettings

    torch.manual_seed(3)
    adapter = load_adapter(tiny_llava_dir)
    adapter.add_lora(LoraSettings(r=4, alpha=8, dropout=0.0))
    model = ScalarHeadModel(adapter, kind="reward")
    with torch.no_grad():
        model.head.weight.normal_(0, 1.0)
    path = tmp_path_factory.mktemp("rm") / "rm"
    model.save_pretrained(path)
    return path


def test_command_scores_with_a_saved_reward_model_resumes_and_compares(reward_model, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(FIXTURES, data)
    argv = ["bench", "vl-rewardbench", "--data", data / "vl_rewardbench.jsonl", "--image-folder", data,
            "--reward-model", reward_model, "--out", tmp_path / "run", "--batch-size", "3", "--no-progress"]
    assert main([str(a) for a in argv]) == 0
    assert "Macro accuracy" in capsys.readouterr().out
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    details = [json.loads(line) for line in (tmp_path / "run" / "details.jsonl").read_text().splitlines()]
    assert report["model"] == "rm" and len(details) == 7
    assert report["headline"]["Overall accuracy"] == pytest.approx(100 * sum(d["correct"] for d in details) / 7)
    assert len({d["chosen_score"] for d in details}) > 1  # a real model, not a constant

    # The chosen side is the human-preferred response, scored as the model scores it alone.
    scorer = load_reward_scorer(reward_model)
    first = load_vl_rewardbench(data / "vl_rewardbench.jsonl", data)[2]  # human_ranking [1, 0]
    from PIL import Image

    image = Image.open(first.images[0]).convert("RGB")
    alone = scorer([[image], [image]], [first.prompt] * 2, [first.chosen, first.rejected])
    assert details[2]["chosen_score"] == pytest.approx(alone[0], abs=1e-4)
    assert details[2]["rejected_score"] == pytest.approx(alone[1], abs=1e-4)

    before = (tmp_path / "run" / "report.json").read_text()
    assert main([str(a) for a in argv]) == 0
    assert (tmp_path / "run" / "report.json").read_text() == before

    other = [*argv[:argv.index("--out")], "--out", tmp_path / "run2", "--name", "rm-b", "--no-progress"]
    assert main([str(a) for a in other]) == 0
    assert main(["bench", "report", str(tmp_path / "run"), str(tmp_path / "run2"), "--out", str(tmp_path / "cmp")]) == 0
    comparison = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert set(comparison["vl-rewardbench"]["runs"]) == {"rm", "rm-b"}
    assert comparison["vl-rewardbench"]["card_differences"] == []


def test_command_names_the_bad_record(reward_model, tmp_path, capsys):
    bad = tmp_path / "all_data.json"
    bad.write_text(json.dumps([{**records(MM)[0], "Better": "both"}]))
    assert main(["bench", "mm-rewardbench", "--data", str(bad), "--image-folder", str(FIXTURES),
                 "--reward-model", str(reward_model), "--out", str(tmp_path / "o")]) == 2
    assert "record 0 (ID nocaps_1): field 'Better'" in capsys.readouterr().err
