"""LoRA and 4-bit settings have one source of defaults: the model card's recommendation,
overridden field by field by what a recipe or flag sets."""

from mmalign.model_config import ModelConfig
from mmalign.models import card_for, get_card


def test_unset_fields_take_the_cards_recommendation():
    card = get_card("llava-1.5-7b")
    lora = ModelConfig(model_name_or_path="llava-1.5-7b").lora(card)
    assert (lora.r, lora.alpha, lora.dropout) == (64, 16, 0.05)
    assert tuple(lora.target_modules) == ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    quant = ModelConfig(load_in_4bit=True).quantization(get_card("scene-vlm"))
    assert (quant.quant_type, quant.double_quant, quant.compute_dtype) == ("nf4", True, "float32")
    assert ModelConfig().quantization(card) is None  # not 4-bit unless asked


def test_set_fields_win_one_by_one_and_the_card_is_not_changed():
    card = get_card("scene-vlm")
    config = ModelConfig(lora_r=4, lora_dropout=0.1, lora_target_modules=["all-linear"], load_in_4bit=True,
                         bnb_4bit_compute_dtype="bfloat16")
    lora, quant = config.lora(card), config.quantization(card)
    assert (lora.r, lora.alpha, lora.dropout, lora.target_modules) == (4, 16, 0.1, "all-linear")
    assert (quant.compute_dtype, quant.quant_type) == ("bfloat16", "nf4")
    assert (card.lora.r, card.quantization.compute_dtype) == (8, "float32")


def test_a_checkpoint_folder_gets_its_familys_default_card(tiny_dirs):
    assert card_for(tiny_dirs["llava"]).name == get_card("llava-1.5-7b").name
    assert card_for("scene-vlm").name == "scene-vlm"


def test_a_fresh_lora_comes_from_the_seed_not_the_process_random_state(tiny_dirs):
    """Trainers seed once the model exists, and torch's starting seed differs per process:
    ``load(seed=...)`` must make the fresh LoRA repeat whatever the global state was."""
    import torch

    config = ModelConfig(model_name_or_path=str(tiny_dirs["llava"]), lora_r=4, lora_target_modules=["q_proj"])

    def lora(seed):
        adapter = config.load(seed=seed)
        return {n: p.detach().clone() for n, p in adapter.model.named_parameters() if "lora_A" in n}

    torch.manual_seed(1)
    first = lora(0)
    torch.rand(100)  # another process, another starting state
    again, other = lora(0), lora(1)
    assert first and first.keys() == again.keys() == other.keys()
    assert all(torch.equal(first[n], again[n]) for n in first)
    assert all(not torch.equal(first[n], other[n]) for n in first)
