"""grpc.health.v1 that tells a caller which names it knows when asked for another one.

grpcio-health-checking answers Check of an unknown service with a bare NOT_FOUND (no message), so
`visionrpc health --service nope` could only say "NOT_FOUND: ". Check now names the services this
server reports on. Watch keeps the protocol's behaviour (SERVICE_UNKNOWN, the stream stays open):
client-side health checking in gRPC libraries relies on it.
"""

from __future__ import annotations

from typing import Any

import grpc
from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as _health_aio  # type: ignore[attr-defined]

SERVICE_NAME: str = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


class HealthServicer(_health_aio.HealthServicer):  # type: ignore[misc]
    """The asyncio health servicer of grpcio-health-checking, with a NOT_FOUND that explains."""

    def __init__(self) -> None:
        super().__init__()
        self._known: dict[str, None] = {"": None}  # insertion-ordered set

    async def set(self, service: str, status: Any) -> None:
        self._known[service] = None
        await super().set(service, status)

    def unknown_service_message(self, service: str) -> str:
        names = ", ".join("'' (overall)" if name == "" else name for name in self._known)
        return f"unknown service {service!r}; this server reports health for: {names}"

    async def Check(self, request: health_pb2.HealthCheckRequest, context: Any) -> Any:
        if request.service not in self._known:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, self.unknown_service_message(request.service)
            )
        return await super().Check(request, context)
