"""Every Python snippet in the README runs as written, against a real server.

Each ```python block runs in a fresh interpreter in a folder that holds what the snippets name
(part.jpg, frames/*.jpg), with the README's address replaced by the test server's; nothing else
is changed. The README's two set-up commands are checked to be the ones CI runs.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from tests.helpers import RunningServer, StartThreadedServer, make_settings
from visionrpc.server.app import default_services
from visionrpc.synthetic import generate_sample

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
SNIPPETS = re.findall(r"```python\n(.*?)```", README, flags=re.DOTALL)
README_ADDRESS = "localhost:50051"
OTHER_INTERPRETERS = {
    # snippets for clients that pin their own protobuf run where CI installed them (.ci/run)
    "tritonclient": "VISIONRPC_TRITONCLIENT_PYTHON",
    "kserve": "VISIONRPC_KSERVE_PYTHON",
}
NOT_RUN = {
    "ultralytics": "Ultralytics needs PyTorch, too heavy to install here; the steps of its Triton "
    "client are run by tests/server/test_oip_raw_tritonclient.py",
}


def interpreter(snippet: str) -> str:
    """The Python that can run ``snippet``: this one, or the client's own (else the test skips)."""
    for module, reason in NOT_RUN.items():
        if re.search(rf"^(from|import) {module}\b", snippet, flags=re.MULTILINE):
            pytest.skip(reason)
    for module, variable in OTHER_INTERPRETERS.items():
        if re.search(rf"^(from|import) {module}\b", snippet, flags=re.MULTILINE):
            python = os.environ.get(variable, "")
            if not python:
                pytest.skip(f"set {variable} to a Python that has {module} (.ci/run makes one)")
            return python
    return sys.executable


def _jpeg(path: Path, seed: int, index: int) -> None:
    bgr = cv2.cvtColor(generate_sample(seed, index).image, cv2.COLOR_RGB2BGR)
    assert cv2.imwrite(str(path), bgr)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("readme")
    _jpeg(folder / "part.jpg", 1001, 11)
    (folder / "frames").mkdir()
    for i in range(3):
        _jpeg(folder / "frames" / f"frame{i}.jpg", 1001, 3 + i)
    return folder


def test_the_readme_has_python_snippets() -> None:
    assert len(SNIPPETS) >= 2
    assert all(README_ADDRESS in s for s in SNIPPETS if "Client(" in s)


@pytest.mark.parametrize("index", range(len(SNIPPETS)))
def test_snippet_runs_as_written(
    index: int, inputs: Path, start_threaded_server: StartThreadedServer
) -> None:
    python = interpreter(SNIPPETS[index])
    settings = make_settings(access_log=False)
    running: RunningServer = start_threaded_server(default_services(settings), access_log=False)
    code = SNIPPETS[index].replace(README_ADDRESS, running.address)
    done = subprocess.run(
        [python, "-c", code], cwd=inputs, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"snippet {index} failed:\n{SNIPPETS[index]}\n{done.stderr}"
    assert done.stdout.strip(), "a README snippet should show something"


def test_readme_starts_with_the_two_commands_ci_runs() -> None:
    commands = re.findall(r"^(python3 -m venv .*)$", README, flags=re.MULTILINE)
    assert len(commands) >= 2
    install_and_run, test = commands[0], commands[1]
    assert 'pip install ".[server]"' in install_and_run and "demo --local" in install_and_run
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert test in ci.splitlines()
