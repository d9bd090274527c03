"""What pip really installs: the client-only base install and the GPU extra.

These run pip for real (a fresh venv, a dry-run resolution), against the package indexes this
machine is configured with; they take about a minute together.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import RunningServer, StartThreadedServer, make_settings
from visionrpc.server.inference_servicer import InferenceServicer

ROOT = Path(__file__).resolve().parents[1]
HEAVY = {"onnxruntime", "onnxruntime-gpu", "opencv-python-headless", "pycocotools", "pyyaml"}
HEAVY |= {"prometheus-client", "prometheus_client"}  # serve --metrics-port only (server extra)


def _names(freeze: str) -> set[str]:
    return {line.split("==")[0].split(" @ ")[0].strip().lower() for line in freeze.splitlines()}


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh venv with ``pip install visionrpc`` (the base install, no extras) from this tree."""
    where = tmp_path_factory.mktemp("client-venv")
    venv.create(where, with_pip=True)
    pip = [str(where / "bin" / "python"), "-m", "pip"]
    done = subprocess.run(
        [*pip, "install", "--quiet", str(ROOT)], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    yield where


def _run(venv_dir: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VISIONRPC_", "PYTHON"))}
    return subprocess.run(
        [str(venv_dir / "bin" / args[0]), *args[1:]],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=venv_dir,  # not the source tree: only the installed package is importable
    )


@pytest.mark.timeout(900)
def test_client_only_install_has_no_runtime_and_calls_a_server(
    client_venv: Path, start_threaded_server: StartThreadedServer
) -> None:
    installed = _names(_run(client_venv, "python", "-m", "pip", "freeze").stdout)
    assert "visionrpc" in installed
    assert not installed & HEAVY, installed & HEAVY

    probe = (
        "import sys, visionrpc.client, visionrpc.cli.main;"
        "print(sorted(m for m in sys.modules if m.startswith("
        "('visionrpc.runtime', 'visionrpc.server', 'onnxruntime', 'cv2', 'pycocotools'))))"
    )
    imported = _run(client_venv, "python", "-c", probe)
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.strip() == "[]"

    settings = make_settings(access_log=False)
    running: RunningServer = start_threaded_server([InferenceServicer(settings)], access_log=False)
    ping = _run(client_venv, "visionrpc", "ping", "hello", "--target", running.address)
    assert ping.returncode == 0, ping.stderr
    assert "'hello' from visionrpc" in ping.stdout
    demo = _run(client_venv, "visionrpc", "demo", "--target", running.address, timeout=120)
    assert demo.returncode == 0, demo.stderr[-2000:]
    assert "== Infer" in demo.stdout and "planted (2)" in demo.stdout

    serve = _run(client_venv, "visionrpc", "serve", "--port", "0")
    assert serve.returncode != 0
    lines = serve.stderr.strip().splitlines()
    assert len(lines) <= 2, serve.stderr
    assert 'pip install "visionrpc[server]"' in serve.stderr


@pytest.mark.timeout(600)
def test_gpu_extra_resolves_to_onnxruntime_gpu_only(tmp_path: Path) -> None:
    """pip cannot uninstall a dependency, so the GPU extra must not pull in the CPU wheel too
    (both in one environment shadow each other's onnxruntime module)."""
    report = tmp_path / "report.json"
    argv = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet"]
    argv += ["--report", str(report), f"{ROOT}[gpu]"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=540, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    resolved = {i["metadata"]["name"].lower() for i in json.loads(report.read_text())["install"]}
    assert "onnxruntime-gpu" in resolved
    assert "onnxruntime" not in resolved
    assert {"opencv-python-headless", "pycocotools", "grpcio-reflection"} <= resolved
    assert resolved & {"prometheus-client", "prometheus_client"}  # serve --metrics-port
