"""Helpers of the stream, drain and chaos tests: frames, the rest of a stream, the draining
message of a stream, and a real ``visionrpc serve`` in a subprocess for the tests that signal or
kill it."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.helpers import EOF
from visionrpc.v1 import inference_pb2 as pb

CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("VISIONRPC_")}
SERVING = health_pb2.HealthCheckResponse.SERVING


def stream_drained(answered: int) -> str:
    """What an InferStream ended by a drain says, after ``answered`` frames."""
    return (
        f"server is draining (shutting down): the {answered} frame(s) it read from this stream "
        "were answered; send the frames after them to another server"
    )


def _jpeg() -> bytes:
    ok, buf = cv2.imencode(".jpg", np.full((48, 64, 3), 120, np.uint8))
    assert ok
    return buf.tobytes()


JPEG = _jpeg()


async def read_rest(call: Any) -> list[Any]:
    """The rest of a stream, up to its end or its error (then in ``call.code()``)."""
    out = []
    with contextlib.suppress(grpc.aio.AioRpcError):
        while (reply := await call.read()) is not EOF:
            out.append(reply)
    return out


def frame(request_id: str) -> pb.InferRequest:
    """A small JPEG frame (well under a kilobyte: many fit in the transport's buffers)."""
    return pb.InferRequest(image_bytes=JPEG, request_id=request_id)


def start_serve(port: int, models: Path, log: Path, *args: str) -> subprocess.Popen[bytes]:
    """``visionrpc serve`` on 127.0.0.1:``port``; its output goes to ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "visionrpc.cli.main",
                "serve",
                "--port",
                str(port),
                "--models",
                str(models),
                *args,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=CLEAN_ENV,
        )


def wait_serving(address: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """Block until health says SERVING; fail if the process exits or ``timeout`` s pass."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError(f"server exited with {process.returncode}")
            with contextlib.suppress(grpc.RpcError):
                reply = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == SERVING:
                    return
            time.sleep(0.05)
    raise AssertionError(f"server not SERVING within {timeout}s")


@contextlib.contextmanager
def killed_at_exit(process: subprocess.Popen[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    """The process, killed (and reaped) when the block ends if it still runs."""
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(30)
