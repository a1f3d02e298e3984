"""The run configuration, read once from Flower's run config and validated.

Defaults live in `[tool.flwr.app.config]` of pyproject.toml; users override them
with `flwr run . --run-config 'key=value ...'` or `flame run --set key=value`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from flame.errors import ConfigError

OVERRIDE_HINT = "set it with --run-config 'KEY=VALUE' (see README, 'Options')"


@dataclass(frozen=True)
class RunConfig:
    """Every knob of a federated run, typed and range-checked."""

    num_server_rounds: int
    fraction_train: float
    fraction_evaluate: float
    min_nodes: int
    local_epochs: int
    batch_size: int
    learning_rate: float
    hidden_sizes: tuple[int, ...]
    dropout: float
    seed: int
    validation_fraction: float
    max_rows_per_node: int
    threads: int
    data_dir: str
    run_dir: str
    run_name: str
    mlflow_tracking_uri: str
    mlflow_experiment: str

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> RunConfig:
        """Build from a Flower run config (keys spelled with dashes)."""
        reader = _Reader(raw)
        config = cls(
            num_server_rounds=reader.integer("num-server-rounds", low=1),
            fraction_train=reader.fraction("fraction-train"),
            fraction_evaluate=reader.fraction("fraction-evaluate"),
            min_nodes=reader.integer("min-nodes", low=1),
            local_epochs=reader.integer("local-epochs", low=1),
            batch_size=reader.integer("batch-size", low=1),
            learning_rate=reader.number("learning-rate", low=0.0, open_low=True),
            hidden_sizes=reader.int_list("hidden-sizes"),
            dropout=reader.number("dropout", low=0.0, high=0.95),
            seed=reader.integer("seed", low=0),
            validation_fraction=reader.number(
                "validation-fraction", low=0.05, high=0.5
            ),
            max_rows_per_node=reader.integer("max-rows-per-node", low=0),
            threads=reader.integer("threads", low=1),
            data_dir=reader.text("data-dir"),
            run_dir=reader.text("run-dir"),
            run_name=reader.text("run-name", default=""),
            mlflow_tracking_uri=reader.text("mlflow-tracking-uri", default=""),
            mlflow_experiment=reader.text("mlflow-experiment", default="flame"),
        )
        if not config.data_dir:
            raise ConfigError(f"run config 'data-dir' is empty; {OVERRIDE_HINT}")
        return config

    def as_dict(self) -> dict[str, Any]:
        """The resolved config with Flower's dashed key names, for config.json."""
        return {
            key.replace("_", "-"): list(value) if isinstance(value, tuple) else value
            for key, value in asdict(self).items()
        }


def resolve_dir(value: str, *, what: str) -> Path:
    """Make a configured folder absolute.

    Relative paths resolve against the working directory of the process that
    runs the app (the SuperLink's for a simulation), so the CLI passes absolute
    paths; the error below tells users of plain `flwr run .` how to do the same.
    """
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = Path.cwd() / path
    if not path.is_dir():
        raise ConfigError(
            f"{what} folder {path} does not exist (run config value {value!r}, "
            f"resolved against {Path.cwd()}, the working directory of the "
            "process running the app). Partition data first (`flame partition "
            "CSV`), and pass the folder as an absolute path: --run-config "
            "\"data-dir='/abs/path/to/data/partitions'\""
        )
    return path


class _Reader:
    """Reads typed values out of a raw run config, with errors that name the key."""

    def __init__(self, raw: Mapping[str, Any]) -> None:
        self._raw = raw

    def _get(self, key: str, default: Any = None) -> Any:
        if key in self._raw:
            return self._raw[key]
        if default is not None:
            return default
        raise ConfigError(f"run config is missing {key!r}; {OVERRIDE_HINT}")

    def integer(self, key: str, *, low: int) -> int:
        value = self._get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"run config {key!r} must be an integer, got {value!r}")
        if int(value) != value:
            raise ConfigError(f"run config {key!r} must be whole, got {value!r}")
        if value < low:
            raise ConfigError(f"run config {key!r} must be >= {low}, got {value!r}")
        return int(value)

    def number(
        self,
        key: str,
        *,
        low: float,
        high: float | None = None,
        open_low: bool = False,
    ) -> float:
        value = self._get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"run config {key!r} must be a number, got {value!r}")
        too_low = value <= low if open_low else value < low
        if too_low or (high is not None and value > high):
            bounds = f"{'(' if open_low else '['}{low}, {high if high else 'inf'}]"
            raise ConfigError(f"run config {key!r} must lie in {bounds}, got {value!r}")
        return float(value)

    def fraction(self, key: str) -> float:
        return self.number(key, low=0.0, high=1.0)

    def int_list(self, key: str) -> tuple[int, ...]:
        value = str(self._get(key))
        try:
            sizes = tuple(int(part) for part in value.split(",") if part.strip())
        except ValueError:
            sizes = ()
        if not sizes or any(size < 1 for size in sizes):
            raise ConfigError(
                f"run config {key!r} must be comma-separated positive integers "
                f'such as "64,32", got {value!r}'
            )
        return sizes

    def text(self, key: str, default: str | None = None) -> str:
        return str(self._get(key, default))
