"""Section h of the comparison benchmark: typed Infer vs the Open Inference Protocol's ModelInfer on
one real ``visionrpc serve`` process, with a tiny budget.

Checks that both paths are measured without errors, that their answers were compared and found
equal, and that the table renders; never speeds.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.harness import models as bench_models
from bench.harness import oip, report
from bench.harness.images import make_images
from bench.harness.procs import visionrpc_server
from visionrpc.v1 import grpc_service_pb2, inference_pb2


@pytest.mark.timeout(240)
def test_oip_section_measures_both_paths_on_one_server(tmp_path: Path) -> None:
    entries = bench_models.discover(None)
    model = next(iter(entries))
    models_dir = bench_models.link_subset(
        bench_models.select(entries, [model]), tmp_path / "models"
    )
    jpegs = [i.data for i in make_images(4) if i.format == "jpeg"]
    with visionrpc_server(models_dir, tmp_path / "server.log", default_model=model) as server:
        rows, check = asyncio.run(
            oip.oip_points(
                server.address,
                server.pid,
                model,
                jpegs,
                rounds=2,
                slice_s=0.2,
                warmup_s=0.1,
                max_requests=10_000,
                timeout_s=60,
            )
        )
        server.check_alive("the Open Inference Protocol points")

    assert check["equal"], check
    assert check["images"] == len(jpegs) == 3
    assert check["detections"] > 0, "the images must hold detections, or the check proves nothing"
    points = {(r["method"], r.get("variant"), r["concurrency"]): r for r in rows}
    assert set(points) == {
        (method, variant, c)
        for method, variant in (("Infer", oip.TYPED), ("ModelInfer", oip.PROTOCOL))
        for c in oip.CONCURRENCY
    }
    for row in points.values():
        report.validate_row(row)
        assert row["section"] == "oip" and row["model"] == model, row
        assert row["requests"] > 0 and row.get("errors") == 0, row
        assert row["rounds"] == 2, row

    doc: dict[str, Any] = {"meta": {"oip_check": check}, "rows": rows}
    report.analyse(doc)
    targets = {t["target"]: t for t in doc["targets"]}
    assert targets["images whose ModelInfer detections differ from Infer's"]["passed"] is True
    assert targets["ModelInfer images/s @c16 ÷ typed Infer"]["value"] is not None
    markdown = report.to_markdown(doc)
    assert "h. Open Inference Protocol vs typed Infer (same server)" in markdown
    assert f"| {oip.PROTOCOL} |" in markdown


def _protocol_answer(
    boxes: list[list[float]], scores: list[float], classes: list[int]
) -> oip.Detections:
    """A ModelInfer answer with these detections, through the wire and back."""
    response = grpc_service_pb2.ModelInferResponse()
    for name, datatype, array in (
        ("BOXES", "FP32", np.asarray(boxes, dtype="<f4").reshape(-1, 4)),
        ("SCORES", "FP32", np.asarray(scores, dtype="<f4")),
        ("CLASS_IDS", "INT64", np.asarray(classes, dtype="<i8")),
    ):
        response.outputs.add(name=name, datatype=datatype, shape=array.shape)
        response.raw_output_contents.append(array.tobytes())
    wire = grpc_service_pb2.ModelInferResponse.FromString(response.SerializeToString())
    return oip.protocol_detections(wire)


def test_the_equality_check_flags_a_moved_box_or_a_missing_detection() -> None:
    typed = inference_pb2.InferResponse()
    detection = typed.detections.add(score=0.75, class_id=1)
    detection.box.x_min, detection.box.y_min, detection.box.x_max, detection.box.y_max = 1, 2, 3, 4
    want = [oip.typed_detections(typed)]
    answer = _protocol_answer
    assert oip.compare(want, [answer([[1, 2, 3, 4]], [0.75], [1])])["equal"]
    moved = oip.compare(want, [answer([[1, 2, 3.5, 4]], [0.75], [1])])
    assert not moved["equal"] and moved["mismatched_images"] == [0]
    assert moved["max_box_diff_px"] == pytest.approx(0.5)
    assert not oip.compare(want, [answer([], [], [])])["equal"]
    assert not oip.compare(want, [answer([[1, 2, 3, 4]], [0.75], [2])])["equal"]
