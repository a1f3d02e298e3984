"""The `flame` command: the main job in one command, and its parts.

`flame run` makes sure partitions exist (generating the built-in data set on a
fresh machine), runs the Flower simulation through `flwr run` against a local
simulation SuperLink that it starts and stops itself, and prints the results.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

from flame.config import RunConfig
from flame.ports import free_ports
from flame.tracking import METRIC_NAMES, utc_run_name

DEFAULT_SYNTH_ROWS = 200_000
# Run-config keys `flame run` sets from its own options.
CLI_OWNED_KEYS = {"data-dir": "--data", "run-dir": "--runs", "run-name": "--runs"}

# Subcommands with parsers of their own: `flame NAME ...` is `module.main(...)`.
SUBCOMMAND_MODULES = {
    "synth": "flame.synth",
    "partition": "flame.partition",
    "certs": "flame.certs",
    "connections": "flame.connections",
    "deploy": "flame.deploy",
}
SUBCOMMAND_HELP = {
    "synth": "generate the built-in PaySim-format data (see flame synth --help)",
    "partition": "split a PaySim CSV into regions (see flame partition --help)",
    "certs": "create TLS certificates and SuperNode keys (flame certs --help)",
    "connections": "write the flwr CLI connections local-deployment and docker",
    "deploy": "run the federation as local processes with TLS (flame deploy --help)",
}
SUPERLINK_START_SECONDS = 60.0


class CliError(Exception):
    """A problem the user can fix; printed without a traceback."""


def find_project_root(start: Path | None = None) -> Path:
    """The Flame checkout: the folder whose pyproject.toml declares the Flower app.

    `flwr run` needs the project folder (it packages the app from it), so the
    CLI works from a clone, searched from the working directory upwards and
    then from the installed package's location (an editable install).
    """
    candidates = [start or Path.cwd(), Path(__file__).resolve().parent]
    for base in candidates:
        for folder in (base, *base.parents):
            pyproject = folder / "pyproject.toml"
            if pyproject.is_file() and _declares_flame_app(pyproject):
                return folder
    raise CliError(
        "cannot find the Flame project folder (a pyproject.toml with "
        "[tool.flwr.app] publisher 'flame'); run `flame` inside your clone"
    )


def _declares_flame_app(pyproject: Path) -> bool:
    try:
        data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return False
    app = data.get("tool", {}).get("flwr", {}).get("app", {})
    return bool(app.get("publisher") == "flame")


def wait_for_health(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    """Block until the SuperLink answers /health, or fail naming its log."""
    import httpx

    deadline = time.monotonic() + SUPERLINK_START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise CliError(f"the local SuperLink exited early; see {log}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1.0).is_success:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise CliError(
        f"the local SuperLink did not start within "
        f"{SUPERLINK_START_SECONDS:.0f} s; see {log}"
    )


@contextmanager
def simulation_superlink(flwr_home: Path) -> Iterator[dict[str, str]]:
    """A simulation SuperLink of our own on free loopback ports, stopped on exit.

    Plain `flwr run .` would start a detached SuperLink that outlives the
    command and keeps its first environment; owning it avoids both surprises.
    Yields the environment that points `flwr` at it.
    """
    http_port, control_port = free_ports(2)
    env = dict(
        os.environ,
        FLWR_HOME=str(flwr_home),
        FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(http_port),
        FLWR_LOCAL_CONTROL_API_PORT=str(control_port),
        FLWR_DISABLE_UPDATE_CHECK="1",
        # Flower's telemetry posts to its servers by default; a fraud team's
        # runs stay private.
        FLWR_TELEMETRY_ENABLED="0",
    )
    log = flwr_home / "superlink.log"
    flwr_home.mkdir(parents=True, exist_ok=True)
    command = [
        "flower-superlink",
        "--insecure",
        "--simulation",
        "--isolation",
        "subprocess",
        "--control-api-address",
        f"127.0.0.1:{control_port}",
        "--host",
        "127.0.0.1",
        "--port",
        str(http_port),
        # `pip install -e .` installed the dependencies; Flower's per-run
        # `uv sync` would fetch a multi-GB CUDA build of torch instead.
        "--disable-runtime-dependency-installation",
    ]
    with log.open("ab") as sink:
        process = subprocess.Popen(
            command, env=env, stdout=sink, stderr=sink, start_new_session=True
        )
    try:
        wait_for_health(http_port, process, log)
        yield env
    finally:
        stop_process_tree(process)


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, read from /proc (children before grandchildren).

    The simulation and Ray start processes in sessions of their own, so killing
    the SuperLink's process group alone would leave them running.
    """
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found: list[int] = []
    queue = [pid]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def stop_process_tree(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the SuperLink and all it spawned; SIGKILL what is left after 20 s."""
    tree = [process.pid, *descendants(process.pid)]
    for pid in tree:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    with suppress(subprocess.TimeoutExpired):
        process.wait(timeout=20)
    time.sleep(1.0)  # let the children act on SIGTERM before the hard stop
    for pid in tree:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)


def run_config_arg(settings: dict[str, str]) -> str:
    """`--run-config` text: strings quoted TOML-style, numbers left bare."""
    return " ".join(f"{key}={_toml_text(value)}" for key, value in settings.items())


def _toml_text(value: str) -> str:
    return value if _is_toml_literal(value) else f"'{value}'"


def _is_toml_literal(value: str) -> bool:
    try:
        tomllib.loads(f"x = {value}")
    except tomllib.TOMLDecodeError:
        return False
    return True


def ensure_partitions(root: Path, args: argparse.Namespace) -> Path:
    """The partitions to train on; made from --csv or the built-in data if absent."""
    data_dir = (
        Path(args.data).expanduser().absolute()
        if args.data
        else (root / "data" / "partitions")
    )
    if (data_dir / "manifest.json").is_file() and not args.csv:
        print(
            f"Using the partitions in {data_dir} (--rows and --regions apply only "
            "when partitions are made)"
        )
        return data_dir
    if (data_dir / "manifest.json").is_file():
        raise CliError(
            f"{data_dir} holds partitions already; to re-partition from "
            f"{args.csv} run `flame partition {args.csv} --out {data_dir} --force`, "
            "or pass --data with a new folder"
        )
    from flame import partition, synth

    source = Path(args.csv).expanduser().absolute() if args.csv else None
    if source is None:
        source = root / "data" / "synth" / "paysim_synth.csv.gz"
        if not source.is_file():
            print(
                f"No data yet: generating the built-in PaySim-format data set "
                f"({args.rows:,} rows) at {source}"
            )
            source.parent.mkdir(parents=True, exist_ok=True)
            synth.generate(source, rows=args.rows, seed=args.seed)
    print(f"Partitioning {source} into {data_dir}")
    partition.partition_csv(
        source, data_dir, regions=parse_regions(args.regions), seed=args.seed
    )
    return data_dir


def parse_regions(text: str) -> dict[str, float]:
    from flame.partition import parse_regions as parse

    return parse(text)


def parse_overrides(items: Sequence[str]) -> dict[str, str]:
    """`--set KEY=VALUE` pairs; the paths are --data/--runs, not --set."""
    overrides: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not key or not sep:
            raise CliError(f"--set takes KEY=VALUE, got {item!r}")
        if key in CLI_OWNED_KEYS:
            raise CliError(
                f"--set {key}=... is managed by flame run: use "
                f"{CLI_OWNED_KEYS[key]} instead"
            )
        overrides[key] = value.strip()
    return overrides


def check_run_config(root: Path, settings: dict[str, str]) -> None:
    """Validate the run config before anything starts (seconds, not minutes).

    The ServerApp checks it again; checking here turns a typo into an error
    before the SuperLink, Ray and the nodes have started.
    """
    pyproject = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    defaults: dict[str, object] = pyproject["tool"]["flwr"]["app"]["config"]
    unknown = sorted(set(settings) - set(defaults))
    if unknown:
        raise CliError(
            f"unknown run-config key(s) {', '.join(unknown)}; the keys are: "
            f"{', '.join(sorted(defaults))} (see README, 'Options')"
        )
    parsed = {
        key: tomllib.loads(f"x = {_toml_text(value)}")["x"]
        for key, value in settings.items()
    }
    RunConfig.from_mapping({**defaults, **parsed})


def run_federation(root: Path, args: argparse.Namespace) -> int:
    """The main job: partitions, a simulated federation, results."""
    overrides = parse_overrides(args.set)
    check_run_config(root, {"seed": str(args.seed), **overrides})  # fail fast
    data_dir = ensure_partitions(root, args)
    regions = json.loads((data_dir / "manifest.json").read_text())["regions"]
    run_base = Path(args.runs).expanduser().absolute()
    run_name = utc_run_name()
    settings = {
        "data-dir": str(data_dir),
        "run-dir": str(run_base),
        "run-name": run_name,
        "seed": str(args.seed),
        # Every simulated region takes part unless the user asks otherwise:
        # with one region, a min-nodes of 2 would wait for a node never coming.
        "min-nodes": str(len(regions)),
        **overrides,
    }
    check_run_config(root, settings)
    federation = (
        f"num-supernodes={len(regions)} client-resources-num-cpus={args.cpus_per_node}"
    )
    # A project-local Flower home keeps apps and logs out of ~/.flwr; an
    # explicit FLWR_HOME (tests, CI) wins.
    flwr_home = Path(os.environ.get("FLWR_HOME") or root / ".flwr")
    with simulation_superlink(flwr_home) as env:
        command = [
            "flwr",
            "run",
            str(root),
            "--run-config",
            run_config_arg(settings),
            "--federation-config",
            federation,
            "--stream",
        ]
        print(
            f"Starting a federation of {len(regions)} regions "
            f"({', '.join(regions)}) ...",
            flush=True,
        )
        subprocess.run(command, env=env, check=False)
        status = run_status(env)
    return report(run_base / run_name, status)


def run_status(env: dict[str, str]) -> str:
    """The status of the newest run, from `flwr ls` (`--stream` exits 0 anyway)."""
    done = subprocess.run(
        ["flwr", "ls", "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        runs = json.loads(done.stdout).get("runs", [])
    except json.JSONDecodeError:
        return f"unknown ({done.stdout.strip() or done.stderr.strip()})"
    if not runs:
        return "unknown (no run listed)"
    newest = max(runs, key=lambda run: str(run.get("pending-at", "")))
    return str(newest.get("status", "unknown"))


def report(run_dir: Path, status: str) -> int:
    """Print where the results are and the server-side test metrics per round."""
    if status != "finished:completed":
        print(f"\nThe run ended as {status}; see the log above.", file=sys.stderr)
        return 1
    rows = read_server_rows(run_dir / "metrics.csv")
    print(f"\nRun finished: {status}. Results in {run_dir}")
    print("Server-side metrics on the held-out test set:")
    print(f"{'round':>5} " + " ".join(f"{name:>9}" for name in METRIC_NAMES))
    for row in rows:
        cells = " ".join(f"{float(row[name] or 'nan'):>9.4f}" for name in METRIC_NAMES)
        print(f"{row['round']:>5} {cells}")
    print(f"TensorBoard: tensorboard --logdir {run_dir.parent}")
    return 0


def read_server_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise CliError(f"the run wrote no {path}; see the log above")
    with path.open(newline="", encoding="utf-8") as handle:
        return [row for row in csv.DictReader(handle) if row["kind"] == "server_eval"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flame", description="Federated fraud detection on PaySim."
    )
    commands = parser.add_subparsers(dest="command")
    run = commands.add_parser(
        "run", help="partition data if needed and run the simulated federation"
    )
    run.add_argument(
        "--csv",
        help="a PaySim CSV (.csv, .gz, .zip) to partition "
        "first; default: the built-in data set",
    )
    run.add_argument("--data", help="partition folder (default data/partitions)")
    run.add_argument("--runs", default="runs", help="where run folders go")
    run.add_argument(
        "--rows",
        type=int,
        default=DEFAULT_SYNTH_ROWS,
        help="rows of built-in data to generate on a fresh machine",
    )
    run.add_argument(
        "--regions",
        default="US=0.5,EU=0.5",
        help="regions and shares when partitioning",
    )
    run.add_argument("--seed", type=int, default=42)
    run.add_argument("--cpus-per-node", type=int, default=1)
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a run-config value, e.g. --set num-server-rounds=5 (repeatable)",
    )
    for name, text in SUBCOMMAND_HELP.items():
        commands.add_parser(name, help=text, add_help=False)
    return parser


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Subcommands with their own parsers get the rest of the line untouched.
    if argv and argv[0] in SUBCOMMAND_MODULES:
        module = importlib.import_module(SUBCOMMAND_MODULES[argv[0]])
        return int(module.main(argv[1:]))
    args = build_parser().parse_args(argv or ["run"])
    # SIGTERM (a scheduler, `kill`) cleans up like Ctrl-C: the SuperLink, the
    # simulation and Ray are stopped by the context managers on the way out.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        return run_federation(find_project_root(), args)
    except (CliError, OSError, ValueError) as exc:
        print(f"flame: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("flame: interrupted; the local SuperLink was stopped", file=sys.stderr)
        return 130
