"""Request bytes that are not a valid protobuf of the method's request type: INVALID_ARGUMENT with
a message that says what to check, one rate-limited log line each, and the server keeps serving.

Raw channels (no request serializer) send the garbage, for every call type of CoreServices and
InferenceMethods, on real servers over real sockets.
"""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import grpc
import pytest

from tests.helpers import RunningServer, StartServer, make_settings
from visionrpc.logs import LINES_PER_SECOND
from visionrpc.server.inference_servicer import InferenceServicer
from visionrpc.v1 import core_pb2, core_pb2_grpc

GARBAGE = b"\xff\xff"
DEADLINE_S = 30.0
PROTO_HINT = "check that the client and the server use the same .proto"


@pytest.fixture
async def served(start_server: StartServer) -> RunningServer:
    return await start_server([InferenceServicer(make_settings())], access_log=True)


async def _still_serves(address: str) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await core_pb2_grpc.CoreServicesStub(channel).Ping(
            core_pb2.PingRequest(message="still here"), timeout=DEADLINE_S
        )
        assert reply.message == "still here"


async def _one(channel: grpc.aio.Channel, method: str, kind: str) -> grpc.aio.AioRpcError:
    """Send GARBAGE to ``method`` as a ``kind`` call; the error the call ends with."""

    async def garbage() -> AsyncIterator[bytes]:
        yield GARBAGE

    try:
        if kind == "unary_unary":
            await channel.unary_unary(method, None, None)(GARBAGE, timeout=DEADLINE_S)
        elif kind == "unary_stream":
            async for _ in channel.unary_stream(method, None, None)(GARBAGE, timeout=DEADLINE_S):
                pass
        elif kind == "stream_unary":
            await channel.stream_unary(method, None, None)(garbage(), timeout=DEADLINE_S)
        else:
            async for _ in channel.stream_stream(method, None, None)(garbage(), timeout=DEADLINE_S):
                pass
    except grpc.aio.AioRpcError as exc:
        return exc
    raise AssertionError(f"{method} accepted garbage")


@pytest.mark.parametrize(
    ("method", "kind", "expected"),
    [
        (
            "/visionrpc.v1.CoreServices/Ping",
            "unary_unary",
            "the request is not a valid visionrpc.v1.PingRequest message",
        ),
        (
            "/visionrpc.v1.CoreServices/StreamNumbers",
            "unary_stream",
            "the request is not a valid visionrpc.v1.StreamNumbersRequest message",
        ),
        (
            "/visionrpc.v1.CoreServices/UploadNumbers",
            "stream_unary",
            "a message of the request stream is not a valid visionrpc.v1.NumberRequest message",
        ),
        (
            "/visionrpc.v1.CoreServices/Chat",
            "stream_stream",
            "a message of the request stream is not a valid visionrpc.v1.ChatMessage message",
        ),
        (
            "/visionrpc.v1.InferenceMethods/Infer",
            "unary_unary",
            "the request is not a valid visionrpc.v1.InferRequest message",
        ),
        (
            "/visionrpc.v1.InferenceMethods/ListModels",
            "unary_unary",
            "the request is not a valid visionrpc.v1.ListModelsRequest message",
        ),
        (
            "/visionrpc.v1.InferenceMethods/GetModelInfo",
            "unary_unary",
            "the request is not a valid visionrpc.v1.GetModelInfoRequest message",
        ),
        (
            "/grpc.health.v1.Health/Watch",
            "unary_stream",
            "the request is not a valid grpc.health.v1.HealthCheckRequest message",
        ),
        (
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "stream_stream",
            "a message of the request stream is not a valid "
            "grpc.reflection.v1alpha.ServerReflectionRequest message",
        ),
        (
            "/grpc.health.v1.Health/Check",
            "unary_unary",
            "the request is not a valid grpc.health.v1.HealthCheckRequest message",
        ),
    ],
)
async def test_an_undecodable_request_is_invalid_argument_with_a_readable_message(
    served: RunningServer,
    caplog: pytest.LogCaptureFixture,
    method: str,
    kind: str,
    expected: str,
) -> None:
    caplog.set_level(logging.INFO)
    async with grpc.aio.insecure_channel(served.address) as channel:
        error = await _one(channel, method, kind)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = error.details() or ""
    assert details.startswith(expected), details
    assert PROTO_HINT in details
    assert "DecodeError" not in details and "<class" not in details
    await _still_serves(served.address)
    assert not [r for r in caplog.records if r.exc_info], "no tracebacks for client errors"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"undecodable request on {method}: {details}"]
    access = [r for r in caplog.records if r.name == "visionrpc.access"]
    assert [r.fields["grpc_code"] for r in access][:1] == ["INVALID_ARGUMENT"]  # type: ignore[attr-defined]


async def test_infer_stream_keeps_its_frame_count_message(served: RunningServer) -> None:
    async with grpc.aio.insecure_channel(served.address) as channel:
        error = await _one(channel, "/visionrpc.v1.InferenceMethods/InferStream", "stream_stream")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        "frame 1 of the stream is not an InferRequest; the 0 frame(s) before it were answered"
    )
    await _still_serves(served.address)


async def test_a_thousand_bad_messages_write_a_bounded_log(
    served: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    """One line per error, rate-limited: the log grows with time, not with the client's rate."""
    caplog.set_level(logging.INFO)
    count, concurrency = 1000, 50
    started = time.monotonic()
    async with grpc.aio.insecure_channel(served.address) as channel:
        call = channel.unary_unary("/visionrpc.v1.CoreServices/Ping", None, None)

        async def bad() -> grpc.StatusCode:
            try:
                await call(GARBAGE, timeout=DEADLINE_S)
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK

        codes: list[grpc.StatusCode] = []
        for _ in range(count // concurrency):
            codes += await asyncio.gather(*(bad() for _ in range(concurrency)))
    elapsed = time.monotonic() - started
    assert codes == [grpc.StatusCode.INVALID_ARGUMENT] * count
    await _still_serves(served.address)

    lines = [r for r in caplog.records if r.name == "visionrpc.server.decoding"]
    text = "\n".join(r.getMessage() for r in lines)
    windows = int(elapsed) + 2
    assert len(lines) <= windows * (LINES_PER_SECOND + 1), (len(lines), elapsed)
    assert len(text.encode()) <= len(lines) * 300
    assert not [r for r in caplog.records if r.exc_info]
    assert not [r for r in caplog.records if r.name.startswith("grpc")]
    suppressed = [r for r in lines if r.getMessage().startswith("suppressed ")]
    logged = len(lines) - len(suppressed)
    counted = sum(r.fields["suppressed"] for r in suppressed)  # type: ignore[attr-defined]
    assert logged + counted <= count  # the last window's suppressed lines are still pending
    print(f"{count} bad messages in {elapsed:.2f}s: {len(lines)} log lines, {len(text)} bytes")


def _start_serve() -> tuple[subprocess.Popen[str], str]:
    """``visionrpc serve`` in a subprocess on a free port, logging text to stderr."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "visionrpc.cli.main",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--log-format",
            "text",
            "--grace",
            "1",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            proc.kill()
            raise AssertionError("server exited early")
        if match := re.search(r"serving .* on (127\.0\.0\.1:\d+)", line):
            return proc, match.group(1)
    proc.kill()
    raise AssertionError("server did not report its address")


@pytest.mark.timeout(120)
async def test_a_served_process_logs_a_bounded_amount_for_a_flood_of_bad_messages() -> None:
    """The whole stderr of ``visionrpc serve`` (grpc's own logging included) for 1000 undecodable
    messages on four methods: no traceback, a few lines per method and second."""
    proc, address = _start_serve()
    try:
        count, concurrency = 1000, 50
        methods = [
            ("/visionrpc.v1.InferenceMethods/Infer", "unary_unary"),
            ("/visionrpc.v1.CoreServices/Ping", "unary_unary"),
            ("/visionrpc.v1.CoreServices/UploadNumbers", "stream_unary"),
            ("/visionrpc.v1.CoreServices/Chat", "stream_stream"),
        ]
        started = time.monotonic()
        async with grpc.aio.insecure_channel(address) as channel:
            codes: list[grpc.StatusCode] = []
            for batch in range(count // concurrency):
                method, kind = methods[batch % len(methods)]
                errors = await asyncio.gather(
                    *(_one(channel, method, kind) for _ in range(concurrency))
                )
                codes += [e.code() for e in errors]
        elapsed = time.monotonic() - started
        assert codes == [grpc.StatusCode.INVALID_ARGUMENT] * count
        await _still_serves(address)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert proc.stderr is not None
        log = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = [line for line in log.splitlines() if "undecodable" in line or "suppressed" in line]
    assert "Traceback" not in log and "DecodeError" not in log
    windows = int(elapsed) + 2
    assert len(lines) <= len(methods) * windows * (LINES_PER_SECOND + 1)
    assert len(log.encode()) <= 2000 + len(lines) * 400  # start/stop lines plus one line each
    print(f"{count} bad messages in {elapsed:.2f}s: {len(lines)} lines, {len(log)} bytes of log")
