"""Reports of one run and side-by-side comparisons of several checkpoints."""

import json

import pytest
from PIL import Image

from mmalign.benchmarks.chair import ChairConfig, run_chair
from mmalign.benchmarks.pope import PopeBenchmark, PopeConfig, run_pope
from mmalign.benchmarks.report import compare_reports, load_report


def pope_answers(pope_dir, texts):
    bench = PopeBenchmark(PopeConfig(pope_dir))
    return [{"question_id": q.question_id, "split": q.split, "text": t} for q, t in zip(bench.questions, texts)]


def test_one_run_writes_json_markdown_and_details(pope_dir, tmp_path):
    out = tmp_path / "run"
    answers = pope_answers(pope_dir, ["Yes", "No"] * 4)
    result = run_pope(PopeConfig(pope_dir), answers=answers, out=out, model_name="ckpt-a", progress=False)
    report = json.loads((out / "report.json").read_text())
    assert report["model"] == "ckpt-a" and report["benchmark"] == "pope"
    assert report["headline"]["F1 (mean of splits)"] == pytest.approx(100.0)
    assert report["metrics"]["splits"]["random"]["n"] == 4
    assert report["protocol"]["parsing"] == "official"
    assert report["protocol"]["decoding"].startswith("not recorded")
    markdown = (out / "report.md").read_text()
    assert "| F1 (mean of splits) | 100.00 |" in markdown
    assert "## Per split" in markdown and "| random | 100.00 |" in markdown
    assert "prompt_suffix" not in report["protocol"]  # the prompt of answers made elsewhere is unknown
    details = (out / "details.jsonl").read_text().splitlines()
    assert len(details) == 8 == len(result.details)
    assert not list(out.glob(".tmp-*"))


def test_compare_checkpoints_side_by_side(pope_dir, coco_files, tmp_path):
    runs = []
    for name, texts, parsing in (("base", ["Yes"] * 8, "official"), ("dpo", ["Yes", "No"] * 4, "official"),
                                 ("dpo-strict", ["Yes", "No"] * 4, "strict")):
        out = tmp_path / name
        run_pope(PopeConfig(pope_dir, parsing=parsing), answers=pope_answers(pope_dir, texts), out=out,
                 model_name=name, progress=False)
        runs.append(out)
    run_chair(ChairConfig(*coco_files), answers=[{"image_id": 1, "caption": "A dog."}], out=tmp_path / "chair",
              model_name="dpo", progress=False)
    runs.append(tmp_path / "chair")

    summary = compare_reports(runs, tmp_path / "cmp")
    assert set(summary) == {"pope", "chair"}
    assert summary["pope"]["runs"]["base"]["F1 (mean of splits)"] == pytest.approx(200 / 3)
    assert summary["pope"]["runs"]["dpo"]["F1 (mean of splits)"] == pytest.approx(100.0)
    assert summary["pope"]["protocol_differences"] == ["parsing"]
    assert summary["chair"]["protocol_differences"] == []
    assert list(summary["chair"]["runs"]) == ["dpo"]  # labels only need to differ within a benchmark
    markdown = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "| base | 66.67 |" in markdown and "| dpo | 100.00 |" in markdown
    assert "**Protocols differ** in: parsing" in markdown
    with Image.open(tmp_path / "cmp" / "comparison.png") as chart:
        assert chart.format == "PNG" and chart.size[0] > 300 and chart.size[1] > 300
    assert json.loads((tmp_path / "cmp" / "comparison.json").read_text()) == summary


def test_repeated_model_names_fall_back_to_folder_names(pope_dir, tmp_path):
    for name in ("step-100", "step-200"):
        run_pope(PopeConfig(pope_dir), answers=pope_answers(pope_dir, ["Yes"] * 8), out=tmp_path / name,
                 model_name="same", progress=False)
    summary = compare_reports([tmp_path / "step-100", tmp_path / "step-200" / "report.json"], tmp_path / "cmp")
    assert list(summary["pope"]["runs"]) == ["step-100", "step-200"]


def test_a_folder_without_report_is_an_error(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(FileNotFoundError, match="report.json"):
        load_report(tmp_path / "x")
    (tmp_path / "x" / "report.json").write_text("{}")
    with pytest.raises(ValueError, match="not an mmalign report"):
        load_report(tmp_path / "x")


def test_markdown_shows_multiline_protocol_values_on_one_line():
    from mmalign.benchmarks.report import BenchmarkResult, render_markdown

    result = BenchmarkResult("pope", {"F1": 85.904}, {}, {"prompt_suffix": "\nAnswer.", "parsing": "official"},
                             model="m")
    markdown = render_markdown(result)
    assert '- **prompt_suffix**: "\\nAnswer."' in markdown and "- **parsing**: official" in markdown
    assert "| F1 | 85.90 |" in markdown
