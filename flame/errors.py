"""Flame's own exception types: each message says the rule, the value and the fix."""

from __future__ import annotations


class FlameError(Exception):
    """Base class of every error Flame raises on purpose."""


class ConfigError(FlameError, ValueError):
    """A run-config or node-config value is missing, malformed or out of range."""


class DataError(FlameError):
    """A partition a node or the server needs is missing or unreadable."""


class FederationError(FlameError, RuntimeError):
    """The federation cannot go on: no node replied, or too few are left."""
