"""Run outputs: metrics.csv, TensorBoard events, MLflow, config.json, model.pt.

One RunRecorder per ServerApp run writes `runs/<name>/`. Files that are written
once go to a temporary name first and are renamed when complete.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch.utils.tensorboard import SummaryWriter

logger = logging.getLogger(__name__)

METRIC_NAMES: tuple[str, ...] = (
    "loss",
    "precision",
    "recall",
    "f1",
    "roc_auc",
    "pr_auc",
    "accuracy",
)
CSV_COLUMNS: tuple[str, ...] = ("time", "kind", "round", *METRIC_NAMES, "region")
KINDS = ("client_train", "client_eval", "server_eval")
SERVER_REGION = "server"


def utc_run_name() -> str:
    """A sortable UTC timestamp, e.g. 20261204T163000Z."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary sibling, then rename: readers never see half a file."""
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    partial.write_bytes(data)
    partial.replace(path)


@dataclass
class _MlflowSink:
    """Logs to an MLflow tracking server; failures mid-run only warn."""

    client: Any
    run_id: str
    failed: bool = False

    @classmethod
    def start(
        cls, uri: str, experiment: str, run_name: str, params: Mapping[str, Any]
    ) -> _MlflowSink:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        try:
            found = client.get_experiment_by_name(experiment)
            experiment_id = (
                found.experiment_id if found else client.create_experiment(experiment)
            )
            run = client.create_run(experiment_id, run_name=run_name)
            for key, value in params.items():
                client.log_param(run.info.run_id, key, str(value)[:500])
        except Exception as exc:
            raise ConnectionError(
                f"cannot log to the MLflow tracking server at {uri} ({exc}); start "
                "it (see README, 'Deploy') or set mlflow-tracking-uri=\"\" to turn "
                "MLflow logging off"
            ) from exc
        logger.info("logging to MLflow at %s, run %s", uri, run.info.run_id)
        return cls(client=client, run_id=run.info.run_id)

    def metric(self, key: str, value: float, step: int) -> None:
        if self.failed:
            return
        try:
            self.client.log_metric(self.run_id, key, value, step=step)
        except Exception as exc:  # the run goes on; the CSV still has the values
            self.failed = True
            logger.warning("MLflow logging stopped (%s); metrics.csv is complete", exc)

    def finish(self, artifacts: list[Path], status: str) -> None:
        if self.failed:
            return
        try:
            for path in artifacts:
                self.client.log_artifact(self.run_id, str(path))
            self.client.set_terminated(self.run_id, status=status)
        except Exception as exc:
            logger.warning("could not close the MLflow run (%s)", exc)


@dataclass
class RunRecorder:
    """Everything one run writes, in `run_dir`."""

    run_dir: Path
    writer: SummaryWriter
    mlflow: _MlflowSink | None = None
    server_rows: list[dict[str, Any]] = field(default_factory=list)
    _csv_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self._csv_path = self.run_dir / "metrics.csv"
        with self._csv_path.open("w", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerow(CSV_COLUMNS)

    @classmethod
    def create(
        cls,
        base_dir: Path,
        run_name: str,
        config: Mapping[str, Any],
        manifest: Mapping[str, Any],
        *,
        mlflow_uri: str = "",
        mlflow_experiment: str = "flame",
    ) -> RunRecorder:
        run_dir = base_dir / (run_name or utc_run_name())
        if run_dir.exists():
            raise FileExistsError(
                f"run folder {run_dir} exists already; pick another run-name or "
                "leave run-name empty for a fresh timestamp"
            )
        run_dir.mkdir(parents=True)
        document = {"config": dict(config), "manifest": dict(manifest)}
        write_atomic(
            run_dir / "config.json",
            json.dumps(document, indent=2, sort_keys=True).encode(),
        )
        sink = None
        if mlflow_uri:
            sink = _MlflowSink.start(
                mlflow_uri, mlflow_experiment, run_dir.name, config
            )
        logger.info("writing run outputs to %s", run_dir)
        return cls(run_dir=run_dir, writer=SummaryWriter(str(run_dir)), mlflow=sink)

    def record(
        self, kind: str, server_round: int, region: str, values: Mapping[str, float]
    ) -> None:
        """One row of metrics.csv, mirrored to TensorBoard and MLflow."""
        if kind not in KINDS:
            raise ValueError(f"unknown metrics kind {kind!r}; expected one of {KINDS}")
        row: dict[str, Any] = {
            "time": f"{time.time():.3f}",
            "kind": kind,
            "round": server_round,
            "region": region,
        }
        for name in METRIC_NAMES:
            value = values.get(name)
            row[name] = "" if value is None else f"{value:.6g}"
        with self._csv_path.open("a", newline="", encoding="utf-8") as handle:
            csv.DictWriter(handle, fieldnames=CSV_COLUMNS).writerow(row)
        if kind == "server_eval":
            self.server_rows.append({"round": server_round, **values})
        prefix = kind if region == SERVER_REGION else f"{kind}/{region}"
        for name, value in values.items():
            if value is None or math.isnan(value):
                continue
            self.writer.add_scalar(f"{prefix}/{name}", value, server_round)
            if self.mlflow:
                self.mlflow.metric(f"{prefix}/{name}", value, server_round)
        self.writer.flush()

    def save_model(self, payload: Mapping[str, Any]) -> Path:
        path = self.run_dir / "model.pt"
        partial = path.with_name(f".model.pt.partial-{os.getpid()}")
        torch.save(dict(payload), partial)
        partial.replace(path)
        return path

    def summary_table(self) -> str:
        """Server-side test metrics per round, as a small fixed-width table."""
        header = f"{'round':>5} " + " ".join(f"{n:>9}" for n in METRIC_NAMES)
        lines = [header]
        for row in self.server_rows:
            cells = " ".join(f"{row.get(n, float('nan')):>9.4f}" for n in METRIC_NAMES)
            lines.append(f"{row['round']:>5} {cells}")
        return "\n".join(lines)

    def close(self, *, succeeded: bool) -> None:
        """Flush everything; a failed run is marked so nobody mistakes it."""
        self.writer.close()
        if not succeeded:
            write_atomic(
                self.run_dir / "FAILED",
                b"This run failed; its outputs are incomplete. The ServerApp log "
                b"(flwr log RUN_ID) says why.\n",
            )
        if self.mlflow:
            artifacts = [
                self.run_dir / name
                for name in ("metrics.csv", "config.json", "model.pt")
            ]
            self.mlflow.finish(
                [p for p in artifacts if p.exists()],
                "FINISHED" if succeeded else "FAILED",
            )
