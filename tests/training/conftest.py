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
