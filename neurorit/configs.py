"""Shared mechanics of the frozen config dataclasses.

Owns: round-tripping a config to and from a plain dict, its stable hash (the cache key), and
loading overrides from YAML. Must not: know any particular stage's fields.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, TypeVar

import yaml

from neurorit.errors import ConfigError

C = TypeVar("C")


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-safe dict of a config dataclass (tuples become lists, nested configs dicts)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
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
