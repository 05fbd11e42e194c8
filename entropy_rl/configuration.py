"""Typed configs from YAML files and `key.sub=value` overrides, for every command.

A config is a tree of frozen pydantic models (`Section`: unknown keys rejected, values
coerced from YAML and command-line strings). It comes from (lowest to highest priority) the
models' defaults, YAML files (each may name base files under `defaults:`, merged first, in
order; paths relative to the file, `.yaml` optional) and `key.sub=value` overrides.
`load_command_config` validates the whole tree before any compute and raises one
`ConfigError` with a `dotted.key: what is wrong` line per problem; an unknown key names the
closest valid one. A key renamed in the schema (`Section.renamed_keys`) is still read under
its old name, with a FutureWarning naming both. Checks that need files (`check_paths`) can be
skipped for a config written for another machine. `add_config_arguments` and `command_config` give a command
`--config`, `--print-config` and the overrides, with its old flags kept as aliases.

The sections every command shares are in `entropy_rl.config`, training's own in
`entropy_rl.train.config`.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import re
import sys
import typing
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Annotated, Any, ClassVar, TypeVar

import pydantic
import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, model_validator

from entropy_rl.jsonl import write_text_atomic

Config = TypeVar("Config", bound=BaseModel)


class ConfigError(ValueError):
    """A config that cannot run: every message names the dotted key it is about."""


def closest(name: str, choices: Iterable[str]) -> str:
    """' (did you mean X?)' for the choice closest to `name`, else ''."""
    matches = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.5)
    return f" (did you mean {matches[0]!r}?)" if matches else ""


def one_of(choices: Iterable[str] | Callable[[], Iterable[str]]) -> AfterValidator:
    """A field check: the value is one of `choices` (a callable for a registry read at check time)."""

    def check(value: str) -> str:
        options = list(choices() if callable(choices) else choices)
        if value not in options:
            raise ValueError(f"{value!r} is not one of {', '.join(options)}{closest(value, options)}")
        return value

    return AfterValidator(check)


def paths_checked(info: ValidationInfo) -> bool:
    """Whether validators should check what this machine and process have: that files exist, that
    a verifier is registered (`load_command_config(check_paths=...)`; off for a saved config)."""
    return (info.context or {}).get("check_paths", True)


class Section(BaseModel):
    """A config section: frozen, unknown keys rejected, YAML and command-line strings coerced
    (lax pydantic mode; a tuple field also takes "1,2,3")."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)  # inf refused like nan
    # {old dotted key: its new dotted key} of a root config class: what configs written before a
    # rename (YAML files, overrides, a run's saved config) set under the old name
    renamed_keys: ClassVar[Mapping[str, str]] = {}

    @classmethod
    def implied_defaults(cls, given: Mapping[str, Any]) -> Mapping[str, Any]:
        """The keys a user gave plus the defaults they imply for keys not given (applied by
        `config_from_dict` before the class defaults; none here)."""
        return given

    @model_validator(mode="before")
    @classmethod
    def _split_tuples(cls, values: Any) -> Any:
        if not isinstance(values, Mapping):
            return values
        values = dict(values)
        for name, field in cls.model_fields.items():
            if typing.get_origin(field.annotation) is tuple and isinstance(values.get(name), str):
                text = values[name].strip()
                values[name] = yaml.safe_load(text) if text.startswith("[") else [v.strip() for v in text.split(",") if v.strip()]
        return values


def derived_fields(source: type, defaults: Mapping[str, Any] = {}, exclude: Iterable[str] = ()) -> dict[str, Any]:
    """pydantic field definitions of the dataclass `source`'s fields (for `pydantic.create_model`):
    its field types, with `defaults` replacing its own defaults. A field added to `source`
    appears in the section with no edit here."""
    hints, exclude = typing.get_type_hints(source), set(exclude)
    fields = {}
    for field in dataclasses.fields(source):
        if field.name in exclude:
            continue
        if field.name in defaults:
            default = defaults[field.name]
        elif field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = Field(default_factory=field.default_factory)
        else:
            default = ...
        fields[field.name] = (hints[field.name], default)
    return fields


# --------------------------------------------------------------------------- errors

_TYPE_MESSAGES = {
    "int_parsing": "expected an integer", "int_type": "expected an integer", "int_from_float": "expected an integer",
    "float_parsing": "expected a number", "float_type": "expected a number",
    "bool_parsing": "expected true/false", "bool_type": "expected true/false",
    "string_type": "expected a string", "dict_type": "expected a mapping of keys", "model_type": "expected a mapping of keys",
    "dataclass_type": "expected a mapping of keys", "missing": "must be set", "missing_argument": "must be set",
}
_BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
_ALIASES = {"lr": "learning_rate", "steps": "total_steps", "algo": "algorithm", "loss_fn": "name"}


def _section_type(cls: type, path: Sequence[Any]) -> type | None:
    """The model or dataclass at `path` below `cls` (None when the path leaves the schema)."""
    for name in path:
        fields = _field_types(cls)
        if name not in fields:
            return None
        cls = fields[name]
    return cls


def _field_types(cls: Any) -> dict[str, Any]:
    """{field name: its model / dataclass type, else its annotation} of a section class."""
    if isinstance(cls, type) and issubclass(cls, BaseModel):
        annotations = {name: field.annotation for name, field in cls.model_fields.items()}
    elif dataclasses.is_dataclass(cls):
        annotations = typing.get_type_hints(cls)
    else:
        return {}
    return {name: _unwrap(tp) for name, tp in annotations.items()}


def _unwrap(tp: Any) -> Any:
    while typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and (issubclass(tp, BaseModel) or dataclasses.is_dataclass(tp))


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key of a config class, sections included."""
    keys = []
    for name, tp in _field_types(cls).items():
        keys.append(prefix + name)
        if _is_section(tp):
            keys += _all_keys(tp, f"{prefix}{name}.")
    return keys


def _unknown_key_message(root: type, key: str, siblings: Iterable[str]) -> str:
    """`key` is not a field: name the closest sibling, else the closest key anywhere, else list the siblings."""
    section, _, leaf = key.rpartition(".")
    leaf, siblings = _ALIASES.get(leaf, leaf), list(siblings)
    match = difflib.get_close_matches(leaf, siblings, n=1, cutoff=0.6)
    if match:
        return f"{key}: unknown key (did you mean {(section + '.' if section else '') + match[0]!r}?)"
    by_leaf: dict[str, str] = {}
    for k in _all_keys(root):  # the first (outermost) key of each leaf name
        if not key.startswith(k + "."):
            by_leaf.setdefault(k.rpartition(".")[2], k)
    match = difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.75)
    if match:
        return f"{key}: unknown key (did you mean {by_leaf[match[0]]!r}?)"
    where = f"in {section}" if section else "at the top level"
    return f"{key}: unknown key; the keys {where} are: {', '.join(siblings)}"


def _owner_message(loc: tuple, message: str, section: type | None) -> tuple[tuple, str]:
    """An owner class's ValueError ("QwenConfig.head_dim must be ...") at the field it names."""
    message = re.sub(r"^\w+Config[.:]\s*", "", message)
    before_got = message.split(", got")[0]
    positions = {name: m.start() for name in _field_types(section) if (m := re.search(rf"\b{name}\b", before_got))}
    if positions:
        name = min(positions, key=positions.get)
        loc, message = (*loc, name), re.sub(rf"^{name}\s+(?!\()", "", message)
    return loc, message


def _messages(root: type, error: pydantic.ValidationError) -> list[str]:
    """One `dotted.key: what is wrong` line per problem."""
    lines = []
    for e in error.errors():
        loc, kind = tuple(e["loc"]), e["type"]
        key = ".".join(map(str, loc))
        if kind in ("extra_forbidden", "unexpected_keyword_argument"):
            lines.append(_unknown_key_message(root, key, _field_types(_section_type(root, loc[:-1]))))
            continue
        if kind == "value_error":
            message = str(e["ctx"]["error"])
            if not loc:  # the cross-section checks name their keys
                lines += message.splitlines()
                continue
            loc, message = _owner_message(loc, message, _section_type(root, loc))
        elif kind in _BOUNDS:
            message = f"must be {_BOUNDS[kind]} {next(iter(e['ctx'].values())):g}, got {e['input']}"
        else:
            message = _TYPE_MESSAGES.get(kind, e["msg"]) + ("" if kind.startswith("missing") else f", got {e['input']!r}")
        lines.append(f"{'.'.join(map(str, loc)) or 'config'}: {message}")
    return lines


# --------------------------------------------------------------------------- dict <-> config

def _plain(value: Any) -> Any:
    """Nested plain dicts and lists (what YAML and JSON store) of a config value."""
    if isinstance(value, BaseModel):
        value = value.model_dump()
    elif dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def config_to_dict(config: BaseModel) -> dict[str, Any]:
    """Nested plain dict (tuples as lists) of a config: what YAML and JSON store."""
    return _plain(config)


def _defaults(cls: type[BaseModel]) -> dict[str, Any]:
    """The defaults of a config class as a nested dict (fields without a default left out)."""
    return {name: _plain(field.get_default(call_default_factory=True))
            for name, field in cls.model_fields.items() if not field.is_required()}


def config_from_dict(cls: type[Config], values: Mapping[str, Any], *, check_paths: bool = True) -> Config:
    """A validated config from a nested mapping; missing keys keep their defaults (also inside
    a section, e.g. algorithm.loss's clip_high 0.28); an old name of `cls.renamed_keys` is read
    as its new key, with a FutureWarning. ConfigError lists every problem.

    check_paths=False skips the checks that model, tokenizer, data and run paths exist.
    """
    if not isinstance(values, Mapping):
        raise ConfigError(f"config: expected a mapping of keys, got {values!r}")
    clashes: list[str] = []
    if issubclass(cls, Section):
        values, moved, clashes = move_renamed_keys(values, cls.renamed_keys)
        for old, new in moved:
            warnings.warn(f"{old} is deprecated: it is now {new}", FutureWarning, stacklevel=2)
        values = cls.implied_defaults(values)
    try:
        config = cls.model_validate(_deep_merge(_defaults(cls), values), context={"check_paths": check_paths})
    except pydantic.ValidationError as e:
        raise ConfigError("\n".join(clashes + _messages(cls, e))) from None
    if clashes:
        raise ConfigError("\n".join(clashes))
    return config


def move_renamed_keys(values: Mapping[str, Any], renamed: Mapping[str, str]) -> tuple[dict, list[tuple[str, str]], list[str]]:
    """(`values` with each old dotted key of `renamed` {old: new} moved to its new key, the
    (old, new) pairs moved, one error line per old key given beside its new key). `values` is
    not changed."""
    values, moved, clashes = dict(values), [], []
    for old, new in renamed.items():
        value = _pop_dotted(values, old)
        if value is _ABSENT:
            continue
        if _get_dotted(values, new) is _ABSENT:
            _set_dotted(values, new, value)
            moved.append((old, new))
        else:
            clashes.append(f"{old}: the old name of {new}, which is set too; keep only {new}")
    return values, moved, clashes


def validate_config(config: BaseModel, *, check_paths: bool = True) -> None:
    """Raise ConfigError listing every bad value of `config` (each with its dotted key and why)."""
    config_from_dict(type(config), config_to_dict(config), check_paths=check_paths)


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a.b": 1} of {"a": {"b": 1}}: nested mappings as dotted keys."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[prefix + key] = value
    return flat


def config_diff(old: BaseModel, new: BaseModel) -> list[str]:
    """`["key: old -> new", ...]` for every dotted key whose value differs."""

    before, after = flatten(config_to_dict(old)), flatten(config_to_dict(new))
    return [f"{key}: {before[key]!r} -> {after[key]!r}" for key in before if before[key] != after[key]]


def to_yaml(config: BaseModel) -> str:
    """The config as YAML text, loadable by `load_config`."""
    return yaml.safe_dump(config_to_dict(config), sort_keys=False, default_flow_style=None)


def save_config(config: BaseModel, path: str | os.PathLike) -> None:
    """Write `to_yaml(config)` to `path` atomically (a kill never leaves it empty)."""
    write_text_atomic(path, to_yaml(config))


def replace(config: Config, **changes: Any) -> Config:
    """A copy with dotted keys changed, NOT validated (tests build partial configs):
    `replace(cfg, **{"optimizer.learning_rate": 1e-5, "algorithm.loss.clip_low": 0.1})`."""
    nested: dict = {}
    for key, value in changes.items():
        _set_dotted(nested, key, value)

    def apply(node: Any, update: Mapping[str, Any], prefix: str) -> Any:
        fields = _field_types(type(node))
        unknown = [prefix + k for k in update if k not in fields]
        if unknown:
            raise ConfigError(f"unknown key(s) {unknown}")
        update = {k: apply(getattr(node, k), v, f"{prefix}{k}.") if _is_section(fields[k]) and isinstance(v, Mapping) else v
                  for k, v in update.items()}
        return dataclasses.replace(node, **update) if dataclasses.is_dataclass(node) else node.model_copy(update=update)

    return apply(config, nested, "")


# --------------------------------------------------------------------------- YAML + overrides


def _deep_merge(base: Mapping, update: Mapping) -> dict:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_yaml(path: str | os.PathLike, seen: tuple[str, ...] = ()) -> dict:
    """A YAML file's mapping with its `defaults:` base files merged underneath it."""
    path = os.path.abspath(path)
    if path in seen:
        raise ConfigError(f"{path}: `defaults` loop through {' -> '.join(seen)}")
    if not os.path.exists(path) and os.path.exists(path + ".yaml"):
        path += ".yaml"
    try:
        with open(path) as f:
            values = yaml.safe_load(f) or {}
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    bases = values.pop("defaults", None) or []
    merged: dict = {}
    for base in [bases] if isinstance(bases, str) else bases:
        merged = _deep_merge(merged, _read_yaml(os.path.join(os.path.dirname(path), str(base)), seen + (path,)))
    return _deep_merge(merged, values)


def _set_dotted(values: dict, key: str, value: Any) -> None:
    *sections, leaf = key.split(".")
    node = values
    for section in sections:
        child = node.get(section)
        node[section] = child = dict(child) if isinstance(child, Mapping) else {}
        node = child
    node[leaf] = value


_ABSENT = object()  # a dotted key that a mapping does not set


def _get_dotted(values: Mapping, key: str) -> Any:
    node: Any = values
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _ABSENT
        node = node[part]
    return node


def _pop_dotted(values: dict, key: str) -> Any:
    """Remove `key` from `values` (copying the sections on its path) and return its value."""
    *sections, leaf = key.split(".")
    node = values
    for section in sections:
        child = node.get(section)
        if not isinstance(child, Mapping):
            return _ABSENT
        node[section] = dict(child)
        node = node[section]
    return node.pop(leaf, _ABSENT)


_NONE = {"none", "null", "~"}


def parse_overrides(overrides: Iterable[str]) -> dict[str, Any]:
    """`["a.b=1", ...]` -> nested dict of strings ("none"/"null" -> None); coerced later by field type."""
    values: dict = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{item!r}: an override must look like key.sub=value")
        value = value.strip()
        _set_dotted(values, key.strip(), None if value.lower() in _NONE else value)
    return values


def load_command_config(cls: type[Config], paths: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
                        overrides: Iterable[str] = (), *, check_paths: bool = True) -> Config:
    """Defaults of `cls` <- YAML file(s) at `paths`, merged in order (each with its `defaults:`
    bases) <- `key.sub=value` overrides. Raises ConfigError (every problem, each naming its key)
    before anything is computed."""
    paths = [] if paths is None else [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    values: dict = {}
    for path in paths:
        values = _deep_merge(values, _read_yaml(path))
    try:
        return config_from_dict(cls, _deep_merge(values, parse_overrides(overrides)), check_paths=check_paths)
    except ConfigError as e:
        where = f" ({', '.join(map(os.fspath, paths))})" if paths else ""
        raise ConfigError(f"invalid config{where}:\n{e}") from None




# --------------------------------------------------------------------------- command lines

def add_config_arguments(parser: argparse.ArgumentParser, aliases: Mapping[str, Any] = {},
                         switches: Mapping[str, str] = {}) -> None:
    """`--config YAML` (repeatable), `--print-config`, `key.sub=value` overrides, and old flags
    kept as aliases: `aliases` {flag: config key, or a function value -> overrides},
    `switches` {flag without a value: the override it means}."""
    parser.add_argument("--config", metavar="YAML", action="append", default=[],
                        help="a config file (may name base files under `defaults:`); repeat to merge several, "
                        "later ones winning")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config as YAML and exit (paths are not checked)")
    for flag, key in aliases.items():
        parser.add_argument(flag, default=None, metavar="VALUE",
                            help=f"= {key}=VALUE" if isinstance(key, str) else key.__doc__)
    for flag, override in switches.items():
        parser.add_argument(flag, action="store_const", const=override, default=None, help=f"= {override}")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="override any config field")


def _alias_overrides(args: argparse.Namespace, aliases: Mapping[str, Any], switches: Mapping[str, str]) -> list[str]:
    overrides = []
    for flag, key in aliases.items():
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is not None:
            overrides += key(value) if callable(key) else [f"{key}={value}"]
    overrides += [o for flag in switches if (o := getattr(args, flag.lstrip("-").replace("-", "_"))) is not None]
    return overrides


def command_config(cls: type[Config], parser: argparse.ArgumentParser, argv: Sequence[str] | None,
                   aliases: Mapping[str, Any] = {}, switches: Mapping[str, str] = {}) -> Config | int:
    """The validated config of a command line (`add_config_arguments` on `parser`), or the exit
    code to return: 0 after `--print-config`, 2 after printing every config error."""
    args = parser.parse_intermixed_args(sys.argv[1:] if argv is None else argv)
    overrides = [*_alias_overrides(args, aliases, switches), *args.overrides]
    try:  # --print-config may show a config meant for another machine: its paths are not checked
        config = load_command_config(cls, args.config, overrides, check_paths=not args.print_config)
    except ConfigError as e:
        print(f"{parser.prog}: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        print(to_yaml(config), end="")
        return 0
    return config
