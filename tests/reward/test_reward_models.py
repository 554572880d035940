"""Reward and cost models: template, readout, orientation, trainer, save/load, resume, CLI."""

import random

import pytest
import torch
import yaml
from datasets import Dataset
from PIL import Image

from mmalign.cli import main
from mmalign.losses.reward import bradley_terry_loss, cost_loss
from mmalign.model_config import ModelConfig
from mmalign.models import ScalarHeadModel, load_adapter
from mmalign.models.batch import last_token_index
from mmalign.reward import (
    RewardConfig,
    RewardScorer,
    RewardTemplate,
    RewardTrainer,
    ScalarPairCollator,
    encode_for_scoring,
    load_reward_model,
    scored_pair,
)

FACTS = ["A red ball is on the left.", "A blue cup is on a table.", "The background is white."]


def records(n: int = 8):
    rows = []
    for i in range(n):
        color = ["red", "blue", "green", "yellow"][i % 4]
        rows.append({
            "images": [Image.new("RGB", (32, 32), color)],
            "prompt": "describe the image.",
            "chosen": f"a {color} ball.",
            "rejected": "a cat and a dog and a car.",
            "facts": [f"a {color} ball.", "nothing else."],
            "more_helpful": "chosen",
            "safer": "rejected" if i % 2 else "chosen",
            "chosen_is_safe": not i % 2,
            "rejected_is_safe": bool(i % 2),
            "chosen_harmless_rate": -2 if i % 2 else 2,
            "rejected_harmless_rate": 1 if i % 2 else -3,
        })
    return rows


def dataset(n: int = 8) -> Dataset:
    return Dataset.from_list(records(n))


def config(tmp_path, **kw) -> RewardConfig:
    values = dict(output_dir=str(tmp_path / "run"), per_device_train_batch_size=4, report_to="none",
                  save_strategy="no", logging_steps=1, use_cpu=True, max_length=512, learning_rate=1e-3)
    values.update(kw)
    return RewardConfig(**values)


def lora_model(tiny_dirs, kind="reward"):
    adapter = ModelConfig(model_name_or_path=str(tiny_dirs["llava"]), use_peft=True, lora_r=4, lora_alpha=8,
                          lora_dropout=0.0).load()
    return ScalarHeadModel(adapter, kind=kind)


# ---------------------------------------------------------------------------- template
def test_template_plain_and_factual_turns():
    plain = RewardTemplate().evaluation_turn(FACTS)
    factual = RewardTemplate(use_facts=True).evaluation_turn(FACTS)
    assert not any(f in plain for f in FACTS)
    for criterion in ("Accurate", "Helpful", "Natural", "Concise"):
        assert criterion in plain and criterion in factual
    assert all(f"- {f}" in factual for f in FACTS)
    # the factual turn is the plain one with the facts listed under "accurate"
    assert factual.index("Accurate") < factual.index(FACTS[0]) < factual.index("Helpful")
    custom = RewardTemplate(use_facts=True, fact_line="* {fact}", score_prefix="Score:")
    assert "* A red ball is on the left." in custom.evaluation_turn(FACTS)


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_readout_is_the_last_token_of_the_score_prefix(tiny_dirs, family):
    adapter = load_adapter(tiny_dirs[family])
    template = RewardTemplate(use_facts=True)
    imgs = [Image.new("RGB", (32, 32), c) for c in ("red", "blue", "green")]
    responses = ["yes.", "a red ball and a very long answer with many many words.", "no."]
    batch = encode_for_scoring(adapter, template, imgs, ["q one", "q two", "q three"], responses,
                               [FACTS, None, FACTS[:1]])
    assert (batch.attention_mask == 0).any()  # ragged rows: padding present
    prefix_ids = adapter.tokenizer(template.score_prefix, add_special_tokens=False)["input_ids"]
    last = last_token_index(batch.attention_mask)
    for row in range(3):
        ids = batch.input_ids[row, : last[row] + 1].tolist()
        assert ids[-len(prefix_ids):] == prefix_ids  # no end-of-turn after the prefix
        text = adapter.tokenizer.decode(ids)
        assert responses[row].split()[0].strip(".") in text
    # the facts are in the row that has them, in the order given (no rng)
    text0 = adapter.tokenizer.decode(batch.input_ids[0])
    assert text0.index("red ball is on the left") < text0.index("blue cup")

    head = ScalarHeadModel(adapter, kind="reward")
    with torch.no_grad():
        together = head(batch)
        alone = torch.cat([head(encode_for_scoring(adapter, template, [imgs[i]], [p], [responses[i]], [f]))
                           for i, (p, f) in enumerate(zip(["q one", "q two", "q three"], [FACTS, None, FACTS[:1]]))])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


def test_facts_are_shuffled_per_use_and_reproducibly(tiny_dirs):
    adapter = load_adapter(tiny_dirs["llava"])
    template = RewardTemplate(use_facts=True)
    facts = [f"the {c} {o}" for c, o in (("red", "ball"), ("blue", "cup"), ("green", "tree"), ("white", "house"), ("black", "cat"))]

    def orders(seed, uses=4):
        rng = random.Random(seed)
        out = []
        for _ in range(uses):
            text = adapter.tokenizer.decode(encode_for_scoring(adapter, template, None, ["q"], ["a"], [facts],
                                                               rng=rng).input_ids[0])
            out.append(tuple(sorted(facts, key=lambda f, t=text: t.index(f))))
        return out

    first = orders(0)
    assert first == orders(0)  # seeded
    assert len(set(first)) > 1  # a new order at each use


def test_long_responses_lose_their_tail_not_the_prefix(tiny_dirs):
    adapter = load_adapter(tiny_dirs["llava"])
    template = RewardTemplate()
    long = " ".join(["ball"] * 400)
    full = encode_for_scoring(adapter, template, [Image.new("RGB", (32, 32))], ["q"], [long])
    cut = encode_for_scoring(adapter, template, [Image.new("RGB", (32, 32))], ["q"], [long], max_length=200)
    assert full.input_ids.shape[1] > 200 >= cut.input_ids.shape[1] > 150
    prefix_ids = adapter.tokenizer(template.score_prefix, add_special_tokens=False)["input_ids"]
    assert cut.input_ids[0, -len(prefix_ids):].tolist() == prefix_ids
    with pytest.raises(ValueError, match="row 0: the scoring prompt"):
        encode_for_scoring(adapter, template, [Image.new("RGB", (32, 32))], ["q"], ["a"], max_length=20)


# ---------------------------------------------------------------------------- orientation
def test_pairs_are_oriented_for_reward_and_cost():
    row = records(2)[1]  # chosen more helpful but less safe
    assert scored_pair(row, 1, "reward") == scored_pair({**row, "more_helpful": None}, 1, "reward")
    assert scored_pair(row, 1, "reward").first == row["chosen"]
    assert scored_pair({**row, "more_helpful": "rejected"}, 1, "reward").first == row["rejected"]
    cost = scored_pair(row, 1, "cost", "label")
    assert (cost.first, cost.second) == (row["chosen"], row["rejected"])  # chosen is the harmful one
    assert (cost.first_sign, cost.second_sign) == (1.0, -1.0)
    graded = scored_pair(row, 1, "cost", "graded")
    assert (graded.first_sign, graded.second_sign) == (2.0, -1.0)  # -harmless_rate
    assert scored_pair(row, 1, "cost", "none").first_sign == 0.0
    with pytest.raises(ValueError, match="row 3: field 'safer' is required"):
        scored_pair({**row, "safer": None}, 3, "cost")
    with pytest.raises(ValueError, match="row 4: field 'more_helpful' must be"):
        scored_pair({**row, "more_helpful": "both"}, 4, "reward")
    with pytest.raises(ValueError, match="row 5: field 'chosen_harmless_rate' must be in -3..3"):
        scored_pair({**row, "chosen_harmless_rate": 7}, 5, "cost", "graded")


# ---------------------------------------------------------------------------- trainer
@pytest.mark.parametrize("kind", ["reward", "cost"])
def test_trainer_loss_matches_the_pure_loss_on_the_model_scores(tiny_dirs, tmp_path, kind):
    model = lora_model(tiny_dirs, kind)
    # center_weight regularises reward models only (a cost config refuses it)
    args = config(tmp_path, kind=kind, cost_signs="graded", center_weight=0.01 if kind == "reward" else 0.0)
    trainer = RewardTrainer(model, args, train_dataset=dataset(4))
    rows = records(4)
    inputs = trainer.collator(rows)
    model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(model, inputs)
        pairs = [scored_pair(r, i, kind, "graded") for i, r in enumerate(rows)]
        scorer = RewardScorer(model, max_length=512)
        images, prompts = [r["images"] for r in rows], [r["prompt"] for r in rows]
        first = torch.tensor(scorer(images, prompts, [p.first for p in pairs]))
        second = torch.tensor(scorer(images, prompts, [p.second for p in pairs]))
    if kind == "reward":
        expected = bradley_terry_loss(first, second, center_weight=0.01, l2_weight=1e-3)
    else:
        signs = [(p.first_sign, p.second_sign) for p in pairs]
        expected = cost_loss(first, second, torch.tensor([s[0] for s in signs]), torch.tensor([s[1] for s in signs]))
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)


def test_training_moves_only_lora_and_head_and_learns_the_preference(tiny_dirs, tmp_path):
    model = lora_model(tiny_dirs)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = RewardTrainer(model, config(tmp_path, max_steps=12), train_dataset=dataset(8))
    trainer.train()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n or n.startswith("head.") for n in changed)
    assert any(n.startswith("head.") for n in changed) and any("lora_" in n for n in changed)
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert losses[-1] < losses[0]
    assert trainer.state.log_history[-2]["accuracy"] == 1.0
    held_out = Dataset.from_list(records(12)[8:])
    scored = RewardScorer(model).score_dataset(held_out, "chosen")
    scored = RewardScorer(model).score_dataset(scored, "rejected")
    assert all(c > r for c, r in zip(scored["reward_chosen"], scored["reward_rejected"]))


def test_save_load_round_trip_gives_identical_scores(tiny_dirs, tmp_path):
    model = lora_model(tiny_dirs, "cost")
    trainer = RewardTrainer(model, config(tmp_path, kind="cost", max_steps=2, use_facts=True),
                            train_dataset=dataset(4))
    trainer.train()
    trainer.save_model(str(tmp_path / "cost-model"))
    loaded = load_reward_model(tmp_path / "cost-model")  # base read from the adapter config
    assert loaded.kind == "cost" and loaded.template["use_facts"] is True
    rows = records(4)
    args = ([r["images"] for r in rows], [r["prompt"] for r in rows], [r["chosen"] for r in rows],
            [r["facts"] for r in rows])
    assert RewardScorer(loaded)(*args) == pytest.approx(RewardScorer(model)(*args), abs=1e-6)
    assert RewardScorer(loaded)(*args) == RewardScorer(loaded)(*args)  # facts shuffled the same way per call


def test_resume_from_checkpoint_restores_adapter_and_head(tiny_dirs, tmp_path):
    def run(out, **kw):
        torch.manual_seed(0)
        model = lora_model(tiny_dirs)
        args = config(tmp_path, output_dir=str(out), max_steps=4, save_strategy="steps", save_steps=2,
                      seed=0, data_seed=0, **kw)
        trainer = RewardTrainer(model, args, train_dataset=dataset(8))
        return model, trainer

    straight, trainer = run(tmp_path / "a")
    trainer.train()
    resumed, trainer = run(tmp_path / "b")
    trainer.train()
    (tmp_path / "b" / "checkpoint-4").rename(tmp_path / "b-final")  # keep only step 2 to resume from
    resumed, trainer = run(tmp_path / "b")
    with torch.no_grad():
        resumed.head.weight.zero_()  # a fresh head that resume must overwrite
    trainer.train(resume_from_checkpoint=str(tmp_path / "b" / "checkpoint-2"))
    for (name, a), (_, b) in zip(straight.named_parameters(), resumed.named_parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)


def test_collator_puts_first_responses_then_second(tiny_dirs):
    adapter = load_adapter(tiny_dirs["llava"])
    collator = ScalarPairCollator(adapter, RewardTemplate(), kind="cost", cost_signs="label")
    out = collator(records(2))
    # rows: the more harmful response of each pair first (+1: unsafe), then the less harmful (-1: safe)
    assert out["input_ids"].shape[0] == 4 and out["signs"].tolist() == [1.0, 1.0, -1.0, -1.0]
    texts = [adapter.tokenizer.decode(ids) for ids in out["input_ids"]]
    assert "cat" in texts[0] and "a blue ball" in texts[1]  # pair 0: rejected is harmful; pair 1: chosen
    assert "a red ball" in texts[2] and "cat" in texts[3]


# ---------------------------------------------------------------------------- CLI
def test_cli_train_rm_then_score(tiny_dirs, tmp_path, capsys):
    from mmalign.data_builders.storage import load_preference_dataset, save_preference_dataset

    save_preference_dataset(records(4), tmp_path / "pairs")
    recipe = tmp_path / "rm.yaml"
    recipe.write_text(yaml.safe_dump({
        "model_name_or_path": str(tiny_dirs["llava"]), "use_peft": True, "lora_r": 4,
        "dataset_path": str(tmp_path / "pairs"), "output_dir": str(tmp_path / "run"), "use_facts": True,
        "max_steps": 2, "per_device_train_batch_size": 2, "report_to": "none", "use_cpu": True,
        "save_strategy": "no", "max_length": 512,
    }))
    assert main(["train", "cost", "--config", str(recipe), "--cost_signs", "graded"]) == 0
    final = tmp_path / "run" / "final"
    resolved = yaml.safe_load((final / "mmalign_config.yaml").read_text())
    assert resolved["kind"] == "cost" and resolved["cost_signs"] == "graded"
    assert not (final / "training_args.bin").exists()
    assert main(["score", "--model", str(final), "--data", str(tmp_path / "pairs"), "--out",
                 str(tmp_path / "scored"), "--max-length", "512"]) == 0
    scored = load_preference_dataset(tmp_path / "scored")
    model = load_reward_model(final)
    rows = records(4)
    expected = RewardScorer(model)([r["images"] for r in rows], [r["prompt"] for r in rows],
                                   [r["rejected"] for r in rows], [r["facts"] for r in rows])
    assert scored["cost_rejected"] == pytest.approx(expected, abs=1e-5)
    assert "cost_chosen: mean" in capsys.readouterr().out


def test_facts_can_go_before_the_question(tiny_dirs):
    template = RewardTemplate(use_facts=True, facts_position="prompt")
    conversational = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "describe it."}]}]
    messages = template.conversation(conversational, "a red ball.", 1, FACTS)
    assert conversational[0]["content"][1]["text"] == "describe it."  # the caller's prompt is untouched
    first = messages[0]["content"][1]["text"]
    assert first.startswith("Facts about the image:") and first.endswith("describe it.")
    assert all(f"- {f}" in first for f in FACTS)
    evaluation = messages[-1]["content"][0]["text"]
    assert not any(f in evaluation for f in FACTS) and "supported by the facts given" in evaluation
    plain = RewardTemplate(facts_position="prompt").conversation("describe it.", "a red ball.", 1, FACTS)
    assert not any(f in str(plain) for f in FACTS)  # without use_facts nothing is listed
    adapter = load_adapter(tiny_dirs["llava"])
    text = adapter.tokenizer.decode(encode_for_scoring(adapter, template, [Image.new("RGB", (32, 32))],
                                                       ["describe it."], ["a red ball."], [FACTS]).input_ids[0])
    assert text.index("blue cup") < text.index("describe") < text.rindex("a red ball")
    with pytest.raises(ValueError, match="facts_position"):
        RewardTemplate(facts_position="end")
