"""The benchmark runner answers items with several images, batched like any other item."""

import pytest
from PIL import Image

from mmalign.benchmarks.runner import Benchmark, GenerationConfig, Item, generate_answers
from mmalign.models import load_adapter

from ..conftest import FAMILIES


class TwoPhotos(Benchmark):
    """A two-image item (files, in placeholder order) batched with a one-image item."""

    name = "two-photos"

    def __init__(self, folder):
        self.folder = folder

    def items(self):
        first, second = self.folder / "left.png", self.folder / "right.png"
        return [
            Item("pair", "the left photo <image> and the right photo <image> which is red?", (first, second.read_bytes()),
                 {"id": "pair"}),
            Item("one", "<image> what is in the image?", second, {"id": "one"}),
        ]

    def answer_key(self, record, where):
        return record["id"]

    def score(self, answers, workdir):
        raise NotImplementedError


@pytest.mark.parametrize("family", FAMILIES)
def test_a_two_image_item_batched_with_a_one_image_item_answers_as_alone(tiny_dirs, tmp_path, family):
    adapter = load_adapter(tiny_dirs[family])
    if not adapter.multi_image:
        pytest.skip(f"{family}: its adapter declares multi_image = False")
    adapter.model.eval()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(tmp_path / "left.png")
    Image.new("RGB", (64, 48), (20, 200, 40)).save(tmp_path / "right.png")
    benchmark = TwoPhotos(tmp_path)
    batched = generate_answers(adapter, benchmark, GenerationConfig(max_new_tokens=6, batch_size=2), progress=False)
    left, right = (Image.open(tmp_path / name).convert("RGB") for name in ("left.png", "right.png"))
    alone = [adapter.generate([[left, right]], [benchmark.items()[0].prompt], max_new_tokens=6)[0].strip(),
             adapter.generate([[right]], [benchmark.items()[1].prompt], max_new_tokens=6)[0].strip()]
    assert [r["text"] for r in batched] == alone
    assert [r["id"] for r in batched] == ["pair", "one"]
