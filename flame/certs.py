"""TLS certificates and SuperNode authentication keys for a deployment.

Writes into `certs/` (git-ignored):
- `ca.crt`, `ca.key`: a private certificate authority;
- `superlink.crt`, `superlink.key`: the SuperLink's certificate, with SANs for
  `superlink`, `localhost`, `127.0.0.1` and `::1` (plus any `--san`), signed by
  the CA;
- `<node>` and `<node>.pub` for each SuperNode (default `supernode-us`,
  `supernode-eu`): an ECDSA P-384 key pair in OpenSSH format, as
  `ssh-keygen -t ecdsa -b 384` makes it. The public key is registered with the
  SuperLink (`flwr supernode register certs/supernode-us.pub CONNECTION`).

Private keys are written with mode 0600 (`--group-readable`: 0640, for
containers that run as another user of the same group).
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

logger = logging.getLogger(__name__)

DEFAULT_NODES = ("supernode-us", "supernode-eu")
DEFAULT_SANS = ("superlink", "localhost", "127.0.0.1", "::1")
VALID_DAYS = 365


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Flame"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _subject_alternative_names(names: Sequence[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in dict.fromkeys(names):  # de-duplicated, order kept
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def make_ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP384R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("Flame CA"))
        .issuer_name(_name("Flame CA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA384())
    )
    return key, cert


def make_server_cert(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    sans: Sequence[str],
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP384R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("superlink"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(_subject_alternative_names(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA384())
    )
    return key, cert


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def node_key_pair() -> tuple[bytes, bytes]:
    """An ECDSA P-384 key pair in OpenSSH format (private, public)."""
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return private, public + b"\n"


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write to a temporary name with the final mode, then rename into place."""
    partial = path.with_name(f".{path.name}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(partial, mode)  # umask must not loosen or tighten what we chose
    partial.replace(path)


def generate(
    out_dir: Path,
    *,
    nodes: Sequence[str] = DEFAULT_NODES,
    extra_sans: Sequence[str] = (),
    force: bool = False,
    group_readable: bool = False,
) -> list[Path]:
    """Create the CA, the SuperLink certificate and one key pair per node."""
    if (out_dir / "ca.crt").exists() and not force:
        raise FileExistsError(
            f"{out_dir / 'ca.crt'} exists; nodes and the SuperLink already trust "
            "it. Pass --force to replace every certificate and key (then register "
            "the new node keys again)"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    secret = 0o640 if group_readable else 0o600
    ca_key, ca_cert = make_ca()
    server_key, server_cert = make_server_cert(
        ca_key, ca_cert, [*DEFAULT_SANS, *extra_sans]
    )
    pem = serialization.Encoding.PEM
    files = {
        "ca.crt": (ca_cert.public_bytes(pem), 0o644),
        "ca.key": (_pem_key(ca_key), 0o600),
        "superlink.crt": (server_cert.public_bytes(pem), 0o644),
        "superlink.key": (_pem_key(server_key), secret),
    }
    for node in nodes:
        private, public = node_key_pair()
        files[node] = (private, secret)
        files[f"{node}.pub"] = (public, 0o644)
    written = []
    for name, (data, mode) in files.items():
        _write(out_dir / name, data, mode)
        written.append(out_dir / name)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="flame certs",
        description="Create a CA, the SuperLink TLS certificate and SuperNode keys.",
    )
    parser.add_argument("--out", default="certs", help="output folder")
    parser.add_argument(
        "--node",
        action="append",
        dest="nodes",
        metavar="NAME",
        help="SuperNode key pair to create (repeatable; default: "
        + ", ".join(DEFAULT_NODES)
        + ")",
    )
    parser.add_argument(
        "--san",
        action="append",
        default=[],
        metavar="NAME",
        help="extra DNS name or IP of the SuperLink (repeatable)",
    )
    parser.add_argument(
        "--force", action="store_true", help="replace existing certificates and keys"
    )
    parser.add_argument(
        "--group-readable",
        action="store_true",
        help="private keys 0640 (containers running as another user in the same group)",
    )
    args = parser.parse_args(argv)
    try:
        written = generate(
            Path(args.out),
            nodes=args.nodes or DEFAULT_NODES,
            extra_sans=args.san,
            force=args.force,
            group_readable=args.group_readable,
        )
    except FileExistsError as exc:
        print(f"flame certs: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    return 0
