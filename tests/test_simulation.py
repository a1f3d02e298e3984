"""A real Flower simulation on the real PaySim sample, through the `flame` CLI.

Each test starts its own simulation SuperLink (the CLI stops it) with its own
FLWR_HOME, so runs do not share state.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from flame.partition import partition_csv
from tests.conftest import REPO_ROOT, require_paysim

pytestmark = pytest.mark.slow

ROUNDS = 3
RUN_TIMEOUT = 900


@pytest.fixture(scope="module")
def partitions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data") / "partitions"
    partition_csv(require_paysim(), out, regions={"US": 0.5, "EU": 0.5}, progress=False)
    return out


def run_flame(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, FLWR_HOME=str(tmp / "flwr-home"))
    return subprocess.run(
        [sys.executable, "-m", "flame", "run", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_federation_on_the_real_sample_meets_the_quality_bar(
    partitions: Path, tmp_path: Path
) -> None:
    done = run_flame(
        tmp_path,
        "--data",
        str(partitions),
        "--runs",
        str(tmp_path / "runs"),
        "--set",
        f"num-server-rounds={ROUNDS}",
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "finished:completed" in done.stdout

    (run_dir,) = (tmp_path / "runs").iterdir()
    for name in ("metrics.csv", "config.json", "model.pt"):
        assert (run_dir / name).is_file(), name
    assert list(run_dir.glob("events.out.tfevents.*")), "no TensorBoard events"

    rows = read_metrics(run_dir)
    server = [r for r in rows if r["kind"] == "server_eval"]
    assert [int(r["round"]) for r in server] == list(range(ROUNDS + 1))
    for kind in ("client_train", "client_eval"):
        seen = {(int(r["round"]), r["region"]) for r in rows if r["kind"] == kind}
        expected = {(n, g) for n in range(1, ROUNDS + 1) for g in ("US", "EU")}
        assert seen == expected, kind
    last = server[-1]
    assert float(last["pr_auc"]) >= 0.95, last
    assert float(last["roc_auc"]) >= 0.97, last

    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["config"]["num-server-rounds"] == ROUNDS
    assert saved["manifest"]["regions"] == ["US", "EU"]
    model = torch.load(run_dir / "model.pt", weights_only=False)
    assert 0.0 < model["threshold"] < 1.0
    assert len(model["feature_mean"]) == len(model["feature_names"])


def test_a_run_in_which_no_node_can_read_data_fails_loudly(
    partitions: Path, tmp_path: Path
) -> None:
    # A data folder whose region partitions are gone: every node fails.
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text((partitions / "manifest.json").read_text())
    (broken / "test").symlink_to(partitions / "test")

    done = run_flame(
        tmp_path,
        "--data",
        str(broken),
        "--runs",
        str(tmp_path / "runs"),
        "--set",
        "num-server-rounds=1",
    )

    assert done.returncode == 1
    output = done.stdout + done.stderr
    assert "no node replied to the feature-statistics round" in output
    assert "finished:failed" in output


def test_three_regions_each_train_and_are_all_required(tmp_path: Path) -> None:
    # flame run partitions the CSV itself and sets min-nodes to the regions.
    done = run_flame(
        tmp_path,
        "--csv",
        str(require_paysim()),
        "--data",
        str(tmp_path / "parts"),
        "--regions",
        "US=0.4,EU=0.4,APAC=0.2",
        "--runs",
        str(tmp_path / "runs"),
        "--set",
        "num-server-rounds=1",
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    (run_dir,) = (tmp_path / "runs").iterdir()
    rows = read_metrics(run_dir)
    trained = {r["region"] for r in rows if r["kind"] == "client_train"}
    assert trained == {"US", "EU", "APAC"}
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["config"]["min-nodes"] == 3


def test_bad_run_config_fails_before_anything_starts(tmp_path: Path) -> None:
    done = run_flame(tmp_path, "--data", str(tmp_path / "none"), "--set", "lr=1")

    assert done.returncode == 2
    assert "unknown run-config key(s) lr" in done.stderr
    assert not (tmp_path / "none").exists()  # nothing generated or partitioned
