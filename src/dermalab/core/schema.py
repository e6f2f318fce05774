"""Frozen dataclass trees from YAML mappings, with one clear line for every wrong key or value.

The field types are the schema: ``Literal[...]`` lists a key's choices, ``Annotated[int,
AtLeast(1)]`` its lower bound, a nested dataclass its section; :func:`build` checks a mapping
against them (unknown keys list the valid ones) and :func:`choices` reads them back for the
documentation. Generic: :mod:`dermalab.core.config` declares the fields.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from dermalab.core.errors import ConfigError


@dataclass(frozen=True)
class AtLeast:
    """A numeric key's lower bound, where its meaning ends: ``Annotated[int, AtLeast(1)]``
    (checked when the config is read, so a bad value is one clear line before any data is
    touched)."""

    value: float


def choices(tp: Any) -> tuple[Any, ...] | None:
    """The values a field of type ``tp`` may take (its ``Literal``), or ``None``."""
    if typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    return typing.get_args(tp) if typing.get_origin(tp) is Literal else None


def lower_bound(tp: Any) -> float | None:
    """The ``AtLeast`` bound of a field of type ``tp`` (optional or not), or ``None``."""
    for arg in (tp, *typing.get_args(tp)):
        if typing.get_origin(arg) is Annotated:
            return next((m.value for m in arg.__metadata__ if isinstance(m, AtLeast)), None)
    return None


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Check/convert one YAML value to the annotated field type ``tp`` of ``key``, with a clear
    error (``Literal`` choices, ``Annotated[..., AtLeast(x)]`` bounds, lists, mappings,
    optionals)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Annotated:
        value = coerce(value, args[0], key)
        for bound in (m for m in tp.__metadata__ if isinstance(m, AtLeast)):
            if value < bound.value:
                raise ConfigError(f"config key '{key}' must be >= {bound.value:g}, got {value!r}")
        return value
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"config key '{key}' must be one of {args}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        errors = []
        for candidate in non_none:
            try:
                return coerce(value, candidate, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0])
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}' must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{key}' must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            # YAML 1.1 reads "3e-4" (no dot) as a string; users mean a number.
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"config key '{key}' must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{key}' must be a string, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}' must be a list, got {value!r}")
        items = [coerce(v, args[0], key) for v in value]
        if typing.get_origin(args[0]) is Literal and len(set(items)) != len(items):
            raise ConfigError(f"config key '{key}' takes distinct values of "
                              f"{typing.get_args(args[0])}, got {value!r}")
        return items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping, got {value!r}")
        return {str(k): coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if tp is Any:  # checked where it is read (e.g. data.sources entries)
        return value
    raise ConfigError(f"config key '{key}': unsupported type {tp!r}")  # pragma: no cover


def build(cls: type, values: Mapping[str, Any], prefix: str) -> Any:
    """Instantiate dataclass ``cls`` from a mapping, validating every key and type; nested
    dataclass fields are built from nested mappings, and an unknown key lists the valid ones."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"config section '{prefix.rstrip('.')}' must be a mapping")
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    odd = [k for k in values if not isinstance(k, str)]
    if odd:
        # YAML 1.1 reads unquoted on/off/yes/no/true/false keys as booleans (and 1 as a number)
        raise ConfigError(f"config key {prefix}{odd[0]!r} in section '{prefix.rstrip('.')}' is "
                          "not a name (YAML reads unquoted on/off/yes/no as true/false); quote "
                          "it or fix its spelling")
    unknown = sorted(set(values) - set(fields))
    if unknown:
        valid = ", ".join(prefix + name for name in fields)
        raise ConfigError(f"unknown config key(s) {[prefix + u for u in unknown]}; valid: {valid}")
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        tp = hints[name]
        key = prefix + name
        if dataclasses.is_dataclass(tp):
            kwargs[name] = build(tp, value or {}, key + ".")  # type: ignore[arg-type]
            continue
        kwargs[name] = coerce(value, tp, key)
    return cls(**kwargs)
