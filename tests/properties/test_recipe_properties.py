"""Property test of the recipe loader (docs/robustness.md, "Config validation").

Generated garbage recipes — random YAML values (numbers, NaN, infinities, booleans, text,
lists, mappings, null) for the known options of ``mmalign train dpo``, unknown keys,
malformed YAML text, documents that are not a mapping — go through
``mmalign train dpo --config FILE``. Whatever the recipe holds, the command either accepts
it as a valid config or exits with code 2 and exactly one ``error:`` line naming the recipe:
never a traceback, never a usage dump, and ``output_dir`` is never created.

The model and the data point at missing paths (flags override the recipe), so an accepted
config ends at "model folder ... does not exist" before anything loads; the checks of the
recipe all come first. Each example takes about 0.05 s.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import os
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmalign.cli import main
from mmalign.config_io import parse_recipe
from mmalign.dpo import DPOConfig
from mmalign.model_config import ModelConfig

EXAMPLES = int(os.environ.get("MMALIGN_PROPERTY_EXAMPLES", "150"))
PROPERTY = settings(max_examples=EXAMPLES, deadline=None, derandomize=not os.environ.get("MMALIGN_PROPERTY_RANDOM"),
                    database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

TYPES = (ModelConfig, DPOConfig)
#: set by a launcher (torchrun), not a recipe: another value starts a process group
LAUNCHER = {"local_rank"}
KNOWN = sorted(f.name for t in TYPES for f in dataclasses.fields(t) if f.init and f.name not in LAUNCHER)
#: options whose values matter most, drawn more often (the method's own and the training basics)
METHOD = sorted({f.name for f in dataclasses.fields(DPOConfig)} - {f.name for f in dataclasses.fields(
    DPOConfig.__mro__[1])} | {f.name for f in dataclasses.fields(ModelConfig)} | {
    "learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps", "max_steps", "num_train_epochs",
    "seed", "save_strategy", "lr_scheduler_type", "warmup_steps", "weight_decay", "logging_steps", "save_steps"})

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 5), st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True), st.floats(-2, 2),
    st.sampled_from(["no", "yes", "abc", "1e-3", "0.5", "-1", "", "sigmoid", "ddpo", "nf4", "steps", "cosine",
                     "all-linear", "float32", "auto", "nan", "inf", "~", "[", "{a: 1}"]),
    st.text(max_size=12),
)
values = st.one_of(scalars, st.lists(scalars, max_size=3), st.dictionaries(st.text(max_size=6), scalars, max_size=2))
keys = st.one_of(st.sampled_from(METHOD), st.sampled_from(KNOWN), st.sampled_from(KNOWN).map(lambda k: k + "s"),
                 st.text(min_size=1, max_size=10))


def dump(data) -> str:
    return yaml.safe_dump(data, allow_unicode=True)


recipes = st.one_of(
    st.dictionaries(keys, values, max_size=6).map(dump),  # random values for known keys, unknown keys
    st.dictionaries(st.sampled_from(METHOD), values, min_size=1, max_size=3).map(dump),
    st.one_of(st.lists(scalars, max_size=3), scalars).map(dump),  # a document that is not a mapping
    st.text(max_size=80),  # any text at all: malformed YAML, a bare word...
    st.builds(lambda good, junk: good + junk, st.dictionaries(st.sampled_from(METHOD), scalars, max_size=3).map(dump),
              st.sampled_from(["  bad: indent\n", "key: [unclosed\n", "- item\n", ": :\n", "\t\n", "a: b: c\n"])),
)


@given(text=recipes)
@PROPERTY
def test_a_recipe_is_a_valid_config_or_one_error_line_naming_it(text):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        recipe = root / "recipe.yaml"
        recipe.write_text(text, encoding="utf-8")
        out = root / "run"
        flags = ["--model_name_or_path", str(root / "no-model"), "--dataset_path", str(root / "no-data"),
                 "--output_dir", str(out)]
        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = main(["train", "dpo", "--config", str(recipe), *flags])
        err = stderr.getvalue()
        lines = [line for line in err.splitlines() if line.startswith("error: ")]
        assert code == 2, err
        assert len(lines) == 1, err
        assert "Traceback" not in err + stdout.getvalue() and "usage:" not in err, err
        assert not out.exists()
        try:
            parse_recipe(TYPES, ["--config", str(recipe), *flags], prog="mmalign train dpo")
        except ValueError:  # the recipe was refused: the line says which file
            assert str(recipe) in lines[0], lines[0]
        else:  # a valid config: refused later, for the missing model, before anything loads
            assert "no-model" in lines[0], lines[0]


def test_the_generators_reach_both_outcomes():
    """Sanity: valid configs are among the examples too (not only refusals)."""
    assert not math.isnan(0.0)
    with tempfile.TemporaryDirectory() as tmp:
        recipe = Path(tmp) / "r.yaml"
        recipe.write_text(dump({"beta": 0.5, "loss_type": "ipo", "lora_r": 2}))
        model, args = parse_recipe(TYPES, ["--config", str(recipe)], prog="x")
        assert (args.beta, args.loss_type, model.lora_r) == (0.5, "ipo", 2)
