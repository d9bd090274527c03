"""``visionrpc bench --target``: the user-facing load tester against a live server.

Tiny runs (0.3 s points) check the shape of the output and the accounting (counts, errors by
status code, percentiles in order), never speeds.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from tests.helpers import RunningServer, make_settings, modules_imported_by
from visionrpc.cli.demo import demo_image
from visionrpc.cli.main import app
from visionrpc.client import Client, ClientSettings
from visionrpc.server.inference_servicer import InferenceServicer
from visionrpc.server.local import ServerThread

runner = CliRunner()
TINY = ("--duration", "0.3", "--warmup", "0.1", "--concurrency", "1,2")


def invoke(*args: str) -> Result:
    return runner.invoke(app, ["bench", *args], catch_exceptions=False, env={"COLUMNS": "200"})


def _still_serves(address: str) -> None:
    with Client(address, timeout=30) as client:
        assert client.infer(demo_image()[0]).model == "defects"


def test_tiny_run_reports_every_point(inference_server: RunningServer, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    address = inference_server.address
    result = invoke("--target", address, *TINY, "--method", "both", "--json", str(out))
    assert result.exit_code == 0, result.output
    assert f"{address}: model defects" in result.stdout
    assert "InferStream" in result.stdout and "images/s" in result.stdout

    doc = json.loads(out.read_text())
    config = doc["config"]
    assert config["target"] == address and config["methods"] == ["Infer", "InferStream"]
    assert config["concurrency"] == [1, 2] and config["duration_s"] == 0.3
    assert config["timeout_s"] == ClientSettings().timeout_s  # every call has a deadline
    assert [i["name"] for i in config["images"]] == ["demo.jpg"]
    assert doc["model"]["name"] == "defects"
    assert doc["model"]["class_names"] == ["scratch", "spot", "crack"]
    assert doc["model"]["task"] == "segment"
    shapes = [(p["method"], p["concurrency"]) for p in doc["points"]]
    assert shapes == [("Infer", 1), ("Infer", 2), ("InferStream", 1), ("InferStream", 2)]
    for point in doc["points"]:
        assert point["ok"] > 0 and point["requests"] == point["ok"], point
        assert point["errors"] == 0 and point["errors_by_code"] == {}, point
        assert point["images_per_s"] > 0 and point["duration_s"] > 0, point
        assert 0 < point["p50_ms"] <= point["p90_ms"] <= point["p99_ms"], point


def test_json_to_stdout_and_images_from_folders_and_globs(
    inference_server: RunningServer, tmp_path: Path
) -> None:
    folder, other = tmp_path / "images", tmp_path / "more"
    folder.mkdir()
    other.mkdir()
    data = demo_image()[0]
    for path in (folder / "a.jpg", folder / "b.jpg", other / "c.jpg", other / "d.jpg"):
        path.write_bytes(data)
    (folder / "notes.txt").write_text("not an image")
    args = ["--images", str(folder), "--images", str(other / "c*"), "--requests", "5"]
    result = invoke("--target", inference_server.address, *TINY, *args, "--json", "-")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)  # the table went to stderr
    assert [i["name"] for i in doc["config"]["images"]] == ["a.jpg", "b.jpg", "c.jpg"]
    assert [p["ok"] for p in doc["points"]] == [5, 5]  # --requests caps each point
    assert "images/s" in result.stderr


def test_failed_requests_are_counted_by_status_code(
    inference_server: RunningServer, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    out = tmp_path / "bench.json"
    args = ["--images", str(bad), "--method", "both", "--requests", "20", "--json", str(out)]
    result = invoke("--target", inference_server.address, *TINY, *args)
    assert result.exit_code == 1, result.output
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: 80 of 80 requests failed; first: INVALID_ARGUMENT: ")
    assert "looks like text" in line
    assert "20 INVALID_ARGUMENT" in result.stdout
    points = json.loads(out.read_text())["points"]
    assert len(points) == 4
    for point in points:
        assert point["ok"] == 0 and point["errors"] == 20, point
        assert point["errors_by_code"] == {"INVALID_ARGUMENT": 20}, point
        assert point["p50_ms"] is None and point["images_per_s"] == 0, point
    _still_serves(inference_server.address)


def test_unknown_model_fails_once_with_one_line(inference_server: RunningServer) -> None:
    result = invoke("--target", inference_server.address, *TINY, "--model", "nope")
    assert result.exit_code == 1
    assert result.stdout == ""  # no run, no table
    assert result.stderr.strip().splitlines() == [
        "error: NOT_FOUND: model 'nope' is not loaded; available models: defects, defects-fp32"
    ]
    _still_serves(inference_server.address)


class SilentInference(InferenceServicer):
    """Describes its models but never answers a frame: the load must still end on its own."""

    async def Infer(self, request: Any, context: Any) -> Any:
        await asyncio.Event().wait()

    async def InferStream(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:
        await asyncio.Event().wait()
        yield  # never reached: makes this a stream handler


@pytest.mark.timeout(60)
def test_a_server_that_never_answers_cannot_hold_the_run(tmp_path: Path) -> None:
    settings = make_settings(access_log=False)
    thread = ServerThread()
    try:
        address = thread.start(settings, [SilentInference(settings)]).address
        out = tmp_path / "bench.json"
        args = ["--method", "both", "--concurrency", "1", "--duration", "0.3", "--warmup", "0"]
        result = invoke("--target", address, *args, "--timeout", "1", "--json", str(out))
    finally:
        thread.close()
    assert result.exit_code == 1, result.output
    assert "DEADLINE_EXCEEDED" in result.stderr
    points = json.loads(out.read_text())["points"]
    assert [p["method"] for p in points] == ["Infer", "InferStream"]
    for point in points:
        assert point["ok"] == 0 and point["errors"] >= 1, point
        assert set(point["errors_by_code"]) == {"DEADLINE_EXCEEDED"}, point


@pytest.mark.timeout(60)
def test_no_server_is_one_line() -> None:
    result = invoke("--target", "127.0.0.1:1", "--timeout", "5", *TINY)
    assert result.exit_code == 1
    [line] = result.stderr.strip().splitlines()
    assert line == (
        "error: no server at 127.0.0.1:1; start `visionrpc serve` there or pass --target HOST:PORT"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--concurrency", "1,0"], "--concurrency takes integers >= 1 like 1,4,16, not '1,0'"),
        (["--concurrency", "four"], "--concurrency takes integers >= 1"),
        (["--images", "/no/such/dir/*.jpg"], ".webp files match /no/such/dir/*.jpg"),
        (["--json", "/no/such/dir/out.json"], "--json: folder /no/such/dir does not exist"),
        (["--method", "grpc"], "'grpc' is not one of 'infer', 'stream', 'both'"),
        (["--duration", "0"], "--duration"),
    ],
)
def test_bad_flags_are_usage_errors(args: list[str], message: str) -> None:
    result = invoke("--target", "127.0.0.1:1", *args)
    assert result.exit_code == 2
    assert message in " ".join(result.output.replace("│", " ").split())


def test_imports_only_the_client() -> None:
    assert modules_imported_by("visionrpc.cli.bench") == []
