"""Verdicts by rules: PASS, REVIEW or FAIL from an image's detections and their measurements.

A rule picks detections (of one class or all, optionally only those whose box centre lies in a
named zone) and fires when a value lies within its bounds: ``count`` once for the number picked,
any other metric once per picked detection. The verdict is the worst verdict of the rules that
fired (FAIL over REVIEW), PASS when none did. Detections centred in an ignore zone take part in no
rule. Rules come from model.yaml (:class:`InspectionConfig`, checked at load: a bad rule stops the
model loading) or from the request, which replaces them (checked per request).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import cv2
import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from visionrpc.errors import InvalidInputError
from visionrpc.runtime.measure import read_calibration
from visionrpc.types import (
    Detection,
    InferenceOptions,
    InspectionVerdict,
    Metric,
    Rule,
    RuleHit,
    RuleSet,
    Verdict,
)

if TYPE_CHECKING:  # the repository imports this module for ModelConfig
    from visionrpc.runtime.repository import LoadedModel

MM_METRICS = frozenset({Metric.AREA_MM2, Metric.LENGTH_MM, Metric.WIDTH_MM})
SHAPE_METRICS = frozenset({Metric.LENGTH_PX, Metric.LENGTH_MM, Metric.WIDTH_PX, Metric.WIDTH_MM})
_SEVERITY = {Verdict.PASS: 0, Verdict.REVIEW: 1, Verdict.FAIL: 2}

Point = tuple[float, float]
Polygon = Annotated[list[Point], Field(min_length=3)]


class RuleConfig(BaseModel):
    """One rule as model.yaml writes it."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(min_length=1)
    class_name: str = Field(default="", alias="class")
    metric: Metric
    min: float | None = None
    max: float | None = None
    verdict: Literal["FAIL", "REVIEW"]
    zone: str = ""

    @model_validator(mode="wrap")
    @classmethod
    def _named(cls, data: Any, handler: Any) -> Any:
        """Errors name the rule, not only its index in the list."""
        try:
            return handler(data)
        except ValidationError as exc:
            name = data.get("name", "?") if isinstance(data, dict) else "?"
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'rule'}: {e['msg']}" for e in exc.errors()
            )
            raise ValueError(f"rule {name!r}: {problems}") from None

    def to_types(self) -> Rule:
        return Rule(
            name=self.name,
            metric=self.metric,
            verdict=Verdict(self.verdict),
            class_name=self.class_name,
            minimum=self.min,
            maximum=self.max,
            zone=self.zone,
        )


class InspectionConfig(BaseModel):
    """The model.yaml keys for measurements and verdicts (also what a rules file holds)."""

    model_config = ConfigDict(extra="forbid")

    pixels_per_mm: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    calibration: str | None = None  # a file beside model.yaml, see measure.read_calibration
    measure: bool = False  # measure length and width in every response
    zones: dict[str, Polygon] = Field(default_factory=dict)
    ignore_zones: list[Polygon] = Field(default_factory=list)
    rules: list[RuleConfig] = Field(default_factory=list)

    def rule_set(self) -> RuleSet | None:
        """The rules as the runtime uses them; None when there are none."""
        if not self.rules:
            return None
        return RuleSet(
            rules=tuple(r.to_types() for r in self.rules),
            zones=tuple((name, tuple(points)) for name, points in self.zones.items()),
            ignore_zones=tuple(tuple(points) for points in self.ignore_zones),
        )


def read_rules_file(path: Path) -> tuple[RuleSet, float | None]:
    """A YAML file with the model.yaml keys ``rules``, ``zones``, ``ignore_zones`` (and optionally
    ``pixels_per_mm``): the rules to send with requests, and the scale. Raises ValueError."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc}") from exc
    config = rules_document(text, str(path))
    rule_set = config.rule_set()
    if rule_set is None:
        raise ValueError(f"{path} holds no rules")
    return rule_set, config.pixels_per_mm


def rules_document(text: str, source: str) -> InspectionConfig:
    """A rules file's text (YAML, or JSON, which YAML reads too) checked against the model.yaml
    keys; ``source`` names it in the ValueError."""
    try:
        raw = yaml.safe_load(text) or {}
        return InspectionConfig.model_validate(raw)
    except yaml.YAMLError as exc:
        raise ValueError(f"cannot read {source}: {exc}") from exc
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ValueError(f"invalid {source}: {problems}") from None


def model_inspection(
    config: InspectionConfig, class_names: Sequence[str], folder: Path
) -> tuple[float | None, RuleSet | None]:
    """A model's scale (model.yaml's, or its calibration file's, relative to ``folder``) and its
    checked rules. Raises ValueError naming the rule or file."""
    if config.pixels_per_mm is not None and config.calibration:
        raise ValueError("set pixels_per_mm or calibration, not both")
    scale = config.pixels_per_mm
    if config.calibration:
        scale = read_calibration(folder / config.calibration)
    rule_set = config.rule_set()
    if rule_set is None and (config.zones or config.ignore_zones):
        raise ValueError("zones or ignore_zones are set but no rules use them; add rules")
    if rule_set is not None:
        check_rules(rule_set, class_names, has_scale=scale is not None)
    return scale, rule_set


def check_rules(rule_set: RuleSet, class_names: Sequence[str], *, has_scale: bool) -> None:
    """Refuse what cannot be evaluated, naming the rule (or zone): ValueError."""
    zones = dict(rule_set.zones)
    for name, points in (*rule_set.zones, *(("(ignore zone)", p) for p in rule_set.ignore_zones)):
        if len(points) < 3:
            raise ValueError(f"zone {name!r} has {len(points)} points; a polygon needs at least 3")
        if not all(math.isfinite(v) for point in points for v in point):
            raise ValueError(f"zone {name!r} has a coordinate that is not a finite number")
    if len(zones) != len(rule_set.zones):
        raise ValueError("two zones have the same name; give each zone its own name")
    seen: set[str] = set()
    for rule in rule_set.rules:
        where = f"rule {rule.name!r}"
        if not rule.name:
            raise ValueError("a rule has no name; name every rule (it is reported when it fires)")
        if rule.name in seen:
            raise ValueError(f"{where} is defined twice; give each rule its own name")
        seen.add(rule.name)
        if rule.class_name and rule.class_name not in class_names:
            raise ValueError(
                f"{where}: unknown class {rule.class_name!r}; valid: {', '.join(class_names)}"
            )
        if rule.zone and rule.zone not in zones:
            known = ", ".join(zones) or "none defined"
            raise ValueError(f"{where}: unknown zone {rule.zone!r}; zones: {known}")
        if rule.verdict is Verdict.PASS:
            raise ValueError(
                f"{where}: its verdict must be FAIL or REVIEW (PASS is no rule firing)"
            )
        if rule.minimum is None and rule.maximum is None:
            raise ValueError(f"{where}: give min, max or both (the range in which it fires)")
        for bound in (rule.minimum, rule.maximum):
            if bound is not None and not math.isfinite(bound):
                raise ValueError(f"{where}: min and max must be finite numbers")
        if rule.minimum is not None and rule.maximum is not None and rule.minimum > rule.maximum:
            raise ValueError(f"{where}: min {rule.minimum:g} is above max {rule.maximum:g}")
        if rule.metric in MM_METRICS and not has_scale:
            raise ValueError(
                f"{where}: {rule.metric.value} needs a scale: set pixels_per_mm or calibration "
                "in model.yaml, or pixels_per_mm in the request"
            )


def needs_shape(rule_set: RuleSet | None) -> bool:
    """Whether evaluating these rules needs lengths and widths (the costly part)."""
    return rule_set is not None and any(r.metric in SHAPE_METRICS for r in rule_set.rules)


@dataclass(frozen=True)
class InspectionPlan:
    """What one request measures and judges (resolved from the request and the model)."""

    pixels_per_mm: float | None
    shape: bool  # measure length and width
    rules: RuleSet | None


def plan_inspection(options: InferenceOptions, model: LoadedModel) -> InspectionPlan | None:
    """What this request measures and judges; None when nothing (no extra work). A request's
    rules or scale that cannot work raise InvalidInputError naming the rule."""
    scale = model.pixels_per_mm
    if options.pixels_per_mm is not None:
        if not (math.isfinite(options.pixels_per_mm) and options.pixels_per_mm > 0):
            raise InvalidInputError(
                f"pixels_per_mm is {options.pixels_per_mm}; send a number > 0, or 0 for the "
                "model's scale",
                field="pixels_per_mm",
            )
        scale = options.pixels_per_mm
    rule_set = model.rules
    if options.rules is not None:
        rule_set = options.rules if options.rules.rules else None
        if rule_set is not None:
            try:
                check_rules(rule_set, model.class_names, has_scale=scale is not None)
            except ValueError as exc:
                raise InvalidInputError(f"rules: {exc}", field="rules") from None
    shape = options.measure or model.config.measure or needs_shape(rule_set)
    if not shape and scale is None and rule_set is None:
        return None
    return InspectionPlan(scale, shape, rule_set)


def _centre(det: Detection) -> tuple[float, float]:
    b = det.box
    return (b.x_min + b.x_max) / 2, (b.y_min + b.y_max) / 2


def _contour(points: Sequence[tuple[float, float]]) -> np.ndarray:
    return np.asarray(points, dtype=np.float32).reshape(-1, 1, 2)


def _inside(contour: np.ndarray, xy: tuple[float, float]) -> bool:
    return bool(cv2.pointPolygonTest(contour, (float(xy[0]), float(xy[1])), False) >= 0)


def value_of(det: Detection, metric: Metric) -> float | None:
    """A detection's value for a per-detection metric; None when it was not measured."""
    if metric is Metric.SCORE:
        return det.score
    m = det.measurement
    if m is None:
        if metric is Metric.AREA_PX:
            return float(det.mask_area_px) if det.mask_area_px is not None else det.box.area
        return None
    values = {
        Metric.AREA_PX: m.area_px,
        Metric.AREA_MM2: m.area_mm2,
        Metric.LENGTH_PX: m.length_px,
        Metric.LENGTH_MM: m.length_mm,
        Metric.WIDTH_PX: m.width_px,
        Metric.WIDTH_MM: m.width_mm,
    }
    return values.get(metric)


def _within(rule: Rule, value: float) -> bool:
    return (rule.minimum is None or value >= rule.minimum) and (
        rule.maximum is None or value <= rule.maximum
    )


def evaluate(rule_set: RuleSet, detections: Sequence[Detection]) -> InspectionVerdict:
    """Every rule against ``detections`` (measured as the rules need): the verdict and hits."""
    zones = {name: _contour(points) for name, points in rule_set.zones}
    ignored = [_contour(points) for points in rule_set.ignore_zones]
    centres = [_centre(d) for d in detections]
    counted = [not any(_inside(z, c) for z in ignored) for c in centres]
    hits: list[RuleHit] = []
    for rule in rule_set.rules:
        picked = [
            i
            for i, det in enumerate(detections)
            if counted[i]
            and (not rule.class_name or det.class_name == rule.class_name)
            and (not rule.zone or _inside(zones[rule.zone], centres[i]))
        ]
        if rule.metric is Metric.COUNT:
            if _within(rule, len(picked)):
                hits.append(_hit(rule, float(len(picked)), rule.class_name, None))
            continue
        for i in picked:
            value = value_of(detections[i], rule.metric)
            if value is not None and _within(rule, value):
                hits.append(_hit(rule, float(value), detections[i].class_name, i))
    worst = max((h.verdict for h in hits), key=_SEVERITY.__getitem__, default=Verdict.PASS)
    return InspectionVerdict(worst, tuple(hits))


def _hit(rule: Rule, value: float, class_name: str, detection: int | None) -> RuleHit:
    return RuleHit(
        rule=rule.name,
        verdict=rule.verdict,
        metric=rule.metric,
        value=value,
        class_name=class_name,
        minimum=rule.minimum,
        maximum=rule.maximum,
        detection=detection,
        zone=rule.zone,
    )
