"""What every client command shares: ``--target`` and friends, and one-line call errors."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Annotated, Any

import grpc
import typer

TargetOpt = Annotated[
    str | None,
    typer.Option(
        "--target", help="Server address host:port [default: VISIONRPC_TARGET or 127.0.0.1:50051]"
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
TimeoutOpt = Annotated[
    float | None,
    typer.Option("--timeout", help="Deadline in seconds [default: VISIONRPC_TIMEOUT_S or 30]"),
]


@contextlib.contextmanager
def rpc_errors() -> Iterator[None]:
    """Turn gRPC failures into a one-line message and exit code 1 instead of a traceback."""
    try:
        yield
    except grpc.RpcError as exc:
        code = exc.code().name if hasattr(exc, "code") else "UNKNOWN"
        details = exc.details() if hasattr(exc, "details") else str(exc)
        typer.echo(f"error: {code}: {details}", err=True)
        raise typer.Exit(1) from None


def print_json(value: Any) -> None:
    typer.echo(json.dumps(value, default=str))
