import pytest
from datasets import Dataset, Features, Image, List, Value
from PIL import Image as PILImage

# (image colour, prompt, chosen, rejected, corrected word in chosen, in rejected)
PAIRS = [
    ("red", "what is in the image?", "a red cup on a table.", "a red cup and a cat on a table.", None, "cat"),
    ("blue", "describe the image.", "a blue ball on the left.", "a blue car on the left.", "ball", "car"),
    ("green", "what color is the tree?", "the tree is green.", "the tree is red.", "green", "red"),
    ("yellow", "is there a dog?", "no.", "yes, there is a dog.", "no", "yes"),
]


def span_of(text: str, word: str | None) -> list[list[int]]:
    if word is None:
        return []
    at = text.index(word)
    return [[at, at + len(word)]]


@pytest.fixture()
def pair_dataset():
    rows = {"images": [], "prompt": [], "chosen": [], "rejected": [], "chosen_spans": [], "rejected_spans": []}
    for color, prompt, chosen, rejected, word_c, word_r in PAIRS:
        rows["images"].append([PILImage.new("RGB", (32, 32), color)])
        rows["prompt"].append(prompt)
        rows["chosen"].append(chosen)
        rows["rejected"].append(rejected)
        rows["chosen_spans"].append(span_of(chosen, word_c))
        rows["rejected_spans"].append(span_of(rejected, word_r))
    features = Features({
        "images": List(Image()), "prompt": Value("string"), "chosen": Value("string"),
        "rejected": Value("string"), "chosen_spans": List(List(Value("int32"))),
        "rejected_spans": List(List(Value("int32"))),
    })
    return Dataset.from_dict(rows, features=features)
