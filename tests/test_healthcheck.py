"""The container health probe (python -m visionrpc.healthcheck) against real servers."""

from __future__ import annotations

import subprocess
import sys
import time

from tests.helpers import RunningServer, StartThreadedServer, free_port, modules_imported_by


def probe(*args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "visionrpc.healthcheck", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def test_serving_server_is_healthy(threaded_server: RunningServer) -> None:
    done = probe(threaded_server.address)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{threaded_server.address} (server): SERVING"
    service = probe(threaded_server.address, "visionrpc.v1.CoreServices")
    assert service.returncode == 0 and service.stdout.strip().endswith("SERVING")


def test_draining_or_absent_server_is_unhealthy(
    start_threaded_server: StartThreadedServer,
) -> None:
    port = free_port()
    started = time.monotonic()
    done = probe(f"127.0.0.1:{port}")
    assert done.returncode == 1
    assert done.stderr.startswith(f"unhealthy: 127.0.0.1:{port}: UNAVAILABLE")
    assert len(done.stderr.strip().splitlines()) == 1
    assert time.monotonic() - started < 30
    unknown = probe(start_threaded_server().address, "no.such.Service")
    assert unknown.returncode == 1 and "NOT_FOUND" in unknown.stderr


def test_probe_imports_no_cli_runtime_or_settings() -> None:
    heavy = ("typer", "rich", "pydantic", "numpy", "onnxruntime", "cv2", "visionrpc.cli")
    prefixes = (*heavy, "visionrpc.server", "visionrpc.runtime")
    assert modules_imported_by("visionrpc.healthcheck", prefixes) == []
