"""Verdicts and measurements as short text, the same in the CLI's table and on annotated images
(ASCII only: OpenCV's fonts draw nothing else)."""

from __future__ import annotations

from visionrpc.types import Detection, Metric, RuleHit


def _bound(value: float) -> str:
    return f"{value:g}"


def hit_text(hit: RuleHit) -> str:
    """``crack-long (FAIL): crack #2 length_mm 4.12 >= 2 in zone seal``: a fired rule, what it
    measured on which detection (its index in the result), and the bounds it fell within."""
    low, high = hit.minimum, hit.maximum
    if low is not None and high is not None:
        bounds = f"in [{_bound(low)}, {_bound(high)}]"
    elif low is not None:
        bounds = f">= {_bound(low)}"
    else:
        bounds = f"<= {_bound(high if high is not None else 0.0)}"
    what = hit.class_name or "all"
    on = f"{what} #{hit.detection}" if hit.detection is not None else what
    value = f"{hit.value:g}" if hit.metric is Metric.COUNT else f"{hit.value:.3g}"
    zone = f" in zone {hit.zone}" if hit.zone else ""
    return f"{hit.rule} ({hit.verdict.value}): {on} {hit.metric.value} {value} {bounds}{zone}"


def size_text(det: Detection) -> str:
    """A detection's size for its label: its length if measured, else its area; in mm with a
    scale, else in pixels; empty when it was not measured."""
    m = det.measurement
    if m is None:
        return ""
    if m.length_mm is not None:
        return f"{m.length_mm:.1f} mm"
    if m.length_px is not None:
        return f"{m.length_px:.0f} px"
    if m.area_mm2 is not None:
        return f"{m.area_mm2:.2f} mm2"
    return f"{m.area_px:.0f} px2"
