"""Recipes: YAML files of flat keys, overridden by command-line flags.

Every field of the dataclasses a command takes (``ModelConfig`` plus a method's
``TrainingArguments`` subclass) is both a YAML key and a ``--flag``, as in TRL. The
resolved configuration is written next to the checkpoints so every run can be repeated.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import functools
import json
import math
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser

from mmalign.io import atomic_write_text


# ---------------------------------------------------------------------------- option checks
class ConfigError(ValueError):
    """Options out of their range, of the wrong type or that do not go together.

    ``problems`` maps each offending option to what is wrong with it (``"beta must be > 0,
    got -1.0"``); the message lists them all, so one run reports every bad option at once.
    """

    def __init__(self, problems: Mapping[str, str], message: str | None = None):
        self.problems = dict(problems)
        super().__init__(message or "; ".join(self.problems.values()))


def _show(value: Any) -> str:
    """A value as a recipe spells it: null, true / false, numbers, quoted strings."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return repr(value)


def _num(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else f"{bound:g}"


def _int_text(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class OptionChecks:
    """Collects the problems of a config's options; :meth:`done` raises one :class:`ConfigError`.

    Every check names the option and its allowed range, e.g. ``beta must be a number > 0,
    got -1.0`` or ``label_smoothing must be a number in [0, 0.5), got 0.7``. Numbers must be
    finite; ``optional`` admits ``None`` (the field's "unset").
    """

    def __init__(self, config: Any):
        self.config = config
        self.problems: dict[str, str] = {}

    def fail(self, name: str, message: str) -> None:
        self.problems.setdefault(name, message)

    def number(self, name: str, low: float | None = None, high: float | None = None, *,
               low_open: bool = False, high_open: bool = False, integer: bool = False,
               optional: bool = False, also: Sequence[Any] = ()) -> None:
        value = getattr(self.config, name)
        if (value is None and optional) or (value in also and _is_number(value)):
            return
        kind = "an integer" if integer else "a number"
        if low is not None and high is not None:
            allowed = f"{kind} in {'(' if low_open else '['}{_num(low)}, {_num(high)}{')' if high_open else ']'}"
        elif low is not None:
            allowed = f"{kind} {'>' if low_open else '>='} {_num(low)}"
        elif high is not None:
            allowed = f"{kind} {'<' if high_open else '<='} {_num(high)}"
        else:
            allowed = kind if integer else "a finite number"
        if also:
            allowed += " or " + " or ".join(_show(a) for a in also)
        if optional:
            allowed += " or null"
        ok = (_is_number(value) and math.isfinite(value) and (not integer or isinstance(value, int))
              and (low is None or (value > low if low_open else value >= low))
              and (high is None or (value < high if high_open else value <= high)))
        if not ok:
            self.fail(name, f"{name} must be {allowed}, got {_show(value)}")

    def choice(self, name: str, choices: Iterable[Any], *, optional: bool = False) -> None:
        value = getattr(self.config, name)
        if isinstance(value, enum.Enum):  # TrainingArguments turns its strategies into str enums
            value = value.value
        choices = [str(c.value if isinstance(c, enum.Enum) else c) for c in choices]
        if value is None and optional:
            return
        if not isinstance(value, str) or value not in choices:
            self.fail(name, f"{name} must be one of {', '.join(choices)}{' or null' if optional else ''}, "
                            f"got {_show(value)}")

    def flag(self, name: str, *, optional: bool = False) -> None:
        value = getattr(self.config, name)
        if not (isinstance(value, bool) or (value is None and optional)):
            self.fail(name, f"{name} must be true or false{' or null' if optional else ''}, got {_show(value)}")

    def text(self, name: str, *, optional: bool = False) -> None:
        value = getattr(self.config, name)
        if not (isinstance(value, str) or (value is None and optional)):
            self.fail(name, f"{name} must be a string{' or null' if optional else ''}, got {_show(value)}")

    def rule(self, ok: bool, name: str, message: str) -> None:
        """A condition between options; ``name`` is the option the message is filed under."""
        if not ok:
            self.fail(name, message)

    def done(self) -> None:
        if self.problems:
            raise ConfigError(self.problems)


# ---------------------------------------------------------------------------- TRL's option names
def apply_aliases(values: Mapping[str, Any], aliases: Mapping[str, str], where: str) -> dict[str, Any]:
    """``values`` with each alias key (TRL's name of an option, e.g. ``precompute_ref_log_probs``)
    renamed to mmalign's (``precompute_ref_logps``); both given with different values is a
    :class:`ConfigError` naming both and ``where`` they were set."""
    out, problems = dict(values), {}
    for alias, name in aliases.items():
        if alias not in out:
            continue
        value = out.pop(alias)
        if name in out and out[name] != value:
            problems[name] = (f"{where}: {alias} (TRL's name for {name}) is {_show(value)} but {name} is "
                              f"{_show(out[name])}: give one of them")
        else:
            out[name] = value
    if problems:
        raise ConfigError(problems)
    return out


def accepts_aliases(aliases: Mapping[str, str]) -> typing.Callable[[type], type]:
    """Class decorator of a config dataclass: its constructor also takes the keyword
    ``alias`` for the option ``aliases[alias]`` (:func:`apply_aliases`), and recipes and flags
    accept the same names (``option_aliases``, read by :func:`read_recipe` and :func:`parse_recipe`).
    The config itself keeps mmalign's names only, so a resolved config never holds both."""
    def decorate(cls: type) -> type:
        init = cls.__init__
        merged = {**getattr(cls, "option_aliases", {}), **aliases}

        @functools.wraps(init)
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            init(self, *args, **apply_aliases(kwargs, merged, type(self).__name__))

        cls.__init__ = __init__
        cls.option_aliases = types.MappingProxyType(merged)
        return cls

    return decorate


def option_aliases(dataclass_types: Sequence[type]) -> dict[str, str]:
    """Every alias the configs of a command accept, alias -> mmalign's name."""
    return {alias: name for t in dataclass_types for alias, name in getattr(t, "option_aliases", {}).items()}


def _aliased_argv(argv: list[str], aliases: Mapping[str, str], prog: str) -> list[str]:
    """Command-line flags with TRL's names renamed to mmalign's; an alias and its option both
    on the command line with different values is a :class:`CommandLineError`."""
    given: dict[str, tuple[str, str]] = {}
    out = []
    for i, item in enumerate(argv):
        if item.startswith("--"):
            key, eq, value = item[2:].partition("=")
            if not eq:
                value = argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("--") else ""
            name = aliases.get(key, key)
            if name in given and given[name][0] != key and given[name][1] != value:
                other, before = given[name]
                raise CommandLineError(f"{prog}: --{other} {before} and --{key} {value} set the same option "
                                       f"({name}, under TRL's name and mmalign's) to different values: give one")
            given.setdefault(name, (key, value))
            item = f"--{name}{eq}{item[2:].partition('=')[2]}" if key in aliases else item
        out.append(item)
    return out


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


class CommandLineError(ValueError):
    """A flag argparse refuses (an unknown flag, ``--beta x``...)."""


class RecipeParser(HfArgumentParser):
    """``HfArgumentParser`` whose errors raise :class:`CommandLineError` (a ``ValueError``:
    one ``error:`` line and exit code 2 in the CLI) instead of printing the whole usage and
    exiting."""

    def error(self, message: str) -> typing.NoReturn:
        raise CommandLineError(f"{self.prog}: {message}")


def _field_hints(dataclass_types: Sequence[type]) -> dict[str, Any]:
    hints: dict[str, Any] = {}
    for t in dataclass_types:
        try:
            resolved = typing.get_type_hints(t)
        except Exception:  # an annotation that does not resolve: keep the raw ones
            resolved = {}
        for f in dataclasses.fields(t):
            hints.setdefault(f.name, resolved.get(f.name, f.type))
    return hints


def _members(hint: Any) -> tuple[Any, ...]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


class _Coercion:
    """Turns YAML / Python values into what each option's ``--flag`` would have produced,
    with an error naming the source and the key otherwise (``learning_rate: abc``, a list
    where one number is expected, ``save_strategy: no`` read by YAML as false...)."""

    def __init__(self, dataclass_types: Sequence[type]):
        from transformers.hf_argparser import string_to_bool

        self.string_to_bool = string_to_bool
        self.parser = HfArgumentParser(list(dataclass_types))
        self.hints = _field_hints(dataclass_types)

    def __call__(self, values: Mapping[str, Any], where: str) -> dict[str, Any]:
        out, problems = {}, {}
        for key, value in values.items():
            try:
                out[key] = self.value(key, value)
            except ValueError as err:
                problems[key] = f"{where}: {key}: {err}"
        if problems:
            raise ConfigError(problems)
        return out

    def value(self, key: str, value: Any) -> Any:
        action = self.parser._option_string_actions.get(f"--{key}")
        if action is None:
            raise ValueError("not an option that can be set")
        members = _members(self.hints.get(key))
        listy = action.nargs in ("+", "*") or any(typing.get_origin(m) is list for m in members)
        if value is None:
            if type(None) in members or None in members:
                return None
            raise ValueError(f"expected {self.kind(action, listy)}, got null")
        if isinstance(value, dict):
            if any(m is dict or typing.get_origin(m) is dict for m in members):
                return value
            raise ValueError(f"expected {self.kind(action, listy)}, got a mapping")
        if isinstance(value, list | tuple):
            if not listy:
                raise ValueError(f"expected {self.kind(action, listy)}, got a list")
            return [self.scalar(action, v) for v in value]
        if listy and str not in members and action.nargs in ("+", "*"):
            return [self.scalar(action, value)]  # one item where a list is expected, as --flag does
        return self.scalar(action, value)

    def kind(self, action: argparse.Action, listy: bool = False) -> str:
        choices = [str(getattr(c, "value", c)) for c in action.choices or ()]
        if not choices and isinstance(action.type, type) and issubclass(action.type, enum.Enum):
            choices = [str(member.value) for member in action.type]
        if choices:
            one = "one of " + ", ".join(choices)
        else:
            one = {self.string_to_bool: "true or false", int: "an integer", float: "a number",
                   str: "a string"}.get(action.type, f"a valid {action.dest}")
        if not listy:
            return one
        return f"a list of {one.removeprefix('a ').removeprefix('an ')}s or {one}" if not choices else \
            f"{one} (or a list of them)"

    def scalar(self, action: argparse.Action, value: Any) -> Any:
        convert = action.type or str
        if convert is self.string_to_bool:
            if isinstance(value, bool):
                return value
            try:
                return self.string_to_bool(str(value))
            except argparse.ArgumentTypeError:
                raise ValueError(f"expected true or false, got {_show(value)}") from None
        if isinstance(value, bool):  # YAML reads yes / no / on / off as booleans
            hint = ' (YAML reads yes/no/on/off as true/false: quote the word, e.g. "no")' \
                if convert is not int and convert is not float else ""
            raise ValueError(f"expected {self.kind(action)}, got {_show(value)}{hint}")
        if convert is int:
            if isinstance(value, int):
                return value
            if isinstance(value, str) and (number := _int_text(value)) is not None:
                return number
            raise ValueError(f"expected an integer, got {_show(value)}")
        if convert is float:
            if _is_number(value):
                return float(value)
            try:
                return float(value)
            except (TypeError, ValueError):
                raise ValueError(f"expected a number, got {_show(value)}") from None
        if not isinstance(value, str | int | float):
            raise ValueError(f"expected {self.kind(action)}, got {_show(value)}")
        value = str(value)
        if convert is not str:
            try:
                convert(value)
            except (TypeError, ValueError, KeyError, argparse.ArgumentTypeError):
                raise ValueError(f"expected {self.kind(action)}, got {_show(value)}") from None
        if action.choices and value not in [str(getattr(c, "value", c)) for c in action.choices]:
            raise ValueError(f"expected {self.kind(action)}, got {_show(value)}")
        return value


def _unknown(keys: Iterable[Any], dataclass_types: Sequence[type], where: str) -> ValueError | None:
    import difflib

    known = {f.name for t in dataclass_types for f in dataclasses.fields(t)}
    unknown = sorted(str(k) for k in keys if k not in known)
    if not unknown:
        return None
    hints = [f"{k} (did you mean {close[0]}?)" if (close := difflib.get_close_matches(k, known, n=1)) else k
             for k in unknown]
    return ValueError(f"{where}: unknown option(s) {', '.join(hints)}")


def read_recipe(name_or_path: str | Path, dataclass_types: Sequence[type]) -> dict[str, Any]:
    """A recipe's values, checked against the options of ``dataclass_types``: malformed YAML,
    a file that is not a mapping, a key no dataclass knows (so a typo never silently falls
    back to a default) and a value of the wrong type are each a ``ValueError`` naming the
    recipe (and the line or key). Values come back as their flags would give them."""
    path = resolve_recipe_path(str(name_or_path))
    if path.is_dir():
        raise ValueError(f"{name_or_path}: a folder, not a recipe file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{name_or_path}: not a text (UTF-8) file") from None
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = getattr(err, "problem", None) or type(err).__name__
        raise ValueError(f"{name_or_path}: not valid YAML ({what}{at})") from None
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ValueError(f"{name_or_path}: a recipe is a mapping of option names to values, "
                         f"not a {type(values).__name__}")
    values = apply_aliases(values, option_aliases(dataclass_types), str(name_or_path))
    _check_known(values, dataclass_types, str(name_or_path))
    return _Coercion(dataclass_types)(values, str(name_or_path))


def _check_known(values: Mapping[str, Any], dataclass_types: Sequence[type], where: str) -> None:
    if err := _unknown(values, dataclass_types, where):
        raise err


def _attributed(err: ValueError, source: typing.Callable[[str], str], where: str) -> ValueError:
    """A config's refusal with each problem prefixed by where its option was set."""
    if isinstance(err, ConfigError):
        by_source: dict[str, list[str]] = {}
        for name in err.problems:
            by_source.setdefault(source(name), []).append(name)
        message = "; ".join(f"{origin}: " + "; ".join(err.problems[n] for n in names)
                            for origin, names in by_source.items())
        return ConfigError({name: f"{source(name)}: {problem}" for name, problem in err.problems.items()}, message)
    return ValueError(f"{where}: {err}")


def _build(make: typing.Callable[[], Any], source: typing.Callable[[str], str], where: str) -> Any:
    try:
        return make()
    except CommandLineError:
        raise
    except ConfigError as err:
        raise _attributed(err, source, where) from None
    except (ValueError, TypeError, KeyError, ImportError, AttributeError, OSError) as err:
        # TrainingArguments' own checks (bf16 on a CPU, an unknown optimizer...) and the odd
        # setting it cannot even read: still one line naming where the options came from
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        raise ValueError(f"{where}: {message}") from err


def load_recipe(recipe: str | Path | None, dataclass_types: Sequence[type],
                overrides: Mapping[str, Any] | None = None) -> tuple[Any, ...]:
    """Instances of ``dataclass_types`` from a recipe with ``overrides`` on top: the Python
    form of ``mmalign train ... --config RECIPE --option value``, so scripts and experiments
    start from the shipped recipes and state only what they change."""
    values = read_recipe(recipe, dataclass_types) if recipe else {}
    overrides = apply_aliases(overrides or {}, option_aliases(dataclass_types), "overrides")
    _check_known(overrides, dataclass_types, "overrides")
    values.update(_Coercion(dataclass_types)(overrides, "overrides"))
    where = f"{recipe} with overrides" if recipe and overrides else str(recipe or "overrides")

    def source(name: str) -> str:
        return "overrides" if name in overrides else str(recipe) if recipe else "defaults"

    return _build(lambda: tuple(HfArgumentParser(list(dataclass_types)).parse_dict(values)), source, where)


def _split_config(argv: list[str], prog: str) -> tuple[str | None, list[str]]:
    """``--config FILE`` (or ``--config=FILE``) taken out of ``argv``."""
    config, rest = None, []
    items = iter(argv)
    for item in items:
        if item == "--config" or item.startswith("--config="):
            if config is not None:
                raise ValueError(f"{prog}: --config given twice")
            config = item.partition("=")[2] if "=" in item else next(items, None)
            if not config or config.startswith("--"):
                raise ValueError(f"{prog}: --config needs a recipe file (or a shipped recipe's name)")
        else:
            rest.append(item)
    return config, rest


def parse_recipe(dataclass_types: Sequence[type], argv: Sequence[str], prog: str) -> tuple[Any, ...]:
    """Parse ``[--config FILE] [--field value ...]`` into instances of ``dataclass_types``:
    the recipe's values (:func:`read_recipe`) become defaults and flags override them.

    Every problem is one ``ValueError`` naming where it is: the recipe file (malformed YAML,
    unknown key, wrong type, value out of range) or the command line (unknown flag, bad value).
    """
    parser = RecipeParser(list(dataclass_types), prog=prog)
    parser.add_argument("--config", default=None,
                        help="YAML recipe file or shipped recipe name; flags override its values")
    config_path, argv = _split_config(list(argv), prog)
    argv = _aliased_argv(argv, option_aliases(dataclass_types), prog)
    recipe = read_recipe(config_path, dataclass_types) if config_path else {}
    parser.set_defaults(**recipe)
    flags = {item[2:].partition("=")[0] for item in argv if item.startswith("--")}

    def source(name: str) -> str:
        return "command line" if name in flags else str(config_path) if name in recipe else prog

    where = (f"{config_path} and the command line" if config_path and flags
             else str(config_path) if config_path else "command line")
    outputs = _build(lambda: parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True),
                     source, where)
    if outputs[-1]:
        stray = [item for item in outputs[-1] if item.startswith("-")] or outputs[-1]
        err = _unknown([s.lstrip("-").partition("=")[0] for s in stray], dataclass_types, f"{prog}")
        raise err or ValueError(f"{prog}: unexpected argument(s) {' '.join(outputs[-1])}")
    # The parser also returns a namespace holding --config itself; keep the dataclasses.
    return tuple(outputs[: len(dataclass_types)])


def resolved_config(*configs: Any) -> dict[str, Any]:
    """The effective options of a run, as plain data (JSON-safe)."""
    out: dict[str, Any] = {}
    for cfg in configs:
        data = cfg.to_dict() if hasattr(cfg, "to_dict") else dataclasses.asdict(cfg)
        out.update(json.loads(json.dumps(data, default=str)))
    return out


def write_resolved_config(path: str | Path, *configs: Any) -> Path:
    return atomic_write_text(path, yaml.safe_dump(resolved_config(*configs), sort_keys=True))
