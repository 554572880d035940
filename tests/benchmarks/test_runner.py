"""The shared runner: resumable generation, caches, answer files."""

import json

import pytest

from mmalign.benchmarks.pope import PopeBenchmark, PopeConfig, run_pope
from mmalign.benchmarks.runner import GenerationConfig, run_benchmark
from mmalign.io import read_records


def pope(pope_dir, tmp_path):
    return PopeConfig(pope_dir, image_dir=tmp_path / "val2014")


def test_an_interrupted_run_resumes_and_writes_the_same_file(pope_dir, tmp_path, fake_adapter):
    generation = GenerationConfig(max_new_tokens=4, batch_size=3)  # 8 questions: batches of 3, 3, 2
    clean = tmp_path / "clean"
    run_pope(pope(pope_dir, tmp_path), adapter=fake_adapter(), out=clean, generation=generation, progress=False)

    resumed = tmp_path / "resumed"
    first = fake_adapter(fail_on_call=2)
    with pytest.raises(InterruptedError):
        run_pope(pope(pope_dir, tmp_path), adapter=first, out=resumed, generation=generation, progress=False)
    assert not (resumed / "answers.jsonl").exists()  # the final file only appears when complete
    assert len((resumed / "answers.partial.jsonl").read_text().splitlines()) == 3

    second = fake_adapter()
    run_pope(pope(pope_dir, tmp_path), adapter=second, out=resumed, generation=generation, progress=False)
    assert [len(c) for c in second.calls] == [3, 2]  # only the unfinished batches
    assert (resumed / "answers.jsonl").read_bytes() == (clean / "answers.jsonl").read_bytes()
    assert not (resumed / "answers.partial.jsonl").exists()
    assert (resumed / "report.json").read_text() == (clean / "report.json").read_text()

    third = fake_adapter()
    run_pope(pope(pope_dir, tmp_path), adapter=third, out=resumed, generation=generation, progress=False)
    assert third.calls == []  # a finished run is not generated again


def test_a_torn_last_line_is_dropped_and_regenerated(pope_dir, tmp_path, fake_adapter):
    generation = GenerationConfig(max_new_tokens=4, batch_size=4)
    clean = tmp_path / "clean"
    run_pope(pope(pope_dir, tmp_path), adapter=fake_adapter(), out=clean, generation=generation, progress=False)
    lines = (clean / "answers.jsonl").read_text().splitlines(keepends=True)

    torn = tmp_path / "torn"
    torn.mkdir()
    (torn / "answers.meta.json").write_text((clean / "answers.meta.json").read_text())
    (torn / "answers.partial.jsonl").write_text("".join(lines[:5]) + lines[5][:20])
    adapter = fake_adapter()
    run_pope(pope(pope_dir, tmp_path), adapter=adapter, out=torn, generation=generation, progress=False)
    assert [len(c) for c in adapter.calls] == [4]  # the second batch, whole
    assert (torn / "answers.jsonl").read_bytes() == (clean / "answers.jsonl").read_bytes()


def test_resuming_with_other_settings_is_an_error(pope_dir, tmp_path, fake_adapter):
    out = tmp_path / "run"
    run_pope(pope(pope_dir, tmp_path), adapter=fake_adapter(), out=out,
             generation=GenerationConfig(max_new_tokens=4), progress=False)
    with pytest.raises(ValueError, match=r"answers.meta.json: the cached answers were made with other settings \(decoding\)"):
        run_pope(pope(pope_dir, tmp_path), adapter=fake_adapter(), out=out,
                 generation=GenerationConfig(max_new_tokens=8), progress=False)


def test_a_foreign_answers_file_is_not_overwritten(pope_dir, tmp_path, fake_adapter):
    out = tmp_path / "run"
    out.mkdir()
    (out / "answers.jsonl").write_text("{}\n")
    with pytest.raises(ValueError, match="was not written by this runner"):
        run_pope(pope(pope_dir, tmp_path), adapter=fake_adapter(), out=out, progress=False)
    assert (out / "answers.jsonl").read_text() == "{}\n"


@pytest.mark.parametrize("do_sample", [False, True], ids=["greedy", "sampled"])
def test_resume_with_a_real_tiny_model(pope_dir, tmp_path, tiny_llava, do_sample):
    generation = GenerationConfig(max_new_tokens=3, batch_size=3, do_sample=do_sample, temperature=1.5, seed=7)
    clean = tmp_path / "clean"
    run_pope(pope(pope_dir, tmp_path), adapter=tiny_llava, out=clean, generation=generation, model_name="tiny",
             progress=False)

    class Interrupting:
        def __init__(self):
            self.calls = 0

        def generate(self, *args, **kwargs):
            self.calls += 1
            if self.calls == 2:
                raise InterruptedError
            return tiny_llava.generate(*args, **kwargs)

    resumed = tmp_path / "resumed"
    with pytest.raises(InterruptedError):
        run_pope(pope(pope_dir, tmp_path), adapter=Interrupting(), out=resumed, generation=generation,
                 model_name="tiny", progress=False)
    run_pope(pope(pope_dir, tmp_path), adapter=tiny_llava, out=resumed, generation=generation, model_name="tiny",
             progress=False)
    assert (resumed / "answers.jsonl").read_bytes() == (clean / "answers.jsonl").read_bytes()


def test_read_records_accepts_json_lines_in_a_json_file(tmp_path):
    path = tmp_path / "coco_pope_random.json"
    path.write_text('{"a": 1}\n\n{"a": 2}\n')
    assert read_records(path) == [{"a": 1}, {"a": 2}]
    path.write_text('[{"a": 1}, {"a": 2}]')
    assert read_records(path) == [{"a": 1}, {"a": 2}]
    path.write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(ValueError, match=r"coco_pope_random.json line 2: invalid JSON"):
        read_records(path)
    path.write_text('[1, 2]')
    with pytest.raises(ValueError, match=r"record 0: expected a JSON object"):
        read_records(path)


def test_exactly_one_source(pope_dir, fake_adapter):
    bench = PopeBenchmark(PopeConfig(pope_dir))
    with pytest.raises(ValueError, match="exactly one of adapter"):
        run_benchmark(bench, progress=False)
    with pytest.raises(ValueError, match="exactly one of adapter"):
        run_benchmark(bench, adapter=fake_adapter(), answers=[], progress=False)


def test_missing_image_is_named(pope_dir, tmp_path, fake_adapter):
    config = PopeConfig(pope_dir, image_dir=tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"pope item random/1: image file .*nowhere.* not found"):
        run_pope(config, adapter=fake_adapter(), progress=False)
    with pytest.raises(ValueError, match="no image folder was given"):
        run_pope(PopeConfig(pope_dir), adapter=fake_adapter(), progress=False)


def test_answers_record_the_item_fields(pope_dir, tmp_path, fake_adapter):
    out = tmp_path / "run"
    run_pope(pope(pope_dir, tmp_path), adapter=fake_adapter(), out=out, progress=False)
    row = json.loads((out / "answers.jsonl").read_text().splitlines()[0])
    assert set(row) == {"question_id", "split", "image", "question", "prompt", "text"}
    assert row["text"] in ("Yes", "No.")  # stripped
