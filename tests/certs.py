"""Throwaway certificates for TLS tests, made by trustme: a CA, a server leaf, a client leaf."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import trustme

SERVER_NAMES = ("localhost", "127.0.0.1")


@dataclass(frozen=True)
class Pki:
    """PEM files of one CA: ``ca_file`` trusts it; server and client leaves it signed."""

    ca: trustme.CA
    ca_file: Path
    cert_file: Path
    key_file: Path
    client_cert_file: Path
    client_key_file: Path

    def server_settings(self, mutual: bool = False) -> dict[str, object]:
        """``tls`` overrides for a test server using this PKI (mTLS: clients need its certs)."""
        tls: dict[str, object] = {"cert_file": self.cert_file, "key_file": self.key_file}
        if mutual:
            tls["client_ca_file"] = self.ca_file
        return {"tls": tls}


def write_leaf(leaf: trustme.LeafCert, cert_file: Path, key_file: Path) -> None:
    """The leaf's chain and key, written so that the files' stat changes even within a tick."""
    before = cert_file.stat().st_mtime_ns if cert_file.exists() else 0
    cert_file.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    key_file.write_bytes(leaf.private_key_pem.bytes())
    for path in (cert_file, key_file):
        os.utime(path, ns=(before + 2_000_000_000, before + 2_000_000_000))


def make_pki(folder: Path, name: str = "pki") -> Pki:
    """A fresh CA with a server leaf for localhost/127.0.0.1 and a client leaf, under folder."""
    root = folder / name
    root.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    ca_file = root / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    server = root / "server.pem", root / "server.key"
    client = root / "client.pem", root / "client.key"
    write_leaf(ca.issue_cert(*SERVER_NAMES), *server)
    write_leaf(ca.issue_cert("station-7@example.com"), *client)
    return Pki(
        ca,
        ca_file,
        root / "server.pem",
        root / "server.key",
        root / "client.pem",
        root / "client.key",
    )
