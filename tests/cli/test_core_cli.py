"""Core CLI commands against a live server (typer's CliRunner, and a subprocess for serve)."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from typer.testing import CliRunner, Result

import visionrpc
import visionrpc.cli
from tests.helpers import RunningServer, StartThreadedServer, free_port, modules_imported_by
from visionrpc.cli.main import app
from visionrpc.client import Client

runner = CliRunner()
CLI = [sys.executable, "-m", "visionrpc.cli.main"]


def invoke(*args: str, input: str | None = None) -> Result:
    return runner.invoke(app, list(args), input=input, catch_exceptions=False)


def test_ping_json(threaded_server: RunningServer) -> None:
    result = invoke("ping", "hello", "--target", threaded_server.address, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["message"] == "hello"
    assert data["instance_id"] == threaded_server.core.instance_id
    assert data["rtt_ms"] >= 0


def test_ping_text(threaded_server: RunningServer) -> None:
    result = invoke("ping", "--target", threaded_server.address)
    assert result.exit_code == 0
    assert threaded_server.core.instance_id in result.stdout


def test_client_commands_take_the_default_deadline_from_the_environment(
    threaded_server: RunningServer,
) -> None:
    """No --timeout means VISIONRPC_TIMEOUT_S (the client's default), not "no deadline": an
    upload whose stdin stalls past it ends with DEADLINE_EXCEEDED."""
    argv = [sys.executable, "-m", "visionrpc", "numbers", "upload", "--target"]
    argv.append(threaded_server.address)
    env = {**os.environ, "VISIONRPC_TIMEOUT_S": "0.5"}
    with subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    ) as proc:
        assert proc.stdin is not None
        proc.stdin.write(b"1\n")
        proc.stdin.flush()
        time.sleep(3)  # the deadline passes while the client waits for more numbers
        out, err = proc.communicate(b"2\n", timeout=60)
    assert proc.returncode == 1, out
    assert err.decode().strip() == "error: DEADLINE_EXCEEDED: Deadline Exceeded"


DEMO_JPG = str(Path(visionrpc.cli.__file__).parent / "assets" / "demo.jpg")
CLIENT_COMMANDS = {  # (command, arguments after --target)
    "ping": (["ping"], []),
    "numbers stream": (["numbers", "stream"], []),
    "numbers upload": (["numbers", "upload"], ["--", "1", "2"]),
    "chat": (["chat"], []),
    "health": (["health"], []),
    "infer": (["infer"], [DEMO_JPG]),
    "infer-stream": (["infer-stream"], [str(Path(DEMO_JPG).parent)]),
    "models": (["models"], []),
    "eval": (["eval"], ["--count", "2"]),
}


@pytest.mark.parametrize(("command", "rest"), CLIENT_COMMANDS.values(), ids=CLIENT_COMMANDS.keys())
def test_client_commands_without_a_server_say_so_at_once(
    command: list[str], rest: list[str]
) -> None:
    address = f"127.0.0.1:{free_port()}"
    args = [*command, "--target", address, *rest]
    started = time.monotonic()
    result = invoke(*args, input="")
    elapsed = time.monotonic() - started
    assert result.exit_code == 1, result.output
    expected = (
        f"error: no server at {address}; start `visionrpc serve` there or pass --target HOST:PORT\n"
    )
    assert result.stderr == expected
    assert result.stdout.strip() == ""
    assert elapsed < 15  # not 30 s of waiting for a deadline


def test_demo_without_a_server_suggests_local() -> None:
    address = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = invoke("demo", "--target", address)
    assert result.exit_code == 1, result.output
    assert result.stderr == (
        f"error: no server at {address}; start `visionrpc serve` or use `--local`\n"
    )
    assert time.monotonic() - started < 15


def test_the_default_target_is_named_when_none_is_given() -> None:
    address = f"127.0.0.1:{free_port()}"
    result = runner.invoke(app, ["ping"], env={"VISIONRPC_TARGET": address})
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: no server at {address}; ")


def test_numbers_stream(threaded_server: RunningServer) -> None:
    args = ["numbers", "stream", "--start", "2", "--count", "3", "--step", "4"]
    text = invoke(*args, "--target", threaded_server.address)
    assert text.exit_code == 0
    assert text.stdout.splitlines() == ["0\t2", "1\t6", "2\t10"]
    as_json = invoke(*args, "--interval-ms", "5", "--json", "--target", threaded_server.address)
    assert [json.loads(line) for line in as_json.stdout.splitlines()] == [
        {"index": 0, "value": 2},
        {"index": 1, "value": 6},
        {"index": 2, "value": 10},
    ]


def test_numbers_stream_over_limit(start_threaded_server: StartThreadedServer) -> None:
    running = start_threaded_server(max_stream_count=3)
    result = invoke("numbers", "stream", "--count", "4", "--target", running.address)
    assert result.exit_code == 1
    assert "INVALID_ARGUMENT" in result.stderr and "3" in result.stderr


def test_numbers_upload_args_and_stdin(threaded_server: RunningServer) -> None:
    target = ["--target", threaded_server.address, "--json"]
    from_args = invoke("numbers", "upload", *target, "--", "1", "-2", "7")
    assert json.loads(from_args.stdout) == {"count": 3, "sum": 6, "min": -2, "max": 7, "mean": 2.0}
    from_stdin = invoke("numbers", "upload", *target, input="1 2\n3\n")
    assert json.loads(from_stdin.stdout)["sum"] == 6
    empty = invoke("numbers", "upload", *target, input="")
    assert json.loads(empty.stdout) == {"count": 0, "sum": 0, "min": 0, "max": 0, "mean": 0.0}
    overflow = invoke(
        "numbers", "upload", "--target", threaded_server.address, "--", "9223372036854775807", "1"
    )
    assert overflow.exit_code == 1 and "OUT_OF_RANGE" in overflow.stderr


def test_numbers_upload_bad_value_on_stdin_is_one_line(threaded_server: RunningServer) -> None:
    result = invoke("numbers", "upload", "--target", threaded_server.address, input="1 2\n3 x 4\n")
    assert result.exit_code == 2
    assert result.stderr == "error: not an integer: 'x' (line 2 of stdin)\n"
    assert result.stdout == ""
    with Client(threaded_server.address) as client:  # the server keeps serving
        assert client.upload_numbers([1, 2]).sum == 3


def test_numbers_upload_arguments_are_checked_before_any_call() -> None:
    address = f"127.0.0.1:{free_port()}"  # no server: a call would say so
    result = invoke("numbers", "upload", "--target", address, "--", "1", "x")
    assert result.exit_code == 2
    assert result.stderr == "error: not an integer: 'x' (argument 2)\n"


def test_health(threaded_server: RunningServer) -> None:
    result = invoke("health", "--target", threaded_server.address, "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {"service": "", "status": "SERVING"}
    core = invoke(
        "health", "--service", "visionrpc.v1.CoreServices", "--target", threaded_server.address
    )
    assert core.stdout.strip() == "SERVING"
    unknown = invoke("health", "--service", "nope", "--target", threaded_server.address)
    assert unknown.exit_code == 1
    assert unknown.stderr.startswith("error: NOT_FOUND") and unknown.stderr.count("\n") == 1
    assert unknown.stdout == ""


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout == f"visionrpc {visionrpc.__version__}\n"
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", visionrpc.__version__)


def test_python_dash_m_visionrpc_runs_the_cli() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "visionrpc", "--version"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"visionrpc {visionrpc.__version__}\n"
    usage = subprocess.run(
        [sys.executable, "-m", "visionrpc", "ping", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert usage.returncode == 0 and "Usage: visionrpc ping" in usage.stdout


def test_the_cli_imports_neither_the_runtime_nor_the_server() -> None:
    # client commands must work from a client-only install (no ONNX Runtime, OpenCV, pycocotools)
    assert modules_imported_by("visionrpc.cli.main") == []


def test_chat_sends_lines_and_prints_others(threaded_server: RunningServer) -> None:
    room = "cli-room"
    bob_seen: queue.Queue = queue.Queue()
    bob_out: queue.Queue = queue.Queue()
    leave = threading.Event()

    def outgoing():
        while (text := bob_out.get()) is not None:
            yield text

    def bob() -> None:
        with Client(threaded_server.address) as client:
            for message in client.chat(room, "bob", outgoing()):
                bob_seen.put(message)
                if (message.sender, message.text) == ("alice", "hello bob"):
                    bob_out.put("hi alice")
                if (message.sender, message.text) == ("bob", "hi alice"):
                    leave.set()  # posted before alice leaves: she must receive it
                    bob_out.put(None)

    bob_out.put("")  # join before alice
    thread = threading.Thread(target=bob, daemon=True)
    thread.start()
    assert bob_seen.get(timeout=5).sender == "bob"

    # a subprocess: the chat command reads the real stdin, which must stay open until bob spoke
    alice = subprocess.Popen(
        [*CLI, "chat", "--room", room, "--name", "alice", "--target", threaded_server.address],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert alice.stdin is not None
        alice.stdin.write("hello bob\n")
        alice.stdin.flush()
        assert leave.wait(20), "bob never saw alice's line"
        stdout, stderr = alice.communicate(timeout=20)  # closes stdin: alice leaves
    finally:
        if alice.poll() is None:
            alice.kill()
    thread.join(5)
    assert alice.returncode == 0, stderr
    assert "joined cli-room as alice" in stderr
    lines = stdout.splitlines()
    assert any(line.endswith("bob: hi alice") for line in lines)
    assert not any("alice: hello bob" in line for line in lines)  # own lines are not echoed
    bob_texts = []
    while not bob_seen.empty():
        message = bob_seen.get()
        bob_texts.append((message.sender, message.text))
    assert ("alice", "") in bob_texts and ("alice", "hello bob") in bob_texts


def test_demo_runs_all_four_calls(threaded_server: RunningServer) -> None:
    result = invoke("demo", "--target", threaded_server.address)
    assert result.exit_code == 0, result.output
    out = result.stdout
    for title in ("Ping", "StreamNumbers", "UploadNumbers", "Chat"):
        assert f"== {title}" in out
    assert "[10, 15, 20, 25, 30]" in out
    assert "count=6 sum=11 min=-5 max=9" in out
    assert "in the same order: True" in out
    assert "bob: hi alice" in out


def _start_serve(*flags: str) -> tuple[subprocess.Popen[str], str]:
    """``visionrpc serve`` in a subprocess on a free port; returns it and its address."""
    env = {**os.environ, "VISIONRPC_LOG_FORMAT": "json"}
    proc = subprocess.Popen(
        [*CLI, "serve", "--host", "127.0.0.1", "--port", "0", *flags],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            proc.kill()
            raise AssertionError("server exited early")
        assert not line.startswith("{"), "--log-format must override VISIONRPC_LOG_FORMAT"
        if match := re.search(r"serving .* on (127\.0\.0\.1:\d+)", line):
            return proc, match.group(1)
    proc.kill()
    raise AssertionError("server did not report its address")


@pytest.mark.timeout(60)
def test_serve_subprocess_drains_on_sigterm() -> None:
    proc, address = _start_serve("--grace", "5", "--log-format", "text", "--access-log")
    try:
        assert proc.stderr is not None
        with Client(address) as client:
            assert client.health().serving
            stream = client.stream_numbers(count=1000, interval_ms=200)
            first = next(stream)
            proc.send_signal(signal.SIGTERM)
            # An open stream is told to finish at once: it ends UNAVAILABLE, saying to go elsewhere
            with pytest.raises(grpc.RpcError) as info:
                list(stream)
        assert first.index == 0
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "draining" in (info.value.details() or "")
        assert proc.wait(15) == 0
        log = proc.stderr.read()
        assert "draining" in log and "server stopped" in log
        assert "/visionrpc.v1.CoreServices/StreamNumbers UNAVAILABLE" in log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.timeout(60)
def test_cancelling_fast_streams_with_access_log_on_keeps_the_server_alive() -> None:
    # Regression: the access log asked a cancelled call for its peer, which crashed grpcio.
    proc, address = _start_serve("--access-log", "--log-format", "text", "--grace", "1")
    try:
        with Client(address) as client:
            for _ in range(20):
                stream = client.stream_numbers(count=100_000)  # no pause: the server is writing
                next(stream)
                stream.close()  # cancels the call mid-write
            assert client.ping("still there").message == "still there"
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert proc.stderr is not None
        assert "/visionrpc.v1.CoreServices/StreamNumbers CANCELLED" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
