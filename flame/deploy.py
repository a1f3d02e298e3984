"""`flame deploy`: the federation as real local processes, TLS and node auth on.

Starts on 127.0.0.1 only, each process in its own process group and with its
own log in `<state>/logs/<name>.log`:

- `superlink`: `flower-superlink` with TLS from `certs/`, SuperNode
  authentication, a persistent `--database` (runs, registrations and node ids
  survive a restart) and runtime dependency installation off;
- `superexec`: the ServerApp executor (`flower-superexec`). The SuperLink runs
  with `--isolation process`: in subprocess isolation it would spawn its own
  executor in a new session, outside our process group, so stopping the group
  could leave it behind; as a process of our own it is stopped like the rest;
- `supernode-<region>`: one `flower-supernode` per region in the partitions'
  manifest, with its own key, partition folder and runtime API port, and
  bounded retries so a wrong address fails instead of retrying forever;
- `mlflow`: an MLflow tracking server with a SQLite store and proxied artifacts.

It registers the node keys (`flwr supernode register`, idempotent), writes the
`local-deployment` connection (flame/connections.py), waits until everything is
healthy, then either stays up until Ctrl-C / SIGTERM or, with `--submit`, runs
`flwr run . local-deployment`, follows the run to its end (judged by
`flwr ls`, since `flwr run --stream` exits 0 on failure) and stops everything.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from flame import certs as flame_certs
from flame import connections
from flame.errors import FlameError
from flame.ports import free_ports

logger = logging.getLogger(__name__)

DEFAULT_STATE_DIR = ".flame-deploy"
START_SECONDS = 90.0
STOP_SECONDS = 15.0
RUN_TIMEOUT_SECONDS = 3600.0
POLL_SECONDS = 2.0
# A SuperNode gives up on an unreachable SuperLink after this long.
NODE_MAX_RETRIES = 10
NODE_MAX_WAIT_SECONDS = 60
FINISHED_OK = "finished:completed"


class DeployError(FlameError):
    """The local federation could not start or a run did not complete."""


@dataclass(frozen=True)
class ProcessSpec:
    """One long-running process of the federation."""

    name: str
    command: tuple[str, ...]
    env: Mapping[str, str]
    health_url: str | None = None  # polled until it answers 2xx


@dataclass(frozen=True)
class Layout:
    """Where a deployment keeps its inputs and state, all absolute."""

    root: Path
    state_dir: Path
    certs_dir: Path
    data_dir: Path
    flwr_home: Path

    @property
    def logs(self) -> Path:
        return self.state_dir / "logs"

    @property
    def ca(self) -> Path:
        return self.certs_dir / "ca.crt"

    def node_key(self, region: str) -> Path:
        return self.certs_dir / f"supernode-{region.lower()}"

    def home_of(self, name: str) -> Path:
        """Each Flower process unpacks apps into a Flower home of its own."""
        return self.state_dir / "homes" / name


@dataclass(frozen=True)
class Ports:
    """Loopback ports: the SuperLink's one HTTPS port, MLflow, node runtime APIs."""

    superlink: int
    mlflow: int
    nodes: Mapping[str, int]


def regions_of(data_dir: Path) -> list[str]:
    """The regions of a partition folder, from its manifest."""
    manifest = data_dir / "manifest.json"
    if not manifest.is_file():
        raise DeployError(
            f"no manifest.json in {data_dir}; partition the data first "
            "(`flame partition CSV --out DIR`) or pass --data DIR"
        )
    regions = [str(r) for r in json.loads(manifest.read_text())["regions"]]
    for region in regions:
        if not (data_dir / region).is_dir():
            raise DeployError(
                f"region {region} of {manifest} has no folder {data_dir / region}; "
                "partition again with `flame partition CSV --force`"
            )
    return regions


# Flower and MLflow report usage to their vendors' servers by default; a
# deployment that keeps data in its regions keeps its processes quiet too.
QUIET_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
}


def base_env(layout: Layout, name: str) -> dict[str, str]:
    home = layout.home_of(name)
    home.mkdir(parents=True, exist_ok=True)
    return dict(os.environ, **QUIET_ENV, FLWR_HOME=str(home), PYTHONUNBUFFERED="1")


def superlink_spec(layout: Layout, ports: Ports) -> ProcessSpec:
    database = layout.state_dir / "superlink" / "state.db"
    database.parent.mkdir(parents=True, exist_ok=True)
    command = (
        "flower-superlink",
        "--ssl-ca-certfile",
        str(layout.ca),
        "--ssl-certfile",
        str(layout.certs_dir / "superlink.crt"),
        "--ssl-keyfile",
        str(layout.certs_dir / "superlink.key"),
        "--enable-supernode-auth",
        "--isolation",
        "process",
        "--database",
        str(database),
        "--disable-runtime-dependency-installation",
        "--host",
        "127.0.0.1",
        "--port",
        str(ports.superlink),
    )
    return ProcessSpec(
        "superlink",
        command,
        base_env(layout, "superlink"),
        health_url=f"https://127.0.0.1:{ports.superlink}/health",
    )


def superexec_spec(layout: Layout, ports: Ports) -> ProcessSpec:
    command = (
        "flower-superexec",
        "--runtime-api-address",
        f"127.0.0.1:{ports.superlink}",
        "--root-certificates",
        str(layout.ca),
    )
    return ProcessSpec("superexec", command, base_env(layout, "superexec"))


def supernode_spec(
    layout: Layout,
    ports: Ports,
    region: str,
    *,
    key: Path | None = None,
    insecure: bool = False,
    name: str | None = None,
    port: int | None = None,
    max_wait_seconds: int = NODE_MAX_WAIT_SECONDS,
) -> ProcessSpec:
    """A SuperNode for `region`; the keywords exist to show refused nodes."""
    name = name or f"supernode-{region.lower()}"
    node_config = f'region="{region}" data-path="{layout.data_dir / region}"'
    tls = ("--insecure",) if insecure else ("--root-certificates", str(layout.ca))
    auth = (
        ()
        if insecure
        else ("--auth-supernode-private-key", str(key or layout.node_key(region)))
    )
    command = (
        "flower-supernode",
        "--superlink",
        f"127.0.0.1:{ports.superlink}",
        *tls,
        *auth,
        "--node-config",
        node_config,
        "--host",
        "127.0.0.1",
        "--port",
        str(port or ports.nodes[region]),
        "--max-retries",
        str(NODE_MAX_RETRIES),
        "--max-wait-time",
        str(max_wait_seconds),
    )
    return ProcessSpec(name, command, base_env(layout, name))


def mlflow_spec(layout: Layout, ports: Ports) -> ProcessSpec:
    folder = layout.state_dir / "mlflow"
    folder.mkdir(parents=True, exist_ok=True)
    command = (
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(ports.mlflow),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{folder / 'mlflow.db'}",
        # Proxied artifacts: clients upload over HTTP, never to a local path.
        "--artifacts-destination",
        str(folder / "artifacts"),
    )
    return ProcessSpec(
        "mlflow",
        command,
        # Background jobs serve MLflow's GenAI features: 8 idle processes here
        # (the Compose mlflow service turns them off too).
        dict(os.environ, **QUIET_ENV, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"),
        health_url=f"http://127.0.0.1:{ports.mlflow}/health",
    )


@dataclass
class Supervisor:
    """Starts processes in their own process groups and stops every one of them."""

    logs: Path
    ca: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, spec: ProcessSpec) -> subprocess.Popen[bytes]:
        if spec.name in self.processes and self.processes[spec.name].poll() is None:
            raise DeployError(f"{spec.name} is running already; stop it first")
        self.logs.mkdir(parents=True, exist_ok=True)
        with self.log_of(spec.name).open("ab") as sink:
            sink.write(f"\n=== {time.ctime()}: {' '.join(spec.command)}\n".encode())
            sink.flush()
            process = subprocess.Popen(
                spec.command,
                env=dict(spec.env),
                stdout=sink,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its children share its group
            )
        self.processes[spec.name] = process
        logger.info("started %s (pid %d)", spec.name, process.pid)
        return process

    def log_of(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def stop(self, name: str, sig: signal.Signals = signal.SIGTERM) -> int | None:
        """Stop one process group; its exit code (None if it was not running)."""
        codes = self.stop_many([name], sig)
        return codes.get(name)

    def stop_many(
        self, names: Sequence[str], sig: signal.Signals = signal.SIGTERM
    ) -> dict[str, int]:
        """Signal the groups together, wait, then SIGKILL what is left.

        SuperNodes take ~10 s to deactivate gracefully; in parallel a shutdown
        costs that once, not once per node.
        """
        stopping = {n: self.processes.pop(n) for n in names if n in self.processes}
        for process in stopping.values():
            with suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
        deadline = time.monotonic() + STOP_SECONDS
        codes = {}
        for name, process in stopping.items():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("%s ignored %s; killing it", name, sig.name)
            # Children (ClientApps, ServerApps) may outlive their parent.
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            codes[name] = process.wait()
        return codes

    def stop_all(self) -> None:
        # Nodes and executors first, so they can deactivate at the SuperLink.
        self.stop_many([name for name in self.processes if name != "superlink"])
        self.stop_many(list(self.processes))

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise DeployError(
                    f"{name} exited with code {process.returncode}; its log "
                    f"{self.log_of(name)} ends with:\n{tail(self.log_of(name))}"
                )

    def wait_healthy(self, spec: ProcessSpec, timeout: float = START_SECONDS) -> None:
        """Poll the spec's health URL (TLS checked against our CA)."""
        if spec.health_url is None:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                answer = httpx.get(spec.health_url, verify=str(self.ca), timeout=2.0)
                if answer.is_success:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise DeployError(
            f"{spec.name} did not answer {spec.health_url} within {timeout:.0f} s; "
            f"see {self.log_of(spec.name)}"
        )


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def flwr(
    layout: Layout, *args: str, timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    """Run the `flwr` CLI against our connections, from the project folder."""
    env = dict(os.environ, **QUIET_ENV, FLWR_HOME=str(layout.flwr_home))
    return subprocess.run(
        ["flwr", *args],
        cwd=layout.root,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def flwr_json(layout: Layout, *args: str) -> dict[str, Any]:
    done = flwr(layout, *args, "--format", "json")
    try:
        answer = json.loads(done.stdout)
    except json.JSONDecodeError:
        answer = None
    if not isinstance(answer, dict):
        raise DeployError(
            f"`flwr {' '.join(args)}` printed no JSON (exit {done.returncode}): "
            f"{(done.stdout + done.stderr).strip()[-1500:]}"
        )
    return answer


def register_nodes(layout: Layout, regions: Sequence[str]) -> None:
    """Register each region's public key; one already registered is fine."""
    for region in regions:
        public = layout.node_key(region).with_suffix(".pub")
        done = flwr(
            layout, "supernode", "register", str(public), connections.LOCAL_DEPLOYMENT
        )
        output = (done.stdout + done.stderr).strip()
        if done.returncode != 0 and "already" not in output.lower():
            raise DeployError(
                f"registering {public} failed (exit {done.returncode}): {output}"
            )
        logger.info("registered the key of %s (%s)", region, public.name)


def online_nodes(layout: Layout) -> int:
    """How many SuperNodes the SuperLink lists as online."""
    nodes = flwr_json(layout, "supernode", "list", connections.LOCAL_DEPLOYMENT)
    return sum(1 for node in nodes.get("nodes", []) if node.get("status") == "online")


def wait_for_nodes(
    layout: Layout, supervisor: Supervisor, count: int, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        supervisor.check_alive()
        if online_nodes(layout) >= count:
            return
        time.sleep(POLL_SECONDS)
    raise DeployError(
        f"fewer than {count} SuperNodes came online within {timeout:.0f} s; "
        f"see the supernode logs in {supervisor.logs}"
    )


def ensure_certs(layout: Layout, regions: Sequence[str]) -> None:
    """Create certs/ with one key per region when absent; never overwrite."""
    if not layout.ca.is_file():
        nodes = [layout.node_key(region).name for region in regions]
        flame_certs.generate(layout.certs_dir, nodes=nodes)
        logger.info("created certificates and node keys in %s", layout.certs_dir)
    for region in regions:
        if not layout.node_key(region).is_file():
            raise DeployError(
                f"region {region} has no SuperNode key {layout.node_key(region)}; "
                f"create one with `flame certs --out {layout.certs_dir}.new --node "
                f"{layout.node_key(region).name}` and copy the key pair (not the "
                "CA) into the certs folder"
            )


@dataclass
class Federation:
    """A running local federation: its layout, ports and processes."""

    layout: Layout
    ports: Ports
    supervisor: Supervisor

    @property
    def regions(self) -> list[str]:
        return list(self.ports.nodes)

    def start_superlink(self) -> None:
        spec = superlink_spec(self.layout, self.ports)
        self.supervisor.start(spec)
        self.supervisor.wait_healthy(spec)

    def start_node(self, region: str) -> None:
        self.supervisor.start(supernode_spec(self.layout, self.ports, region))

    def start_all(self) -> None:
        mlflow = mlflow_spec(self.layout, self.ports)
        self.supervisor.start(mlflow)
        self.start_superlink()
        register_nodes(self.layout, self.regions)
        self.supervisor.start(superexec_spec(self.layout, self.ports))
        for region in self.regions:
            self.start_node(region)
        self.supervisor.wait_healthy(mlflow)
        wait_for_nodes(self.layout, self.supervisor, len(self.regions), START_SECONDS)

    @property
    def mlflow_uri(self) -> str:
        return f"http://127.0.0.1:{self.ports.mlflow}"

    def submit(self, settings: Mapping[str, str]) -> int:
        """`flwr run . local-deployment` with absolute paths; the new run's id."""
        from flame.cli import run_config_arg

        answer = flwr_json(
            self.layout,
            "run",
            str(self.layout.root),
            connections.LOCAL_DEPLOYMENT,
            "--run-config",
            run_config_arg(dict(settings)),
        )
        if "run-id" not in answer:
            raise DeployError(f"`flwr run` did not start a run: {answer}")
        return int(answer["run-id"])

    def run_status(self, run_id: int) -> str:
        answer = flwr_json(
            self.layout, "ls", connections.LOCAL_DEPLOYMENT, "--run-id", str(run_id)
        )
        runs = answer.get("runs", [])
        return str(runs[0].get("status", "unknown")) if runs else "unknown"

    def save_run_log(self, run_id: int) -> Path:
        """The ServerApp's log (kept by the SuperLink) into logs/run-<id>.log."""
        done = flwr(
            self.layout, "log", str(run_id), connections.LOCAL_DEPLOYMENT, "--show"
        )
        path = self.supervisor.log_of(f"run-{run_id}")
        path.write_text(done.stdout + done.stderr, encoding="utf-8")
        return path

    def wait_run(self, run_id: int, timeout: float = RUN_TIMEOUT_SECONDS) -> str:
        """Follow a run until it is finished:*; fail when a process dies."""
        deadline = time.monotonic() + timeout
        status = "unknown"
        while time.monotonic() < deadline:
            status = self.run_status(run_id)
            if status.startswith("finished"):
                return status
            self.supervisor.check_alive()
            time.sleep(POLL_SECONDS)
        raise DeployError(
            f"run {run_id} still {status} after {timeout:.0f} s; see "
            f"`flwr log {run_id} {connections.LOCAL_DEPLOYMENT} --show`"
        )


def make_ports(regions: Sequence[str], superlink: int, mlflow: int) -> Ports:
    node_ports = free_ports(len(regions))
    return Ports(superlink, mlflow, dict(zip(regions, node_ports, strict=True)))


@contextmanager
def federation(layout: Layout, ports: Ports) -> Iterator[Federation]:
    """Start everything, yield the running federation, stop everything."""
    layout.state_dir.mkdir(parents=True, exist_ok=True)
    # The state folder never belongs in git (like .pytest_cache does it).
    (layout.state_dir / ".gitignore").write_text("*\n")
    connections.write_config(
        layout.flwr_home,
        connections.default_connections(layout.certs_dir, native_port=ports.superlink),
    )
    supervisor = Supervisor(layout.logs, layout.ca)
    running = Federation(layout, ports, supervisor)
    try:
        running.start_all()
        yield running
    finally:
        supervisor.stop_all()
        logger.info("stopped every process; logs in %s", layout.logs)


def run_settings(
    layout: Layout, running: Federation, overrides: Sequence[str]
) -> dict[str, str]:
    from flame.tracking import utc_run_name

    settings = {
        "data-dir": str(layout.data_dir),
        "run-dir": str(layout.state_dir / "runs"),
        "run-name": utc_run_name(),
        "mlflow-tracking-uri": running.mlflow_uri,
    }
    for item in overrides:
        key, sep, value = item.partition("=")
        if not key or not sep:
            raise DeployError(f"--set takes KEY=VALUE, got {item!r}")
        settings[key.strip()] = value.strip()
    return settings


def submit_and_follow(
    layout: Layout, running: Federation, overrides: Sequence[str], timeout: float
) -> int:
    settings = run_settings(layout, running, overrides)
    run_id = running.submit(settings)
    print(
        f"Submitted run {run_id}; follow it with `flwr log {run_id} "
        f"{connections.LOCAL_DEPLOYMENT}`",
        flush=True,
    )
    status = running.wait_run(run_id, timeout)
    log = running.save_run_log(run_id)
    run_dir = Path(settings["run-dir"]) / settings["run-name"]
    if status != FINISHED_OK:
        print(f"Run {run_id} ended as {status}; ServerApp log: {log}")
        return 1
    print(f"Run {run_id} {status}. Results in {run_dir}; MLflow: {running.mlflow_uri}")
    return 0


class _Stop(Exception):
    """SIGTERM, turned into an exception so `finally` blocks stop the processes."""


def _raise_stop(signum: int, _frame: object) -> None:
    raise _Stop(signal.Signals(signum).name)


def stay_up(running: Federation) -> None:
    print(
        f"Federation up: flwr run . {connections.LOCAL_DEPLOYMENT} "
        f"(FLWR_HOME={running.layout.flwr_home}); MLflow UI {running.mlflow_uri}. "
        "Ctrl-C stops everything.",
        flush=True,
    )
    while True:
        running.supervisor.check_alive()
        time.sleep(POLL_SECONDS)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        prog="flame deploy",
        description="Run the federation as local processes on 127.0.0.1 with TLS "
        "and SuperNode authentication.",
    )
    parser.add_argument("--data", default="data/partitions", help="partitions")
    parser.add_argument("--certs", default="certs", help="certificates and keys")
    parser.add_argument(
        "--state-dir", default=DEFAULT_STATE_DIR, help="databases, logs, runs"
    )
    parser.add_argument(
        "--flwr-home", help="Flower home for the CLI (default $FLWR_HOME or .flwr)"
    )
    parser.add_argument(
        "--port", type=int, default=connections.DEFAULT_NATIVE_PORT, help="SuperLink"
    )
    parser.add_argument("--mlflow-port", type=int, default=5001)
    parser.add_argument(
        "--submit", action="store_true", help="run one training, then stop"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="run-config override for --submit (repeatable)",
    )
    parser.add_argument("--timeout", type=float, default=RUN_TIMEOUT_SECONDS)
    return parser


def layout_from(args: argparse.Namespace, root: Path) -> Layout:
    def absolute(value: str) -> Path:
        path = Path(value).expanduser()
        return (path if path.is_absolute() else root / path).absolute()

    home = absolute(args.flwr_home) if args.flwr_home else None
    return Layout(
        root=root,
        state_dir=absolute(args.state_dir),
        certs_dir=absolute(args.certs),
        data_dir=absolute(args.data),
        flwr_home=home or connections.repo_flwr_home(root),
    )


def main(argv: Sequence[str] | None = None) -> int:
    from flame.cli import find_project_root

    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_stop)
    try:
        layout = layout_from(args, find_project_root())
        regions = regions_of(layout.data_dir)
        ensure_certs(layout, regions)
        ports = make_ports(regions, args.port, args.mlflow_port)
        with federation(layout, ports) as running:
            print(f"Connection: {connections.LOCAL_DEPLOYMENT}", flush=True)
            if args.submit:
                return submit_and_follow(layout, running, args.set, args.timeout)
            stay_up(running)
    except (DeployError, OSError, ValueError) as exc:
        print(f"flame deploy: error: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, _Stop):
        print("flame deploy: stopped every process it started", file=sys.stderr)
        return 130
    return 0
