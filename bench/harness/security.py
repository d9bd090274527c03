"""Section f: what TLS and tokens cost on Infer – plaintext vs TLS vs TLS + token, side by side.

Three ``visionrpc serve`` processes with the same model, differing only in their TLS and token
settings, measured in alternating slices like the levers (so the machine's drift hits all three),
at concurrency 1 (p50: the per-call cost of encryption and the token check) and 16 (images/s). The
load generator speaks TLS and sends the token as a real client does. Certificates come from a
throwaway CA (trustme, in the test extra), written under the run's work directory.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

PLAINTEXT = "plaintext"
TLS = "TLS"
TLS_TOKEN = "TLS + token"
CONCURRENCY = (1, 16)
_TOKEN = "bench-security-token"


@dataclass(frozen=True)
class Variant:
    """One server set-up: its VISIONRPC_* environment and the client's matching options."""

    name: str
    env: dict[str, str] = field(default_factory=dict)
    client: dict[str, Any] = field(default_factory=dict)
    credentials: grpc.ChannelCredentials | None = None  # for the start-up health probe


def variants(work: Path) -> list[Variant]:
    """Plaintext, TLS, TLS + token; certificates and the token list written under ``work``."""
    try:
        import trustme
    except ImportError:
        raise RuntimeError(
            'the security section needs trustme (pip install -e ".[test]"); or --skip-security'
        ) from None
    folder = work / "tls"
    folder.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    ca_file, cert_file, key_file = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    ca.cert_pem.write_to_path(str(ca_file))
    cert_file.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key_file))
    tokens = folder / "tokens.yaml"
    digest = hashlib.sha256(_TOKEN.encode()).hexdigest()
    tokens.write_text(f"- name: bench\n  sha256: {digest}\n  scopes: [inference]\n")
    tls_env = {"VISIONRPC_TLS__CERT_FILE": str(cert_file), "VISIONRPC_TLS__KEY_FILE": str(key_file)}
    probe = grpc.ssl_channel_credentials(ca_file.read_bytes())
    return [
        Variant(PLAINTEXT, client={"tls": False, "token": ""}),
        Variant(TLS, tls_env, {"ca_file": ca_file, "token": ""}, probe),
        Variant(
            TLS_TOKEN,
            {**tls_env, "VISIONRPC_AUTH__TOKENS_FILE": str(tokens)},
            {"ca_file": ca_file, "token": _TOKEN},
            probe,
        ),
    ]
