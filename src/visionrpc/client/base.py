"""What the blocking and the asyncio client share: options, defaults, deadlines, retries, TLS and
the token.

``timeout`` has one meaning per value everywhere: a number is seconds, ``None`` is no deadline, and
:data:`USE_CLIENT_DEFAULT` is "the level above decides" (for a call: the client's timeout; for the
client: ``VISIONRPC_TIMEOUT_S``, 30 s unless set).
"""

from __future__ import annotations

import enum
import json
import os
from collections.abc import Sequence
from typing import Any, Final

import grpc

from visionrpc.client.settings import ClientSettings
from visionrpc.client.tracing import trace_metadata
from visionrpc.tls import channel_credentials

MiB = 1024 * 1024
DEFAULT_MESSAGE_BYTES = 64 * MiB
"""The server's default message limits; the client matches them (gRPC's own default is 4 MiB)."""

RETRIED_SERVICES: tuple[str, ...] = (
    "visionrpc.v1.CoreServices",
    "visionrpc.v1.InferenceMethods",
    "grpc.health.v1.Health",
)
"""Services whose calls gRPC retries on UNAVAILABLE or a server's CANCELLED (before any response
has arrived)."""


class UseClientDefault(enum.Enum):
    """Type of :data:`USE_CLIENT_DEFAULT`."""

    USE_CLIENT_DEFAULT = enum.auto()


USE_CLIENT_DEFAULT: Final = UseClientDefault.USE_CLIENT_DEFAULT
"""Sentinel: take the default from the level above (call → client → settings)."""

Timeout = float | None | UseClientDefault
Metadata = Sequence[tuple[str, str]]
ChannelOptions = Sequence[tuple[str, Any]]
PathLike = str | os.PathLike[str]


def service_config(max_attempts: int = 5) -> str:
    """gRPC service config JSON: ``round_robin`` over the target's addresses and a retry policy
    for UNAVAILABLE and for CANCELLED sent by the server (a server that stops cancels the calls
    that reached it too late to be handled; the caller's own cancel is never retried). gRPC
    retries only calls that have had no response yet.

    ``round_robin`` keeps a connection to every address the target resolves to
    (``dns:///headless-svc:50051``, ``ipv4:10.0.0.1:50051,10.0.0.2:50051``) and spreads calls over
    the ready ones; with one address it behaves like gRPC's default ``pick_first``. A replica that
    drains refuses new calls with UNAVAILABLE, which the retry policy sends to the next replica;
    once it closes its connections, round_robin leaves it out. (Client-side health checking is
    not on: it would turn a starting server's own "server is starting" into a bare "backend
    unhealthy".)
    """
    return json.dumps(
        {
            "loadBalancingConfig": [{"round_robin": {}}],
            "methodConfig": [
                {
                    "name": [{"service": name} for name in RETRIED_SERVICES],
                    "retryPolicy": {
                        "maxAttempts": max_attempts,
                        "initialBackoff": "0.1s",
                        "maxBackoff": "2s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE", "CANCELLED"],
                    },
                }
            ],
        }
    )


def channel_options(caller: ChannelOptions = (), max_attempts: int = 5) -> list[tuple[str, Any]]:
    """The client's channel arguments: 64 MiB message limits and retries, then the caller's.

    The caller's options replace built-in ones with the same name (gRPC would otherwise keep
    whichever comes first), so ``options=[("grpc.max_receive_message_length", N)]`` works.
    """
    merged: dict[str, Any] = {
        "grpc.max_receive_message_length": DEFAULT_MESSAGE_BYTES,
        "grpc.max_send_message_length": DEFAULT_MESSAGE_BYTES,
        "grpc.enable_retries": 1,
        "grpc.service_config": service_config(max_attempts),
    }
    for name, value in caller:
        merged[name] = value
    return list(merged.items())


class ClientBase:
    """Target, default deadline, metadata, channel options, TLS and token of a client.

    TLS and token arguments left at ``None`` come from :class:`ClientSettings` (``VISIONRPC_*``).
    TLS is on with ``tls=True`` or any of ``ca_file``, ``cert_file``, ``key_file``; without a CA
    file the system's roots verify the server. ``tls=False`` forces plaintext. ``token=""`` sends
    no token even when ``VISIONRPC_TOKEN`` is set. A missing or unusable file raises
    :class:`~visionrpc.tls.TlsFileError` (a ``ValueError``) naming it.
    """

    def __init__(
        self,
        target: str | None,
        *,
        timeout: Timeout,
        metadata: Metadata,
        wait_for_ready: bool,
        options: ChannelOptions,
        settings: ClientSettings | None,
        tls: bool | None = None,
        ca_file: PathLike | None = None,
        cert_file: PathLike | None = None,
        key_file: PathLike | None = None,
        server_name: str | None = None,
        token: str | None = None,
    ) -> None:
        self.settings = s = settings or ClientSettings()
        self.target = target or s.target
        self.timeout: float | None = (
            s.timeout_s if isinstance(timeout, UseClientDefault) else timeout
        )
        ca = ca_file if ca_file is not None else s.ca_file
        cert = cert_file if cert_file is not None else s.client_cert_file
        key = key_file if key_file is not None else s.client_key_file
        self.tls: bool = (
            tls if tls is not None else s.use_tls or any(f is not None for f in (ca, cert, key))
        )
        self._credentials: grpc.ChannelCredentials | None = (
            channel_credentials(ca, cert, key) if self.tls else None
        )
        name = server_name if server_name is not None else s.server_name
        secret = token if token is not None else (s.token.get_secret_value() if s.token else "")
        auth = (("authorization", f"Bearer {secret.strip()}"),) if secret.strip() else ()
        self._metadata = (*auth, *metadata)
        self._wait_for_ready = wait_for_ready
        tls_options = [("grpc.ssl_target_name_override", name)] if name and self.tls else []
        self._options = channel_options([*tls_options, *options])

    def _call_options(self, timeout: Timeout, metadata: Metadata = ()) -> dict[str, Any]:
        """Keyword arguments for a stub call: deadline, metadata (with the current trace context,
        see ``client.tracing``) and wait_for_ready."""
        return {
            "timeout": self.timeout if isinstance(timeout, UseClientDefault) else timeout,
            "metadata": (*self._metadata, *metadata, *trace_metadata()) or None,
            "wait_for_ready": self._wait_for_ready or None,
        }
