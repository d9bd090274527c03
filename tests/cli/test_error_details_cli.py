"""The CLI names the option the server refused (from the status's BadRequest), in one line."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from typer.testing import CliRunner

from tests.helpers import RunningServer
from visionrpc.cli.main import app

runner = CliRunner()


def test_infer_names_the_option_the_server_refused(
    inference_server: RunningServer, tmp_path: Path
) -> None:
    image = tmp_path / "part.jpg"
    assert cv2.imwrite(str(image), np.full((48, 64, 3), 120, np.uint8))
    args = ["infer", str(image), "--target", inference_server.address]
    result = runner.invoke(app, [*args, "--conf", "2"], catch_exceptions=False)
    assert result.exit_code == 1
    assert (
        "INVALID_ARGUMENT: confidence_threshold is 2.0; send a value in (0, 1], or 0 for the "
        "default (option --conf)" in result.output
    )
    assert "Traceback" not in result.output
    ok = runner.invoke(app, [*args, "--json"], catch_exceptions=False)
    assert ok.exit_code == 0, ok.output


def test_numbers_stream_names_the_option_the_server_refused(
    threaded_server: RunningServer,
) -> None:
    target = ["--target", threaded_server.address]
    result = runner.invoke(
        app, ["numbers", "stream", "--count", "1000000", *target], catch_exceptions=False
    )
    assert result.exit_code == 1
    assert result.stderr == (
        "error: INVALID_ARGUMENT: count 1000000 exceeds the server limit of 100000 "
        "(max_stream_count) (option --count)\n"
    )
    ok = runner.invoke(app, ["numbers", "stream", "--count", "2", *target], catch_exceptions=False)
    assert ok.exit_code == 0, ok.output
