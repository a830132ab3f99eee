"""A config dataclass's fields described once, for the command line and the workbench's forms.

Owns: `about` (what a field's metadata says: help, label, bounds, widget hints, when it applies),
`field_specs` (each field's kind, choices and bounds from its annotation and metadata), `add_flags`
(one argparse flag per field, TRL / `HfArgumentParser` style) and `given_flags` (the fields a user
set on the command line, as overrides over a config file). Must not: import torch or streamlit, or
know any particular config.

Why not `transformers.HfArgumentParser`: its flags carry the dataclass defaults, so a flag left
out would overwrite the config file's value; here a flag left out is absent (None) and the file or
the field's default stands. Importing it also takes 0.52-0.55 s on this project's 2-core machine,
where all of `neurorit --help` takes 0.09 s (measured 2026-12-02, idle).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

from neurorit.configs import parse_int_ranges

Kind = Literal["int", "float", "bool", "str", "choice", "ints"]


def about(
    help: str, *, label: str | None = None, flag: str | None = None, lo: float | None = None,
    hi: float | None = None, step: float | None = None, widget: str | None = None,
    when: dict[str, tuple[Any, ...]] | None = None, labels: dict[Any, str] | None = None,
    cli: bool = True, form: bool = True, omit_default: bool = False, across_examples: bool = False,
) -> dict[str, Any]:
    """A field's metadata: `field(default=..., metadata=about("what it does", ...))`.

    help: the flag's help and the widget's tooltip. label: the widget's label (default: the name).
    flag: the flag's name (default: --the-field-name; a bool defaulting to True gets --no-name).
    lo / hi / step: bounds and step of a number's widget. widget: "slider" or "radio" instead of the
    default number box / select box. when: {other field: values}: the field applies only then (its
    widget is disabled otherwise). labels: shown text per choice. cli / form: False keeps the field
    off the command line / out of the forms. omit_default: a field added after results were cached is
    left out of the config's dict (and so of every cache key) while it holds its default, so the
    results cached before it existed are still found (configs.to_dict). across_examples: the field
    acts where many examples' selections are combined (mining), not on one example's (Explore).
    """
    return {"help": help, "label": label, "flag": flag, "lo": lo, "hi": hi, "step": step, "widget": widget,
            "when": when, "labels": labels, "cli": cli, "form": form, "omit_default": omit_default,
            "across_examples": across_examples}


@dataclass(frozen=True)
class FieldSpec:
    """One config field as flags and forms see it."""

    name: str
    kind: Kind
    default: Any
    optional: bool  # None is allowed
    choices: tuple[Any, ...] = ()
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def help(self) -> str:
        return str(self.meta.get("help") or "")

    @property
    def label(self) -> str:
        return str(self.meta.get("label") or self.name.replace("_", " ").capitalize())

    @property
    def flag(self) -> str:
        if self.meta.get("flag"):
            return str(self.meta["flag"])
        name = self.name.replace("_", "-")
        return f"--no-{name}" if self.kind == "bool" and self.default is True else f"--{name}"

    def applies(self, values: dict[str, Any]) -> bool:
        """Whether the field matters given the other fields' values (metadata `when`)."""
        return all(values.get(other) in allowed for other, allowed in (self.meta.get("when") or {}).items())


def _kind(hint: Any) -> tuple[Kind, bool, tuple[Any, ...]]:
    optional = False
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        if len(args) != 1:
            raise TypeError(f"a field of type {hint} has no flag kind")
        hint, origin = args[0], typing.get_origin(args[0])
    if origin is Literal:
        return "choice", optional, typing.get_args(hint)
    if origin is tuple and typing.get_args(hint)[:1] == (int,):
        return "ints", optional, ()
    for kind, cls in (("bool", bool), ("int", int), ("float", float), ("str", str)):
        if hint is cls:
            return kind, optional, ()  # type: ignore[return-value]
    raise TypeError(f"a field of type {hint} has no flag kind")


def field_specs(cls: type, *, only: tuple[str, ...] | None = None) -> list[FieldSpec]:
    """The described fields of a config dataclass (those with `about` metadata), in order."""
    hints = typing.get_type_hints(cls, include_extras=False)
    out = []
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata or (only is not None and f.name not in only):
            continue
        kind, optional, choices = _kind(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else None
        out.append(FieldSpec(f.name, kind, default, optional, choices, dict(f.metadata)))
    return out


def _dest(prefix: str, name: str) -> str:
    return f"{prefix}__{name}"


def add_flags(parser: Any, cls: type, *, prefix: str) -> None:
    """One flag per described field of `cls` (`about(cli=True)`); a flag left out leaves the value None.

    `prefix` keeps the destinations of two configs apart (read them back with `given_flags`).
    """
    for spec in field_specs(cls):
        if not spec.meta.get("cli", True):
            continue
        default = f" (default {spec.default})" if spec.default not in (None, "") and spec.kind != "bool" else ""
        kwargs: dict[str, Any] = {"dest": _dest(prefix, spec.name), "default": None,
                                  "help": (spec.help + default).replace("%", "%%")}  # argparse formats help with %
        if spec.kind not in ("bool", "choice"):
            kwargs["metavar"] = spec.name.upper()
        if spec.kind == "bool":
            kwargs["action"] = "store_const"
            kwargs["const"] = not spec.default
        elif spec.kind == "choice":
            kwargs["choices"] = list(spec.choices)
        elif spec.kind in ("int", "float"):
            kwargs["type"] = int if spec.kind == "int" else float
        parser.add_argument(spec.flag, **kwargs)


def given_flags(args: argparse.Namespace, cls: type, *, prefix: str) -> dict[str, Any]:
    """The fields of `cls` set on the command line, by field name (a list flag parsed as '0-3, 7')."""
    out: dict[str, Any] = {}
    for spec in field_specs(cls):
        value = getattr(args, _dest(prefix, spec.name), None)
        if value is None:
            continue
        if spec.kind == "ints":
            if value == "":
                continue
            value = parse_int_ranges(value, name=spec.flag)
        out[spec.name] = value
    return out
