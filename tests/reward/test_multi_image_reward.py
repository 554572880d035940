"""Reward models on prompts with several images: a trainer step equals the loss by hand."""

import pytest
import torch
from PIL import Image

from mmalign.losses.reward import bradley_terry_loss
from mmalign.models import ScalarHeadModel, load_adapter
from mmalign.qlora import LoraSettings
from mmalign.reward import RewardConfig, RewardTemplate, RewardTrainer, encode_for_scoring

from ..conftest import FAMILIES

TWO = "the left photo <image> and the right photo <image> which is red?"


def rows():
    red, green, blue = ((40, 30), "red"), ((64, 48), "green"), ((32, 32), "blue")
    out = []
    for images, prompt, chosen, rejected in [
        ([red, green], TWO, "the left one is red.", "the right one is red."),
        ([blue], "<image> describe the image.", "a blue ball.", "a cat and a dog."),
        ([green, blue], "<image> <image> what color is the tree?", "the tree is green.", "the tree is red."),
        ([], "is there a dog?", "no.", "yes."),
    ]:
        out.append({"images": [Image.new("RGB", size, color) for size, color in images], "prompt": prompt,
                    "chosen": chosen, "rejected": rejected, "facts": ["a red ball.", "a green tree."]})
    return out


def scalar_model(tiny_dirs, family):
    torch.manual_seed(0)
    adapter = load_adapter(tiny_dirs[family])
    if not adapter.multi_image:
        pytest.skip(f"{family}: its adapter declares multi_image = False")
    adapter.add_lora(LoraSettings(r=4, alpha=8, dropout=0.0))
    with torch.no_grad():
        for name, p in adapter.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    return ScalarHeadModel(adapter)


@pytest.mark.parametrize("family", FAMILIES)
def test_multi_image_reward_step_equals_the_loss_by_hand(tiny_dirs, tmp_path, family):
    model = scalar_model(tiny_dirs, family)
    args = RewardConfig(output_dir=str(tmp_path / "run"), per_device_train_batch_size=4, report_to="none",
                        save_strategy="no", use_cpu=True, max_length=1024, center_weight=0.01)
    trainer = RewardTrainer(model, args)
    batch = rows()
    model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(model, trainer.collator(batch))

        def score(row, key):  # each response scored alone
            alone = encode_for_scoring(model.adapter, trainer.template, [row["images"]], [row["prompt"]], [row[key]])
            return model(alone)[0]

        chosen = torch.stack([score(r, "chosen") for r in batch])
        rejected = torch.stack([score(r, "rejected") for r in batch])
    expected = bradley_terry_loss(chosen, rejected, center_weight=0.01, l2_weight=args.l2_weight)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)


def test_facts_go_before_the_first_of_several_images(tiny_dirs):
    adapter = load_adapter(tiny_dirs["llava"])
    template = RewardTemplate(use_facts=True, facts_position="prompt")
    row = rows()[0]
    prompt = "<image> is the left photo and <image> the right photo: which is red?"
    batch = encode_for_scoring(adapter, template, [row["images"]], [prompt], ["a cat."], [["a blue cup."]])
    tokens = adapter.tokenizer.convert_ids_to_tokens(batch.input_ids[0])
    text = " ".join(t for j, t in enumerate(tokens) if t != "<image>" or tokens[j - 1] != "<image>")
    # the facts are not read as the first image's caption
    assert text.index("blue cup") < text.index("<image> is the left photo and <image> the right photo : which")
    with pytest.raises(ValueError, match=r"row 1, field 'prompt': a prompt has 2 <image> placeholder\(s\)"):
        encode_for_scoring(adapter, template, [row["images"], row["images"][:1]], [TWO, TWO], ["a", "b"])
