import pytest
from PIL import Image

# (image colour, prompt, chosen, rejected)
PAIRS = [
    ("red", "what is in the image?", "a red cup on a table.", "a red cup and a cat on a table."),
    ("blue", "describe the image.", "a blue ball on the left.", "a blue car on the left."),
    ("green", "what color is the tree?", "the tree is green.", "the tree is red."),
    ("yellow", "is there a dog?", "no.", "yes, there is a dog."),
]


@pytest.fixture(scope="session")
def pairs_dir(tmp_path_factory):
    """Eight canonical preference pairs (the four above, each with two image sizes) on disk."""
    from mmalign.data_builders.corrections import correction_record
    from mmalign.data_builders.storage import save_preference_dataset

    records = [
        correction_record(rejected, chosen, prompt=prompt, images=[Image.new("RGB", (size, size), color)])
        for size in (32, 48) for color, prompt, chosen, rejected in PAIRS
    ]
    path = tmp_path_factory.mktemp("pairs") / "pairs"
    save_preference_dataset(records, path)
    return path


@pytest.fixture(scope="session")
def sft_json(tmp_path_factory):
    """Eight one-turn LLaVA-format conversations with their images: (json file, image folder)."""
    import json

    root = tmp_path_factory.mktemp("sft")
    (root / "img").mkdir()
    records = []
    for i, (color, prompt, chosen, _) in enumerate(PAIRS * 2):
        Image.new("RGB", (32 + 16 * (i // 4), 32 + 16 * (i // 4)), color).save(root / "img" / f"{i}.png")
        records.append({"id": str(i), "image": f"{i}.png", "conversations": [
            {"from": "human", "value": f"<image>\n{prompt}"}, {"from": "gpt", "value": chosen}]})
    (root / "data.json").write_text(json.dumps(records))
    return root / "data.json", root / "img"


@pytest.fixture(scope="session")
def prompts_dir(tmp_path_factory):
    """Four PPO prompts (images + prompt) saved as a prompt set."""
    from mmalign.data_builders.storage import save_prompt_set

    path = tmp_path_factory.mktemp("prompts") / "prompts"
    save_prompt_set([{"images": [Image.new("RGB", (32, 32), color)], "prompt": prompt}
                     for color, prompt, _, _ in PAIRS], path)
    return path
