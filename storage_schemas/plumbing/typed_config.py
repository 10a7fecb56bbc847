"""YAML configs validated into typed dataclasses, with `--set a.b=c` overrides.

Shared by the pipeline's job configs and the student's training configs, so both sides report a
bad key the same way: one line naming the dotted key and what was expected.

    cfg = load_config(JobConfig, "jobs/sample.yaml", ["clip.views=4", "sources.0.name=cc3m"])

Overrides take dotted keys (list indices are numbers) and YAML-typed values (`4` is an int,
`[1, 2]` a list, `null` None). A dataclass may define `validate(self)` that raises
`FieldError(field, what_was_expected)`; the loader reports it under the full dotted key.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import types
import typing
from typing import Any, Literal, TypeVar, Union

import yaml

from storage_schemas.plumbing.errors import ConfigError

T = TypeVar("T")
_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


class FieldError(ConfigError):
    """Raised by a config dataclass's `validate()`: `field` is the offending field's name."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


def load_config(cls: type[T], path: str | os.PathLike | None, overrides: list[str] = ()) -> T:
    """Read YAML at `path` (or start empty), apply `overrides`, validate into `cls`."""
    raw: Any = {}
    if path is not None:
        if not os.path.isfile(path):
            raise ConfigError(f"config file '{path}' not found (expected a YAML file)")
        with open(path) as f:
            try:
                raw = yaml.safe_load(f) or {}
            except yaml.YAMLError as e:
                mark = getattr(e, "problem_mark", None)
                where = f" at line {mark.line + 1}" if mark else ""
                raise ConfigError(f"config file '{path}' is not valid YAML{where}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config file '{path}': expected a mapping at the top level")
    for item in overrides:
        raw = apply_override(raw, item)
    return from_dict(cls, raw)


OVERRIDE_HELP = "override a config key: dotted keys, list indices, YAML values (repeatable)"


def add_set_argument(parser: argparse.ArgumentParser, help: str = OVERRIDE_HELP) -> None:
    """The repeatable `--set KEY=VALUE` (into `args.overrides`) every command with a config takes."""
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help)


def add_config_arguments(parser: argparse.ArgumentParser, what: str = "job config YAML (see jobs/)") -> None:
    """The CONFIG positional and `--set`."""
    parser.add_argument("config", help=what)
    add_set_argument(parser)


def apply_override(raw: dict, item: str) -> dict:
    """Set one `a.b.0.c=value` override in a nested dict/list structure (in place; returned)."""
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override '{item}': expected KEY=VALUE with a dotted KEY")
    try:
        value = yaml.safe_load(text) if text else None
    except yaml.YAMLError:
        value = text
    parts = key.split(".")
    node: Any = raw
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"override '{key}': '{where}' needs a list index below {len(node)}")
            idx: Any = int(part)
        elif isinstance(node, dict):
            idx = part
        else:
            raise ConfigError(f"override '{key}': '{'.'.join(parts[:i])}' is not a mapping or list")
        if last:
            node[idx] = value
        else:
            if isinstance(node, dict) and node.get(idx) is None:
                node[idx] = {}
            node = node[idx]
    return raw


def from_dict(cls: type[T], data: Any, path: str = "") -> T:
    """Validate `data` into dataclass `cls`; errors name the dotted key path."""
    return _convert(cls, data, path)


def to_dict(obj: Any) -> Any:
    """The plain (YAML/JSON-ready) form of a config dataclass."""
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        return "a list"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _fail(path: str, tp: Any, value: Any) -> ConfigError:
    shown = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
    return ConfigError(f"config key '{path or '<root>'}': expected {_describe(tp)}, got {shown}")


def _convert(tp: Any, value: Any, path: str) -> Any:
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, path)
            except ConfigError:
                continue
        raise _fail(path, tp, value)
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise _fail(path, tp, value)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _fail(path, tp, value)
        (item_tp, *_rest) = typing.get_args(tp) or (Any,)
        items = [_convert(item_tp, v, f"{path}.{i}") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise _fail(path, tp, value)
        key_tp, val_tp = typing.get_args(tp) or (Any, Any)
        return {k: _convert(val_tp, v, f"{path}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return _convert_dataclass(tp, value, path)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _fail(path, tp, value)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _fail(path, tp, value)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value):
            return float(value)  # PyYAML (YAML 1.1) reads 1e-4, without a dot, as a string
        raise _fail(path, tp, value)
    if tp is str:
        if isinstance(value, str):
            return value
        raise _fail(path, tp, value)
    raise TypeError(f"unsupported config type {tp!r} at {path}")


def _convert_dataclass(cls: Any, value: Any, path: str) -> Any:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise _fail(path, cls, value)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    prefix = f"{path}." if path else ""
    unknown = [k for k in value if k not in fields]
    if unknown:
        raise ConfigError(f"config key '{prefix}{unknown[0]}': unknown key; expected one of {', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        if name in value:
            kwargs[name] = _convert(hints[name], value[name], prefix + name)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"config key '{prefix}{name}': required, expected {_describe(hints[name])}")
        elif dataclasses.is_dataclass(hints[name]) and f.default_factory is not dataclasses.MISSING:
            kwargs[name] = _convert(hints[name], {}, prefix + name)
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        try:
            validate()
        except FieldError as e:
            raise ConfigError(f"config key '{prefix}{e.field}': {e.message}") from None
    return obj
