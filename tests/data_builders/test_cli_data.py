"""`mmalign data ...` commands, run through the ``mmalign`` command (its error handling included)."""

import json

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmalign.cli import main
from mmalign.data_builders.storage import load_preference_dataset, save_preference_dataset


def run(*argv):
    return main(["data", *map(str, argv)])


@pytest.fixture
def rlhf_v_file(tmp_path, png):
    def make(texts):
        image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
        path = tmp_path / "RLHF-V-Dataset.parquet"
        pq.write_table(pa.table({
            "ds_name": ["RLHF-V"] * len(texts),
            "image": pa.array([{"bytes": png(size=(24, 16)), "path": None}] * len(texts), type=image_type),
            "text": texts, "origin_dataset": ["coco"] * len(texts),
            "origin_split": ['{"model": "muffin"}'] * len(texts), "idx": list(range(100, 100 + len(texts))),
            "image_path": ["x.jpg"] * len(texts),
        }), path)
        return path

    return make


TEXT = json.dumps({"question": "<image>\nDescribe it.", "chosen": "A man is riding a blue bike down the street.",
                   "rejected": "A man is riding a red bike down the street."})


def test_import_validate_inspect(rlhf_v_file, tmp_path, capsys):
    path = rlhf_v_file([TEXT, TEXT])
    assert run("import", "rlhf-v", path, "--out", tmp_path / "ds") == 0
    assert "wrote 2 preference rows" in capsys.readouterr().out
    assert run("validate", tmp_path / "ds") == 0
    assert "ok: all 2 rows are valid" in capsys.readouterr().out

    assert run("inspect", tmp_path / "ds", "--rows", "1", "--color", "never") == 0
    out = capsys.readouterr().out
    assert "chosen (1 span): A man is riding a [[blue]] bike down the street." in out
    assert "rejected (1 span): A man is riding a [[red]] bike" in out
    assert "images:   1 (24x16 PNG)" in out and "row 1" not in out

    assert run("inspect", tmp_path / "ds", "--color", "always", "--html", tmp_path / "p.html") == 0
    out = capsys.readouterr().out
    assert "riding a \033[1;32mblue\033[0m bike" in out and "\033[1;31mred\033[0m" in out
    page = (tmp_path / "p.html").read_text()
    assert "riding a <mark>blue</mark> bike" in page and page.count('<img src="data:image/png;base64,') == 2


def test_import_errors_exit_2_and_write_nothing(rlhf_v_file, tmp_path, capsys):
    path = rlhf_v_file([TEXT, "{broken"])
    assert run("import", "rlhf-v", path, "--out", tmp_path / "ds") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path} row 1 (id 101), field 'text': is not valid JSON")
    assert not (tmp_path / "ds").exists()
    assert run("import", "rlhf-v", path, "--out", tmp_path / "ds", "--lenient") == 0
    out = capsys.readouterr().out
    assert "wrote 1 preference rows" in out and "skipped 1 row (1 × 'text')" in out
    assert run("import", "rlhf-v", path, "--out", tmp_path / "x", "--facts", "f.json") == 2
    assert "--facts does not apply to format rlhf-v" in capsys.readouterr().err


def test_validate_lists_bad_rows(tmp_path, capsys):
    datasets.Dataset.from_list([
        {"prompt": "q", "chosen": "good", "rejected": "bad", "chosen_spans": [[0, 4]]},
        {"prompt": "q", "chosen": "good", "rejected": "bad", "chosen_spans": [[3, 9]]},
        {"prompt": "q", "chosen": "same", "rejected": "same", "chosen_spans": None},
    ]).save_to_disk(str(tmp_path / "raw"))
    assert run("validate", tmp_path / "raw") == 1
    out = capsys.readouterr().out
    assert "row 1, field 'chosen_spans': span 0 [3, 9) is empty or out of range" in out
    assert "row 2, field 'rejected': is identical to 'chosen'" in out
    assert "INVALID: 2 of 3 rows fail" in out and "(no mmalign manifest)" in out


def test_build_corrections(png, tmp_path, capsys):
    (tmp_path / "a.png").write_bytes(png())
    (tmp_path / "c.jsonl").write_text(json.dumps({
        "image": "a.png", "question": "What is it?", "original": "It is a cat on a mat.",
        "corrected": "It is a dog on a rug."}))
    assert run("build", "corrections", tmp_path / "c.jsonl", "--out", tmp_path / "ds") == 0
    assert run("build", "corrections", tmp_path / "c.jsonl", "--out", tmp_path / "fine", "--min-match", "1") == 0
    assert load_preference_dataset(tmp_path / "ds")[0]["chosen_spans"] == [[8, 21]]
    assert load_preference_dataset(tmp_path / "fine")[0]["chosen_spans"] == [[8, 11], [17, 20]]


def test_build_safety_pairs(record, tmp_path, capsys):
    dual = record(chosen="Here is how.", rejected="I cannot help.", chosen_spans=None, rejected_spans=None,
                  more_helpful="chosen", safer="rejected", chosen_is_safe=False, rejected_is_safe=True,
                  chosen_harmless_rate=-2, rejected_harmless_rate=2)
    save_preference_dataset([dual], tmp_path / "dual")
    assert run("build", "safety-pairs", tmp_path / "dual", "--by", "safer", "--out", tmp_path / "cost") == 0
    row = load_preference_dataset(tmp_path / "cost")[0]
    assert row["chosen"] == "I cannot help." and row["rejected_harmless_rate"] == -2
    assert run("validate", tmp_path / "cost") == 0


def test_validate_reports_label_disagreements(record, tmp_path, capsys):
    save_preference_dataset([record(chosen_is_safe=False, chosen_harmless_rate=2)], tmp_path / "dual")
    assert run("validate", tmp_path / "dual") == 0
    assert "1 response(s) whose harmless rating sign disagrees with is_safe" in capsys.readouterr().out


def test_inspect_diff_marks_word_changes(record, tmp_path, capsys):
    save_preference_dataset([record(chosen="A red cup on a table.", rejected="A red cup on a big table.",
                                    chosen_spans=None, rejected_spans=None)], tmp_path / "ds")
    assert run("inspect", tmp_path / "ds", "--diff", "--color", "never") == 0
    assert "rejected: A red cup on a [-big-] table." in capsys.readouterr().out


def test_build_ai_feedback_with_an_endpoint_judge(tiny_llava, png, chat_server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CLI_JUDGE_KEY", "sk-cli")
    save_preference_dataset([{"images": [png(size=(32, 32))], "prompt": "what is in the image?"}],
                            tmp_path / "prompts", kind="prompts")
    (tmp_path / "cfg.yaml").write_text(
        f"num_samples: 8\nmax_new_tokens: 16\njudge_endpoint:\n  base_url: {chat_server.url}\n"
        "  model: judge-vlm\n  api_key_env: CLI_JUDGE_KEY\n")
    code = run("build", "ai-feedback", "--prompts", tmp_path / "prompts", "--policy", tiny_llava,
               "--config", tmp_path / "cfg.yaml", "--samples", "6", "--out", tmp_path / "pairs")
    out = capsys.readouterr().out
    assert code == 0, out
    assert "1 prompts, 6 samples" in out
    judged = [r for r in chat_server.requests if r["body"].get("logprobs")]
    assert judged and all(r["auth"] == "Bearer sk-cli" and r["body"]["model"] == "judge-vlm" for r in judged)
    # The fake judge believes claims mentioning "red"; the seeded tiny policy says it sometimes.
    rows = load_preference_dataset(tmp_path / "pairs")
    assert 1 <= len(rows) <= 2
    for row in rows:
        meta = json.loads(row["meta"])
        assert meta["chosen_score"] - meta["rejected_score"] >= 1


def test_ai_feedback_needs_exactly_one_judge(tiny_llava, tmp_path, capsys):
    assert run("build", "ai-feedback", "--prompts", tmp_path, "--policy", tiny_llava, "--out", tmp_path / "o") == 2
    assert "give exactly one judge" in capsys.readouterr().err
    code = run("build", "ai-feedback", "--prompts", tmp_path, "--policy", tiny_llava, "--out", tmp_path / "o",
               "--judge", tiny_llava, "--judge-url", "http://127.0.0.1:9/v1")
    assert code == 2 and "give exactly one judge" in capsys.readouterr().err


def test_build_corrections_reports_what_dense_dpo_gets(png, tmp_path, capsys):
    (tmp_path / "a.png").write_bytes(png())
    rows = [  # one replacement; one deletion (and nothing else); one insertion plus one replacement
        {"image": "a.png", "question": "What is it?", "original": "It is a cat on a mat in the sun.",
         "corrected": "It is a dog on a mat in the sun."},
        {"image": "a.png", "question": "What is it?", "original": "A red ball and a blue cup on the table.",
         "corrected": "A red ball on the table."},
        {"image": "a.png", "question": "What is it?", "original": "A cat sits on the mat by the door of the house.",
         "corrected": "A dog sits on the mat by the red door of the house."},
    ]
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    assert run("build", "corrections", tmp_path / "c.jsonl", "--out", tmp_path / "ds") == 0
    out = capsys.readouterr().out
    assert ("edits: 2 replacements (corrected segments, up-weighted by gamma), 1 deletions and 1 insertions "
            "(not up-weighted: RLHF-V's rule); 1 of 3 pairs have no corrected segment") in out
