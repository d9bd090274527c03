"""``visionrpc eval``: count accuracy and the agnostic-NMS switch, and refused counts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.helpers import RunningServer, make_settings
from tests.runtime.onnx_builders import constant_model, yolov8_detect_outputs
from visionrpc.cli.main import app
from visionrpc.server.inference_servicer import InferenceServicer
from visionrpc.server.local import ServerThread
from visionrpc.synthetic import CLASS_NAMES, generate_sample

runner = CliRunner()


@pytest.fixture(scope="module")
def twice_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server whose one model reports one spot twice on every image, as scratch (0.9) and
    crack (0.8) with overlapping boxes (IoU 0.9)."""
    models = tmp_path_factory.mktemp("models")
    out = yolov8_detect_outputs([(100, 100, 40, 20), (102, 100, 40, 20)], [0, 2], [0.9, 0.8], 3)
    names = dict(enumerate(CLASS_NAMES))
    constant_model(models / "twice.onnx", [out], names=names)
    settings = make_settings(access_log=False, models_dir=models)
    thread = ServerThread()
    yield RunningServer(thread.start(settings, [InferenceServicer(settings)]), settings)
    thread.close()


def test_eval_reports_counts_with_agnostic_nms_off_and_on(twice_server: RunningServer) -> None:
    reports = {}
    for flag in ("--no-agnostic-nms", "--agnostic-nms"):
        argv = ["eval", "--count", "3", "--json", flag, "--target", twice_server.address]
        result = runner.invoke(app, argv, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        reports[flag] = json.loads(result.stdout)
    off, on = reports["--no-agnostic-nms"], reports["--agnostic-nms"]
    assert (off["model"], off["agnostic_nms"], on["agnostic_nms"]) == ("twice", False, True)
    planted = [len(generate_sample(1000, i).defects) for i in range(3)]
    for report, reported in ((off, 2), (on, 1)):
        counts = report["counts"]
        assert counts["confidence_threshold"] == pytest.approx(0.25)  # the model's default
        errors = [reported - n for n in planted]
        assert counts["exact_rate"] == pytest.approx(sum(e == 0 for e in errors) / 3)
        assert counts["mean_abs_error"] == pytest.approx(sum(abs(e) for e in errors) / 3)
        assert counts["over_rate"] == pytest.approx(sum(e > 0 for e in errors) / 3)
    assert (off["counts"]["duplicate_pairs"], off["counts"]["images_with_duplicates"]) == (3, 3)
    assert (on["counts"]["duplicate_pairs"], on["counts"]["images_with_duplicates"]) == (0, 0)
    table = runner.invoke(
        app, ["eval", "--count", "2", "--target", twice_server.address], env={"COLUMNS": "200"}
    )
    assert table.exit_code == 0, table.output
    text = " ".join(table.stdout.split())  # rich wraps long lines
    assert "twice, agnostic NMS off" in text and "exact count" in text
    assert "counts at confidence 0.25: 100.0% of images report more defects than planted" in text
    assert "2 duplicate pair(s) (different classes, box IoU >= 0.5) in 2 image(s)" in text


def test_eval_refuses_a_count_below_one() -> None:
    result = runner.invoke(app, ["eval", "--count", "0", "--target", "127.0.0.1:1"])
    assert result.exit_code == 2
    assert "Invalid value for '--count'" in result.output
    assert "Traceback" not in result.output


def test_eval_with_a_broken_model_says_which_file_in_one_line(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "broken.onnx").write_bytes(b"not an onnx graph")
    result = CliRunner().invoke(app, ["eval", "--models", str(models), "--count", "1"])
    assert result.exit_code == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: cannot load ONNX model ") and "broken.onnx" in line


def test_eval_scores_verdicts_against_the_planted_defects(
    twice_server: RunningServer, tmp_path: Path
) -> None:
    """The model reports one defect on every image: a rule failing any defect agrees with the
    planted truth exactly on the images that have defects."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "pixels_per_mm: 2\n"
        "rules:\n"
        "  - {name: any, metric: count, min: 1, verdict: FAIL}\n"
        "  - {name: huge, metric: area_mm2, min: 1.0e9, verdict: REVIEW}\n"
    )
    argv = ["eval", "--count", "4", "--json", "--agnostic-nms", "--rules", str(rules)]
    result = runner.invoke(app, [*argv, "--target", twice_server.address], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    verdicts = json.loads(result.stdout)["verdicts"]
    planted = [len(generate_sample(1000, i).defects) for i in range(4)]
    with_defects = sum(n > 0 for n in planted)
    assert verdicts["rules"] == 2
    assert verdicts["accuracy"] == pytest.approx(with_defects / 4)
    assert verdicts["confusion"]["FAIL"]["FAIL"] == with_defects
    assert verdicts["confusion"]["PASS"]["FAIL"] == 4 - with_defects
    assert verdicts["per_rule_agreement"] == {"any": with_defects / 4, "huge": 1.0}
    without_json = [a for a in argv if a != "--json"]
    table = runner.invoke(
        app, [*without_json, "--target", twice_server.address], env={"COLUMNS": "200"}
    )
    assert table.exit_code == 0, table.output
    assert "of images get the verdict the rules give on the planted defects" in table.stdout


def test_eval_refuses_a_bad_rules_file_naming_the_rule(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - {name: odd, metric: sharpness, min: 1, verdict: FAIL}\n")
    result = runner.invoke(app, ["eval", "--rules", str(rules), "--target", "127.0.0.1:1"])
    assert result.exit_code == 2
    assert "rule 'odd'" in result.output and "Traceback" not in result.output
