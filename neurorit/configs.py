"""Shared mechanics of the frozen config dataclasses.

Owns: round-tripping a config to and from a plain dict (and `DictConfig`, the two methods every config has), its stable hash (the cache key), loading
overrides from YAML, and the one coercion of a field's value to its annotated type (YAML 1.1 reads
`2e-1` as a string; a flag or a file may give "3" for an int). Must not: know any particular
stage's fields.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import numbers
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from neurorit.errors import ConfigError

C = TypeVar("C")


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-safe dict of a config dataclass (tuples become lists, nested configs dicts).

    A field whose metadata says `omit_default` (flags.about) is left out while it holds its default:
    an option added later then changes no cache key of the results made before it.
    """
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.metadata.get("omit_default") and value == f.default:
            continue
        if dataclasses.is_dataclass(value):
            value = to_dict(value)
        elif isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, Path):
            value = str(value)
        out[f.name] = value
    return out


def from_dict(cls: type[C], data: dict[str, Any]) -> C:
    """Build a config from a dict, refusing unknown keys with the list of known ones."""
    if not isinstance(data, dict):
        raise ConfigError(f"{cls.__name__}: expected a mapping of fields, got {type(data).__name__}.")
    known = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(
            f"{cls.__name__}: unknown field(s) {unknown}; known fields are {sorted(known)}."
        )
    kwargs = {}
    for name, value in data.items():
        if isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)  # type: ignore[call-arg]


class DictConfig:
    """What every config dataclass says about itself: `to_dict` (JSON-safe), `from_dict` (unknown keys refused), `hash`.

    A config overrides either where it says more (nested configs written in old layouts, fields
    left out of its dict).
    """

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        return from_dict(cls, data)

    def hash(self) -> str:
        """A stable short hash of every field (part of cache keys and default folder names)."""
        return stable_hash(self)


def is_int(value: Any) -> bool:
    """An int that is not a bool (`True` is not 1 in a config)."""
    return isinstance(value, int) and not isinstance(value, bool)


_PLURALS = {int: "integers", float: "numbers", str: "strings", bool: "true / false values"}


def coerce_value(owner: str, name: str, value: Any, hint: Any) -> Any:
    """`value` as the type `hint` names, or ConfigError naming `owner.name`, the value and what is allowed.

    int: an int, or a string of one ("3"); never a bool (`true` is not 1) nor a float. float: an
    int or float, or a string of a finite number ("2e-1" -> 0.2); never a bool. bool: true or
    false only. tuple[X, ...]: a list or tuple whose items coerce to X; a scalar is refused, even
    where one item is obviously meant (`target_layers: 13` must be written `[13]`), so that a list
    is always written as one. `X | None`: None, or X. A dataclass: a mapping becomes one via its
    `from_dict`. Any other hint (str, Literal, a union of types) is left to the config's own checks.
    """
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        rest = [a for a in args if a is not type(None)]
        return coerce_value(owner, name, value, rest[0]) if len(rest) == 1 else value
    if origin is tuple:
        args = typing.get_args(hint)
        if len(args) != 2 or args[1] is not Ellipsis:
            return value
        plural = _PLURALS.get(args[0], "values")
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
            raise ConfigError.field(owner, name, value, f"a list of {plural}, e.g. [{value!r}]: a single value "
                                    "is still written as a one-item list")
        try:
            return tuple(coerce_value(owner, name, item, args[0]) for item in value)
        except ConfigError:
            raise ConfigError.field(owner, name, value, f"a list of {plural}") from None
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError.field(owner, name, value, "true or false")
    if hint is int:
        if isinstance(value, bool):
            raise ConfigError.field(owner, name, value, "an integer (true / false is not a number)")
        if isinstance(value, numbers.Integral):
            return value if type(value) is int else int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise ConfigError.field(owner, name, value, "an integer, e.g. 3")
    if hint is float:
        if isinstance(value, bool):
            raise ConfigError.field(owner, name, value, "a number (true / false is not a number)")
        if isinstance(value, (int, float)):
            return value
        if isinstance(value, numbers.Real):
            return float(value)
        if isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                number = math.nan
            if math.isfinite(number):
                return number
        raise ConfigError.field(owner, name, value, "a finite number, e.g. 0.2 or 2e-1")
    if isinstance(hint, type) and dataclasses.is_dataclass(hint) and isinstance(value, dict):
        build = getattr(hint, "from_dict", None)
        return build(value) if build is not None else from_dict(hint, value)
    return value


@functools.lru_cache(maxsize=None)
def _field_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def coerce_fields(config: Any) -> None:
    """Set each field of a config under construction to its annotated type (see `coerce_value`).

    Called first in a frozen config's `__post_init__`, the one place a config changes its own
    fields; its validation then sees values of the right type only.
    """
    hints = _field_hints(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        coerced = coerce_value(type(config).__name__, f.name, value, hints[f.name])
        if coerced is not value:
            object.__setattr__(config, f.name, coerced)


def with_overrides(config: C, **overrides: Any) -> C:
    """A copy of the config with some fields replaced (validated again)."""
    return from_dict(type(config), {**to_dict(config), **overrides})


def stable_hash(*parts: Any, length: int = 16) -> str:
    """A short hex digest of JSON-able parts (configs are hashed through to_dict)."""
    normalised = [to_dict(p) if dataclasses.is_dataclass(p) else p for p in parts]
    text = json.dumps(normalised, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a dict; a clear error for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist.")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping, got {type(data).__name__}.")
    return data


def parse_int_ranges(text: str | None, *, name: str = "value") -> tuple[int, ...]:
    """'0-3, 7' -> (0, 1, 2, 3, 7): integers >= 0 and inclusive ranges, sorted, each once.

    Empty text gives (). Anything else raises ConfigError naming `name` and the bad part.
    """
    out: set[int] = set()
    for part in (text or "").replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part[1:]:
                lo, hi = (int(x) for x in part.split("-", 1))
                if lo < 0 or lo > hi:
                    raise ValueError
                out.update(range(lo, hi + 1))
            else:
                value = int(part)
                if value < 0:
                    raise ValueError
                out.add(value)
        except ValueError:
            raise ConfigError(
                f"{name}: expected integers >= 0 or ranges like '0-3, 7', got {part!r}."
            ) from None
    return tuple(sorted(out))
