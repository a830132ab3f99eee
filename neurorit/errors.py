"""The one exception hierarchy of neurorit.

Owns: every error the library raises on purpose. Messages say what was expected, what came, and
how to fix it. Must not: import anything heavy, or hold logic beyond formatting.
"""

from __future__ import annotations


class NeuroritError(Exception):
    """Base of every error neurorit raises on purpose (bad input, bad config, bad artifact)."""


class ConfigError(NeuroritError, ValueError):
    """A config field holds a value outside what it allows."""

    @classmethod
    def field(cls, owner: str, name: str, value: object, allowed: str) -> "ConfigError":
        return cls(f"{owner}.{name} = {value!r} is not allowed; expected {allowed}.")


class DataError(NeuroritError, ValueError):
    """A dataset, example or passage cannot be used as given."""


class ModelLoadError(NeuroritError):
    """A model name or path could not be resolved or loaded offline."""


class ModelMismatchError(NeuroritError):
    """An artifact (mask, scores) was made for another model than the one given."""


class ArtifactError(NeuroritError):
    """An artifact file is missing, corrupt, truncated or of the wrong kind."""
