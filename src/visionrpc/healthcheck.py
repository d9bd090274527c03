"""``python -m visionrpc.healthcheck [HOST:PORT] [SERVICE]``: a container health probe.

It imports only gRPC and the health stubs (not the CLI, pydantic or the runtime), so a probe every
few seconds costs a small fraction of starting the whole CLI. Exit code 0 when the server reports
SERVING, 1 otherwise (NOT_SERVING while models load or while draining, or no answer), with one
line on stdout or stderr. The default target is 127.0.0.1 and ``$VISIONRPC_PORT`` (50051).
"""

from __future__ import annotations

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

TIMEOUT_S = 3.0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    target = args[0] if args else f"127.0.0.1:{os.environ.get('VISIONRPC_PORT', '50051')}"
    service = args[1] if len(args) > 1 else ""
    request = health_pb2.HealthCheckRequest(service=service)
    try:
        with grpc.insecure_channel(target) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(request, timeout=TIMEOUT_S)
    except grpc.RpcError as exc:
        code = exc.code().name if isinstance(exc, grpc.Call) else "UNAVAILABLE"
        details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
        print(f"unhealthy: {target}: {code}: {details}", file=sys.stderr)
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{target} {service or '(server)'}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())
