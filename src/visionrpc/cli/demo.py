"""``visionrpc demo``: every CoreServices method and Infer once, against a server or --local."""

from __future__ import annotations

import asyncio
import importlib.resources
import json
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated, Any

import grpc
import typer

from visionrpc.cli.calls import format_chat
from visionrpc.cli.common import (
    Connection,
    TargetOpt,
    connection_options,
    require_extra,
    rpc_errors,
)
from visionrpc.client import AsyncClient, ChatMessageResult

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


def demo_image() -> tuple[bytes, dict[str, Any]]:
    """The image the demo sends (a generated surface, held out from training) and what was
    planted in it; shipped in the package so that a client-only install can run the demo."""
    assets = importlib.resources.files("visionrpc.cli").joinpath("assets")
    info = json.loads(assets.joinpath("demo.json").read_text(encoding="utf-8"))
    return assets.joinpath("demo.jpg").read_bytes(), info


def _box_text(box: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.0f}" for v in box) + ")"


async def demo_infer(client: AsyncClient, say: Say) -> None:
    """Send a generated image with planted defects to Infer; print planted vs found."""
    data, info = demo_image()
    try:
        result = await client.infer(data, return_masks=True, request_id="demo")
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
            raise
        say("skipped: this server does not offer visionrpc.v1.InferenceMethods")
        return
    say(
        f"generated image seed={info['seed']} index={info['index']} "
        f"({info['width']}x{info['height']}, {info['texture']}, JPEG {len(data)} bytes)"
    )
    say(
        f"model {result.model} (version {result.model_version}), "
        f"{result.timings.total_ms:.1f} ms on the server"
    )
    say(f"planted ({len(info['defects'])}):")
    for defect in info["defects"]:
        say(f"  {defect['class_name']:<8} box={_box_text(defect['bbox'])}")
    say(f"found ({len(result.detections)}):")
    for d in result.detections:
        box = (d.box.x_min, d.box.y_min, d.box.x_max, d.box.y_max)
        area = f" mask={d.mask_area_px}px" if d.mask_area_px is not None else ""
        say(f"  {d.class_name:<8} box={_box_text(box)} score={d.score:.2f}{area}")


DEMO_STEPS: list[tuple[str, DemoStep]] = [
    ("Ping (unary)", demo_ping),
    ("StreamNumbers (server streaming)", demo_stream_numbers),
    ("UploadNumbers (client streaming)", demo_upload_numbers),
    ("Chat (bidirectional streaming)", demo_chat),
    ("Infer (defect detection on a generated image)", demo_infer),
]
"""The demo's sections, in order. Append (title, async step) to show more."""


async def run_demo(
    target: str | None, say: Say = typer.echo, connection: Connection | None = None
) -> None:
    """Run every step of DEMO_STEPS against ``target``, printing a section per step."""
    options = connection.client_kwargs() if connection is not None else {}
    async with AsyncClient(target, **options) as client:
        health = await client.health()
        say(f"server {client.target} health: {health.status}")
        for title, step in DEMO_STEPS:
            say(f"\n== {title} ==")
            await step(client, say)


@connection_options
def demo(
    target: TargetOpt = None,
    local: Annotated[
        bool, typer.Option("--local", help="Start a server in this process and use it.")
    ] = False,
    *,
    connection: Connection,
) -> None:
    """Call every CoreServices method and Infer once and show what each returns.

    --local needs the server extra (pip install "visionrpc\\[server]"); without it, run the
    demo against a server with --target.
    """
    if not local:
        with rpc_errors(target, local=True):
            asyncio.run(run_demo(target, connection=connection))
        return
    if target is not None:
        raise typer.BadParameter("use either --target or --local, not both")
    with rpc_errors(local=True):
        require_extra("server", "--local")
        from visionrpc.server.local import running_server
        from visionrpc.settings import Settings

        with running_server(Settings(port=0, access_log=False)) as server:
            # the local server is plaintext and without tokens: no connection options
            asyncio.run(run_demo(server.address, connection=Connection(tls=False, token="")))
