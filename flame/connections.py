"""SuperLink connections for the `flwr` CLI in a repo-local Flower home.

`flwr run . NAME` reads connection NAME from `$FLWR_HOME/config.toml`
(`[superlink.NAME]` with `address` and `root-certificates` or `insecure`; see
flwr/cli/flower_config.py). This module writes `<repo>/.flwr/config.toml` with:

- `local-deployment`: the native processes of `flame deploy` on 127.0.0.1;
- `docker`: the Compose SuperLink published on 127.0.0.1:8000;
- `local`: Flower's own simulation connection, kept as Flower writes it.

Both deployments use TLS with the CA in `certs/ca.crt`, by absolute path (the
CLI refuses a relative one). Use it with `FLWR_HOME=$PWD/.flwr flwr run . docker`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

logger = logging.getLogger(__name__)

LOCAL_DEPLOYMENT = "local-deployment"
DOCKER = "docker"
DEFAULT_NATIVE_PORT = 9100  # away from Compose's 8000 so both can run at once
DOCKER_PORT = 8000
# Flower's own default connection (flwr/cli/constant.py), kept so plain
# `flwr run .` still starts a local simulation even if a user deleted it.
FLOWER_LOCAL = {"address": ":local:"}


@dataclass(frozen=True)
class Connection:
    """One `[superlink.NAME]` table: a TLS connection to a SuperLink."""

    name: str
    address: str
    root_certificates: Path

    def as_table(self) -> dict[str, str]:
        return {
            "address": self.address,
            "root-certificates": str(self.root_certificates),
        }


def default_connections(
    certs_dir: Path,
    *,
    native_port: int = DEFAULT_NATIVE_PORT,
    docker_port: int = DOCKER_PORT,
) -> list[Connection]:
    """`local-deployment` and `docker`, both trusting `certs_dir/ca.crt`."""
    ca = certs_dir.expanduser().absolute() / "ca.crt"
    return [
        Connection(LOCAL_DEPLOYMENT, f"127.0.0.1:{native_port}", ca),
        Connection(DOCKER, f"127.0.0.1:{docker_port}", ca),
    ]


def _read(path: Path) -> dict[str, Any]:
    """The existing config, or Flower's default one (what `flwr` would create)."""
    from flwr.cli.constant import DEFAULT_FLOWER_CONFIG_TOML

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = DEFAULT_FLOWER_CONFIG_TOML
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(
            f"{path} is not valid TOML ({exc}); fix or delete it, then run "
            "`flame connections` again"
        ) from exc


def merge(existing: Mapping[str, Any], connections: Sequence[Connection]) -> str:
    """The new config.toml text: other keys kept, ours replaced, `local` kept."""
    document = dict(existing)
    superlink: dict[str, Any] = dict(document.get("superlink", {}))
    superlink.setdefault("default", "local")
    superlink.setdefault("local", dict(FLOWER_LOCAL))
    for connection in connections:
        superlink[connection.name] = connection.as_table()
    document["superlink"] = superlink
    # tomli_w ships with flwr (its CLI writes this file with it too).
    return str(tomli_w.dumps(document))


def write_config(flwr_home: Path, connections: Sequence[Connection]) -> Path:
    """Write `flwr_home/config.toml` atomically (temporary file, then rename)."""
    path = flwr_home / "config.toml"
    text = merge(_read(path), connections)
    tomllib.loads(text)  # never replace a good file with one the CLI cannot read
    flwr_home.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".config.toml.partial-{os.getpid()}")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)
    logger.info("wrote SuperLink connections to %s", path)
    return path


def repo_flwr_home(root: Path) -> Path:
    """`$FLWR_HOME` when set (tests, CI), else `<repo>/.flwr` (git-ignored)."""
    return Path(os.environ.get("FLWR_HOME") or root / ".flwr").absolute()


def main(argv: Sequence[str] | None = None) -> int:
    from flame.cli import find_project_root

    parser = argparse.ArgumentParser(
        prog="flame connections",
        description="Write the local-deployment and docker SuperLink connections "
        "into a repo-local Flower home, for `flwr run . NAME`.",
    )
    parser.add_argument("--certs", default="certs", help="folder holding ca.crt")
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_NATIVE_PORT,
        help="SuperLink port of `flame deploy` (local-deployment)",
    )
    parser.add_argument(
        "--docker-port",
        type=int,
        default=DOCKER_PORT,
        help="published SuperLink port of the Compose federation "
        "(FLAME_SUPERLINK_PORT in .env)",
    )
    parser.add_argument(
        "--flwr-home", help="Flower home to write (default: $FLWR_HOME or .flwr)"
    )
    args = parser.parse_args(argv)
    root = find_project_root()
    home = Path(args.flwr_home).absolute() if args.flwr_home else repo_flwr_home(root)
    certs = Path(args.certs)
    certs = certs if certs.is_absolute() else root / certs
    if not (certs / "ca.crt").is_file():
        print(
            f"flame connections: warning: {certs / 'ca.crt'} does not exist yet; "
            "create it with `flame certs`",
            file=sys.stderr,
        )
    try:
        connections = default_connections(
            certs, native_port=args.port, docker_port=args.docker_port
        )
        path = write_config(home, connections)
    except (OSError, ValueError) as exc:
        print(f"flame connections: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}: connections {LOCAL_DEPLOYMENT}, {DOCKER}, local")
    print(f"use: FLWR_HOME={home} flwr run . {LOCAL_DEPLOYMENT}")
    return 0
