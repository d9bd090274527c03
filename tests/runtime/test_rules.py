"""The rules engine: each rule kind on known detections, how verdicts combine, and bad rules
refused with the rule's name (in model.yaml at load, in a request per request)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.runtime.onnx_builders import constant_model, yolov8_detect_outputs
from visionrpc.errors import InvalidInputError, ModelLoadError
from visionrpc.runtime.measure import measure
from visionrpc.runtime.pipeline import resolve_options
from visionrpc.runtime.repository import ModelRepository
from visionrpc.runtime.rules import check_rules, evaluate, read_rules_file
from visionrpc.settings import Settings
from visionrpc.types import (
    BoxXYXY,
    Detection,
    InferenceOptions,
    Metric,
    Rule,
    RuleSet,
    Verdict,
)

NAMES = ("scratch", "spot", "crack")
SQUARE = ((0.0, 0.0), (100.0, 0.0), (100.0, 100.0), (0.0, 100.0))


def dets() -> tuple[Detection, ...]:
    """A 60x10 crack at the top left (score 0.9), two 10x10 spots (0.4 and 0.8) further right."""
    raw = [
        Detection(BoxXYXY(10, 10, 70, 20), 0.9, 2, "crack"),
        Detection(BoxXYXY(200, 200, 210, 210), 0.4, 1, "spot"),
        Detection(BoxXYXY(300, 200, 310, 210), 0.8, 1, "spot"),
    ]
    return measure(raw, None, pixels_per_mm=10.0, shape=True)


def verdict_of(
    *rules: Rule, zones=(), ignore=()
) -> tuple[Verdict, list[tuple[str, float, int | None]]]:
    rule_set = RuleSet(rules=rules, zones=zones, ignore_zones=ignore)
    check_rules(rule_set, NAMES, has_scale=True)
    result = evaluate(rule_set, dets())
    return result.verdict, [(h.rule, h.value, h.detection) for h in result.hits]


def test_no_rule_fires_is_a_pass() -> None:
    rule = Rule("many", Metric.COUNT, Verdict.FAIL, "spot", minimum=3)
    assert verdict_of(rule) == (Verdict.PASS, [])


def test_count_rule_fires_once_with_the_count() -> None:
    rule = Rule("two-spots", Metric.COUNT, Verdict.FAIL, "spot", minimum=2)
    assert verdict_of(rule) == (Verdict.FAIL, [("two-spots", 2.0, None)])


def test_score_band_asks_for_review() -> None:
    rule = Rule("unsure", Metric.SCORE, Verdict.REVIEW, minimum=0.3, maximum=0.5)
    verdict, hits = verdict_of(rule)
    assert verdict is Verdict.REVIEW
    assert [(name, index) for name, _, index in hits] == [("unsure", 1)]
    assert hits[0][1] == pytest.approx(0.4)


@pytest.mark.parametrize(
    ("metric", "bound", "value"),
    [
        (Metric.AREA_PX, 500.0, 600.0),
        (Metric.AREA_MM2, 5.0, 6.0),
        (Metric.LENGTH_PX, 50.0, 60.0),
        (Metric.LENGTH_MM, 5.0, 6.0),
        (Metric.WIDTH_PX, 9.5, 10.0),
        (Metric.WIDTH_MM, 0.95, 1.0),
    ],
)
def test_size_rules_fire_per_detection_with_the_measured_value(
    metric: Metric, bound: float, value: float
) -> None:
    rule = Rule("big-crack", metric, Verdict.FAIL, "crack", minimum=bound)
    verdict, hits = verdict_of(rule)
    assert verdict is Verdict.FAIL
    assert [(name, index) for name, _, index in hits] == [("big-crack", 0)]
    assert hits[0][1] == pytest.approx(value)
    below = Rule("big-crack", metric, Verdict.FAIL, "crack", minimum=value * 1.01)
    assert verdict_of(below) == (Verdict.PASS, [])


def test_zones_pick_and_ignore_zones_drop_detections() -> None:
    in_zone = Rule("crack-in-a", Metric.COUNT, Verdict.FAIL, "crack", minimum=1, zone="a")
    assert verdict_of(in_zone, zones=(("a", SQUARE),))[0] is Verdict.FAIL
    far = (("a", ((500.0, 500.0), (600.0, 500.0), (600.0, 600.0))),)
    assert verdict_of(in_zone, zones=far)[0] is Verdict.PASS
    anywhere = Rule("any-crack", Metric.COUNT, Verdict.FAIL, "crack", minimum=1)
    assert verdict_of(anywhere, ignore=(SQUARE,)) == (Verdict.PASS, [])


def test_fail_wins_over_review_and_every_fired_rule_is_reported() -> None:
    rules = (
        Rule("unsure", Metric.SCORE, Verdict.REVIEW, minimum=0.3, maximum=0.5),
        Rule("long", Metric.LENGTH_PX, Verdict.FAIL, minimum=50),
        Rule("spots", Metric.COUNT, Verdict.REVIEW, "spot", minimum=1),
    )
    verdict, hits = verdict_of(*rules)
    assert verdict is Verdict.FAIL
    assert [h[0] for h in hits] == ["unsure", "long", "spots"]


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (
            Rule("r1", Metric.COUNT, Verdict.FAIL, "dent", minimum=1),
            "rule 'r1': unknown class 'dent'",
        ),
        (
            Rule("r2", Metric.COUNT, Verdict.FAIL, zone="b", minimum=1),
            "rule 'r2': unknown zone 'b'",
        ),
        (Rule("r3", Metric.SCORE, Verdict.FAIL), "rule 'r3': give min, max or both"),
        (Rule("r4", Metric.SCORE, Verdict.FAIL, minimum=0.9, maximum=0.1), "rule 'r4': min 0.9"),
        (Rule("r5", Metric.SCORE, Verdict.PASS, minimum=0.1), "rule 'r5': its verdict must be"),
        (Rule("r6", Metric.AREA_MM2, Verdict.FAIL, minimum=1), "rule 'r6': area_mm2 needs a scale"),
        (Rule("r7", Metric.SCORE, Verdict.FAIL, minimum=float("nan")), "rule 'r7': min and max"),
    ],
)
def test_bad_rules_are_refused_by_name(rule: Rule, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_rules(RuleSet(rules=(rule,)), NAMES, has_scale=False)


def test_duplicate_names_and_bad_zones_are_refused() -> None:
    twice = Rule("same", Metric.COUNT, Verdict.FAIL, minimum=1)
    with pytest.raises(ValueError, match="rule 'same' is defined twice"):
        check_rules(RuleSet(rules=(twice, twice)), NAMES, has_scale=False)
    line = (("flat", ((0.0, 0.0), (1.0, 1.0))),)
    with pytest.raises(ValueError, match="zone 'flat' has 2 points"):
        check_rules(RuleSet(rules=(twice,), zones=line), NAMES, has_scale=False)


def model_dir(tmp_path: Path, yaml_text: str) -> Path:
    out = yolov8_detect_outputs([(100, 100, 40, 10)], [2], [0.9], num_classes=3)
    folder = tmp_path / "m"
    constant_model(folder / "model.onnx", [out], names=dict(enumerate(NAMES)))
    (folder / "model.yaml").write_text(yaml_text)
    return tmp_path


GOOD_YAML = """\
pixels_per_mm: 4
zones:
  edge: [[0, 0], [320, 0], [320, 40], [0, 40]]
ignore_zones:
  - [[300, 300], [320, 300], [320, 320]]
rules:
  - {name: long-crack, class: crack, metric: length_mm, min: 5, verdict: FAIL}
  - {name: at-edge, metric: count, min: 1, zone: edge, verdict: REVIEW}
"""


def test_model_yaml_rules_load_with_their_scale(tmp_path: Path) -> None:
    repo = ModelRepository(Settings(models_dir=model_dir(tmp_path, GOOD_YAML)))
    model = repo.get("m")
    assert model.pixels_per_mm == 4.0
    assert model.rules is not None and [r.name for r in model.rules.rules] == [
        "long-crack",
        "at-edge",
    ]
    plan = resolve_options(InferenceOptions(), model).inspection
    assert plan is not None and plan.shape and plan.pixels_per_mm == 4.0


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("rules:\n  - {name: r1, metric: length, min: 1, verdict: FAIL}\n", "rule 'r1': metric"),
        ("rules:\n  - {name: r2, metric: count, min: 1, verdict: PASS}\n", "rule 'r2': verdict"),
        ("rules:\n  - {name: r3, metric: count, min: 1, verdict: FAIL, klass: x}\n", "rule 'r3'"),
        (
            "rules:\n  - {name: r4, class: dent, metric: count, min: 1, verdict: FAIL}\n",
            "rule 'r4': unknown class",
        ),
        (
            "rules:\n  - {name: r5, metric: width_mm, min: 1, verdict: FAIL}\n",
            "rule 'r5': width_mm needs a scale",
        ),
        ("calibration: nowhere.yaml\n", "cannot read calibration file"),
        ("pixels_per_mm: 0\n", "pixels_per_mm"),
        ("zones: {a: [[0, 0], [1, 1], [2, 0]]}\n", "no rules use them"),
    ],
)
def test_bad_rules_in_model_yaml_stop_the_load(
    tmp_path: Path, yaml_text: str, message: str
) -> None:
    with pytest.raises(ModelLoadError, match=message) as info:
        ModelRepository(Settings(models_dir=model_dir(tmp_path, yaml_text)))
    assert "model.yaml" in str(info.value)


def test_calibration_file_beside_model_yaml(tmp_path: Path) -> None:
    root = model_dir(tmp_path, "calibration: ruler.yaml\nmeasure: true\n")
    (root / "m" / "ruler.yaml").write_text("points: [[0, 0], [0, 300]]\ndistance_mm: 20\n")
    model = ModelRepository(Settings(models_dir=root)).get("m")
    assert model.pixels_per_mm == 15.0 and model.rules is None
    plan = resolve_options(InferenceOptions(), model).inspection
    assert plan is not None and plan.shape and plan.rules is None


def test_request_rules_replace_the_models_and_bad_ones_are_invalid_input(tmp_path: Path) -> None:
    model = ModelRepository(Settings(models_dir=model_dir(tmp_path, GOOD_YAML))).get("m")
    mine = RuleSet(rules=(Rule("mine", Metric.SCORE, Verdict.REVIEW, minimum=0.5),))
    plan = resolve_options(InferenceOptions(rules=mine), model).inspection
    assert plan is not None and plan.rules == mine and not plan.shape
    off = resolve_options(InferenceOptions(rules=RuleSet()), model).inspection
    assert off is not None and off.rules is None  # the model's scale still gives mm
    bad = RuleSet(rules=(Rule("oops", Metric.COUNT, Verdict.FAIL, "dent", minimum=1),))
    with pytest.raises(InvalidInputError, match="rules: rule 'oops': unknown class 'dent'"):
        resolve_options(InferenceOptions(rules=bad), model)
    with pytest.raises(InvalidInputError, match="pixels_per_mm is -2"):
        resolve_options(InferenceOptions(pixels_per_mm=-2.0), model)


def test_nothing_asked_means_no_measuring(tmp_path: Path) -> None:
    model = ModelRepository(Settings(models_dir=model_dir(tmp_path, "version: 1\n"))).get("m")
    assert resolve_options(InferenceOptions(), model).inspection is None


def test_rules_file(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(GOOD_YAML)
    rule_set, scale = read_rules_file(path)
    assert scale == 4.0 and len(rule_set.rules) == 2 and rule_set.zones[0][0] == "edge"
    path.write_text("zones: {}\n")
    with pytest.raises(ValueError, match="holds no rules"):
        read_rules_file(path)
