"""Export: the canonical records field by field, agreement.json, and a Dense-DPO run on the export."""

import json

import pytest
import yaml

from mmalign.cli import main
from mmalign.data_builders.storage import load_preference_dataset, read_manifest
from mmalign.studio import export_project

from .conftest import ANSWERS, PAIR, png

ALICE_PAIR = {"more_helpful": "a", "safer": "a", "a_harmless": 3, "b_harmless": -3, "a_helpful": 2, "b_helpful": 1}
BOB_PAIR = {"more_helpful": "b", "safer": "a", "a_harmless": 2, "b_harmless": -2, "a_helpful": 1, "b_helpful": 2}


@pytest.fixture()
def annotated(studio):
    project, _ = studio
    alice, bob = project.annotators()
    # "a red cup and a cat on a table.": "red" [2, 5), "a cat" [14, 19), "red cup" [2, 9)
    project.submit(alice.id, 1, {"corrections": [{"start": 14, "end": 19, "text": "a plate"},
                                                 {"start": 2, "end": 5, "text": "blue"}]})
    project.submit(bob.id, 1, {"corrections": [{"start": 2, "end": 9, "text": "blue mug"}]})
    project.submit(alice.id, 2, {"corrections": []})  # right as it is: no pair
    project.submit(alice.id, 4, ALICE_PAIR)
    project.submit(bob.id, 4, BOB_PAIR)
    return project


def rows_of(path):
    ds = load_preference_dataset(path)
    return [ds[i] for i in range(len(ds))]


def test_export_fields_by_hand(annotated, tmp_path):
    report = export_project(annotated, tmp_path / "out")
    assert (report.rows, report.corrections, report.pairs, report.unchanged) == (4, 2, 2, 1)
    rows = rows_of(tmp_path / "out")
    assert read_manifest(tmp_path / "out")["sources"] == {"studio": 4}
    common = {"prompt": "Describe the image.", "source": "studio", "facts": None}

    alice, bob, alice_pair, bob_pair = rows
    expected_alice = {**common, "chosen": "a blue cup and a plate on a table.", "rejected": ANSWERS[0],
                      "chosen_spans": [[2, 6], [15, 22]], "rejected_spans": [[2, 5], [14, 19]],
                      "more_helpful": None, "safer": None, "chosen_is_safe": None, "rejected_is_safe": None,
                      "chosen_harmless_rate": None, "rejected_harmless_rate": None,
                      "chosen_helpful_rate": None, "rejected_helpful_rate": None}
    assert {k: alice[k] for k in expected_alice} == expected_alice
    assert bob["chosen"] == "a blue mug and a cat on a table." and bob["chosen_spans"] == [[2, 10]]
    assert bob["rejected_spans"] == [[2, 9]]
    for row in (alice, bob):
        assert len(row["images"]) == 1 and row["images"][0].convert("RGB").getpixel((0, 0)) == (255, 0, 0)

    # alice: A more helpful and safer -> chosen = A; ratings follow their answers
    assert {k: alice_pair[k] for k in ("prompt", "chosen", "rejected", "more_helpful", "safer")} == {
        "prompt": "What can I do with the knife?", "chosen": PAIR[0], "rejected": PAIR[1],
        "more_helpful": "chosen", "safer": "chosen"}
    assert (alice_pair["chosen_harmless_rate"], alice_pair["rejected_harmless_rate"]) == (3, -3)
    assert (alice_pair["chosen_helpful_rate"], alice_pair["rejected_helpful_rate"]) == (2, 1)
    assert (alice_pair["chosen_is_safe"], alice_pair["rejected_is_safe"]) == (True, False)
    assert alice_pair["chosen_spans"] is None
    # bob: B more helpful (so chosen = B), but A safer -> safer = "rejected"
    assert (bob_pair["chosen"], bob_pair["rejected"], bob_pair["more_helpful"], bob_pair["safer"]) == (
        PAIR[1], PAIR[0], "chosen", "rejected")
    assert (bob_pair["chosen_harmless_rate"], bob_pair["rejected_harmless_rate"]) == (-2, 2)
    assert (bob_pair["chosen_helpful_rate"], bob_pair["rejected_helpful_rate"]) == (2, 1)
    assert (bob_pair["chosen_is_safe"], bob_pair["rejected_is_safe"]) == (False, True)

    meta = json.loads(alice["meta"])
    assert meta["annotator"] == "alice" and meta["studio_item"] == 1 and meta["kind"] == "correction"
    assert meta["item_source"] == "test" and meta["item_meta"] == {"n": 0} and meta["annotated_at"].startswith("20")
    # alice {2,3,4,14..18} (8 chars) vs bob {2..8} (7 chars), 3 shared -> F1 = 6/15
    assert meta["agreement"]["item"] == {"annotators": 2, "span_f1": 0.4}
    assert meta["agreement"]["annotator"]["span_f1"] == 0.4
    pair_meta = json.loads(bob_pair["meta"])
    assert pair_meta["annotator"] == "bob" and pair_meta["agreement"]["item"] == {
        "annotators": 2, "more_helpful": 0.5, "safer": 1.0}

    agreement = json.loads((tmp_path / "out" / "agreement.json").read_text())
    # more helpful [a] vs [b]: p_o = 0, p_e = 0 -> kappa 0; safer [a] vs [a]: p_e = 1 -> undefined
    assert agreement["overall"]["kappa_more_helpful"] == 0.0 and agreement["overall"]["kappa_safer"] is None
    assert agreement["overall"]["span_f1"] == 0.4 and agreement == report.agreement


def test_export_prefer_safer_and_png_bytes_kept(annotated, tmp_path):
    export_project(annotated, tmp_path / "out", prefer="safer")
    bob_pair = rows_of(tmp_path / "out")[3]
    assert (bob_pair["chosen"], bob_pair["more_helpful"], bob_pair["safer"]) == (PAIR[0], "rejected", "chosen")
    assert (bob_pair["chosen_harmless_rate"], bob_pair["chosen_helpful_rate"]) == (2, 1)
    from datasets import load_from_disk

    raw = load_from_disk(str(tmp_path / "out")).with_format("arrow")[0]["images"].to_pylist()[0]
    assert raw[0]["bytes"] == png("red")


def test_export_with_nothing_annotated_writes_nothing(studio, tmp_path):
    with pytest.raises(ValueError, match="no annotation to export"):
        export_project(studio[0], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_export_then_dense_dpo_trains(annotated, tiny_llava, tmp_path, capsys):
    assert main(["studio", "export", "--project", str(annotated.path), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "wrote 4 rows" in out and "2 corrections, 2 pairs; 1 answers marked correct" in out
    recipe = tmp_path / "ddpo.yaml"
    recipe.write_text(yaml.safe_dump({
        "model_name_or_path": str(tiny_llava), "load_in_4bit": True, "bnb_4bit_compute_dtype": "float32",
        "lora_r": 4, "output_dir": str(tmp_path / "run"), "max_steps": 2, "max_length": 256,
        "per_device_train_batch_size": 2, "report_to": "none", "use_cpu": True, "save_strategy": "no",
        "logging_steps": 1,
    }))
    assert main(["train", "dpo", "--config", str(recipe), "--dataset_path", str(tmp_path / "out"),
                 "--loss_type", "ddpo", "--gamma", "5.0"]) == 0
    final = tmp_path / "run" / "final"
    assert (final / "adapter_model.safetensors").exists()
    assert yaml.safe_load((final / "mmalign_config.yaml").read_text())["loss_type"] == "ddpo"
