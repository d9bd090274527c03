"""Child processes of a bench run: servers under test and in-process measurement workers.

Servers run in their own process so the load generator (this process) and the server are
separate programs sharing the CPU as they would in production, and so each one's peak RSS
(``VmHWM`` in /proc/PID/status) is its own. Output goes to log files in the work directory
(the access log can be thousands of lines a second; a pipe nobody reads would stall the server).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import grpc

from visionrpc.v1 import core_pb2, core_pb2_grpc

READY_TIMEOUT_S = 180.0


class ChildFailed(RuntimeError):
    """A child process exited or hung; the message ends with the tail of its log."""


def free_port() -> int:
    """A loopback port that is free now (the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_process(proc: subprocess.Popen[Any], timeout: float) -> None:
    """SIGTERM (a server drains), SIGKILL if it still runs after ``timeout`` s; reaped."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _status_kib(pid: int, key: str) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return float(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def peak_rss_mb(pid: int | None = None) -> float | None:
    """Peak resident set size (VmHWM) of a process in MiB; None where /proc is unavailable."""
    kib = _status_kib(os.getpid() if pid is None else pid, "VmHWM")
    return None if kib is None else round(kib / 1024, 1)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (/proc/PID/stat), 0.0 where unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


REPO_ROOT = Path(__file__).resolve().parents[2]
"""The checkout: ``bench`` is not installed, so child processes find it through PYTHONPATH."""


def child_env(overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(overrides or {})
    env.setdefault("PYTHONUNBUFFERED", "1")
    path = [str(REPO_ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(path))
    return env


class ServerProcess:
    """A server started with ``argv`` on ``port``; ``stop`` returns its peak RSS in MiB."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        port: int,
        log_path: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.port = port
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT, env=child_env(env)
        )

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def peak_rss_mb(self) -> float | None:
        return peak_rss_mb(self.proc.pid) if self.proc.poll() is None else None

    def check_alive(self, during: str) -> None:
        """Raise ChildFailed (with the log's tail) when the server has died, e.g. crashed."""
        code = self.proc.poll()
        if code is not None:
            how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
            raise self._fail(f"died ({how}) during {during}")

    def _fail(self, why: str) -> ChildFailed:
        return ChildFailed(
            f"{self.name} {why}; last lines of {self.log_path}:\n" + log_tail(self.log_path)
        )

    def wait_ready(
        self,
        probe: Callable[[grpc.Channel], bool],
        timeout: float,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        """Poll ``probe`` until it says yes; fail early when the process exits."""
        deadline = time.monotonic() + timeout
        channel_ = (
            grpc.secure_channel(self.address, credentials)
            if credentials is not None
            else grpc.insecure_channel(self.address)
        )
        with channel_ as channel:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise self._fail(f"exited with code {self.proc.returncode} while starting")
                with contextlib.suppress(grpc.RpcError):
                    if probe(channel):
                        return
                time.sleep(0.2)
        raise self._fail(f"was not ready after {timeout:.0f} s")

    def stop(self) -> float | None:
        """SIGTERM (the server drains), SIGKILL after 20 s; returns the peak RSS seen last."""
        rss = self.peak_rss_mb()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return rss


def _health_serving(channel: grpc.Channel) -> bool:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def _ping_answers(channel: grpc.Channel) -> bool:
    core_pb2_grpc.CoreServicesStub(channel).Ping(core_pb2.PingRequest(message="ready"), timeout=2)
    return True


@contextlib.contextmanager
def visionrpc_server(
    models_dir: Path,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    default_model: str | None = None,
    credentials: grpc.ChannelCredentials | None = None,
) -> Iterator[ServerProcess]:
    """``visionrpc serve`` as a user runs it (VISIONRPC_* settings from ``env``), until ready
    (probed over TLS with ``credentials`` when the server speaks TLS)."""
    port = free_port()
    argv = [sys.executable, "-m", "visionrpc.cli.main", "serve", "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--models", str(models_dir), "--grace", "1"]
    argv += ["--default-model", default_model] if default_model else []
    server = ServerProcess("visionrpc serve", argv, port, log_path, env)
    try:
        server.wait_ready(_health_serving, READY_TIMEOUT_S, credentials)
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def bare_server(log_path: Path) -> Iterator[ServerProcess]:
    """The minimal grpc.aio CoreServices server (bare_server.py), until it answers Ping."""
    port = free_port()
    argv = [sys.executable, "-m", "bench.harness.bare_server", "--port", str(port)]
    server = ServerProcess("bare grpc.aio server", argv, port, log_path)
    try:
        server.wait_ready(_ping_answers, 60)
        yield server
    finally:
        server.stop()


def run_worker(
    spec: dict[str, Any],
    work_dir: Path,
    on_progress: Callable[[str], None],
    timeout_s: float,
) -> dict[str, Any]:
    """Run ``python -m bench.harness.worker`` on ``spec``; progress lines go to ``on_progress``.

    The worker prints one JSON object per finished point and writes its result to a file.
    """
    phase = spec["phase"]
    spec_path = work_dir / f"{phase}-spec.json"
    result_path = work_dir / f"{phase}-result.json"
    log_path = work_dir / f"{phase}.log"
    spec_path.write_text(json.dumps({**spec, "result_path": str(result_path)}), encoding="utf-8")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.harness.worker", str(spec_path)],
            stdout=subprocess.PIPE,
            stderr=log,
            env=child_env(),
        )
        lines: queue.Queue[bytes | None] = queue.Queue()

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ChildFailed(f"{phase} worker ran past {timeout_s:.0f} s")
                try:
                    line = lines.get(timeout=min(remaining, 1.0))
                except queue.Empty:
                    continue
                if line is None:
                    break
                with contextlib.suppress(ValueError):
                    message = json.loads(line)
                    if isinstance(message, dict) and "progress" in message:
                        on_progress(str(message["progress"]))
            code = proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    if code != 0 or not result_path.is_file():
        raise ChildFailed(
            f"{phase} worker exited with code {code}; last lines of {log_path}:\n"
            + log_tail(log_path)
        )
    result: dict[str, Any] = json.loads(result_path.read_text(encoding="utf-8"))
    return result
