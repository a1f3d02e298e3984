"""The Docker Compose federation, end to end, on the real PaySim sample.

Builds the image air-gapped (a local Debian base made with debootstrap and a
host-made wheelhouse: no registry is reachable on the build machines), runs
`docker compose up` with TLS and node authentication on the sample's
partitions, and checks what a deployment promises: the run completes, both
regions and the server record every round, MLflow holds the metrics, each
SuperNode sees only its own region, every container is capped, and
`down` keeps the state volumes. Installs and starts the Docker engine itself
when it is missing (as root), and stops what it started.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from flame.certs import generate
from flame.partition import partition_csv
from flame.ports import free_ports
from tests.conftest import REPO_ROOT, require_paysim

pytestmark = pytest.mark.slow

BASE_IMAGE = "flame-base:bookworm"
IMAGE = "flame:compose-test"
CONTAINER_GID = 49999  # the image's `flame` user (docker/Dockerfile)
ROUNDS = 2
REGIONS = ("US", "EU")
SERVICES = (
    "superlink",
    "register",
    "supernode-us",
    "supernode-eu",
    "serverapp",
    "mlflow",
    "submit",
)
VOLUMES = ("superlink-state", "mlflow-db", "mlflow-artifacts", "runs")
# Small caps, checked on every container (docker inspect: NanoCpus, Memory).
CAPS = {
    "FLAME_SUPERLINK_CPUS": "0.25",
    "FLAME_SUPERLINK_MEM": "384m",
    "FLAME_SUPERNODE_CPUS": "0.5",
    "FLAME_SUPERNODE_MEM": "768m",
    "FLAME_SERVERAPP_CPUS": "0.5",
    "FLAME_SERVERAPP_MEM": "768m",
    "FLAME_MLFLOW_CPUS": "0.25",
    "FLAME_MLFLOW_MEM": "512m",
    "FLAME_JOB_CPUS": "0.25",
    "FLAME_JOB_MEM": "256m",
}
ENGINE_START_SECONDS = 90
BUILD_TIMEOUT = 1800
RUN_TIMEOUT = 1200


def run(
    command: Sequence[str],
    *,
    timeout: float,
    env: dict[str, str] | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run a command in the repository; on failure, fail with its output."""
    done = subprocess.run(
        list(command),
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and done.returncode != 0:
        pytest.fail(
            f"{' '.join(command)} exited {done.returncode}:\n"
            f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
        )
    return done


def engine_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        done = subprocess.run(
            ["docker", "info"], capture_output=True, timeout=20, check=False
        )
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


def install_docker() -> None:
    """Debian's engine, Compose 1.29 and debootstrap, unless all are there."""
    wanted = ("dockerd", "docker", "debootstrap")
    if all(shutil.which(tool) for tool in wanted) and compose_command():
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip(
            "the Docker engine is not installed and cannot be: installing it "
            "needs root and apt-get (Debian); install docker.io, docker-compose "
            "and debootstrap to run this test"
        )
    script = (
        "apt-get update -q && DEBIAN_FRONTEND=noninteractive "
        "apt-get install -y -q docker.io docker-compose debootstrap"
    )
    done = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, timeout=1200
    )
    if done.returncode != 0:
        pytest.skip(f"could not install the Docker engine:\n{done.stderr[-2000:]}")


@pytest.fixture(scope="module")
def docker_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A running Docker engine; started here (and stopped after) if need be."""
    if engine_answers():
        yield
        return
    install_docker()
    if os.geteuid() != 0:
        pytest.skip("dockerd is not running and starting it needs root")
    log_path = tmp_path_factory.mktemp("dockerd") / "dockerd.log"
    with log_path.open("wb") as log:
        daemon = subprocess.Popen(
            ["dockerd"], stdout=log, stderr=log, start_new_session=True
        )
    try:
        deadline = time.monotonic() + ENGINE_START_SECONDS
        while not engine_answers():
            if daemon.poll() is not None or time.monotonic() > deadline:
                pytest.skip(
                    "dockerd did not start (it needs privileges this machine may "
                    f"not grant); its log:\n{log_path.read_text()[-2000:]}"
                )
            time.sleep(1.0)
        yield
    finally:
        stop_process(daemon)


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def compose_command() -> list[str]:
    """`docker compose` (v2) where it exists, else `docker-compose` (1.29)."""
    if shutil.which("docker"):
        done = subprocess.run(
            ["docker", "compose", "version"], capture_output=True, check=False
        )
        if done.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return []


@dataclass
class Federation:
    """One Compose project of the test: its command, environment and paths."""

    compose: list[str]
    env: dict[str, str]
    project: str
    superlink_port: int
    mlflow_port: int
    certs: Path
    submit_exit: int = -1
    logs: str = ""
    containers: dict[str, str] = field(default_factory=dict)

    def __call__(
        self, *args: str, timeout: float = 600, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return run([*self.compose, *args], env=self.env, timeout=timeout, check=check)

    def scoped(self, name: str) -> str:
        """A volume or network name as Compose prefixes it with the project."""
        return f"{self.project}_{name}"

    def read_volume(self, name: str, script: str) -> str:
        """Output of a shell script run on a named volume mounted at /v."""
        done = run(
            [
                "docker",
                "run",
                "--rm",
                "-v",
                f"{self.scoped(name)}:/v:ro",
                IMAGE,
                "sh",
                "-c",
                script,
            ],
            timeout=120,
        )
        return done.stdout


@pytest.fixture(scope="module")
def image(docker_engine: None) -> str:
    """The Flame image, built air-gapped: local base image plus wheelhouse."""
    compose = compose_command()
    if not compose:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    run(["bash", "scripts/make_base_image.sh", BASE_IMAGE], timeout=BUILD_TIMEOUT)
    run(["bash", "scripts/build_wheelhouse.sh"], timeout=BUILD_TIMEOUT)
    env = dict(
        os.environ,
        FLAME_IMAGE=IMAGE,
        FLAME_BASE_IMAGE=BASE_IMAGE,
        FLAME_PIP_SOURCE="wheelhouse",
        COMPOSE_PROJECT_NAME="flamebuild",
    )
    run([*compose, "build", "superlink"], env=env, timeout=BUILD_TIMEOUT)
    # Drop what each build leaves behind and no later build reuses (the
    # wheelhouse staging images, replaced Flame images): disk stays bounded.
    for label in ("org.flame.stage=wheels", "org.opencontainers.image.title=flame"):
        prune = ["docker", "image", "prune", "-f", "--filter", f"label={label}"]
        run(prune, timeout=300)
    return IMAGE


@pytest.fixture(scope="module")
def federation(
    image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Federation]:
    """`compose up` on the sample's partitions; the run followed to its end."""
    sample = require_paysim()
    work = tmp_path_factory.mktemp("compose")
    partitions = work / "partitions"
    partition_csv(
        sample, partitions, regions=dict.fromkeys(REGIONS, 0.5), progress=False
    )
    certs = work / "certs"
    # Keys readable by the container user's group, as the README says.
    for path in generate(certs, group_readable=True):
        os.chown(path, -1, CONTAINER_GID)

    superlink_port, mlflow_port = free_ports(2)
    fed = Federation(
        compose=compose_command(),
        env={},
        project=f"flametest{os.getpid()}",
        superlink_port=superlink_port,
        mlflow_port=mlflow_port,
        certs=certs,
    )
    fed.env = dict(
        os.environ,
        COMPOSE_PROJECT_NAME=fed.project,
        FLAME_IMAGE=image,
        FLAME_CERTS=str(certs),
        FLAME_DATA_US=str(partitions / "US"),
        FLAME_DATA_EU=str(partitions / "EU"),
        FLAME_DATA_TEST=str(partitions / "test"),
        FLAME_MANIFEST=str(partitions / "manifest.json"),
        FLAME_SUPERLINK_PORT=str(fed.superlink_port),
        FLAME_MLFLOW_PORT=str(fed.mlflow_port),
        FLAME_ROUNDS=str(ROUNDS),
        FLAME_RUN_CONFIG="local-epochs=1",
        FLAME_RUN_TIMEOUT=str(RUN_TIMEOUT),
        **CAPS,
    )
    try:
        fed("up", "-d", "--no-build", timeout=900)
        for service in SERVICES:
            fed.containers[service] = fed("ps", "-q", service).stdout.strip()
        waited = run(
            ["docker", "wait", fed.containers["submit"]], timeout=RUN_TIMEOUT + 120
        )
        fed.submit_exit = int(waited.stdout.strip())
        fed.logs = fed("logs", "--no-color", "submit").stdout
        yield fed
    finally:
        fed("down", "-v", "--remove-orphans", timeout=300, check=False)
        for name in VOLUMES:
            subprocess.run(
                ["docker", "volume", "rm", "-f", fed.scoped(name)],
                capture_output=True,
                check=False,
            )


def all_logs(fed: Federation) -> str:
    return fed("logs", "--no-color", "--tail=60", check=False).stdout[-12000:]


def test_compose_run_finishes_completed(federation: Federation) -> None:
    assert federation.submit_exit == 0, all_logs(federation)
    assert "ended as finished:completed" in federation.logs


def host_cli_env(fed: Federation, tmp_path: Path) -> dict[str, str]:
    """A Flower home whose `docker` connection is the published SuperLink port."""
    home = tmp_path / "flwr-home"
    home.mkdir(exist_ok=True)
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "docker"\n\n[superlink.docker]\n'
        f'address = "127.0.0.1:{fed.superlink_port}"\n'
        f'root-certificates = "{fed.certs / "ca.crt"}"\n'
    )
    return dict(os.environ, FLWR_HOME=str(home), FLWR_DISABLE_UPDATE_CHECK="1")


def json_output(text: str) -> Any:
    """The JSON document a `flwr ... --format json` call printed."""
    return json.loads(text[text.index("{") :])


def test_host_cli_sees_the_run_through_the_published_port(
    federation: Federation, tmp_path: Path
) -> None:
    """`flwr ls` from the host, over TLS on 127.0.0.1, as `flwr run . docker` does."""
    env = host_cli_env(federation, tmp_path)
    done = run(["flwr", "ls", "docker", "--format", "json"], env=env, timeout=120)
    runs = json_output(done.stdout)["runs"]
    assert [r["status"] for r in runs] == ["finished:completed"]


def run_metrics(fed: Federation) -> list[dict[str, str]]:
    text = fed.read_volume("runs", "cat /v/*/metrics.csv")
    return list(csv.DictReader(io.StringIO(text)))


def test_metrics_csv_has_both_regions_and_the_server(federation: Federation) -> None:
    rows = run_metrics(federation)
    for kind in ("client_train", "client_eval"):
        seen = {(int(r["round"]), r["region"]) for r in rows if r["kind"] == kind}
        expected = {(n, g) for n in range(1, ROUNDS + 1) for g in REGIONS}
        assert seen == expected, kind
    server = sorted(int(r["round"]) for r in rows if r["kind"] == "server_eval")
    assert server == list(range(ROUNDS + 1))


def mlflow_api(fed: Federation, path: str, body: dict[str, Any] | None = None) -> Any:
    url = f"http://127.0.0.1:{fed.mlflow_port}/api/2.0/mlflow/{path}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_mlflow_holds_the_run_metrics(federation: Federation) -> None:
    query = urllib.parse.urlencode({"experiment_name": "flame"})
    experiment = mlflow_api(federation, f"experiments/get-by-name?{query}")
    runs = mlflow_api(
        federation,
        "runs/search",
        {"experiment_ids": [experiment["experiment"]["experiment_id"]]},
    )["runs"]
    assert len(runs) == 1
    (mlrun,) = runs
    assert mlrun["info"]["status"] == "FINISHED"
    keys = {metric["key"] for metric in mlrun["data"]["metrics"]}
    assert {"server_eval/roc_auc", "server_eval/pr_auc"} <= keys
    for region in REGIONS:
        assert f"client_eval/{region}/roc_auc" in keys
    query = urllib.parse.urlencode(
        {"run_id": mlrun["info"]["run_id"], "metric_key": "server_eval/roc_auc"}
    )
    history = mlflow_api(federation, f"metrics/get-history?{query}")["metrics"]
    assert sorted(point["step"] for point in history) == list(range(ROUNDS + 1))


def test_each_supernode_sees_only_its_own_region(federation: Federation) -> None:
    for region in REGIONS:
        container = federation.containers[f"supernode-{region.lower()}"]
        listing = run(
            ["docker", "exec", container, "ls", "-A", "/data"], timeout=60
        ).stdout.split()
        assert listing == [region]
        files = run(
            ["docker", "exec", container, "ls", "-A", f"/data/{region}"], timeout=60
        ).stdout.split()
        assert files and all(name.endswith(".parquet") for name in files)
        # Its only network is internal: no route out of the Docker host.
        networks = run(
            [
                "docker",
                "inspect",
                "--format",
                "{{range $name, $_ := .NetworkSettings.Networks}}{{$name}} {{end}}",
                container,
            ],
            timeout=60,
        ).stdout.split()
        assert networks == [federation.scoped("federation")]
        internal = run(
            ["docker", "network", "inspect", "--format", "{{.Internal}}", *networks],
            timeout=60,
        ).stdout.split()
        assert internal == ["true"]
    server = federation.containers["serverapp"]
    listing = run(
        ["docker", "exec", server, "ls", "-A", "/app/data/partitions"], timeout=60
    ).stdout.split()
    assert sorted(listing) == ["manifest.json", "test"]


def expected_caps(service: str) -> tuple[str, str]:
    group = {
        "superlink": "SUPERLINK",
        "supernode-us": "SUPERNODE",
        "supernode-eu": "SUPERNODE",
        "serverapp": "SERVERAPP",
        "mlflow": "MLFLOW",
    }.get(service, "JOB")
    return CAPS[f"FLAME_{group}_CPUS"], CAPS[f"FLAME_{group}_MEM"]


def test_every_container_is_capped(federation: Federation) -> None:
    for service, container in federation.containers.items():
        done = run(
            [
                "docker",
                "inspect",
                "--format",
                "{{.HostConfig.NanoCpus}} {{.HostConfig.Memory}}",
                container,
            ],
            timeout=60,
        )
        nano_cpus, memory = (int(v) for v in done.stdout.split())
        cpus, mem = expected_caps(service)
        assert nano_cpus == round(float(cpus) * 1e9), service
        assert memory == int(mem.rstrip("m")) * 2**20, service


def test_flwr_run_from_the_host_trains_on_the_compose_federation(
    federation: Federation, tmp_path: Path
) -> None:
    """A further run, `flwr run . docker`, with the app's own data/run defaults."""
    env = host_cli_env(federation, tmp_path)
    overrides = (
        "num-server-rounds=1 local-epochs=1 mlflow-tracking-uri='http://mlflow:5000'"
    )
    done = run(
        ["flwr", "run", ".", "docker", "--run-config", overrides, "--format", "json"],
        env=env,
        timeout=300,
    )
    run_id = str(json_output(done.stdout)["run-id"])

    deadline = time.monotonic() + RUN_TIMEOUT
    status = ""
    while not status.startswith("finished") and time.monotonic() < deadline:
        time.sleep(5)
        listed = run(
            ["flwr", "ls", "docker", "--run-id", run_id, "--format", "json"],
            env=env,
            timeout=120,
        )
        status = json_output(listed.stdout)["runs"][0]["status"]
    assert status == "finished:completed", all_logs(federation)
    assert len(federation.read_volume("runs", "ls /v").split()) == 2


def test_down_keeps_the_state_volumes(federation: Federation) -> None:
    federation("down", timeout=300)
    listed = run(["docker", "volume", "ls", "-q"], timeout=60).stdout.split()
    for name in VOLUMES:
        assert federation.scoped(name) in listed, name
    state = federation.read_volume("superlink-state", "ls -A /v").split()
    assert "state.db" in state
    assert "mlflow.db" in federation.read_volume("mlflow-db", "ls -A /v").split()
    artifacts = federation.read_volume("mlflow-artifacts", "find /v -type f")
    assert "metrics.csv" in artifacts and "model.pt" in artifacts
    assert run_metrics(federation), "the runs volume lost metrics.csv"

    # Up again on the kept state: the node keys are registered already.
    federation("up", "-d", "--no-build", "register", timeout=600)
    register = federation("ps", "-q", "register").stdout.strip()
    waited = run(["docker", "wait", register], timeout=300)
    logs = federation("logs", "--no-color", "register").stdout
    assert waited.stdout.strip() == "0", logs
    assert logs.count("is registered already") == len(REGIONS), logs
