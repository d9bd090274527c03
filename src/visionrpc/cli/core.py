"""Core CLI commands: serve, ping, numbers stream/upload, chat, health and demo.

Each command is a plain function registered in cli/main.py. Client commands share ``--target``
and turn a failed call into ``error: CODE: details`` on stderr with exit code 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TextIO

import grpc
import typer

from visionrpc.client import AsyncClient, ChatMessageResult, Client
from visionrpc.settings import LogFormat, Settings

TargetOpt = Annotated[
    str | None, typer.Option("--target", help="Server address host:port [default: settings.target]")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
TimeoutOpt = Annotated[
    float | None,
    typer.Option("--timeout", help="Deadline in seconds [default: settings.timeout_s]"),
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


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(value, default=str))


# -- serve ----------------------------------------------------------------------------------------


def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port; 0 picks a free one.")] = None,
    models: Annotated[Path | None, typer.Option(help="Model repository directory.")] = None,
    default_model: Annotated[
        str | None, typer.Option(help="Model used when none is named.")
    ] = None,
    log_level: Annotated[str | None, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = None,
    log_format: Annotated[LogFormat | None, typer.Option(help="text or json.")] = None,
    grace: Annotated[
        float | None, typer.Option(help="Seconds in-flight calls get on SIGTERM/SIGINT.")
    ] = None,
    access_log: Annotated[
        bool | None, typer.Option("--access-log/--no-access-log", help="One log line per call.")
    ] = None,
) -> None:
    """Run the server until SIGTERM/SIGINT (flags override VISIONRPC_* environment variables)."""
    from visionrpc.logs import configure_logging
    from visionrpc.server.app import default_services, run

    flags: dict[str, Any] = {
        "host": host,
        "port": port,
        "models_dir": models,
        "default_model": default_model,
        "log_level": log_level,
        "log_format": log_format,
        "grace_period_s": grace,
        "access_log": access_log,
    }
    settings = Settings(**{k: v for k, v in flags.items() if v is not None})
    configure_logging(settings.log_level, settings.log_format)
    run(settings, default_services(settings))


# -- unary / streaming client commands ------------------------------------------------------------


def ping(
    message: Annotated[str, typer.Argument(help="Text the server echoes.")] = "ping",
    target: TargetOpt = None,
    timeout: TimeoutOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Unary call: echo a message and show the server's version, instance and clock."""
    with rpc_errors(), Client(target, timeout=timeout) as client:
        started = time.perf_counter()
        result = client.ping(message)
        rtt_ms = round((time.perf_counter() - started) * 1000, 3)
    if as_json:
        _print_json(
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
def numbers_stream(
    start: Annotated[int, typer.Option(help="First value.")] = 0,
    count: Annotated[int, typer.Option(min=0, help="How many numbers.")] = 10,
    step: Annotated[int, typer.Option(help="Increment; 0 means 1.")] = 1,
    interval_ms: Annotated[int, typer.Option(min=0, help="Pause between numbers.")] = 0,
    target: TargetOpt = None,
    timeout: Annotated[float | None, typer.Option(help="Deadline for the whole stream.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """Server streaming: print numbers as the server produces them."""
    with rpc_errors(), Client(target) as client:
        for number in client.stream_numbers(start, count, step, interval_ms, timeout=timeout):
            if as_json:
                _print_json({"index": number.index, "value": number.value})
            else:
                typer.echo(f"{number.index}\t{number.value}")


def _read_numbers(stream: TextIO) -> Iterator[int]:
    for line in stream:
        for token in line.split():
            try:
                yield int(token)
            except ValueError:
                raise typer.BadParameter(f"not an integer: {token!r}") from None


@numbers_app.command("upload")
def numbers_upload(
    values: Annotated[
        list[int] | None,
        typer.Argument(help="Integers to upload; read from stdin when none (use -- before -5)."),
    ] = None,
    target: TargetOpt = None,
    timeout: TimeoutOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Client streaming: upload integers, print count/sum/min/max/mean."""
    source = values if values else _read_numbers(sys.stdin)
    with rpc_errors(), Client(target, timeout=timeout) as client:
        result = client.upload_numbers(source)
    summary = {
        "count": result.count,
        "sum": result.sum,
        "min": result.min,
        "max": result.max,
        "mean": result.mean,
    }
    if as_json:
        _print_json(summary)
    else:
        typer.echo(" ".join(f"{k}={v}" for k, v in summary.items()))


def health(
    service: Annotated[str, typer.Option(help="Service name; empty = the whole server.")] = "",
    target: TargetOpt = None,
    timeout: TimeoutOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """grpc.health.v1 check; exit code 0 only when SERVING (usable as a probe)."""
    with rpc_errors(), Client(target, timeout=timeout) as client:
        result = client.health(service)
    if as_json:
        _print_json({"service": result.service, "status": result.status})
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


def chat(
    room: Annotated[str, typer.Option(help="Room to join.")] = "lobby",
    name: Annotated[str, typer.Option(help="Your name in the room.")] = "anonymous",
    target: TargetOpt = None,
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

    with rpc_errors(), Client(target) as client:
        for message in client.chat(room, name, outgoing()):
            if message.sender == name:
                if not message.text:
                    typer.echo(f"* joined {room} as {name}; type lines, Ctrl-D to leave", err=True)
                continue  # your own lines are already on your terminal
            typer.echo(format_chat(message))


# -- demo -----------------------------------------------------------------------------------------

Say = Callable[[str], None]
DemoStep = Callable[[AsyncClient, Say], Awaitable[None]]


async def demo_ping(client: AsyncClient, say: Say) -> None:
    result = await client.ping("hello from the demo")
    say(f"echo={result.message!r} version={result.server_version}")
    say(f"instance={result.instance_id} server_time={result.server_time.isoformat()}")


async def demo_stream_numbers(client: AsyncClient, say: Say) -> None:
    values = [
        n.value async for n in client.stream_numbers(start=10, count=5, step=5, interval_ms=50)
    ]
    say(f"start=10 step=5 count=5 every 50 ms -> {values}")


async def demo_upload_numbers(client: AsyncClient, say: Say) -> None:
    values = [3, -1, 4, 1, -5, 9]
    result = await client.upload_numbers(values)
    say(f"uploaded {values}")
    say(f"count={result.count} sum={result.sum} min={result.min} max={result.max}")
    say(f"mean={result.mean:.3f}")


class _DemoPeer:
    """A scripted chat participant: ``say`` queues a line, ``expect`` waits for a text."""

    def __init__(self, client: AsyncClient, room: str, name: str) -> None:
        self.name = name
        self._outbox: asyncio.Queue[str | None] = asyncio.Queue()
        self.seen: list[ChatMessageResult] = []
        self._stream = client.chat(room, name, self._outgoing())

    async def _outgoing(self) -> Any:
        while (text := await self._outbox.get()) is not None:
            yield text

    def say(self, text: str) -> None:
        self._outbox.put_nowait(text)

    async def expect(self, sender: str, text: str) -> None:
        async for message in self._stream:
            self.seen.append(message)
            if (message.sender, message.text) == (sender, text):
                return

    async def leave(self) -> None:
        self._outbox.put_nowait(None)
        async for message in self._stream:
            self.seen.append(message)


async def demo_chat(client: AsyncClient, say: Say) -> None:
    room = f"demo-{uuid.uuid4().hex[:6]}"
    alice, bob = _DemoPeer(client, room, "alice"), _DemoPeer(client, room, "bob")
    alice.say("")
    await alice.expect("alice", "")
    bob.say("")
    await bob.expect("bob", "")
    alice.say("hi bob")
    await bob.expect("alice", "hi bob")
    bob.say("hi alice")
    await alice.expect("bob", "hi alice")
    await asyncio.gather(alice.leave(), bob.leave())
    for peer in (alice, bob):
        say(f"{peer.name} saw:")
        for message in peer.seen:
            say(f"  {format_chat(message)}")
    shared = [m.seq for m in bob.seen]
    same = [m.seq for m in alice.seen if m.seq >= shared[0]] == shared
    say(f"room {room}: both saw seq {shared} in the same order: {same}")


DEMO_SAMPLE = (1001, 11)
"""(seed, index) of the generated image the demo sends: held out from training, 2 defects."""


def _box_text(box: tuple[float, float, float, float]) -> str:
    return "(" + ", ".join(f"{v:.0f}" for v in box) + ")"


async def demo_infer(client: AsyncClient, say: Say) -> None:
    """Send a generated image with planted defects to Infer; print planted vs found."""
    from visionrpc.evaluation import encode_for_eval
    from visionrpc.synthetic import generate_sample

    sample = generate_sample(*DEMO_SAMPLE)
    data = encode_for_eval(sample)
    try:
        result = await client.infer(data, return_masks=True, request_id="demo")
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
            raise
        say("skipped: this server does not offer visionrpc.v1.InferenceMethods")
        return
    say(
        f"generated image seed={DEMO_SAMPLE[0]} index={DEMO_SAMPLE[1]} "
        f"({sample.width}x{sample.height}, {sample.texture}, JPEG {len(data)} bytes)"
    )
    say(
        f"model {result.model} (version {result.model_version}), "
        f"{result.timings.total_ms:.1f} ms on the server"
    )
    say(f"planted ({len(sample.defects)}):")
    for defect in sample.defects:
        say(f"  {defect.class_name:<8} box={_box_text(defect.bbox)}")
    say(f"found ({len(result.detections)}):")
    for d in result.detections:
        box = (d.box.x_min, d.box.y_min, d.box.x_max, d.box.y_max)
        area = f" mask={d.mask.area_px}px" if d.mask is not None else ""
        say(f"  {d.class_name:<8} box={_box_text(box)} score={d.score:.2f}{area}")


DEMO_STEPS: list[tuple[str, DemoStep]] = [
    ("Ping (unary)", demo_ping),
    ("StreamNumbers (server streaming)", demo_stream_numbers),
    ("UploadNumbers (client streaming)", demo_upload_numbers),
    ("Chat (bidirectional streaming)", demo_chat),
    ("Infer (defect detection on a generated image)", demo_infer),
]
"""The demo's sections, in order. Append (title, async step) to show more."""


async def run_demo(target: str | None, say: Say = typer.echo) -> None:
    """Run every step of DEMO_STEPS against ``target``, printing a section per step."""
    async with AsyncClient(target, wait_for_ready=True) as client:
        health = await client.health()
        say(f"server {client.target} health: {health.status}")
        for title, step in DEMO_STEPS:
            say(f"\n== {title} ==")
            await step(client, say)


def demo(
    target: TargetOpt = None,
    local: Annotated[
        bool, typer.Option("--local", help="Start a server in this process and use it.")
    ] = False,
) -> None:
    """Call every CoreServices method and Infer once and show what each returns."""
    if not local:
        with rpc_errors():
            asyncio.run(run_demo(target))
        return
    if target is not None:
        raise typer.BadParameter("use either --target or --local, not both")
    from visionrpc.server.local import running_server

    with running_server(Settings(port=0, access_log=False)) as server, rpc_errors():
        asyncio.run(run_demo(server.address))
