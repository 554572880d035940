"""Image reliance: pairs scored under true, blank, shuffled and corrupted images, checked against
log-probs computed by hand, a model made blind to images, a LoRA model's reference, the CLI
and POPE without the image."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from mmalign.benchmarks import (
    GenerationConfig,
    ImageRelianceBenchmark,
    ImageRelianceConfig,
    PopeConfig,
    run_image_reliance,
    run_pope,
)
from mmalign.benchmarks.image_reliance import GREY, derangement
from mmalign.cli import main
from mmalign.data_builders.storage import save_preference_dataset

SIZES = [(32, 32), (40, 24), (32, 32), (24, 48), (32, 32)]


def noise(seed: int, size=(32, 32)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def pair_rows():
    """Five one-image pairs (row 5 shares row 0's image), a text-only row and two two-image pairs."""
    rows = [{"images": [noise(i, size)], "prompt": "what is in the image?", "chosen": "a red ball on the left.",
             "rejected": "a blue car and a dog on the right."} for i, size in enumerate(SIZES)]
    rows.append({"images": [noise(0, SIZES[0])], "prompt": "describe the image.", "chosen": "a small cup.",
                 "rejected": "a large tree."})
    rows.append({"images": [], "prompt": "what is a cat?", "chosen": "an animal.", "rejected": "a car."})
    rows += [{"images": [noise(10 + i), noise(20 + i)], "prompt": "<image> and <image>: which is red?",
              "chosen": "the one on the left.", "rejected": "none of them."} for i in range(2)]
    return rows


IMAGE_ROWS = [0, 1, 2, 3, 4, 5, 7, 8]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reliance") / "pairs"
    save_preference_dataset(pair_rows(), folder)
    return folder


@pytest.fixture(scope="module")
def blind_llava(tiny_llava_dir):
    """The tiny LLaVA with its projector's output zeroed: every image embeds the same."""
    from mmalign.models import load_adapter

    adapter = load_adapter(tiny_llava_dir)
    with torch.no_grad():
        adapter.base_model.model.multi_modal_projector.linear_2.weight.zero_()
        adapter.base_model.model.multi_modal_projector.linear_2.bias.zero_()
    return adapter


@pytest.fixture(scope="module")
def lora_llava(tiny_llava_dir):
    """The tiny LLaVA with random (non-zero) LoRA adapters, so policy and reference differ."""
    from mmalign.models import load_adapter
    from mmalign.qlora import LoraSettings

    torch.manual_seed(3)
    adapter = load_adapter(tiny_llava_dir)
    adapter.add_lora(LoraSettings(r=4, alpha=8, dropout=0.0))
    with torch.no_grad():
        for name, p in adapter.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    return adapter


@pytest.fixture(scope="module")
def base_run(pairs, tiny_llava):
    return run_image_reliance(ImageRelianceConfig(pairs), adapter=tiny_llava, progress=False,
                              generation=GenerationConfig(batch_size=3))


def pair_details(result):
    return {d["row"]: d for d in result.details if d["part"] == "pairs"}


def by_hand(adapter, images, prompt, response):
    """Summed response log-probs of one row through the adapter contract."""
    batch = adapter.encode([images], [prompt], [response])
    with torch.no_grad():
        logps, mask = adapter.response_logprobs(batch)
    return float(logps[mask].sum())


# --------------------------------------------------------------------------- (a) true = the adapter's log-probs
def test_true_scores_are_the_adapters_log_probs(base_run, tiny_llava):
    rows = pair_rows()
    details = pair_details(base_run)
    assert sorted(details) == IMAGE_ROWS  # the text-only row is skipped and counted
    assert base_run.metrics["skipped"] == {"text-only": 1, "image-contrast": 0, "no shuffle partner": 0}
    margins = []
    for row in IMAGE_ROWS:
        r = rows[row]
        chosen = by_hand(tiny_llava, r["images"], r["prompt"], r["chosen"])
        rejected = by_hand(tiny_llava, r["images"], r["prompt"], r["rejected"])
        assert details[row]["logps"]["true"]["chosen"] == pytest.approx(chosen, abs=1e-4)
        assert details[row]["logps"]["true"]["rejected"] == pytest.approx(rejected, abs=1e-4)
        margins.append(chosen - rejected)
    true = base_run.metrics["conditions"]["true"]
    assert true["accuracy"] == pytest.approx(100 * np.mean([m > 0 for m in margins]))
    assert true["mean_margin"] == pytest.approx(np.mean(margins), abs=1e-4)
    assert "reward_accuracy" not in true and "Reward accuracy ↑" not in base_run.headline  # no LoRA: no reference
    blank = base_run.metrics["conditions"]["blank"]
    reliance = [details[row]["logps"]["true"]["chosen"] - details[row]["logps"]["blank"]["chosen"]
                for row in IMAGE_ROWS]
    per_token = [x / details[row]["chosen_tokens"] for x, row in zip(reliance, IMAGE_ROWS)]
    assert blank["reliance"] == pytest.approx(np.mean(reliance))
    assert blank["reliance_per_token"] == pytest.approx(np.mean(per_token))
    assert blank["true_preferred"] == pytest.approx(100 * np.mean([x > 0 for x in reliance]))
    assert list(base_run.headline)[0] == "Reliance/token corrupted ↑"


# --------------------------------------------------------------------------- (b) a blind model relies on nothing
def test_a_model_that_ignores_the_image_has_zero_reliance(pairs, blind_llava, base_run):
    blind = run_image_reliance(ImageRelianceConfig(pairs), adapter=blind_llava, progress=False)
    conditions = blind.metrics["conditions"]
    for condition in ("blank", "shuffled", "corrupted"):
        assert abs(conditions[condition]["reliance"]) < 1e-5
        assert abs(conditions[condition]["reliance_per_token"]) < 1e-5
        assert blind.headline[f"Reliance/token {condition} ↑"] == pytest.approx(0, abs=1e-5)
        assert conditions[condition]["accuracy"] == conditions["true"]["accuracy"]
        assert conditions[condition]["mean_margin"] == pytest.approx(conditions["true"]["mean_margin"], abs=1e-5)
    for condition in ("blank", "shuffled", "corrupted"):  # the random-init model does read the image
        assert abs(base_run.metrics["conditions"][condition]["reliance"]) > 1e-3
        assert any(abs(d["reliance"][condition]) > 1e-3 for d in pair_details(base_run).values())


# --------------------------------------------------------------------------- (c) the stand-in images
def test_stand_in_images_are_seeded_and_shuffled_never_gives_a_row_its_own(pairs):
    first, again = (ImageRelianceBenchmark(ImageRelianceConfig(pairs, seed=0)) for _ in range(2))
    other = ImageRelianceBenchmark(ImageRelianceConfig(pairs, seed=1))
    rows = pair_rows()
    for row in IMAGE_ROWS:
        for condition in ("true", "blank", "shuffled", "corrupted"):
            assert [im.tobytes() for im in first.images(condition, row)] == \
                   [im.tobytes() for im in again.images(condition, row)]
        blank = first.images("blank", row)
        assert [im.size for im in blank] == [im.size for im in rows[row]["images"]]
        assert all(im.getcolors() == [(im.width * im.height, GREY)] for im in blank)
        donor = first.donors[row]
        assert donor is not None and donor != row
        assert len(rows[donor]["images"]) == len(rows[row]["images"])  # rows with as many images
        own = [im.tobytes() for im in rows[row]["images"]]
        assert [im.tobytes() for im in first.images("shuffled", row)] != own  # never its own pixels
        assert first.images("shuffled", row)[0].tobytes() == rows[donor]["images"][0].tobytes()
    assert {first.donors[0], first.donors[5]}.isdisjoint({0, 5})  # rows 0 and 5 share an image
    assert any(first.images("corrupted", row)[0].tobytes() != other.images("corrupted", row)[0].tobytes()
               for row in IMAGE_ROWS)


def test_derangement_avoids_equal_images_and_says_when_it_cannot():
    keys = ["a", "a", "a", "b", "b", "c", "d", "e"]
    for seed in range(50):
        donors = derangement(keys, seed)
        assert all(keys[d] != keys[i] for i, d in enumerate(donors))
        assert sorted(donors) == list(range(len(keys)))  # a permutation: every row's images used once
    assert derangement(keys, 1) == derangement(keys, 1)
    assert len({tuple(derangement(keys, s)) for s in range(10)}) > 1
    assert derangement(["a", "a", "b"], 0).count(None) >= 1  # two rows share the only other image
    assert derangement(["a"], 0) == [None]


def test_a_row_without_a_partner_is_skipped_under_shuffled_and_counted(tmp_path, tiny_llava):
    rows = [{"images": [noise(0)], "prompt": "what is it?", "chosen": "a cup.", "rejected": "a cat."},
            {"images": [noise(1)], "prompt": "what is it?", "chosen": "a cup.", "rejected": "a cat."},
            {"images": [noise(2), noise(3)], "prompt": "what is it?", "chosen": "a cup.", "rejected": "a cat."}]
    save_preference_dataset(rows, tmp_path / "pairs")
    result = run_image_reliance(ImageRelianceConfig(tmp_path / "pairs", conditions=["shuffled"]),
                                adapter=tiny_llava, progress=False)
    assert result.metrics["skipped"]["no shuffle partner"] == 1  # the only two-image row
    assert result.metrics["conditions"]["shuffled"]["pairs"] == 2
    assert pair_details(result)[2]["shuffled_from"] is None and "shuffled" not in pair_details(result)[2]["margin"]
    assert set(result.metrics["conditions"]) == {"true", "shuffled"}


def test_an_interrupted_run_resumes_and_writes_the_same_scores(pairs, tiny_llava, tmp_path, monkeypatch):
    config = ImageRelianceConfig(pairs, conditions=["blank"], max_pairs=4)
    generation = GenerationConfig(batch_size=2)
    run_image_reliance(config, adapter=tiny_llava, out=tmp_path / "clean", generation=generation, progress=False)
    calls = []
    score = tiny_llava.response_logprobs

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:  # the second batch: 2 conditions x chosen, rejected per batch
            raise InterruptedError("simulated interruption")
        return score(*args, **kwargs)

    monkeypatch.setattr(tiny_llava, "response_logprobs", failing)
    with pytest.raises(InterruptedError):
        run_image_reliance(config, adapter=tiny_llava, out=tmp_path / "resumed", generation=generation,
                           progress=False)
    assert len((tmp_path / "resumed" / "pair_scores.partial.jsonl").read_text().splitlines()) == 2
    calls.clear()
    run_image_reliance(config, adapter=tiny_llava, out=tmp_path / "resumed", generation=generation, progress=False)
    assert len(calls) == 4  # only the unfinished batch
    for name in ("pair_scores.jsonl", "report.json"):
        assert (tmp_path / "resumed" / name).read_text() == (tmp_path / "clean" / name).read_text()


# --------------------------------------------------------------------------- (d) DPO implicit reward margin
def test_dpo_implicit_margin_uses_the_model_with_adapters_disabled(pairs, lora_llava):
    result = run_image_reliance(ImageRelianceConfig(pairs, beta=0.5, conditions=["blank"], max_pairs=3),
                                adapter=lora_llava, progress=False)
    details = pair_details(result)
    rows = pair_rows()
    lora_llava.model.eval()
    margins = []
    for row in (0, 1, 2):
        r = rows[row]
        policy = [by_hand(lora_llava, r["images"], r["prompt"], r[side]) for side in ("chosen", "rejected")]
        with lora_llava.adapters_disabled():
            ref = [by_hand(lora_llava, r["images"], r["prompt"], r[side]) for side in ("chosen", "rejected")]
        assert abs(policy[0] - ref[0]) > 1e-3  # the adapters change the scores
        margin = 0.5 * ((policy[0] - ref[0]) - (policy[1] - ref[1]))
        assert details[row]["reward_margin"]["true"] == pytest.approx(margin, abs=1e-4)
        margins.append(margin)
    true = result.metrics["conditions"]["true"]
    assert true["mean_reward_margin"] == pytest.approx(np.mean(margins), abs=1e-4)
    assert result.headline["Reward accuracy ↑"] == pytest.approx(100 * np.mean([m > 0 for m in margins]))
    assert "mean_reward_margin" in result.metrics["conditions"]["blank"]
    assert result.protocol["reference"] == "the model with its LoRA adapters disabled"


# --------------------------------------------------------------------------- (e) the command
def bench(*argv):
    return main(["bench", *map(str, argv)])


def test_cli_writes_the_reports_and_bench_report_compares_checkpoints(pairs, tiny_llava_dir, lora_llava,
                                                                       tmp_path, capsys):
    lora_llava.save_adapter(tmp_path / "lora")
    common = ["image-reliance", "--data", pairs, "--model", tiny_llava_dir, "--batch-size", 4, "--max-pairs", 4,
              "--conditions", "blank", "corrupted", "--corruption", "noise", "--corruption-strength", 0.5,
              "--no-progress"]
    assert bench(*common, "--out", tmp_path / "base") == 0
    assert "Reliance/token corrupted ↑" in capsys.readouterr().out
    assert bench(*common, "--adapter", tmp_path / "lora", "--name", "dpo", "--out", tmp_path / "dpo") == 0
    for run in ("base", "dpo"):
        folder = tmp_path / run
        report = json.loads((folder / "report.json").read_text())
        assert report["benchmark"] == "image-reliance"
        assert report["protocol"]["corruption"] == {"kind": "noise", "strength": 0.5}
        assert report["protocol"]["decoding"]["batch_size"] == 4
        assert len((folder / "pair_scores.jsonl").read_text().splitlines()) == 4
        assert len((folder / "details.jsonl").read_text().splitlines()) == 4
        assert "## Reading the numbers" in (folder / "report.md").read_text()
    assert "Reward accuracy ↑" in json.loads((tmp_path / "dpo" / "report.json").read_text())["headline"]

    assert bench("report", tmp_path / "base", tmp_path / "dpo", "--out", tmp_path / "cmp") == 0
    summary = json.loads((tmp_path / "cmp" / "comparison.json").read_text())["image-reliance"]
    assert set(summary["runs"]) == {tiny_llava_dir.name, "dpo"} and summary["card_differences"] == []
    assert "Reliance/token blank ↑" in (tmp_path / "cmp" / "comparison.md").read_text()

    capsys.readouterr()  # a rerun with another seed refuses the cached scores of the first
    assert bench(*common, "--image-seed", 1, "--out", tmp_path / "base") == 2
    assert "made with other settings (seed)" in capsys.readouterr().err


def test_bad_input_names_the_row_and_the_field(tmp_path, tiny_llava_dir, capsys):
    from datasets import Dataset

    good = {"images": [[noise(0)], [noise(1)]], "prompt": ["what is it?", "what is it?"],
            "chosen": ["a cup.", "a cup."], "rejected": ["a cat.", "a cat."]}
    Dataset.from_dict({**good, "prompt": ["what is it?", "<image> <image> what is it?"]}).save_to_disk(
        str(tmp_path / "mismatch"))
    assert bench("image-reliance", "--data", tmp_path / "mismatch", "--model", tiny_llava_dir,
                 "--out", tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert "row 1" in err and "field 'prompt'" in err and "2 <image> placeholder(s)" in err

    with pytest.raises(ValueError, match="no column 'rejected'"):
        ImageRelianceBenchmark(ImageRelianceConfig(Dataset.from_dict({k: good[k] for k in good if k != "rejected"})))
    with pytest.raises(ValueError, match="no column 'images'"):
        ImageRelianceBenchmark(ImageRelianceConfig(Dataset.from_dict({k: good[k] for k in good if k != "images"})))
    with pytest.raises(ValueError, match="give adapter="):
        run_image_reliance(ImageRelianceConfig(Dataset.from_dict(good)), answers=[])
    with pytest.raises(ValueError, match="image conditions must be some of"):
        ImageRelianceConfig(Dataset.from_dict(good), conditions=["grey"])


# --------------------------------------------------------------------------- (f) POPE without the image
def test_pope_with_blank_images(pairs, pope_dir, tiny_llava, tmp_path, monkeypatch):
    seen = []
    generate = tiny_llava.generate

    def spy(images, prompts, **kwargs):
        seen.extend(images)
        return generate(images, prompts, **kwargs)

    monkeypatch.setattr(tiny_llava, "generate", spy)
    generation = GenerationConfig(max_new_tokens=3, batch_size=4)
    config = ImageRelianceConfig(pairs, conditions=["blank"], max_pairs=2, pope_questions=pope_dir,
                                 image_dir=tmp_path / "val2014", pope_splits=["random"])
    result = run_image_reliance(config, adapter=tiny_llava, out=tmp_path / "run", generation=generation,
                                progress=False)
    answers = [json.loads(line) for line in (tmp_path / "run" / "answers.jsonl").read_text().splitlines()]
    assert [a["images"] for a in answers] == ["true"] * 4 + ["blank"] * 4
    originals = [Image.open(tmp_path / "val2014" / a["image"]).convert("RGB") for a in answers[:4]]
    assert [im.tobytes() for im in seen[:4]] == [im.tobytes() for im in originals]
    assert all(im.size == orig.size and im.getcolors() == [(im.width * im.height, GREY)]
               for im, orig in zip(seen[4:], originals))

    monkeypatch.undo()
    plain = run_pope(PopeConfig(pope_dir, image_dir=tmp_path / "val2014", splits=["random"]), adapter=tiny_llava,
                     generation=generation, progress=False)
    pope = result.metrics["pope"]
    assert pope["true"]["f1"] == pytest.approx(plain.metrics["mean_f1"])  # the POPE benchmark's own numbers
    assert pope["drop"]["f1"] == pytest.approx(pope["true"]["f1"] - pope["blank"]["f1"])
    assert result.headline["POPE F1 drop ↑"] == pytest.approx(pope["drop"]["f1"])
    assert sum(d["part"] == "pope" for d in result.details) == 8
    assert result.card.questions == 2 + 4 and result.protocol["pope"]["parsing"] == "official"
