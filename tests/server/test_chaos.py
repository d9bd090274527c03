"""Bounded chaos: a client killed mid-stream, a server killed and restarted under retrying clients.

Real processes, real sockets, SIGKILL (no chance to clean up). Bounded in time and count: every
wait has a limit, every loop a number of calls.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest

from tests.helpers import StartServer, free_port, make_settings, wait_until
from tests.runtime.onnx_builders import tiny_models
from tests.server.drain_helpers import killed_at_exit, start_serve, wait_serving
from visionrpc.client import AsyncClient, Client
from visionrpc.server.inference_servicer import InferenceServicer

IMAGE = np.full((16, 16, 3), 7, np.uint8)
DOWN_S = 5.0

STREAMING_CLIENT = textwrap.dedent(
    """
    import itertools, sys, threading
    import numpy as np
    from visionrpc.client import Client

    client = Client(sys.argv[1], timeout=None)
    started = threading.Barrier(4)

    def numbers():
        for n, _ in enumerate(client.stream_numbers(count=100_000, interval_ms=5)):
            if n == 0:
                started.wait()

    def chat():
        def outgoing():
            yield "hello"
            threading.Event().wait()  # never says more
        for message in client.chat("line-1", "doomed", outgoing()):
            started.wait()

    threading.Thread(target=numbers, daemon=True).start()
    threading.Thread(target=chat, daemon=True).start()
    threading.Thread(target=lambda: (started.wait(), print("streaming", flush=True))).start()
    image = np.zeros((16, 16, 3), np.uint8)
    for n, _ in enumerate(client.infer_stream(itertools.repeat(image))):
        if n == 3:
            started.wait()
    """
)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_models(tmp_path_factory.mktemp("models"))


async def test_a_client_killed_mid_stream_frees_its_streams_and_others_are_served(
    start_server: StartServer, models: Path
) -> None:
    overrides = {"models_dir": models, "access_log": False}
    running = await start_server([InferenceServicer(make_settings(**overrides))], **overrides)
    async with AsyncClient(running.address) as warm:  # starts the model's batcher task
        assert (await warm.infer(IMAGE)).image_width == 16
    tasks_before = len(asyncio.all_tasks())  # gRPC's own, the batcher's, this test's
    client = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        STREAMING_CLIENT,
        running.address,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        line = await asyncio.wait_for(client.stdout.readline(), 60)  # type: ignore[union-attr]
        assert line == b"streaming\n"
        assert running.server.in_flight == 3  # InferStream, StreamNumbers, Chat
        assert running.core.hub.members("line-1") == ["doomed"]
    finally:
        client.send_signal(signal.SIGKILL)
        await client.wait()

    await wait_until(lambda: running.server.in_flight == 0, timeout=30)
    await wait_until(lambda: running.core.active_streams == 0, timeout=30)
    await wait_until(lambda: running.core.hub.rooms() == [], timeout=30)
    await wait_until(lambda: len(asyncio.all_tasks()) <= tasks_before, timeout=30)
    async with AsyncClient(running.address) as other:
        results = [r async for r in other.infer_stream([IMAGE] * 3)]
        assert [r.ok for r in results] == [True, True, True]
        assert (await other.ping("still here")).message == "still here"
    assert running.server.in_flight == 0


@dataclass
class Tally:
    """Outcomes of one client's calls, split at the moment the server was killed."""

    ok_before: int = 0
    ok_after: int = 0
    failures: list[str] = field(default_factory=list)


def _call_loop(
    client: Client, tally: Tally, killed: threading.Event, stop: threading.Event
) -> None:
    """Infer until ``stop`` (bounded by the test), counting what happens."""
    for _ in range(100_000):
        if stop.is_set():
            return
        try:
            client.infer(IMAGE)
        except grpc.RpcError as exc:
            tally.failures.append(f"{exc.code().name}: {exc.details()}")
            time.sleep(0.05)  # a user's loop would not spin on a dead server either
            continue
        if killed.is_set():
            tally.ok_after += 1
        else:
            tally.ok_before += 1


def test_a_server_killed_and_restarted_on_its_port_is_used_again_by_retrying_clients(
    models: Path, tmp_path: Path
) -> None:
    """The server is down for DOWN_S, more than the channel's retries cover (five attempts with
    backoff: at most 1.5 s). With ``wait_for_ready`` no call fails across the restart (calls wait
    for the server, up to their deadline). Without it, calls made while the server is down fail
    UNAVAILABLE (and nothing else), and calls succeed again once it is back."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    patient, plain = Tally(), Tally()
    killed, stop = threading.Event(), threading.Event()
    with killed_at_exit(start_serve(port, models, log)) as first:
        wait_serving(address, first)
        with (
            Client(address, wait_for_ready=True, timeout=60) as waiting_client,
            Client(address, timeout=10) as plain_client,
        ):
            loops = [
                threading.Thread(target=_call_loop, args=(waiting_client, patient, killed, stop)),
                threading.Thread(target=_call_loop, args=(plain_client, plain, killed, stop)),
            ]
            for loop in loops:
                loop.start()
            try:
                _wait(lambda: patient.ok_before >= 20 and plain.ok_before >= 20)
                first.send_signal(signal.SIGKILL)
                first.wait(30)
                killed.set()
                time.sleep(DOWN_S)
                with killed_at_exit(start_serve(port, models, log)) as second:
                    wait_serving(address, second)
                    _wait(lambda: patient.ok_after >= 20 and plain.ok_after >= 20)
                    stop.set()
                    for loop in loops:
                        loop.join(90)
            finally:
                stop.set()
    assert patient.failures == []
    assert patient.ok_after >= 20 and plain.ok_after >= 20
    assert plain.failures
    assert {failure.partition(":")[0] for failure in plain.failures} == {"UNAVAILABLE"}


def _wait(predicate: Callable[[], bool], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(0.02)
