"""Recipes: YAML files of flat keys, overridden by command-line flags.

Every field of the dataclasses a command takes (``ModelConfig`` plus a method's
``TrainingArguments`` subclass) is both a YAML key and a ``--flag``, as in TRL. The
resolved configuration is written next to the checkpoints so every run can be repeated.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser

from mmalign.io import atomic_write_text


def resolve_recipe_path(name_or_path: str) -> Path:
    """A recipe file, or the name of one shipped in ``mmalign/recipes`` (without ``.yaml``)."""
    path = Path(name_or_path)
    if path.exists():
        return path
    shipped = Path(__file__).parent / "recipes" / f"{name_or_path}.yaml"
    if shipped.exists():
        return shipped
    names = sorted(p.stem for p in (Path(__file__).parent / "recipes").glob("*.yaml"))
    raise FileNotFoundError(f"no recipe file {name_or_path!r}; shipped recipes: {', '.join(names)}")


def accelerate_config_path(name_or_path: str) -> Path:
    """An accelerate config file, or the name of one shipped in ``mmalign/recipes/accelerate``
    (``ddp``, ``fsdp``, ``deepspeed-zero2``, ``deepspeed-zero3``)."""
    path = Path(name_or_path)
    if path.exists():
        return path
    folder = Path(__file__).parent / "recipes" / "accelerate"
    shipped = folder / f"{name_or_path}.yaml"
    if shipped.exists():
        return shipped
    names = sorted(p.stem for p in folder.glob("*.yaml"))
    raise FileNotFoundError(f"no accelerate config {name_or_path!r}; shipped accelerate configs: {', '.join(names)}")


def read_recipe(name_or_path: str | Path, dataclass_types: Sequence[type]) -> dict[str, Any]:
    """A recipe's values, checked against the options of ``dataclass_types``: a key no
    dataclass knows is an error naming it, so a typo never silently falls back to a default."""
    path = resolve_recipe_path(str(name_or_path))
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{name_or_path}: a recipe is a mapping of option names to values")
    _check_known(values, dataclass_types, str(name_or_path))
    return values


def _check_known(values: Mapping[str, Any], dataclass_types: Sequence[type], where: str) -> None:
    known = {f.name for t in dataclass_types for f in dataclasses.fields(t)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{where}: unknown option(s) {', '.join(unknown)}")


def load_recipe(recipe: str | Path | None, dataclass_types: Sequence[type],
                overrides: Mapping[str, Any] | None = None) -> tuple[Any, ...]:
    """Instances of ``dataclass_types`` from a recipe with ``overrides`` on top: the Python
    form of ``mmalign train ... --config RECIPE --option value``, so scripts and experiments
    start from the shipped recipes and state only what they change."""
    values = read_recipe(recipe, dataclass_types) if recipe else {}
    overrides = dict(overrides or {})
    _check_known(overrides, dataclass_types, "overrides")
    values.update(overrides)
    return tuple(HfArgumentParser(list(dataclass_types)).parse_dict(values))


def parse_recipe(dataclass_types: Sequence[type], argv: Sequence[str], prog: str) -> tuple[Any, ...]:
    """Parse ``[--config FILE] [--field value ...]`` into instances of ``dataclass_types``:
    the recipe's values (:func:`read_recipe`) become defaults and flags override them."""
    parser = HfArgumentParser(list(dataclass_types), prog=prog)
    parser.add_argument("--config", default=None,
                        help="YAML recipe file or shipped recipe name; flags override its values")
    argv = list(argv)
    config_path = None
    if "--config" in argv:
        at = argv.index("--config")
        if at + 1 >= len(argv):
            parser.error("--config needs a file")
        config_path = argv[at + 1]
        del argv[at : at + 2]
    if config_path:
        try:
            parser.set_defaults(**read_recipe(config_path, dataclass_types))
        except ValueError as err:
            parser.error(str(err))
    # The parser also returns a namespace holding --config itself; keep the dataclasses.
    return tuple(parser.parse_args_into_dataclasses(args=argv)[: len(dataclass_types)])


def resolved_config(*configs: Any) -> dict[str, Any]:
    """The effective options of a run, as plain data (JSON-safe)."""
    out: dict[str, Any] = {}
    for cfg in configs:
        data = cfg.to_dict() if hasattr(cfg, "to_dict") else dataclasses.asdict(cfg)
        out.update(json.loads(json.dumps(data, default=str)))
    return out


def write_resolved_config(path: str | Path, *configs: Any) -> Path:
    return atomic_write_text(path, yaml.safe_dump(resolved_config(*configs), sort_keys=True))
