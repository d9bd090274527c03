"""``visionrpc serve --metrics-port``: the real CLI in a subprocess serves /metrics, and a port it
cannot listen on is a one-line start-up error."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.cli.test_serve_cli import CLEAN_ENV, serve
from tests.helpers import free_port
from tests.runtime.onnx_builders import dent_model


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "visionrpc.cli.main", "serve", *args]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    dent_model(root / "dent.onnx")
    return root


def _in_use(port: int) -> str:
    return (
        f"error: metrics port {port} on 127.0.0.1 is in use; "
        "stop the other server or choose another with --metrics-port\n"
    )


def test_serve_metrics_port_serves_metrics(models: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    server = subprocess.Popen(
        _command("--port", "0", "--models", str(models), "--metrics-port", str(port)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=CLEAN_ENV,
    )
    try:
        deadline = time.monotonic() + 60
        text = ""
        while time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(url, timeout=5) as reply:
                    text = reply.read().decode()
                if "visionrpc_model_info{" in text:  # models loaded
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.1)
        assert server.poll() is None, server.stderr.read() if server.stderr else ""
        families = {f.name: f for f in text_string_to_metric_families(text)}
        [info] = families["visionrpc_model_info"].samples
        assert info.labels["model"] == "dent" and info.value == 1
        assert "visionrpc_grpc_requests" in families and "process_cpu_seconds" in families
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    assert server.returncode == 0


def test_metrics_port_in_use_is_one_line(busy_port: int, models: Path) -> None:
    flag = serve("--port", "0", "--models", str(models), "--metrics-port", str(busy_port))
    assert (flag.returncode, flag.stderr) == (1, _in_use(busy_port))
    env = serve("--port", "0", "--models", str(models), VISIONRPC_METRICS__PORT=str(busy_port))
    assert (env.returncode, env.stderr) == (1, _in_use(busy_port))


def test_metrics_host_that_is_not_an_address_is_one_line(models: Path) -> None:
    result = serve(
        "--port", "0", "--models", str(models), "--metrics-port", "0", "--metrics-host", "192.0.2.1"
    )
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith("error: cannot serve metrics on 192.0.2.1:0: ")
    assert line.endswith("; choose another --metrics-host or --metrics-port")


def test_bad_metrics_port_setting_is_named() -> None:
    result = serve("--metrics-port", "70000")
    assert result.returncode == 1
    assert result.stderr.startswith("error: invalid setting --metrics-port=70000: ")


def test_help_lists_the_metrics_flags() -> None:
    result = serve("--help")
    assert result.returncode == 0
    assert "--metrics-port" in result.stdout and "VISIONRPC_METRICS__PORT" in result.stdout
    assert "--metrics-host" in result.stdout
