"""``visionrpc serve`` as a user runs it: start-up failures in one line on stderr, defaults in help.

Every case runs the real CLI in a subprocess and checks the exact stderr and the exit code.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from tests.runtime.onnx_builders import broken_model_file, constant_model, dent_model

CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("VISIONRPC_")}
SERVER_EXTRA_HINT = 'pip install "visionrpc[server]"'


def serve(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``visionrpc serve ARGS`` with ``env`` added; a server that did start is killed by timeout."""
    return subprocess.run(
        [sys.executable, "-m", "visionrpc.cli.main", "serve", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**CLEAN_ENV, "COLUMNS": "200", **env},
        check=False,
    )


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """good/ (one valid model), broken/ (+ a file that is not ONNX), odd/ (+ a non-YOLO ONNX)."""
    root = tmp_path_factory.mktemp("models")
    for name in ("good", "broken", "odd"):
        dent_model(root / name / "a_good.onnx")
    broken_model_file(root / "broken" / "bad.onnx")
    constant_model(root / "odd" / "odd.onnx", [np.zeros((50, 10))], names={0: "a"})
    return root


def in_use(port: int) -> str:
    return (
        f"error: port {port} on 127.0.0.1 is in use; "
        "stop the other server or choose another with --port\n"
    )


def test_port_in_use(busy_port: int, models: Path) -> None:
    result = serve("--port", str(busy_port), "--models", str(models / "good"))
    assert (result.returncode, result.stderr) == (1, in_use(busy_port))


def test_env_port_is_used_and_a_flag_overrides_an_invalid_env(busy_port: int) -> None:
    from_env = serve(VISIONRPC_PORT=str(busy_port))
    assert (from_env.returncode, from_env.stderr) == (1, in_use(busy_port))
    flag_wins = serve("--port", str(busy_port), VISIONRPC_PORT="abc")
    assert (flag_wins.returncode, flag_wins.stderr) == (1, in_use(busy_port))


def test_broken_onnx_among_good_ones(models: Path) -> None:
    bad = models / "broken" / "bad.onnx"
    result = serve("--port", "0", "--models", str(models / "broken"), "--log-level", "warning")
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: cannot load ONNX model {bad}: ")
    assert result.stderr.count("\n") == 1


def test_broken_onnx_at_the_default_log_level_ends_with_the_one_error(models: Path) -> None:
    result = serve("--port", "0", "--models", str(models / "broken"))
    assert result.returncode == 1
    *logs, last = result.stderr.splitlines()
    assert last.startswith(f"error: cannot load ONNX model {models / 'broken' / 'bad.onnx'}: ")
    assert all(" INFO " in line for line in logs), logs  # what it did, then the one error
    assert "Traceback" not in result.stderr


def test_debug_log_level_adds_the_traceback(models: Path) -> None:
    result = serve("--port", "0", "--models", str(models / "broken"), "--log-level", "debug")
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert "visionrpc.errors.ModelLoadError: cannot load ONNX model" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("error: cannot load ONNX model")


def test_non_yolo_onnx_among_good_ones(models: Path) -> None:
    odd = models / "odd" / "odd.onnx"
    result = serve("--port", "0", "--models", str(models / "odd"), "--log-level", "warning")
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: {odd}: unsupported YOLO output layout [[1, 50, 10]]")
    assert result.stderr.count("\n") == 1


def test_invalid_env_setting() -> None:
    result = serve(VISIONRPC_PORT="abc")
    assert (result.returncode, result.stderr) == (
        1,
        "error: invalid setting VISIONRPC_PORT='abc': "
        "Input should be a valid integer, unable to parse string as an integer\n",
    )


def test_invalid_nested_env_setting_and_flag() -> None:
    result = serve("--port", "70000", VISIONRPC_RUNTIME__DEVICE="gpu")
    assert result.returncode == 1
    assert result.stderr == (
        "error: invalid setting --port=70000: Input should be less than or equal to 65535\n"
        "error: invalid setting VISIONRPC_RUNTIME__DEVICE='gpu': "
        "Input should be 'auto', 'cpu', 'cuda' or 'tensorrt'\n"
    )


def test_unknown_log_level_is_a_usage_error_listing_the_choices() -> None:
    result = serve("--log-level", "verbose")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: Invalid value for '--log-level': Value error, 'verbose' is not one of "
        "'debug', 'info', 'warning', 'error'.",
        "Try 'visionrpc serve --help' for help.",
    ]


@pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers(), reason="this machine has CUDA"
)
def test_cuda_device_on_a_cpu_machine(models: Path) -> None:
    result = serve(
        "--port",
        "0",
        "--models",
        str(models / "good"),
        "--log-level",
        "warning",
        VISIONRPC_RUNTIME__DEVICE="cuda",
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error: runtime.device=cuda needs CUDAExecutionProvider")
    assert "install onnxruntime-gpu" in result.stderr
    assert result.stderr.count("\n") == 1


@pytest.mark.parametrize("module", ["onnxruntime", "grpc_reflection", "yaml"])
def test_without_the_server_extra(tmp_path: Path, module: str) -> None:
    """A sitecustomize on PYTHONPATH makes importing ``module`` fail as if it were not installed."""
    (tmp_path / "sitecustomize.py").write_text(
        textwrap.dedent(
            f"""
            import sys

            class HideModule:
                def find_spec(self, name, path=None, target=None):
                    if name.partition(".")[0] == {module!r}:
                        raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
                    return None

            sys.meta_path.insert(0, HideModule())
            """
        )
    )
    result = serve("--port", "0", PYTHONPATH=str(tmp_path))
    assert (result.returncode, result.stderr) == (
        1,
        f"error: visionrpc serve needs the server extra ({module} is not installed): "
        f"{SERVER_EXTRA_HINT}\n",
    )


def test_help_shows_defaults_and_env_names() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "visionrpc.cli.main", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**CLEAN_ENV, "COLUMNS": "250", "NO_COLOR": "1"},
        check=True,
    )
    blocks: dict[str, str] = {}  # each option's text, its wrapped lines joined
    flag = ""
    for line in result.stdout.splitlines():
        words = line.strip("│╭╰─ ").split()
        if words and words[0].startswith("--"):
            flag = words[0]
        if flag and words:
            blocks[flag] = " ".join([blocks.get(flag, ""), *words])
    expected = {
        "--host": ("VISIONRPC_HOST", "[default: 127.0.0.1]"),
        "--port": ("VISIONRPC_PORT", "[default: 50051]"),
        "--models": ("VISIONRPC_MODELS_DIR", "unset = the models shipped in the package"),
        "--default-model": ("VISIONRPC_DEFAULT_MODEL", "empty = the repository's own choice"),
        "--log-level": ("VISIONRPC_LOG_LEVEL", "[default: INFO]"),
        "--log-format": ("VISIONRPC_LOG_FORMAT", "[default: text]"),
        "--grace": ("VISIONRPC_GRACE_PERIOD_S", "[default: 10.0]"),
        "--access-log": ("VISIONRPC_ACCESS_LOG", "[default: no-access-log]"),
    }
    for flag, (env, default) in expected.items():
        assert f"(env {env})" in blocks[flag] and default in blocks[flag], blocks[flag]
    assert "<debug|info|warning|error>" in blocks["--log-level"]
