"""Proto ↔ domain converters for the inference service: one class per message family.

The server converts once on the way in and once on the way out, so the runtime never sees protobuf;
the client uses the same classes the other way round to hand users typed results. They live in the
wire layer, not under ``server/``, because both ends of the wire share them.

Proto ``float`` fields are float32: read back into Python they show artefacts such as
0.6000000238418579, so the converters round ModelInfo's thresholds to the shortest decimal that is
the same float32. A double beyond float32's range travels as ±inf, one too small for it as 0 (for
a request threshold: "the model's default"); NaN and ±inf travel as they are, and the runtime, not
the converter, refuses them where they make no sense (thresholds).
"""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any

import numpy as np

from visionrpc import types
from visionrpc.errors import InvalidInputError
from visionrpc.v1 import inference_pb2 as pb

_MASK_FORMATS = {
    pb.MASK_FORMAT_UNSPECIFIED: types.MaskFormat.RLE,
    pb.MASK_FORMAT_RLE: types.MaskFormat.RLE,
    pb.MASK_FORMAT_PNG: types.MaskFormat.PNG,
    pb.MASK_FORMAT_POLYGON: types.MaskFormat.POLYGON,
}
_PIXEL_FORMATS = {
    pb.PIXEL_FORMAT_UNSPECIFIED: None,
    pb.PIXEL_FORMAT_RGB: types.PixelFormat.RGB,
    pb.PIXEL_FORMAT_BGR: types.PixelFormat.BGR,
    pb.PIXEL_FORMAT_GRAY: types.PixelFormat.GRAY,
    pb.PIXEL_FORMAT_RGBA: types.PixelFormat.RGBA,
    pb.PIXEL_FORMAT_BGRA: types.PixelFormat.BGRA,
}
_TASKS = {
    types.Task.DETECT: pb.TASK_DETECT,
    types.Task.SEGMENT: pb.TASK_SEGMENT,
    types.Task.CLASSIFY: pb.TASK_CLASSIFY,
    types.Task.POSE: pb.TASK_POSE,
    types.Task.OBB: pb.TASK_OBB,
}
_TASKS_FROM_PB = {v: k for k, v in _TASKS.items()}
_LAYOUTS = {layout.value: layout for layout in types.Layout}
_STATES = {
    types.ModelState.READY: pb.MODEL_STATE_READY,
    types.ModelState.LOADING: pb.MODEL_STATE_LOADING,
    types.ModelState.UNAVAILABLE: pb.MODEL_STATE_UNAVAILABLE,
}
# a server from before model control reports no state: what it lists is serving
_STATES_FROM_PB = {v: k for k, v in _STATES.items()} | {
    pb.MODEL_STATE_UNSPECIFIED: types.ModelState.READY
}
"""Layout names; one this client does not know (a newer server's) reads as the default, as an
unknown task does, instead of failing the whole ListModels call."""


def f32(value: float) -> float:
    """A float32 read from protobuf as the decimal it was written as (0.6, not 0.6000000238...)."""
    return float(str(np.float32(value)))


class InferRequestConverter:
    """``InferRequest`` ↔ :class:`types.InferenceInput`."""

    @staticmethod
    def to_types(request: pb.InferRequest) -> types.InferenceInput:
        if request.mask_format not in _MASK_FORMATS:
            raise InvalidInputError(
                f"unknown mask_format {request.mask_format}; use RLE, PNG or POLYGON",
                field="mask_format",
            )
        options = types.InferenceOptions(
            model=request.model,
            confidence_threshold=request.confidence_threshold or None,
            iou_threshold=request.iou_threshold or None,
            max_detections=request.max_detections or None,
            classes=tuple(request.classes),
            return_masks=request.return_masks,
            mask_format=_MASK_FORMATS[request.mask_format],
            agnostic_nms=request.agnostic_nms if request.HasField("agnostic_nms") else None,
            tiling=TilingConverter.to_types(request.tiling),
            measure=request.measure,
            pixels_per_mm=request.pixels_per_mm or None,
            rules=RuleSetConverter.to_types(request.rules) if request.HasField("rules") else None,
            top_k=request.top_k or None,
        )
        which = request.WhichOneof("image")
        if which == "raw":
            raw = request.raw
            if raw.pixel_format not in _PIXEL_FORMATS:
                raise InvalidInputError(
                    f"unknown pixel_format {raw.pixel_format}; use RGB, BGR, GRAY, RGBA or BGRA",
                    field="raw.pixel_format",
                )
            return types.InferenceInput(
                options=options,
                raw=types.RawImage(
                    width=raw.width,
                    height=raw.height,
                    channels=raw.channels,
                    pixel_format=_PIXEL_FORMATS[raw.pixel_format],
                    data=raw.data,
                ),
                request_id=request.request_id,
            )
        if which is None:
            # Oneof members have presence: an unset oneof ("no image") and an empty image_bytes
            # differ on the wire, and each gets its own error message from the pipeline.
            return types.InferenceInput(options=options, request_id=request.request_id)
        return types.InferenceInput(
            options=options, image_bytes=request.image_bytes, request_id=request.request_id
        )


class MaskConverter:
    @staticmethod
    def to_types(mask: pb.Mask) -> types.EncodedMask | None:
        which = mask.WhichOneof("encoding")
        if which == "rle":
            size = tuple(mask.rle.size)
            return types.EncodedMask(
                format=types.MaskFormat.RLE,
                area_px=mask.area_px,
                rle_counts=mask.rle.counts,
                rle_size=(size[0], size[1]) if len(size) == 2 else (0, 0),
            )
        if which == "png":
            return types.EncodedMask(
                format=types.MaskFormat.PNG,
                area_px=mask.area_px,
                png=mask.png.data,
                png_origin=(mask.png.x, mask.png.y),
            )
        if which == "polygon":
            return types.EncodedMask(
                format=types.MaskFormat.POLYGON,
                area_px=mask.area_px,
                polygons=tuple(
                    np.array([(p.x, p.y) for p in poly.points], np.float32).reshape(-1, 2)
                    for poly in mask.polygon.polygons
                ),
            )
        return None

    @staticmethod
    def from_types(mask: types.EncodedMask) -> pb.Mask:
        out = pb.Mask(area_px=mask.area_px)
        if mask.format is types.MaskFormat.RLE:
            out.rle.size.extend(mask.rle_size)
            out.rle.counts = mask.rle_counts
        elif mask.format is types.MaskFormat.PNG:
            out.png.x, out.png.y = mask.png_origin
            out.png.data = mask.png
        else:
            out.polygon.SetInParent()  # an empty mask has no polygons, yet it is a polygon mask
            for polygon in mask.polygons:
                out.polygon.polygons.add().points.extend(
                    pb.Point(x=float(x), y=float(y)) for x, y in polygon
                )
        return out


class TaskConverter:
    """Keypoints, rotated boxes and classifications (the pose, OBB and classify tasks)."""

    @staticmethod
    def keypoints_to_types(detection: pb.Detection) -> tuple[types.Keypoint, ...]:
        return tuple(types.Keypoint(k.x, k.y, k.visibility) for k in detection.keypoints)

    @staticmethod
    def rotated_to_types(detection: pb.Detection) -> types.RotatedBox | None:
        if not detection.HasField("rotated_box"):
            return None
        r = detection.rotated_box
        return types.RotatedBox(
            r.cx, r.cy, r.width, r.height, r.angle_deg, tuple((p.x, p.y) for p in r.corners)
        )

    @staticmethod
    def to_proto(detection: types.Detection, out: pb.Detection) -> None:
        out.keypoints.extend(
            pb.Keypoint(x=k.x, y=k.y, visibility=k.visibility) for k in detection.keypoints
        )
        r = detection.rotated_box
        if r is not None:
            out.rotated_box.CopyFrom(
                pb.RotatedBox(
                    cx=r.cx,
                    cy=r.cy,
                    width=r.width,
                    height=r.height,
                    angle_deg=r.angle_deg,
                    corners=[pb.Point(x=x, y=y) for x, y in r.corners],
                )
            )

    @staticmethod
    def classifications_to_types(
        response: pb.InferResponse,
    ) -> tuple[types.Classification, ...]:
        return tuple(
            types.Classification(c.class_id, c.class_name, c.score)
            for c in response.classifications
        )


class InferResponseConverter:
    """:class:`types.InferenceResult` ↔ ``InferResponse``."""

    @staticmethod
    def to_types(response: pb.InferResponse) -> types.InferenceResult:
        t = response.timings
        return types.InferenceResult(
            model=response.model,
            model_version=response.model_version,
            image_width=response.image_width,
            image_height=response.image_height,
            detections=tuple(
                types.Detection(
                    box=types.BoxXYXY(d.box.x_min, d.box.y_min, d.box.x_max, d.box.y_max),
                    score=d.score,
                    class_id=d.class_id,
                    class_name=d.class_name,
                    mask=MaskConverter.to_types(d.mask) if d.HasField("mask") else None,
                    mask_area_px=d.mask_area_px if d.HasField("mask_area_px") else None,
                    measurement=(
                        MeasurementConverter.to_types(d.measurement)
                        if d.HasField("measurement")
                        else None
                    ),
                    keypoints=TaskConverter.keypoints_to_types(d),
                    rotated_box=TaskConverter.rotated_to_types(d),
                )
                for d in response.detections
            ),
            defects=tuple(
                types.DefectSummary(
                    class_name=s.class_name,
                    count=s.count,
                    max_score=s.max_score,
                    total_area_px=s.total_area_px,
                    area_fraction=s.area_fraction,
                    total_area_mm2=_opt(s, "total_area_mm2"),
                    total_length_px=_opt(s, "total_length_px"),
                    total_length_mm=_opt(s, "total_length_mm"),
                )
                for s in response.defects
            ),
            timings=types.Timings(**{f.name: getattr(t, f.name) for f in fields(types.Timings)}),
            request_id=response.request_id,
            tiling=TilingConverter.report_to_types(response.tiling)
            if response.HasField("tiling")
            else None,
            verdict=(
                VerdictConverter.to_types(response.verdict)
                if response.HasField("verdict")
                else None
            ),
            pixels_per_mm=response.pixels_per_mm or None,
            classifications=TaskConverter.classifications_to_types(response),
        )

    @staticmethod
    def from_types(result: types.InferenceResult) -> pb.InferResponse:
        response = pb.InferResponse(
            request_id=result.request_id,
            model=result.model,
            model_version=result.model_version,
            image_width=result.image_width,
            image_height=result.image_height,
            timings=pb.Timings(**asdict(result.timings)),
        )
        if result.tiling is not None:
            response.tiling.CopyFrom(pb.TilingReport(**asdict(result.tiling)))
        for d in result.detections:
            det = response.detections.add(
                box=pb.BoundingBox(
                    x_min=d.box.x_min, y_min=d.box.y_min, x_max=d.box.x_max, y_max=d.box.y_max
                ),
                score=d.score,
                class_id=d.class_id,
                class_name=d.class_name,
            )
            if d.mask is not None:
                det.mask.CopyFrom(MaskConverter.from_types(d.mask))
            if d.mask_area_px is not None:
                det.mask_area_px = d.mask_area_px
            if d.measurement is not None:
                det.measurement.CopyFrom(MeasurementConverter.from_types(d.measurement))
            TaskConverter.to_proto(d, det)
        response.classifications.extend(
            pb.Classification(class_id=c.class_id, class_name=c.class_name, score=c.score)
            for c in result.classifications
        )
        for s in result.defects:
            response.defects.add(
                class_name=s.class_name,
                count=s.count,
                max_score=s.max_score,
                total_area_px=s.total_area_px,
                area_fraction=s.area_fraction,
                total_area_mm2=s.total_area_mm2,
                total_length_px=s.total_length_px,
                total_length_mm=s.total_length_mm,
            )
        if result.verdict is not None:
            response.verdict.CopyFrom(VerdictConverter.from_types(result.verdict))
        if result.pixels_per_mm is not None:
            response.pixels_per_mm = result.pixels_per_mm
        return response


def _opt(message: Any, name: str) -> Any:
    """An optional field's value, or None when unset."""
    return getattr(message, name) if message.HasField(name) else None


_VERDICTS = {
    types.Verdict.PASS: pb.VERDICT_PASS,
    types.Verdict.REVIEW: pb.VERDICT_REVIEW,
    types.Verdict.FAIL: pb.VERDICT_FAIL,
}
_VERDICTS_FROM_PB = {v: k for k, v in _VERDICTS.items()}
_METRICS = {
    types.Metric.COUNT: pb.RULE_METRIC_COUNT,
    types.Metric.SCORE: pb.RULE_METRIC_SCORE,
    types.Metric.AREA_PX: pb.RULE_METRIC_AREA_PX,
    types.Metric.AREA_MM2: pb.RULE_METRIC_AREA_MM2,
    types.Metric.LENGTH_PX: pb.RULE_METRIC_LENGTH_PX,
    types.Metric.LENGTH_MM: pb.RULE_METRIC_LENGTH_MM,
    types.Metric.WIDTH_PX: pb.RULE_METRIC_WIDTH_PX,
    types.Metric.WIDTH_MM: pb.RULE_METRIC_WIDTH_MM,
}
_METRICS_FROM_PB = {v: k for k, v in _METRICS.items()}


class MeasurementConverter:
    @staticmethod
    def to_types(m: pb.Measurement) -> types.Measurement:
        return types.Measurement(
            area_px=m.area_px,
            length_px=_opt(m, "length_px"),
            width_px=_opt(m, "width_px"),
            area_mm2=_opt(m, "area_mm2"),
            length_mm=_opt(m, "length_mm"),
            width_mm=_opt(m, "width_mm"),
            from_mask=m.from_mask,
        )

    @staticmethod
    def from_types(m: types.Measurement) -> pb.Measurement:
        return pb.Measurement(
            area_px=m.area_px,
            length_px=m.length_px,
            width_px=m.width_px,
            area_mm2=m.area_mm2,
            length_mm=m.length_mm,
            width_mm=m.width_mm,
            from_mask=m.from_mask,
        )


class RuleSetConverter:
    """``RuleSet`` ↔ :class:`types.RuleSet`; the runtime checks what the rules say."""

    @staticmethod
    def to_types(rule_set: pb.RuleSet) -> types.RuleSet:
        rules = []
        for i, r in enumerate(rule_set.rules):
            name = r.name or f"#{i + 1}"
            if r.metric not in _METRICS_FROM_PB:
                raise InvalidInputError(
                    f"rules: rule {name!r} has no metric (or an unknown one, {r.metric}); use "
                    "COUNT, SCORE, AREA_PX, AREA_MM2, LENGTH_PX, LENGTH_MM, WIDTH_PX or WIDTH_MM",
                    field="rules",
                )
            if r.verdict not in (pb.VERDICT_FAIL, pb.VERDICT_REVIEW):
                raise InvalidInputError(
                    f"rules: rule {name!r} has verdict {r.verdict}; use FAIL or REVIEW",
                    field="rules",
                )
            rules.append(
                types.Rule(
                    name=r.name,
                    metric=_METRICS_FROM_PB[r.metric],
                    verdict=_VERDICTS_FROM_PB[r.verdict],
                    class_name=r.class_name,
                    minimum=_opt(r, "min"),
                    maximum=_opt(r, "max"),
                    zone=r.zone,
                )
            )
        return types.RuleSet(
            rules=tuple(rules),
            zones=tuple((z.name, tuple((p.x, p.y) for p in z.points)) for z in rule_set.zones),
            ignore_zones=tuple(
                tuple((p.x, p.y) for p in poly.points) for poly in rule_set.ignore_zones
            ),
        )

    @staticmethod
    def from_types(rule_set: types.RuleSet) -> pb.RuleSet:
        out = pb.RuleSet()
        for r in rule_set.rules:
            out.rules.add(
                name=r.name,
                class_name=r.class_name,
                metric=_METRICS[r.metric],
                min=r.minimum,
                max=r.maximum,
                verdict=_VERDICTS[r.verdict],
                zone=r.zone,
            )
        for name, points in rule_set.zones:
            out.zones.add(name=name, points=[pb.Point(x=x, y=y) for x, y in points])
        for points in rule_set.ignore_zones:
            out.ignore_zones.add(points=[pb.Point(x=x, y=y) for x, y in points])
        return out


class VerdictConverter:
    @staticmethod
    def to_types(verdict: pb.InspectionVerdict) -> types.InspectionVerdict:
        return types.InspectionVerdict(
            # a newer server's verdict this client does not know reads as REVIEW: look at it
            verdict=_VERDICTS_FROM_PB.get(verdict.verdict, types.Verdict.REVIEW),
            hits=tuple(
                types.RuleHit(
                    rule=h.rule,
                    verdict=_VERDICTS_FROM_PB.get(h.verdict, types.Verdict.REVIEW),
                    metric=_METRICS_FROM_PB.get(h.metric, types.Metric.COUNT),
                    value=h.value,
                    class_name=h.class_name,
                    minimum=_opt(h, "min"),
                    maximum=_opt(h, "max"),
                    detection=_opt(h, "detection"),
                    zone=h.zone,
                )
                for h in verdict.hits
            ),
        )

    @staticmethod
    def from_types(verdict: types.InspectionVerdict) -> pb.InspectionVerdict:
        out = pb.InspectionVerdict(verdict=_VERDICTS[verdict.verdict])
        for h in verdict.hits:
            out.hits.add(
                rule=h.rule,
                verdict=_VERDICTS[h.verdict],
                metric=_METRICS[h.metric],
                class_name=h.class_name,
                value=h.value,
                min=h.minimum,
                max=h.maximum,
                detection=h.detection,
                zone=h.zone,
            )
        return out


class ModelInfoConverter:
    @staticmethod
    def to_types(info: pb.ModelInfo) -> types.ModelDescription:
        return types.ModelDescription(
            name=info.name,
            version=info.version,
            display_name=info.display_name,
            task=_TASKS_FROM_PB.get(info.task, types.Task.DETECT),
            input_width=info.input_width,
            input_height=info.input_height,
            class_names=tuple(info.class_names),
            execution_provider=info.execution_provider,
            default_confidence_threshold=f32(info.default_confidence_threshold),
            default_iou_threshold=f32(info.default_iou_threshold),
            default_max_detections=info.default_max_detections,
            layout=_LAYOUTS.get(info.layout, types.Layout.YOLOV8),
            dynamic_batch=info.dynamic_batch,
            max_batch_size=info.max_batch_size,
            default_agnostic_nms=info.default_agnostic_nms,
            state=_STATES_FROM_PB.get(info.state, types.ModelState.UNAVAILABLE),
            state_reason=info.state_reason,
            default_tiling=TilingConverter.to_types(info.default_tiling)
            if info.HasField("default_tiling")
            else None,
            keypoint_shape=tuple(info.keypoint_shape),
        )

    @staticmethod
    def from_status(status: types.ModelStatus) -> pb.ModelInfo:
        """A model that is not serving: its name, version, state and why, nothing else."""
        return pb.ModelInfo(
            name=status.name,
            version=status.version,
            state=_STATES[status.state],
            state_reason=status.reason,
        )

    @staticmethod
    def from_types(info: types.ModelDescription) -> pb.ModelInfo:
        return pb.ModelInfo(
            name=info.name,
            version=info.version,
            display_name=info.display_name,
            task=_TASKS.get(info.task, pb.TASK_UNSPECIFIED),
            input_width=info.input_width,
            input_height=info.input_height,
            class_names=list(info.class_names),
            execution_provider=info.execution_provider,
            default_confidence_threshold=info.default_confidence_threshold,
            default_iou_threshold=info.default_iou_threshold,
            default_max_detections=info.default_max_detections,
            layout=info.layout.value,
            dynamic_batch=info.dynamic_batch,
            max_batch_size=info.max_batch_size,
            default_agnostic_nms=info.default_agnostic_nms,
            state=_STATES[info.state],
            state_reason=info.state_reason,
            keypoint_shape=list(info.keypoint_shape),
            default_tiling=TilingConverter.from_types(info.default_tiling)
            if info.default_tiling is not None
            else None,
        )


_TILING_MODES = {
    pb.TILING_MODE_UNSPECIFIED: None,
    pb.TILING_MODE_OFF: types.TilingMode.OFF,
    pb.TILING_MODE_ON: types.TilingMode.ON,
    pb.TILING_MODE_AUTO: types.TilingMode.AUTO,
}
_TILING_MODES_TO_PB = {v: k for k, v in _TILING_MODES.items() if v is not None}


class TilingConverter:
    """``Tiling`` ↔ :class:`types.TilingOptions`, ``TilingReport`` → :class:`types.TilingReport`."""

    @staticmethod
    def to_types(tiling: pb.Tiling) -> types.TilingOptions:
        if tiling.mode not in _TILING_MODES:
            raise InvalidInputError(
                f"unknown tiling.mode {tiling.mode}; use OFF, ON or AUTO (or leave it unset for "
                "the model's default)",
                field="tiling.mode",
            )
        return types.TilingOptions(
            mode=_TILING_MODES[tiling.mode],
            tile_size=tiling.tile_size,
            overlap=f32(tiling.overlap) if tiling.HasField("overlap") else None,
            thumbnail=tiling.thumbnail if tiling.HasField("thumbnail") else None,
            auto_factor=f32(tiling.auto_factor),
        )

    @staticmethod
    def from_types(tiling: types.TilingOptions) -> pb.Tiling:
        out = pb.Tiling(
            mode=_TILING_MODES_TO_PB[tiling.mode]
            if tiling.mode is not None
            else pb.TILING_MODE_UNSPECIFIED,
            tile_size=tiling.tile_size,
            auto_factor=tiling.auto_factor,
        )
        if tiling.overlap is not None:
            out.overlap = tiling.overlap
        if tiling.thumbnail is not None:
            out.thumbnail = tiling.thumbnail
        return out

    @staticmethod
    def report_to_types(report: pb.TilingReport) -> types.TilingReport:
        return types.TilingReport(
            **{f.name: getattr(report, f.name) for f in fields(types.TilingReport)}
        )
