"""The one-shot jobs of docker-compose.yml, run inside the Flame image.

`register`: add each SuperNode's public key to the SuperLink (idempotent: a
key that is registered already counts as done), so the nodes may connect.
`submit`: wait for the SuperNodes, start a run of the Flame app baked into
the image, follow its log to the end and exit 0 only if `flwr ls` reports
`finished:completed` (`flwr run --stream` exits 0 even when a run failed).

Both talk to the SuperLink's Control API through the `flwr` CLI, over TLS,
with a connection this script writes into `$FLWR_HOME/config.toml`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CONNECTION = "compose"
APP_DIR = "/opt/flame/app"
POLL_SECONDS = 3.0


class JobError(Exception):
    """A job cannot go on; the message says why and what to check."""


def say(text: str) -> None:
    print(f"[flame {os.path.basename(sys.argv[0])}] {text}", flush=True)


def write_connection(address: str, ca_cert: str) -> None:
    """The `compose` SuperLink connection of the flwr CLI, over TLS."""
    if not Path(ca_cert).is_file():
        raise JobError(
            f"CA certificate {ca_cert} not found in this container; generate "
            "certificates (`flame certs --group-readable`) before `docker compose up`"
        )
    home = Path(os.environ.get("FLWR_HOME") or Path.home() / ".flwr")
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n'
        f"[superlink.{CONNECTION}]\n"
        f'address = "{address}"\nroot-certificates = "{ca_cert}"\n',
        encoding="utf-8",
    )


def flwr(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["flwr", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def json_reply(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The JSON document a `flwr ... --format json` call printed (last one)."""
    text = done.stdout
    start = text.rfind("\n{")
    start = start + 1 if start >= 0 else (0 if text.startswith("{") else -1)
    if start >= 0:
        try:
            return dict(json.JSONDecoder().raw_decode(text, start)[0])
        except json.JSONDecodeError:
            pass
    raise JobError(
        f"`flwr` printed no JSON (exit {done.returncode}): "
        f"{(done.stdout + done.stderr).strip()[-1500:]}"
    )


def register(keys: Sequence[str]) -> None:
    """Register every public key; one that is in use already is fine.

    With `--format json` the CLI exits 0 even on failure: read `success`.
    """
    for key in keys:
        done = flwr("supernode", "register", key, CONNECTION, "--format", "json")
        reply = json_reply(done)
        error = str(reply.get("error-message", ""))
        if reply.get("success") and done.returncode == 0:
            say(f"registered {key}: node {reply.get('node-id')}")
        elif "already in use" in error.lower():
            say(f"{key} is registered already")
        else:
            raise JobError(f"could not register {key}: {error or json.dumps(reply)}")


def answer_or_nothing(*args: str) -> dict[str, Any]:
    """A successful JSON answer of `flwr ARGS --format json`, else {} (retry)."""
    done = flwr(*args, "--format", "json")
    try:
        reply = json_reply(done)
    except JobError:
        return {}
    return reply if reply.get("success") else {}


def online_nodes() -> int:
    nodes = answer_or_nothing("supernode", "ls", CONNECTION).get("nodes", [])
    return sum(1 for node in nodes if node.get("status") == "online")


def wait_for_nodes(count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    seen = -1
    while (online := online_nodes()) < count:
        if online != seen:
            say(f"{online} of {count} SuperNodes online; waiting")
            seen = online
        if time.monotonic() > deadline:
            raise JobError(
                f"only {online} of {count} SuperNodes came online within "
                f"{timeout:.0f} s; see `docker compose logs supernode-us "
                "supernode-eu` (unregistered key: exit code 305)"
            )
        time.sleep(POLL_SECONDS)
    say(f"{online} SuperNodes online")


def start_run(run_config: Sequence[str]) -> str:
    overrides = [arg for text in run_config if text for arg in ("--run-config", text)]
    done = flwr("run", APP_DIR, CONNECTION, *overrides, "--format", "json")
    reply = json_reply(done)
    if done.returncode != 0 or not reply.get("success") or not reply.get("run-id"):
        raise JobError(f"`flwr run` failed: {json.dumps(reply)}")
    return str(reply["run-id"])


def run_status(run_id: str) -> str:
    runs = answer_or_nothing("ls", CONNECTION, "--run-id", run_id).get("runs", [])
    return str(runs[0].get("status", "")) if runs else ""


def follow(run_id: str, timeout: float) -> str:
    """Stream the run's log until it ends; its final status."""
    deadline = time.monotonic() + timeout
    with subprocess.Popen(["flwr", "log", run_id, CONNECTION, "--stream"]) as stream:
        while stream.poll() is None and time.monotonic() < deadline:
            if run_status(run_id).startswith("finished"):
                time.sleep(POLL_SECONDS)  # let the last log lines through
                break
            time.sleep(POLL_SECONDS)
        stream.terminate()
    while not (status := run_status(run_id)).startswith("finished"):
        if time.monotonic() > deadline:
            flwr("stop", run_id, CONNECTION)
            raise JobError(
                f"run {run_id} did not finish within {timeout:.0f} s "
                f"(status {status or 'unknown'}); it was stopped"
            )
        time.sleep(POLL_SECONDS)
    return status


def submit(nodes: int, run_config: Sequence[str], timeout: float) -> int:
    wait_for_nodes(nodes, timeout=min(timeout, 600.0))
    run_id = start_run(run_config)
    say(f"started run {run_id}; following its log")
    status = follow(run_id, timeout)
    say(f"run {run_id} ended as {status}")
    return 0 if status == "finished:completed" else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--superlink",
        default=os.environ.get("FLAME_SUPERLINK", "superlink:8000"),
        help="SuperLink address as host:port",
    )
    parser.add_argument(
        "--ca-cert",
        default=os.environ.get("FLAME_CA_CERT", "/certs/ca.crt"),
        help="CA certificate that signed the SuperLink's certificate",
    )
    jobs = parser.add_subparsers(dest="job", required=True)
    reg = jobs.add_parser("register", help="register SuperNode public keys")
    reg.add_argument("keys", nargs="+", metavar="KEY.pub")
    sub = jobs.add_parser("submit", help="run the Flame app and judge its status")
    sub.add_argument("--nodes", type=int, default=2, help="SuperNodes to wait for")
    sub.add_argument(
        "--run-config",
        action="append",
        default=[],
        help="`flwr run --run-config` text (repeatable)",
    )
    sub.add_argument(
        "--timeout", type=float, default=3600.0, help="seconds for the whole run"
    )
    args = parser.parse_args(argv)
    try:
        write_connection(args.superlink, args.ca_cert)
        if args.job == "register":
            register(args.keys)
            return 0
        return submit(args.nodes, args.run_config, args.timeout)
    except (JobError, subprocess.TimeoutExpired) as exc:
        say(f"error: {exc}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
