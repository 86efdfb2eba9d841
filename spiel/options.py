"""Options given by name — the CLI's ``KEY=VALUE`` pairs, config mappings — checked against what takes them.

Each value is converted to the type its dataclass field declares or refused with one line that names the key
and what is valid: an unknown key lists the valid ones, a value of the wrong type names the type expected, a
choice lists the choices. Numbers stay numbers (``lr=1e-3``, which YAML 1.1 reads as a string, is 0.001).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin


class OptionError(ValueError):
    """A bad option value: its message names the key and what is valid."""


def _describe(hint: Any) -> str:
    origin = get_origin(hint)
    if origin is Literal:
        return "one of " + ", ".join(map(str, get_args(hint)))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(hint))
    if origin in (list, tuple):
        return f"a list of {_describe(get_args(hint)[0])}"
    return {type(None): "null", bool: "true or false", int: "an integer", float: "a number",
            str: "a string"}.get(hint, getattr(hint, "__name__", str(hint)))


def convert(value: Any, hint: Any, key: str) -> Any:
    """``value`` as type ``hint`` (int, float, bool, str, Literal, lists, ``X | None``), or :class:`OptionError`."""
    origin = get_origin(hint)
    if hint is Any or origin is dict:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in get_args(hint):
            return None
        for arm in get_args(hint):
            if arm is not type(None):
                try:
                    return convert(value, arm, key)
                except OptionError:
                    continue
    elif origin is Literal:
        if value in get_args(hint):
            return value
    elif origin in (list, tuple) and isinstance(value, (list, tuple)):
        return origin(convert(item, get_args(hint)[0], key) for item in value)
    elif hint is bool and isinstance(value, bool):
        return value
    elif hint is int and not isinstance(value, bool):
        if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
            return int(value)
        if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
            return int(value)
    elif hint is float and not isinstance(value, bool):
        try:
            number = float(value) if isinstance(value, (int, float, str)) else math.nan
        except ValueError:
            number = math.nan
        if math.isfinite(number):
            return number
    elif hint is str and isinstance(value, str):
        return value
    raise OptionError(f"{key}={value!r}: expected {_describe(hint)}")


def field_types(cls: type) -> dict[str, Any]:
    """Field name → resolved type hint of dataclass ``cls``."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def checked(values: dict[str, Any], types_: dict[str, Any], where: str) -> dict[str, Any]:
    """``values`` converted to ``types_``; an unknown key is an error listing the valid ones."""
    unknown = sorted(set(values) - set(types_))
    if unknown:
        raise OptionError(f"{where}: unknown key(s) {unknown}; valid: {sorted(types_)}")
    return {key: convert(value, types_[key], f"{where} {key}") for key, value in values.items()}


def build(cls: type, values: dict[str, Any], where: str, **fixed: Any) -> Any:
    """An instance of dataclass ``cls`` from ``values`` (checked, converted) and ``fixed`` (taken as they are)."""
    types_ = {k: v for k, v in field_types(cls).items() if k not in fixed}
    try:
        return cls(**checked(values, types_, where), **fixed)
    except OptionError as error:
        if str(error).startswith(where):
            raise
        raise OptionError(f"{where} {error}") from None
