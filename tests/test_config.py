"""Run config: defaults from pyproject parse; bad values name the key and the fix."""

from __future__ import annotations

import tomllib
from typing import Any

import pytest

from flame.config import RunConfig
from flame.errors import ConfigError
from tests.conftest import REPO_ROOT


def defaults() -> dict[str, Any]:
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    return dict(pyproject["tool"]["flwr"]["app"]["config"])


def test_pyproject_defaults_are_valid() -> None:
    config = RunConfig.from_mapping(defaults())
    assert config.hidden_sizes == (64, 32)
    assert config.as_dict()["hidden-sizes"] == [64, 32]


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("num-server-rounds", 0, "'num-server-rounds' must be >= 1, got 0"),
        ("fraction-train", 1.5, r"'fraction-train' must lie in \[0.0, 1.0\]"),
        ("hidden-sizes", "64,x", "comma-separated positive integers"),
        ("learning-rate", 0, r"'learning-rate' must lie in \(0.0"),
        ("batch-size", "big", "'batch-size' must be an integer, got 'big'"),
    ],
)
def test_bad_values_are_refused_with_the_key(
    key: str, value: Any, message: str
) -> None:
    raw = defaults() | {key: value}
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_mapping(raw)


def test_missing_key_says_how_to_set_it() -> None:
    raw = defaults()
    del raw["seed"]
    with pytest.raises(ConfigError, match=r"missing 'seed'.*--run-config"):
        RunConfig.from_mapping(raw)
