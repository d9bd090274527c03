"""Fixtures of the CLI tests."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tests.helpers import RunningServer, make_settings
from visionrpc.server.inference_servicer import InferenceServicer
from visionrpc.server.local import ServerThread


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port another process (this test) listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.fixture(scope="module")
def inference_server() -> Iterator[RunningServer]:
    """One server with the packaged models for the module, on a loop in a background thread."""
    settings = make_settings(access_log=False)
    thread = ServerThread()
    yield RunningServer(thread.start(settings, [InferenceServicer(settings)]), settings)
    thread.close()
