"""``visionrpc models``: list, load, unload, reload against a real server, and ``serve
--watch-models`` in a subprocess picking up a model dropped into its directory."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from tests.cli.test_serve_cli import CLEAN_ENV
from tests.helpers import StartThreadedServer, free_port, make_settings
from tests.runtime.onnx_builders import dent_model
from visionrpc.cli.main import app
from visionrpc.server.inference_servicer import InferenceServicer

runner = CliRunner()


def invoke(*args: str) -> Result:
    return runner.invoke(app, list(args), catch_exceptions=False, env={"COLUMNS": "200"})


@pytest.fixture
def address(start_threaded_server: StartThreadedServer, tmp_path: Path) -> str:
    dent_model(tmp_path / "dent" / "model.onnx")
    (tmp_path / "dent" / "model.yaml").write_text('version: "1"\n', encoding="utf-8")
    settings = {"models_dir": tmp_path, "access_log": False}
    return start_threaded_server([InferenceServicer(make_settings(**settings))], **settings).address


def test_unload_load_and_reload(address: str, tmp_path: Path) -> None:
    result = invoke("models", "unload", "dent", "--target", address)
    assert (result.exit_code, result.stdout) == (
        0,
        "dent: version 1, UNAVAILABLE (unloaded by request)\n",
    )
    listed = invoke("models", "list", "--all", "--target", address)
    assert listed.exit_code == 0
    assert "UNAVAILABLE: unloaded by request" in listed.stdout
    assert "dent" not in invoke("models", "--target", address).stdout

    result = invoke("models", "load", "dent", "--target", address)
    assert (result.exit_code, result.stdout) == (0, "dent: version 1, READY\n")

    (tmp_path / "dent" / "model.yaml").write_text('version: "2"\n', encoding="utf-8")
    result = invoke("models", "reload", "dent", "--target", address, "--json")
    assert result.exit_code == 0, result.output
    entry = json.loads(result.stdout)
    assert (entry["name"], entry["version"], entry["state"]) == ("dent", "2", "READY")
    assert entry["class_names"] == ["dent"]


def test_a_failed_reload_is_one_line_and_the_old_version_serves(
    address: str, tmp_path: Path
) -> None:
    (tmp_path / "dent" / "model.yaml").write_text("version: 2\nconf: 0.5\n", encoding="utf-8")
    result = invoke("models", "reload", "dent", "--target", address)
    assert result.exit_code == 1
    assert result.stderr.startswith(
        f"error: FAILED_PRECONDITION: invalid {tmp_path / 'dent' / 'model.yaml'}: conf: Extra"
    )
    assert result.stderr.count("\n") == 1
    listed = invoke("models", "--all", "--target", address)
    assert "READY: reload failed, version 1 still serving" in listed.stdout


def test_serve_watch_models_loads_a_model_dropped_in(tmp_path: Path) -> None:
    dent_model(tmp_path / "first.onnx")
    port = free_port()
    address = f"127.0.0.1:{port}"
    command = [sys.executable, "-m", "visionrpc.cli.main", "serve", "--port", str(port)]
    server = subprocess.Popen(
        [*command, "--models", str(tmp_path), "--watch-models", "0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=CLEAN_ENV,
    )
    try:
        deadline = time.monotonic() + 60
        while "first" not in invoke("models", "--target", address).stdout:
            assert time.monotonic() < deadline and server.poll() is None, "server did not start"
            time.sleep(0.2)
        dent_model(tmp_path / "second.onnx")
        while "second" not in invoke("models", "--target", address).stdout:
            assert time.monotonic() < deadline, "the watch did not load second.onnx"
            time.sleep(0.2)
    finally:
        server.terminate()
        _, err = server.communicate(timeout=60)
    assert "model watch: second changed" in err


def test_watch_models_must_be_positive() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "visionrpc.cli.main", "serve", "--watch-models", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        env=CLEAN_ENV,
    )
    assert result.returncode == 1
    assert "--watch-models" in result.stderr and "greater than 0" in result.stderr
