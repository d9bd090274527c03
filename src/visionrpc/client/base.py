"""What the blocking and the asyncio client share: options, defaults, deadlines, retries.

``timeout`` has one meaning per value everywhere: a number is seconds, ``None`` is no deadline, and
:data:`USE_CLIENT_DEFAULT` is "the level above decides" (for a call: the client's timeout; for the
client: ``VISIONRPC_TIMEOUT_S``, 30 s unless set).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence
from typing import Any, Final

from visionrpc.client.settings import ClientSettings

MiB = 1024 * 1024
DEFAULT_MESSAGE_BYTES = 64 * MiB
"""The server's default message limits; the client matches them (gRPC's own default is 4 MiB)."""

RETRIED_SERVICES: tuple[str, ...] = (
    "visionrpc.v1.CoreServices",
    "visionrpc.v1.InferenceMethods",
    "grpc.health.v1.Health",
)
"""Services whose calls gRPC retries on UNAVAILABLE (before any response has arrived)."""


class UseClientDefault(enum.Enum):
    """Type of :data:`USE_CLIENT_DEFAULT`."""

    USE_CLIENT_DEFAULT = enum.auto()


USE_CLIENT_DEFAULT: Final = UseClientDefault.USE_CLIENT_DEFAULT
"""Sentinel: take the default from the level above (call → client → settings)."""

Timeout = float | None | UseClientDefault
Metadata = Sequence[tuple[str, str]]
ChannelOptions = Sequence[tuple[str, Any]]


def service_config(max_attempts: int = 5) -> str:
    """gRPC service config JSON with a retry policy for UNAVAILABLE."""
    return json.dumps(
        {
            "methodConfig": [
                {
                    "name": [{"service": name} for name in RETRIED_SERVICES],
                    "retryPolicy": {
                        "maxAttempts": max_attempts,
                        "initialBackoff": "0.1s",
                        "maxBackoff": "2s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ]
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
    """Target, default deadline, metadata and channel options of a client."""

    def __init__(
        self,
        target: str | None,
        *,
        timeout: Timeout,
        metadata: Metadata,
        wait_for_ready: bool,
        options: ChannelOptions,
        settings: ClientSettings | None,
    ) -> None:
        self.settings = settings or ClientSettings()
        self.target = target or self.settings.target
        self.timeout: float | None = (
            self.settings.timeout_s if isinstance(timeout, UseClientDefault) else timeout
        )
        self._metadata = tuple(metadata)
        self._wait_for_ready = wait_for_ready
        self._options = channel_options(options)

    def _call_options(self, timeout: Timeout, metadata: Metadata = ()) -> dict[str, Any]:
        """Keyword arguments for a stub call: deadline, metadata and wait_for_ready."""
        return {
            "timeout": self.timeout if isinstance(timeout, UseClientDefault) else timeout,
            "metadata": (*self._metadata, *metadata) or None,
            "wait_for_ready": self._wait_for_ready or None,
        }
