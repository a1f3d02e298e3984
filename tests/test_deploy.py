"""The native deployment: real Flower processes on 127.0.0.1, TLS and node auth.

Each test uses its own state folder, Flower home and free ports. The fault
tests share one running federation (starting one costs ~30 s) and run in file
order: refused nodes, a SuperNode killed mid-run, a SuperLink restart.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from flwr.app import Error, Metadata, RecordDict
from flwr.app.message import make_message

from flame import certs, deploy
from flame.partition import partition_csv
from flame.strategy import SUPERLINK_NODE_ID, destinations, origin_node
from tests.conftest import REPO_ROOT, require_paysim

REGIONS = ("US", "EU")
RUN_TIMEOUT = 600
REFUSAL_SECONDS = 60  # an unregistered or insecure node must be gone by then
NODE_LOSS_SECONDS = 180  # a killed node must not stall a run longer than this


@pytest.fixture(scope="module")
def partitions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data") / "partitions"
    partition_csv(require_paysim(), out, regions={"US": 0.5, "EU": 0.5}, progress=False)
    return out


@pytest.fixture(scope="module")
def certs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("certs")
    certs.generate(out, nodes=[f"supernode-{r.lower()}" for r in REGIONS])
    return out


def make_layout(base: Path, partitions: Path, certs_dir: Path) -> deploy.Layout:
    return deploy.Layout(
        root=REPO_ROOT,
        state_dir=base / "state",
        certs_dir=certs_dir,
        data_dir=partitions,
        flwr_home=base / "flwr-home",
    )


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def regions_by_round(rows: list[dict[str, str]], kind: str) -> dict[int, set[str]]:
    seen: dict[int, set[str]] = {}
    for row in rows:
        if row["kind"] == kind:
            seen.setdefault(int(row["round"]), set()).add(row["region"])
    return seen


def mlflow_metric_keys(uri: str, run_name: str) -> set[str]:
    """The metric keys MLflow holds for a run, over its REST API."""
    found = httpx.post(
        f"{uri}/api/2.0/mlflow/experiments/search",
        json={"max_results": 50},
        timeout=10,
    ).json()
    ids = [e["experiment_id"] for e in found.get("experiments", [])]
    runs = httpx.post(
        f"{uri}/api/2.0/mlflow/runs/search",
        json={
            "experiment_ids": ids,
            "filter": f"attributes.run_name = '{run_name}'",
        },
        timeout=10,
    ).json()
    (run,) = runs["runs"]
    return {metric["key"] for metric in run["data"].get("metrics", [])}


# --- node-loss bookkeeping, no processes ------------------------------------


def metadata(message_id: str, src: int, dst: int, reply_to: str = "") -> Metadata:
    return Metadata(
        run_id=1,
        message_id=message_id,
        src_node_id=src,
        dst_node_id=dst,
        reply_to_message_id=reply_to,
        group_id="1",
        created_at=time.time(),
        ttl=60.0,
        message_type="train",
    )


def test_a_reply_written_by_the_superlink_is_traced_to_its_node() -> None:
    sent = make_message(metadata("abc", SUPERLINK_NODE_ID, 42), RecordDict())
    lost = make_message(
        metadata("", SUPERLINK_NODE_ID, SUPERLINK_NODE_ID, reply_to="abc"),
        error=Error(code=5, reason="Node Unavailable"),
    )
    own = make_message(
        metadata("", 7, SUPERLINK_NODE_ID, reply_to="other"),
        error=Error(code=2, reason="ClientApp raised"),
    )

    sent_to = destinations([sent])

    assert sent_to == {"abc": 42}
    assert origin_node(lost, sent_to) == 42
    assert origin_node(own, sent_to) == 7


# --- the whole federation through the CLI -----------------------------------


@pytest.mark.slow
def test_flame_deploy_submit_runs_two_rounds_with_tls_and_node_auth(
    partitions: Path, certs_dir: Path, tmp_path: Path
) -> None:
    layout = make_layout(tmp_path, partitions, certs_dir)
    superlink_port, mlflow_port = deploy.free_ports(2)
    command = [
        sys.executable,
        "-m",
        "flame",
        "deploy",
        "--data",
        str(partitions),
        "--certs",
        str(certs_dir),
        "--state-dir",
        str(layout.state_dir),
        "--flwr-home",
        str(layout.flwr_home),
        "--port",
        str(superlink_port),
        "--mlflow-port",
        str(mlflow_port),
        "--submit",
        "--set",
        "num-server-rounds=2",
        "--set",
        "run-name='native'",
    ]

    done = subprocess.run(
        command,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )

    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert "finished:completed" in output
    rows = read_metrics(layout.state_dir / "runs" / "native")
    server = [int(r["round"]) for r in rows if r["kind"] == "server_eval"]
    assert server == [0, 1, 2]
    for kind in ("client_train", "client_eval"):
        assert regions_by_round(rows, kind) == {1: set(REGIONS), 2: set(REGIONS)}
    config = (layout.flwr_home / "config.toml").read_text()
    assert f'address = "127.0.0.1:{superlink_port}"' in config
    assert str(certs_dir / "ca.crt") in config

    # MLflow keeps its store in the state folder: a fresh server serves the run.
    supervisor = deploy.Supervisor(layout.logs, layout.ca)
    ports = deploy.Ports(superlink_port, mlflow_port, {})
    spec = deploy.mlflow_spec(layout, ports)
    supervisor.start(spec)
    try:
        supervisor.wait_healthy(spec)
        keys = mlflow_metric_keys(f"http://127.0.0.1:{mlflow_port}", "native")
    finally:
        supervisor.stop_all()
    assert {"server_eval/roc_auc", "server_eval/pr_auc"} <= keys
    assert {f"client_eval/{r}/f1" for r in REGIONS} <= keys


# --- faults, on one running federation --------------------------------------


@pytest.fixture(scope="module")
def running(
    partitions: Path, certs_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[deploy.Federation]:
    layout = make_layout(tmp_path_factory.mktemp("faults"), partitions, certs_dir)
    superlink_port, mlflow_port = deploy.free_ports(2)
    ports = deploy.make_ports(REGIONS, superlink_port, mlflow_port)
    with deploy.federation(layout, ports) as federation:
        yield federation


def wait_exit(process: subprocess.Popen[bytes], seconds: float) -> tuple[int, float]:
    start = time.monotonic()
    code = process.wait(timeout=seconds)
    return code, time.monotonic() - start


@pytest.mark.slow
def test_a_node_with_an_unregistered_key_is_refused(
    running: deploy.Federation, tmp_path: Path
) -> None:
    private, public = certs.node_key_pair()
    key = tmp_path / "rogue"
    key.write_bytes(private)
    key.chmod(0o600)
    (tmp_path / "rogue.pub").write_bytes(public)
    (port,) = deploy.free_ports(1)
    spec = deploy.supernode_spec(
        running.layout, running.ports, "US", key=key, name="rogue", port=port
    )

    process = running.supervisor.start(spec)
    code, seconds = wait_exit(process, REFUSAL_SECONDS)

    log = running.supervisor.log_of("rogue").read_text()
    running.supervisor.processes.pop("rogue")
    # Flower logs its code 305 (SUPERNODE_CONNECTION_ERROR) but the process
    # exits with status 1 (flwr/supercore/exit/exit.py: 1 for every error).
    assert code == 1, log[-2000:]
    assert "Exit Code: 305" in log
    assert "Failed to activate SuperNode" in log
    assert seconds < REFUSAL_SECONDS
    assert deploy.online_nodes(running.layout) == len(REGIONS)


@pytest.mark.slow
def test_an_insecure_node_is_refused_by_the_tls_superlink(
    running: deploy.Federation,
) -> None:
    (port,) = deploy.free_ports(1)
    spec = deploy.supernode_spec(
        running.layout,
        running.ports,
        "EU",
        insecure=True,
        name="plaintext",
        port=port,
        max_wait_seconds=20,
    )

    process = running.supervisor.start(spec)
    code, seconds = wait_exit(process, REFUSAL_SECONDS)

    log = running.supervisor.log_of("plaintext").read_text()
    running.supervisor.processes.pop("plaintext")
    assert code == 1, log[-2000:]
    assert "Exit Code: 305" in log
    assert seconds < REFUSAL_SECONDS
    assert deploy.online_nodes(running.layout) == len(REGIONS)


def wait_for_rows(run_dir: Path, kind: str, server_round: int) -> None:
    """Block until metrics.csv holds `kind` rows of both regions for a round."""
    deadline = time.monotonic() + RUN_TIMEOUT
    while time.monotonic() < deadline:
        if (run_dir / "metrics.csv").is_file():
            seen = regions_by_round(read_metrics(run_dir), kind)
            if seen.get(server_round) == set(REGIONS):
                return
        time.sleep(0.5)
    raise AssertionError(f"no {kind} rows for round {server_round} in {run_dir}")


def settings(running: deploy.Federation, name: str, **extra: str) -> dict[str, str]:
    base = deploy.run_settings(running.layout, running, [])
    return {**base, "run-name": name, **extra}


@pytest.mark.slow
def test_killing_a_node_mid_run_leaves_a_completed_run_that_names_it(
    running: deploy.Federation,
) -> None:
    run_dir = running.layout.state_dir / "runs" / "node-loss"
    run_id = running.submit(
        settings(running, "node-loss", **{"num-server-rounds": "3", "min-nodes": "1"})
    )

    # Kill EU (no goodbye to the SuperLink) as round 2's training starts.
    wait_for_rows(run_dir, "client_eval", 1)
    killed_at = time.monotonic()
    running.supervisor.stop("supernode-eu", signal.SIGKILL)
    status = running.wait_run(run_id, timeout=NODE_LOSS_SECONDS)
    seconds = time.monotonic() - killed_at

    log = running.save_run_log(run_id).read_text()
    assert status == deploy.FINISHED_OK, log[-3000:]
    assert seconds < NODE_LOSS_SECONDS
    # The SuperLink's "Node Unavailable" reply is traced back to EU.
    assert "(region EU) failed in training" in log, log[-3000:]
    assert "region unknown" not in log, log[-3000:]
    rows = read_metrics(run_dir)
    assert [int(r["round"]) for r in rows if r["kind"] == "server_eval"] == [
        0,
        1,
        2,
        3,
    ]
    trained = regions_by_round(rows, "client_train")
    assert trained[1] == set(REGIONS)
    assert trained[3] == {"US"}


@pytest.mark.slow
def test_a_restarted_node_rejoins_the_next_run(running: deploy.Federation) -> None:
    running.start_node("EU")
    deploy.wait_for_nodes(running.layout, running.supervisor, len(REGIONS), 90)

    run_id = running.submit(settings(running, "rejoined", **{"num-server-rounds": "1"}))
    status = running.wait_run(run_id, timeout=RUN_TIMEOUT)

    assert status == deploy.FINISHED_OK
    rows = read_metrics(running.layout.state_dir / "runs" / "rejoined")
    assert regions_by_round(rows, "client_train") == {1: set(REGIONS)}


@pytest.mark.slow
def test_a_superlink_restart_keeps_registrations_and_past_runs(
    running: deploy.Federation,
) -> None:
    before = deploy.flwr_json(running.layout, "ls", "local-deployment")["runs"]

    running.supervisor.stop("superlink")
    running.start_superlink()

    after = deploy.flwr_json(running.layout, "ls", "local-deployment")["runs"]
    assert {(r["run-id"], r["status"]) for r in after} >= {
        (r["run-id"], r["status"]) for r in before
    }
    assert len(before) >= 2
    # Auth is on: nodes can only come back if their registrations survived.
    deploy.wait_for_nodes(running.layout, running.supervisor, len(REGIONS), 90)
    nodes = deploy.flwr_json(running.layout, "supernode", "list", "local-deployment")
    assert len(nodes["nodes"]) == len(REGIONS)


def test_connections_keep_flowers_local_connection(tmp_path: Path) -> None:
    from flame import connections

    path = connections.write_config(
        tmp_path, connections.default_connections(Path("/abs/certs"), native_port=1)
    )
    written = path.read_text()

    env = dict(os.environ, FLWR_HOME=str(tmp_path))
    listed = subprocess.run(
        [sys.executable, "-c", PARSE_CONNECTIONS],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    parsed = json.loads(listed.stdout)
    assert parsed["local-deployment"] == ["127.0.0.1:1", "/abs/certs/ca.crt"]
    assert parsed["docker"] == ["127.0.0.1:8000", "/abs/certs/ca.crt"]
    assert parsed["local"] == [":local:", None]
    assert not list(tmp_path.glob(".config.toml.partial*")), written


# Flower's own parser (flwr/cli/flower_config.py) must accept what we write.
PARSE_CONNECTIONS = """
import json
from flwr.cli.flower_config import read_superlink_connection
out = {}
for name in ("local-deployment", "docker", "local"):
    c = read_superlink_connection(name)
    out[name] = [c.address, c.root_certificates]
print(json.dumps(out))
"""


def test_connections_follow_a_changed_compose_port(tmp_path: Path) -> None:
    from flame import connections

    written = connections.default_connections(Path("/c"), docker_port=18000)

    docker = next(c for c in written if c.name == "docker")
    assert docker.address == "127.0.0.1:18000"
