"""``python -m visionrpc.healthcheck [HOST:PORT] [SERVICE]``: a container health probe.

It imports only gRPC and the health stubs (not the CLI, pydantic or the runtime), so a probe every
few seconds costs a small fraction of starting the whole CLI. Exit code 0 when the server reports
SERVING, 1 otherwise (NOT_SERVING while models load or while draining, or no answer), with one
line on stdout or stderr. The default target is 127.0.0.1 and ``$VISIONRPC_PORT`` (50051).

TLS and the token come from the client's variables, read here without the client's settings class:
``VISIONRPC_USE_TLS``, ``VISIONRPC_CA_FILE``, ``VISIONRPC_CLIENT_CERT_FILE``/``_KEY_FILE`` (a
server that requires client certificates), ``VISIONRPC_SERVER_NAME`` (the certificate's name, as
the probe dials 127.0.0.1) and ``VISIONRPC_TOKEN`` (only when health is not an open service).
"""

from __future__ import annotations

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from visionrpc.tls import TlsFileError, channel_credentials

TIMEOUT_S = 3.0
_TRUE = ("1", "true", "yes", "on")


def _channel(target: str, env: dict[str, str]) -> grpc.Channel:
    """A channel to ``target`` as the VISIONRPC_* client variables in ``env`` describe."""
    files = [env.get(f"VISIONRPC_{n}") or None for n in ("CA_FILE", "CLIENT_CERT_FILE")]
    files.append(env.get("VISIONRPC_CLIENT_KEY_FILE") or None)
    if env.get("VISIONRPC_USE_TLS", "").strip().lower() not in _TRUE and not any(files):
        return grpc.insecure_channel(target)
    name = env.get("VISIONRPC_SERVER_NAME", "")
    options = [("grpc.ssl_target_name_override", name)] if name else []
    return grpc.secure_channel(target, channel_credentials(*files), options=options)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    target = args[0] if args else f"127.0.0.1:{os.environ.get('VISIONRPC_PORT', '50051')}"
    service = args[1] if len(args) > 1 else ""
    request = health_pb2.HealthCheckRequest(service=service)
    token = os.environ.get("VISIONRPC_TOKEN", "").strip()
    metadata = [("authorization", f"Bearer {token}")] if token else None
    try:
        with _channel(target, dict(os.environ)) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                request, timeout=TIMEOUT_S, metadata=metadata
            )
    except TlsFileError as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
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
