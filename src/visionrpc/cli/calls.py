"""The CoreServices and health commands: ping, numbers stream/upload, chat, health.

Each command is a plain function registered in cli/main.py; a failed call prints
``error: CODE: details`` on stderr and exits with code 1 (2 for bad input).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Annotated, TextIO

import typer

from visionrpc.cli.common import (
    Connection,
    JsonOpt,
    TargetOpt,
    TimeoutOpt,
    client_timeout,
    connection_options,
    print_json,
    rpc_errors,
    usage_error,
)
from visionrpc.client import ChatMessageResult, Client


@connection_options
def ping(
    message: Annotated[str, typer.Argument(help="Text the server echoes.")] = "ping",
    target: TargetOpt = None,
    timeout: TimeoutOpt = None,
    as_json: JsonOpt = False,
    *,
    connection: Connection,
) -> None:
    """Unary call: echo a message and show the server's version, instance and clock."""
    with (
        rpc_errors(target),
        Client(target, timeout=client_timeout(timeout), **connection.client_kwargs()) as client,
    ):
        started = time.perf_counter()
        result = client.ping(message)
        rtt_ms = round((time.perf_counter() - started) * 1000, 3)
    if as_json:
        print_json(
            {
                "message": result.message,
                "server_time": result.server_time.isoformat(),
                "server_version": result.server_version,
                "instance_id": result.instance_id,
                "rtt_ms": rtt_ms,
            }
        )
    else:
        typer.echo(
            f"{result.message!r} from visionrpc {result.server_version} "
            f"(instance {result.instance_id}) at {result.server_time.isoformat()} in {rtt_ms} ms"
        )


numbers_app = typer.Typer(help="Streaming numbers: server streaming and client streaming calls.")


@numbers_app.command("stream")
@connection_options
def numbers_stream(
    start: Annotated[int, typer.Option(help="First value.")] = 0,
    count: Annotated[int, typer.Option(min=0, help="How many numbers.")] = 10,
    step: Annotated[int, typer.Option(help="Increment; 0 means 1.")] = 1,
    interval_ms: Annotated[int, typer.Option(min=0, help="Pause between numbers.")] = 0,
    target: TargetOpt = None,
    timeout: Annotated[float | None, typer.Option(help="Deadline for the whole stream.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    *,
    connection: Connection,
) -> None:
    """Server streaming: print numbers as the server produces them."""
    with rpc_errors(target), Client(target, **connection.client_kwargs()) as client:
        for number in client.stream_numbers(start, count, step, interval_ms, timeout=timeout):
            if as_json:
                print_json({"index": number.index, "value": number.value})
            else:
                typer.echo(f"{number.index}\t{number.value}")


def _integer(token: str, where: str) -> int:
    try:
        return int(token)
    except ValueError:
        raise usage_error(f"not an integer: {token!r} ({where})") from None


def _read_numbers(stream: TextIO) -> Iterator[int]:
    """Whitespace-separated integers; a bad token ends the upload as a usage error (exit 2)."""
    for line_number, line in enumerate(stream, start=1):
        for token in line.split():
            yield _integer(token, f"line {line_number} of stdin")


@numbers_app.command("upload")
@connection_options
def numbers_upload(
    values: Annotated[
        list[str] | None,
        typer.Argument(
            help="Integers to upload; read from stdin when none (use -- before -5).",
            show_default=False,
        ),
    ] = None,
    target: TargetOpt = None,
    timeout: TimeoutOpt = None,
    as_json: JsonOpt = False,
    *,
    connection: Connection,
) -> None:
    """Client streaming: upload integers, print count/sum/min/max/mean.

    Arguments are checked before the call; a value on stdin that is not an integer cancels the
    upload. Either way the bad value is named and the exit code is 2.
    """
    with rpc_errors(target):
        source: Iterable[int] = (
            [_integer(v, f"argument {i}") for i, v in enumerate(values, start=1)]
            if values
            else _read_numbers(sys.stdin)
        )
        with Client(
            target, timeout=client_timeout(timeout), **connection.client_kwargs()
        ) as client:
            result = client.upload_numbers(source)
    summary = {
        "count": result.count,
        "sum": result.sum,
        "min": result.min,
        "max": result.max,
        "mean": result.mean,
    }
    if as_json:
        print_json(summary)
    else:
        typer.echo(" ".join(f"{k}={v}" for k, v in summary.items()))


@connection_options
def health(
    service: Annotated[str, typer.Option(help="Service name; empty = the whole server.")] = "",
    target: TargetOpt = None,
    timeout: TimeoutOpt = None,
    as_json: JsonOpt = False,
    *,
    connection: Connection,
) -> None:
    """grpc.health.v1 check; exit code 0 only when SERVING (usable as a probe)."""
    with (
        rpc_errors(target),
        Client(target, timeout=client_timeout(timeout), **connection.client_kwargs()) as client,
    ):
        result = client.health(service)
    if as_json:
        print_json({"service": result.service, "status": result.status})
    else:
        typer.echo(result.status)
    if not result.serving:
        raise typer.Exit(1)


# -- chat -----------------------------------------------------------------------------------------


def format_chat(message: ChatMessageResult) -> str:
    """One line per message; an empty text is a participant's join announcement."""
    if not message.text:
        return f"* {message.sender} joined {message.room}"
    return f"[{message.sent_at:%H:%M:%S} #{message.seq}] {message.sender}: {message.text}"


@connection_options
def chat(
    room: Annotated[str, typer.Option(help="Room to join.")] = "lobby",
    name: Annotated[str, typer.Option(help="Your name in the room.")] = "anonymous",
    target: TargetOpt = None,
    *,
    connection: Connection,
) -> None:
    """Bidirectional streaming: send stdin lines to a room, print others' messages as they come.

    Joining posts an empty message (shown to others as "joined"). End with Ctrl-D (leave after
    the messages already posted arrive) or Ctrl-C.
    """
    stdin = sys.stdin  # captured here: the request iterator runs on a gRPC thread

    def outgoing() -> Iterator[str]:
        yield ""  # join now, before the first line is typed
        for line in stdin:
            if text := line.rstrip("\r\n"):
                yield text

    with rpc_errors(target), Client(target, **connection.client_kwargs()) as client:
        for message in client.chat(room, name, outgoing()):
            if message.sender == name:
                if not message.text:
                    typer.echo(f"* joined {room} as {name}; type lines, Ctrl-D to leave", err=True)
                continue  # your own lines are already on your terminal
            typer.echo(format_chat(message))
