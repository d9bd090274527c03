"""The vision view's measurements and verdicts over a real server: MEASUREMENTS, VERDICT and
VERDICT_HITS compared with what the typed Infer returns for the same images and rules, the
parameters that ask for them (and for tiling), and the errors of bad ones."""

from __future__ import annotations

import json
import math
from pathlib import Path

import grpc
import numpy as np
import pytest

from tests.helpers import StartServer, make_settings
from tests.server import test_oip_vision
from tests.server.test_inference_service import LOW_CONF, copy_model, encode
from tests.server.test_oip_vision import (
    DETECT,
    JPEG_A,
    JPEG_B,
    SEGMENT,
    Stubs,
    by_name,
    infer_request,
    unframe,
)
from visionrpc.runtime.rules import rules_document
from visionrpc.server.inference_servicer import InferenceServicer
from visionrpc.server.oip import OpenInferenceServicer
from visionrpc.synthetic import generate_sample
from visionrpc.v1 import grpc_service_pb2 as oip
from visionrpc.v1 import grpc_service_pb2_grpc
from visionrpc.v1 import inference_pb2 as pb
from visionrpc.v1 import model_config_pb2 as mc
from visionrpc.wire.converters import RuleSetConverter

models = test_oip_vision.models  # the same fixtures: the shipped model and a detect-only one
stubs = test_oip_vision.stubs

RULES = json.dumps(
    {
        "zones": {"left": [[0, 0], [200, 0], [200, 2000], [0, 2000]]},
        "rules": [
            {"name": "any", "metric": "count", "min": 1, "verdict": "REVIEW"},
            {"name": "long", "metric": "length_mm", "min": 0.5, "verdict": "FAIL"},
            {"name": "left", "zone": "left", "metric": "area_px", "min": 1, "verdict": "FAIL"},
        ],
    }
)
COLUMNS = ("area_px", "length_px", "width_px", "area_mm2", "length_mm", "width_mm")
VERDICTS = {pb.VERDICT_PASS: "PASS", pb.VERDICT_REVIEW: "REVIEW", pb.VERDICT_FAIL: "FAIL"}


def with_params(request: oip.ModelInferRequest, **params: object) -> oip.ModelInferRequest:
    for key, value in params.items():
        target = request.parameters[key]
        if isinstance(value, bool):
            target.bool_param = value
        elif isinstance(value, float):
            target.double_param = value
        elif isinstance(value, int):
            target.int64_param = value
        else:
            target.string_param = str(value)
    return request


async def typed(stubs: Stubs, image: bytes, scale: float, rules: str = "") -> pb.InferResponse:
    request = pb.InferRequest(
        model=SEGMENT,
        image_bytes=image,
        confidence_threshold=LOW_CONF,
        measure=True,
        pixels_per_mm=scale,
    )
    if rules:
        rule_set = rules_document(rules, "test").rule_set()
        assert rule_set is not None
        request.rules.CopyFrom(RuleSetConverter.from_types(rule_set))
    return await stubs.typed.Infer(request)


def sizes(m: pb.Measurement) -> list[float]:
    present = {field.name for field, _ in m.ListFields()} | {"area_px"}
    return [getattr(m, c) if c in present else math.nan for c in COLUMNS]


@pytest.mark.parametrize("scale", [8.0, "8"], ids=["double_param", "string_param (KServe)"])
async def test_measurements_and_verdicts_equal_typed_infers(
    stubs: Stubs, scale: float | str
) -> None:
    request = with_params(
        infer_request(SEGMENT, JPEG_A, JPEG_B), measure=True, pixels_per_mm=scale, rules=RULES
    )
    out = by_name(await stubs.oip.ModelInfer(request))
    assert list(out) == [
        "BOXES",
        "SCORES",
        "CLASS_IDS",
        "IMAGE_INDEX",
        "MEASUREMENTS",
        "VERDICT",
        "VERDICT_HITS",
    ]
    tensor, raw = out["MEASUREMENTS"]
    rows = np.frombuffer(raw, "<f4").reshape(tuple(tensor.shape))
    verdicts = [v.decode() for v in unframe(out["VERDICT"][1])]
    hits = [json.loads(h) for h in unframe(out["VERDICT_HITS"][1])]
    assert (out["VERDICT"][0].datatype, list(out["VERDICT"][0].shape)) == ("BYTES", [2])
    expected = [await typed(stubs, image, 8.0, RULES) for image in (JPEG_A, JPEG_B)]
    detections = [d for e in expected for d in e.detections]
    assert (tensor.datatype, rows.shape) == ("FP32", (len(detections), 6))
    want = np.asarray([sizes(d.measurement) for d in detections], np.float32)
    np.testing.assert_allclose(rows, want, rtol=1e-6)
    assert np.isfinite(rows).all()  # all six known: lengths measured, a scale given
    assert verdicts == [VERDICTS[e.verdict.verdict] for e in expected]
    first_row = 0
    for image_hits, e in zip(hits, expected, strict=True):
        assert len(image_hits) == len(e.verdict.hits) > 0
        for got, hit in zip(image_hits, e.verdict.hits, strict=True):
            row = first_row + hit.detection if hit.HasField("detection") else None
            assert got == {
                "rule": hit.rule,
                "verdict": VERDICTS[hit.verdict],
                "metric": pb.RuleMetric.Name(hit.metric).removeprefix("RULE_METRIC_").lower(),
                "value": pytest.approx(hit.value),
                "class_name": hit.class_name,
                "min": hit.min if hit.HasField("min") else None,
                "max": hit.max if hit.HasField("max") else None,
                "row": row,
                "zone": hit.zone,
            }
            if row is not None:  # the row's own measurement is the value that fired
                column = {"length_mm": 4, "area_px": 0}[got["metric"]]
                assert rows[row, column] == pytest.approx(hit.value, rel=1e-6)
        first_row += len(e.detections)
    assert {h["rule"] for image_hits in hits for h in image_hits} >= {"any", "long"}


async def test_measure_alone_sends_pixel_sizes_and_no_verdict(stubs: Stubs) -> None:
    request = with_params(infer_request(SEGMENT, JPEG_A), measure=True)
    out = by_name(await stubs.oip.ModelInfer(request))
    assert "VERDICT" not in out and "MEASUREMENTS" in out
    rows = np.frombuffer(out["MEASUREMENTS"][1], "<f4").reshape(-1, 6)
    assert len(rows) > 0
    assert np.isfinite(rows[:, :3]).all() and (rows[:, :3] > 0).all()  # pixels
    assert np.isnan(rows[:, 3:]).all()  # no scale: no mm


async def test_named_inspection_outputs_without_rules_are_empty(stubs: Stubs) -> None:
    names = ("MEASUREMENTS", "VERDICT", "VERDICT_HITS")
    out = by_name(await stubs.oip.ModelInfer(infer_request(SEGMENT, JPEG_A, outputs=names)))
    assert list(out) == list(names)
    rows = np.frombuffer(out["MEASUREMENTS"][1], "<f4").reshape(-1, 6)
    assert len(rows) > 0 and np.isnan(rows).all()  # nothing was measured
    assert unframe(out["VERDICT"][1]) == [b""]
    assert unframe(out["VERDICT_HITS"][1]) == [b"[]"]


async def test_result_carries_the_typed_verdict(stubs: Stubs) -> None:
    request = with_params(
        infer_request(SEGMENT, JPEG_A, outputs=("RESULT",)), pixels_per_mm=8.0, rules=RULES
    )
    out = by_name(await stubs.oip.ModelInfer(request))
    [element] = unframe(out["RESULT"][1])
    result = pb.InferResponse.FromString(element)
    expected = await typed(stubs, JPEG_A, 8.0, RULES)
    assert result.verdict == expected.verdict and result.pixels_per_mm == 8.0


async def test_tiling_parameters_tile_the_frame(stubs: Stubs) -> None:
    frame = generate_sample(7000, 0, size=(1600, 1200), defect_unit=1.0, jpeg=False)
    request = with_params(
        infer_request(SEGMENT, encode(frame.image), outputs=("RESULT",)),
        tiling="on",
        tile_overlap="0",
        tile_size=320,
    )
    [element] = unframe(by_name(await stubs.oip.ModelInfer(request))["RESULT"][1])
    tiling = pb.InferResponse.FromString(element).tiling
    assert (tiling.columns, tiling.rows, tiling.tiles) == (5, 4, 20)


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"rules": "rules: [{name: x"}, ["parameter 'rules'"]),
        ({"rules": "rules: [{name: big, metric: size, min: 1, verdict: FAIL}]"}, ["rule 'big'"]),
        (
            {"rules": "rules: [{name: dents, class: dent, metric: count, min: 1, verdict: FAIL}]"},
            ["rule 'dents'", "unknown class 'dent'"],
        ),
        (
            {"rules": "rules: [{name: mm, metric: length_mm, min: 1, verdict: FAIL}]"},
            ["rule 'mm'", "pixels_per_mm"],
        ),
        ({"rules": True}, ["'rules'", "string_param"]),
        ({"measure": "yes"}, ["'measure'", "bool_param"]),
        ({"pixels_per_mm": -2.0}, ["pixels_per_mm", "> 0"]),
        ({"pixels_per_mm": "wide"}, ["'pixels_per_mm'", "number"]),
        ({"tiling": "sideways"}, ["'tiling'", "off, on, auto"]),
        ({"tile_size": 2.5}, ["'tile_size'", "integer"]),
        ({"tiling": "on", "tile_overlap": 0.9}, ["overlap is 0.9"]),
    ],
    ids=[
        "rules not YAML",
        "unknown metric",
        "unknown class",
        "mm without a scale",
        "rules not a string",
        "measure not a bool",
        "negative scale",
        "scale not a number",
        "unknown tiling mode",
        "fractional tile size",
        "overlap too large",
    ],
)
async def test_bad_inspection_parameters_are_invalid_argument(
    stubs: Stubs, params: dict[str, object], words: list[str]
) -> None:
    request = with_params(infer_request(SEGMENT, JPEG_A), **params)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stubs.oip.ModelInfer(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for word in words:
        assert word in (caught.value.details() or ""), caught.value.details()
    response = await stubs.oip.ModelInfer(infer_request(DETECT, JPEG_A))  # still serving
    assert len(response.outputs) == 4


async def test_a_models_own_rules_send_the_verdict_unasked(
    start_server: StartServer, tmp_path: Path
) -> None:
    copy_model(
        tmp_path / "judged",
        {
            "pixels_per_mm": 8.0,
            "rules": [{"name": "any", "metric": "count", "min": 1, "verdict": "FAIL"}],
        },
    )
    overrides = {"models_dir": tmp_path, "access_log": False}
    inference = InferenceServicer(make_settings(**overrides))
    running = await start_server([inference, OpenInferenceServicer(inference)], **overrides)
    async with grpc.aio.insecure_channel(running.address) as channel:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        out = by_name(await stub.ModelInfer(infer_request("judged", JPEG_A)))
        assert list(out)[4:] == ["MEASUREMENTS", "VERDICT", "VERDICT_HITS"]
        assert unframe(out["VERDICT"][1]) == [b"FAIL"]
        [hits] = [json.loads(h) for h in unframe(out["VERDICT_HITS"][1])]
        assert [h["rule"] for h in hits] == ["any"] and hits[0]["row"] is None
        rows = np.frombuffer(out["MEASUREMENTS"][1], "<f4").reshape(-1, 6)
        assert len(rows) == hits[0]["value"]  # the count rule counted every row
        assert np.isfinite(rows[:, 3]).all()  # the model's scale gives mm²
        config = (await stub.ModelConfig(oip.ModelConfigRequest(name="judged"))).config
        params = {k: v.string_value for k, v in config.parameters.items()}
        assert json.loads(params["measurement_columns"]) == list(COLUMNS)
        assert (params["pixels_per_mm"], json.loads(params["rules"])) == ("8.0", ["any"])
        outputs = [(t.name, t.data_type, list(t.dims)) for t in config.output]
        assert outputs[-4:-1] == [
            ("MEASUREMENTS", mc.TYPE_FP32, [-1, 6]),
            ("VERDICT", mc.TYPE_STRING, [-1]),
            ("VERDICT_HITS", mc.TYPE_STRING, [-1]),
        ]
        # a request's empty rules document turns the model's rules off
        off = with_params(infer_request("judged", JPEG_A), rules="rules: []")
        assert "VERDICT" not in by_name(await stub.ModelInfer(off))


async def test_a_stream_judges_each_request_and_a_bad_rule_fails_only_its_own(
    stubs: Stubs,
) -> None:
    good = with_params(infer_request(SEGMENT, JPEG_A), pixels_per_mm=8.0, rules=RULES)
    bad = with_params(
        infer_request(SEGMENT, JPEG_B),
        rules="rules: [{name: dents, class: dent, metric: count, min: 1, verdict: FAIL}]",
    )
    answers = [a async for a in stubs.oip.ModelStreamInfer(iter([good, bad, good]))]
    assert [a.error_message == "" for a in answers] == [True, False, True]
    assert "rule 'dents'" in answers[1].error_message
    expected = await typed(stubs, JPEG_A, 8.0, RULES)
    for answer in (answers[0], answers[2]):
        out = by_name(answer.infer_response)
        assert unframe(out["VERDICT"][1]) == [VERDICTS[expected.verdict.verdict].encode()]
        hits = json.loads(unframe(out["VERDICT_HITS"][1])[0])
        assert [h["rule"] for h in hits] == [h.rule for h in expected.verdict.hits]
