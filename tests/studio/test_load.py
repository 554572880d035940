"""Filling a project: model answers to a prompt set (adapter API), and preference datasets."""

import json

import pytest
from PIL import Image

from mmalign.benchmarks.runner import GenerationConfig
from mmalign.cli import main
from mmalign.data_builders.storage import save_preference_dataset, save_prompt_set
from mmalign.studio import StudioProject, load_preference_items, load_prompt_set

from .conftest import png


@pytest.fixture()
def prompt_set(tmp_path):
    colors = ["red", "blue", "green"]
    records = [{"images": [Image.new("RGB", (32, 32), c)], "prompt": f"What colour is shape {i}?",
                "source": "test", "meta": {"scene": i}} for i, c in enumerate(colors)]
    save_prompt_set(records, tmp_path / "prompts")
    return tmp_path / "prompts"


@pytest.fixture()
def preference_set(tmp_path):
    records = [{"images": [Image.new("RGB", (32, 32), "red")], "prompt": "Describe the image.",
                "chosen": "a red square.", "rejected": "a red square and a cat.", "source": "src"},
               {"images": [Image.new("RGB", (32, 32), "blue")], "prompt": "Describe the image.",
                "chosen": "a blue square.", "rejected": "a green circle."}]
    save_preference_dataset(records, tmp_path / "pairs")
    return tmp_path / "pairs"


def test_prompt_set_answers_come_from_the_adapter(tiny_llava, prompt_set, tmp_path):
    from mmalign import load_adapter
    from mmalign.data_builders.storage import open_dataset

    adapter = load_adapter(tiny_llava)
    project = StudioProject.create(tmp_path / "proj")
    added = load_prompt_set(project, open_dataset(prompt_set), adapter,
                            GenerationConfig(batch_size=2, max_new_tokens=6), model_name="tiny", progress=False)
    items = project.items()
    # the same prompts answered directly in the same batches: the studio stored exactly these answers
    images = [[Image.new("RGB", (32, 32), c)] for c in ("red", "blue", "green")]
    prompts = [f"What colour is shape {i}?" for i in range(3)]
    direct = [*adapter.generate(images[:2], prompts[:2], max_new_tokens=6),
              *adapter.generate(images[2:], prompts[2:], max_new_tokens=6)]
    expected = [a.strip() for a in direct if a.strip()]
    assert added.added == len(expected) == len(items) and [item.answer for item in items] == expected
    assert all(item.kind == "correction" and len(item.images) == 1 for item in items)
    assert items[0].meta == {"row": 0, "source_meta": {"scene": 0}, "model": "tiny"}
    assert items[0].prompt == "What colour is shape 0?"
    # a rerun asks the model nothing and adds nothing: these prompts are answered by "tiny" already
    class Refuses:
        def generate(self, *args, **kwargs):
            raise AssertionError("a prompt already answered by this model was generated again")

    again = load_prompt_set(project, open_dataset(prompt_set), Refuses(), GenerationConfig(batch_size=2),
                            model_name="tiny", progress=False)
    assert (again.added, again.skipped) == (0, 3) and len(project.items()) == 3


def test_preference_dataset_as_corrections_pairs_or_both(preference_set, tmp_path):
    from mmalign.data_builders.storage import open_dataset

    for mode, kinds in [("corrections", ["correction"] * 2), ("pairs", ["pair"] * 2),
                        ("both", ["correction", "pair"] * 2)]:
        project = StudioProject.create(tmp_path / mode)
        assert load_preference_items(project, open_dataset(preference_set), mode=mode).added == len(kinds)
        items = project.items()
        assert [i.kind for i in items] == kinds
        first = items[0]
        if first.kind == "correction":
            assert first.answer == "a red square and a cat." and first.answer_b is None
        else:
            assert (first.answer, first.answer_b) == ("a red square.", "a red square and a cat.")
        assert first.source == "src" and project.image_path(first.images[0]).read_bytes().startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="mode must be one of"):
        load_preference_items(project, open_dataset(preference_set), mode="all")


def test_cli_from_init_to_status(preference_set, tmp_path, capsys):
    proj = str(tmp_path / "proj")
    assert main(["studio", "init", "--project", proj]) == 0
    assert main(["studio", "add-annotator", "--project", proj, "--name", "alice"]) == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]
    assert main(["studio", "add-annotator", "--project", proj, "--name", "bob"]) == 0
    assert main(["studio", "load", "--project", proj, "--from-dataset", str(preference_set), "--as", "both",
                 "--overlap", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "added 4 items (both)" in out and "assigned 4 items (2 shared): 6 assignments" in out
    assert main(["studio", "status", "--project", proj]) == 0
    out = capsys.readouterr().out
    assert "items: 2 correction, 2 pair; unassigned: 0" in out and "alice: 0 / 3 done" in out
    assert StudioProject(proj).sign_in(token) is not None
    # errors are one clear line, exit code 2
    assert main(["studio", "load", "--project", str(tmp_path / "none"), "--from-dataset", str(preference_set)]) == 2
    assert "not a studio project" in capsys.readouterr().err
    assert main(["studio", "load", "--project", proj, "--prompts", str(preference_set)]) == 2
    assert "--prompts needs --model" in capsys.readouterr().err
    assert main(["studio", "add-annotator", "--project", proj, "--name", "alice"]) == 2
    assert "already exists" in capsys.readouterr().err


def test_items_need_answers(tmp_path):
    project = StudioProject.create(tmp_path / "p")
    with pytest.raises(ValueError, match="item 0: field 'answer_b' is empty"):
        project.add_items([{"kind": "pair", "images": [png("red")], "prompt": "q", "answer": "x"}])
    assert project.items() == [] and json.loads(json.dumps(project.status()))["items"] == {}
