"""What every client command shares: ``--target`` and friends, one-line errors, output helpers.

Exit codes of every command: 0 success, 1 a failed call (or a failed item), 2 a usage error.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import grpc
import typer
from rich.console import Console

from visionrpc.client.base import USE_CLIENT_DEFAULT, Timeout
from visionrpc.client.errors import CallError
from visionrpc.client.settings import ClientSettings
from visionrpc.errors import VisionRPCError

TargetOpt = Annotated[
    str | None,
    typer.Option(
        "--target", help=r"Server address host:port \[default: VISIONRPC_TARGET or 127.0.0.1:50051]"
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
TimeoutOpt = Annotated[
    float | None,
    typer.Option("--timeout", help=r"Deadline in seconds \[default: VISIONRPC_TIMEOUT_S or 30]"),
]


@dataclass(frozen=True)
class Connection:
    """How a client command connects: TLS files, server name and token (None: from the env)."""

    tls: bool | None = None
    ca_file: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    server_name: str | None = None
    token: str | None = None

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for Client/AsyncClient; unset ones fall back to VISIONRPC_*."""
        return {
            "tls": self.tls,
            "ca_file": self.ca_file,
            "cert_file": self.cert,
            "key_file": self.key,
            "server_name": self.server_name,
            "token": self.token,
        }


_CONNECTION_OPTIONS: dict[str, Any] = {
    "tls": Annotated[
        bool | None,
        typer.Option(
            "--tls/--no-tls",
            help=r"Connect with TLS (implied by --ca-file/--cert/--key) \[default: "
            "VISIONRPC_USE_TLS or off]",
            show_default=False,
        ),
    ],
    "ca_file": Annotated[
        Path | None,
        typer.Option(
            "--ca-file",
            help=r"PEM CA certificates that verify the server \[default: VISIONRPC_CA_FILE, "
            "else the system roots]",
        ),
    ],
    "cert": Annotated[
        Path | None,
        typer.Option(
            "--cert",
            help=r"PEM client certificate for mTLS \[default: VISIONRPC_CLIENT_CERT_FILE]",
        ),
    ],
    "key": Annotated[
        Path | None,
        typer.Option("--key", help=r"PEM key of --cert \[default: VISIONRPC_CLIENT_KEY_FILE]"),
    ],
    "server_name": Annotated[
        str | None,
        typer.Option(
            "--server-name",
            help=r"Name on the server's certificate, when not the target's host \[default: "
            "VISIONRPC_SERVER_NAME]",
        ),
    ],
    "token": Annotated[
        str | None,
        typer.Option(
            "--token",
            help=r"Bearer token sent with every call \[default: VISIONRPC_TOKEN]",
            show_default=False,
        ),
    ],
}

F = TypeVar("F", bound=Callable[..., Any])


def connection_options(command: F) -> F:
    """Give ``command`` the options --tls, --ca-file, --cert, --key, --server-name and --token.

    ``command`` takes a ``connection: Connection`` parameter instead of six: the decorator shows
    typer the six options and hands the command one :class:`Connection` made of them.
    """
    signature = inspect.signature(command, eval_str=True)
    kept = [p for p in signature.parameters.values() if p.name != "connection"]
    added = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=kind)
        for name, kind in _CONNECTION_OPTIONS.items()
    ]

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        given = {name: kwargs.pop(name, None) for name in _CONNECTION_OPTIONS}
        return command(*args, connection=Connection(**given), **kwargs)

    params = [*kept, *added]
    wrapper.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    return wrapper  # type: ignore[return-value]


_NO_SERVER = re.compile(
    r"failed to connect to all addresses|connections to all backends failing|connection refused|"
    r"errors resolving|dns resolution failed",
    re.IGNORECASE,
)
"""How gRPC words UNAVAILABLE when nothing answers at the address (the server's own UNAVAILABLE,
e.g. "server is starting", does not match)."""


class CliError(Exception):
    """A failure the command reports as one line ``error: <message>`` and this exit code."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def client_timeout(seconds: float | None) -> Timeout:
    """``--timeout`` for a Client: unset means the client's default (VISIONRPC_TIMEOUT_S)."""
    return USE_CLIENT_DEFAULT if seconds is None else seconds


def usage_error(message: str) -> CliError:
    """A problem with what the user gave (an option, an argument, a value on stdin): exit 2."""
    return CliError(message, 2)


def resolve_target(target: str | None) -> str:
    """The address a client built with ``target`` talks to (the same rule as the Client's)."""
    return target or ClientSettings().target


def is_no_server(exc: grpc.RpcError) -> bool:
    """True when the call failed because nothing answers at the target."""
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else ""
    return code == grpc.StatusCode.UNAVAILABLE and bool(_NO_SERVER.search(details or ""))


FLAG_FOR_FIELD = {
    "model": "--model",
    "confidence_threshold": "--conf",
    "iou_threshold": "--iou",
    "max_detections": "--max-det",
    "classes": "--classes",
    "return_masks": "--masks",
    "mask_format": "--mask-format",
    "agnostic_nms": "--agnostic-nms",
    "count": "--count",
    "room": "--room",
}
"""Request fields the server may refuse (``BadRequest``) → the CLI option that sets them."""


def _detail_note(exc: grpc.RpcError) -> str:
    """`` (option --conf)`` / `` (retry after 0.1s)`` from a CallError's details; else ""."""
    if not isinstance(exc, CallError):
        return ""
    notes = [
        f"option {FLAG_FOR_FIELD[v.field]}" if v.field in FLAG_FOR_FIELD else f"field {v.field}"
        for v in exc.field_violations
    ]
    if exc.retry_after is not None:
        notes.append(f"retry after {exc.retry_after:g}s")
    return f" ({'; '.join(notes)})" if notes else ""


def rpc_status(exc: grpc.RpcError) -> tuple[str, str]:
    """(status code name, details) of a failed call; details end with the option or field the
    server refused, and when to retry, where the status says so."""
    code = exc.code().name if hasattr(exc, "code") else "UNKNOWN"
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return code, (details or "") + _detail_note(exc)


_TLS_FAILED = re.compile(r"(?:tls|ssl) handshake failed", re.IGNORECASE)
_CLOSED = re.compile(
    r"(?:failed to connect to all addresses|connections to all backends failing).*socket closed",
    re.IGNORECASE,
)
"""pick_first and round_robin (the client's policy) word it differently."""


def describe_rpc_error(exc: grpc.RpcError, target: str | None = None, local: bool = False) -> str:
    """The one line a failed call prints: a hint when no server answers, else CODE: details."""
    code, details = rpc_status(exc)
    if code == "UNAVAILABLE" and _TLS_FAILED.search(details):
        reason = details.rpartition("OPENSSL_internal:")[2].removesuffix(": OK").strip()
        return (
            f"TLS handshake with {resolve_target(target)} failed ({reason}); check --ca-file "
            "(the CA that signed the server's certificate) and --server-name"
        )
    if code == "UNAVAILABLE" and _CLOSED.search(details):
        return (
            f"the server at {resolve_target(target)} closed the connection; it may need TLS "
            "(--tls, --ca-file) or a client certificate (--cert, --key)"
        )
    if is_no_server(exc):
        hint = "or use `--local`" if local else "there or pass --target HOST:PORT"
        return f"no server at {resolve_target(target)}; start `visionrpc serve` {hint}"
    return f"{code}: {details}" if details else code


@contextlib.contextmanager
def rpc_errors(target: str | None = None, *, local: bool = False) -> Iterator[None]:
    """Turn failures into one line on stderr instead of a traceback.

    A failed call prints ``error: CODE: details`` (or, when nothing answers at the address, which
    address and what to do) and exits 1; a :class:`CliError` prints its message and exit code; a
    domain error (a local server whose models cannot load) prints its message and exits 1.
    ``target`` is the command's ``--target`` (None: the default target), named in the hint.
    ``local``: the command offers ``--local``, so the hint suggests it.
    """
    try:
        yield
    except CliError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None
    except VisionRPCError as exc:  # e.g. a local server (eval, demo --local) that cannot start
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    except grpc.RpcError as exc:
        typer.echo(f"error: {describe_rpc_error(exc, target, local)}", err=True)
        raise typer.Exit(1) from None


EXTRAS = {
    "images": ("OpenCV and pycocotools", ("cv2", "pycocotools.mask")),
    "server": (
        "the server extra",
        ("onnxruntime", "grpc_reflection", "yaml", "cv2", "pycocotools"),
    ),
}
"""What each optional extra of the package brings, and modules that show it is installed."""


def require_extra(extra: str, purpose: str) -> None:
    """Fail with an install hint, before any call, when an optional extra is not installed."""
    what, modules = EXTRAS[extra]
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            missing = exc.name or module
            raise CliError(
                f'{purpose} needs {what} ({missing} is missing): pip install "visionrpc[{extra}]"'
            ) from None


def print_json(value: Any) -> None:
    typer.echo(json.dumps(value, default=str))


WIDE = 10_000
"""Width of a console that is not a terminal: tables take their natural width, never cut."""


def table_console() -> Console:
    """A console for tables on stdout: the terminal's width (cells fold), unlimited when piped."""
    console = Console()
    return console if console.is_terminal else Console(width=WIDE)
