"""Smoke test of the comparison benchmark, ``python -m bench.harness``: a tiny quick run (real
processes, real gRPC, tiny budget).

Checks the shape of the result document and that the numbers are sane, never speeds: the
numbers of a 0.3 s point on a shared CI machine mean nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.harness import models as bench_models
from bench.harness import report
from bench.harness.procs import REPO_ROOT, child_env


def _positive(value: object) -> bool:
    return isinstance(value, int | float) and value > 0


@pytest.mark.timeout(400)
def test_quick_bench_writes_every_section(tmp_path: Path) -> None:
    model = next(iter(bench_models.discover(None)))
    out = tmp_path / "results.json"
    argv = [sys.executable, "-m", "bench.harness", "--quick"]
    argv += ["--model", model, "--duration", "0.3", "--warmup", "0.1", "--concurrency", "1"]
    argv += ["--batch-sizes", "1,2", "--images", "3", "--skip-accuracy", "--out", str(out)]
    # from the repository root's parent too: child_env puts the checkout on PYTHONPATH
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=380,
        check=False,
        cwd=REPO_ROOT.parent,
        env=child_env(),
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Targets" in done.stdout

    doc = json.loads(out.read_text())
    for key in ("schema_version", "meta", "rows", "core", "memory", "accuracy", "ratios"):
        assert key in doc, key
    assert doc["meta"]["baseline_model"]
    assert doc["meta"]["images"]["count"] == 3
    assert doc["meta"]["images"]["png"] == 1

    rows = [report.validate_row(r) for r in doc["rows"]]
    sections = {r["section"] for r in rows}
    assert sections == {"baseline", "inprocess", "grpc", "paired", "security", "metrics", "oip"}
    for row in rows:
        assert _positive(row["images_per_s"]), row
        p50, p99 = row["p50_ms"], row["p99_ms"]
        assert p50 is not None and p99 is not None and 0 < p50 <= p99, row
        assert row.get("errors", 0) == 0, row
    baseline = [r for r in rows if r["section"] == "baseline"]
    assert sorted(r["batch_size"] for r in baseline) == [1, 2]
    grpc_methods = {r["method"] for r in rows if r["section"] == "grpc"}
    assert grpc_methods == {"Infer", "InferStream"}
    inprocess = {r["method"] for r in rows if r["section"] == "inprocess"}
    assert inprocess == {"infer_sync", "infer"}
    paired = {
        (r["name"], r["method"], r["concurrency"]): r for r in rows if r["section"] == "paired"
    }
    assert set(paired) == {
        ("visionrpc pipeline in-process", "infer_sync", 1),
        ("visionrpc gRPC", "Infer", 1),
        ("visionrpc pipeline in-process", "infer", 16),
        ("visionrpc gRPC", "Infer", 16),
    }
    for (name, _, _), row in paired.items():
        assert row["rounds"] == 5 and _positive(row["cpu_ms_per_image"]), row
        assert _positive(row.get("client_cpu_ms_per_image")) == (name == "visionrpc gRPC"), row
    secured = {(r.get("variant"), r["concurrency"]) for r in rows if r["section"] == "security"}
    assert secured == {
        (variant, c) for variant in ("plaintext", "TLS", "TLS + token") for c in (1, 16)
    }  # served over TLS and with the token, without errors (checked above)
    assert "f. Cost of TLS and tokens" in done.stdout
    metered = {(r.get("variant"), r["concurrency"]) for r in rows if r["section"] == "metrics"}
    assert metered == {(v, c) for v in ("metrics off", "metrics on") for c in (1, 16)}
    assert "g. Cost of Prometheus metrics" in done.stdout
    scrape = doc["meta"]["metrics_scrape"]  # the metrics server counted at least what it was sent
    sent = sum(r["requests"] for r in rows if r.get("variant") == "metrics on")
    assert scrape["sent"] == sent and scrape["inference_requests"] >= sent > 0

    protocol = {(r.get("variant"), r["concurrency"]) for r in rows if r["section"] == "oip"}
    assert protocol == {
        (variant, c)
        for variant in ("typed Infer", "Open Inference Protocol ModelInfer")
        for c in (1, 16)
    }
    assert doc["meta"]["oip_check"]["equal"], doc["meta"]["oip_check"]
    assert "h. Open Inference Protocol vs typed Infer" in done.stdout

    core = {(r["server"], r["method"]): r for r in doc["core"]}
    assert set(core) == {
        ("visionrpc", "Ping"),
        ("visionrpc", report.IDLE_PING),
        ("visionrpc", "StreamNumbers"),
        ("bare grpc.aio", "Ping"),
        ("bare grpc.aio", report.IDLE_PING),
        ("bare grpc.aio", "StreamNumbers"),
    }
    assert all(_positive(r["rate_per_s"]) and r["errors"] == 0 for r in core.values())

    memory = doc["memory"]
    for key in ("server_peak_rss_mb", "inprocess_peak_rss_mb", "baseline_peak_rss_mb"):
        assert _positive(memory[key]), key
    assert _positive(memory["server_final_peak_rss_mb"]), "the server died during the run"

    assert model in doc["ratios"]
    assert doc["ratios"][model]["p50_minus_baseline_ms"] is not None
    assert doc["ratios"][model]["inprocess_comparison"] == "paired"
    targets = {t["target"] for t in doc["targets"]}
    assert "Ping calls/s ÷ bare grpc.aio" in targets


def test_peer_rows_merge_and_render(tmp_path: Path) -> None:
    doc: dict[str, Any] = {
        "schema_version": report.SCHEMA_VERSION,
        "meta": {"baseline_model": "m"},
        "rows": [
            {"name": "straightforward baseline", "section": "baseline", "model": "m",
             "method": "batch", "batch_size": 1, "concurrency": 1, "images_per_s": 10.0,
             "p50_ms": 100.0, "p99_ms": 120.0},
            {"name": "visionrpc gRPC", "section": "grpc", "model": "m", "method": "Infer",
             "concurrency": 16, "images_per_s": 20.0, "p50_ms": 700.0, "p99_ms": 900.0},
        ],
        "core": [],
        "memory": {},
        "accuracy": {},
    }  # fmt: skip
    peer = tmp_path / "peers.json"
    triton = {"name": "Triton", "model": "m", "concurrency": 16, "images_per_s": 15.0}
    peer.write_text(json.dumps({"rows": [{**triton, "p50_ms": 900.0, "p99_ms": None}]}))
    report.merge_rows(doc, report.load_rows(peer))
    assert [r["section"] for r in doc["rows"]][-1] == "peer"
    assert doc["ratios"]["m"]["server_vs_baseline"] == pytest.approx(2.0)
    markdown = report.to_markdown(doc)
    assert "| Triton | m |" in markdown
    assert "1.50×" in markdown  # the peer's images/s ÷ the baseline's


def test_each_peer_is_shown_in_its_best_configuration() -> None:
    def peer(server: str, configuration: str, c: int, ips: float, p50: float) -> dict[str, Any]:
        return {
            "name": f"{server.lower()} ({configuration})", "peer": server,
            "configuration": configuration, "model": "m", "method": "ModelInfer",
            "concurrency": c, "images_per_s": ips, "p50_ms": p50, "p99_ms": p50 * 2,
            "matches_visionrpc": True,
        }  # fmt: skip

    rows = [
        peer("MLServer", "batching off", 1, 20.0, 40.0),
        peer("MLServer", "batching off", 16, 30.0, 500.0),
        peer("MLServer", "parallel_workers 2", 1, 18.0, 45.0),
        peer("MLServer", "parallel_workers 2", 16, 36.0, 400.0),
        peer("Triton", "batch 8, queue delay 0", 16, 28.0, 550.0),
        peer("visionrpc", "Open Inference Protocol", 1, 25.0, 35.0),
        peer("visionrpc", "Open Inference Protocol", 16, 45.0, 330.0),
    ]
    doc: dict[str, Any] = {"meta": {}, "rows": []}
    report.merge_rows(doc, [report.validate_row(r, default_section="peer") for r in rows])
    best = {r["peer"]: (r["configuration"], one) for r, one in report.peers_at_best(doc)}
    assert best["MLServer"][0] == "parallel_workers 2"
    assert best["MLServer"][1] is not None and best["MLServer"][1]["p50_ms"] == 45.0
    assert best["Triton"] == ("batch 8, queue delay 0", None)  # no c1 row: shown as –
    markdown = report.to_markdown(doc)
    assert "b″. Each server at its best" in markdown
    assert "| MLServer | parallel_workers 2 | 36.0 | 0.80× | 45.00 |" in markdown
    assert "| mlserver (batching off) | m | ModelInfer | 16 |" in markdown  # every row in table b


def _four_rows(section: str, figures: list[tuple[float, float]]) -> list[dict]:
    """In-process c1, served c1, in-process c16, served c16 with (images/s, p50) each."""
    inprocess, served = "visionrpc pipeline in-process", "visionrpc gRPC"
    shapes = [(inprocess, "infer_sync", 1), (served, "Infer", 1)]
    shapes += [(inprocess, "infer", 16), (served, "Infer", 16)]
    return [
        {
            "name": name,
            "section": section,
            "model": "m",
            "method": method,
            "concurrency": c,
            "images_per_s": ips,
            "p50_ms": p50,
            "p99_ms": p50 * 2,
        }
        for (name, method, c), (ips, p50) in zip(shapes, figures, strict=True)
    ]


def test_in_process_ratios_come_from_the_pairs_when_measured() -> None:
    # sections a and b: in-process vs served measured minutes apart
    sequential_rows = _four_rows(
        "inprocess", [(100.0, 10.0), (80.0, 12.5), (200.0, 80.0), (150.0, 100.0)]
    )
    for served in sequential_rows[1::2]:
        served["section"] = "grpc"
    doc: dict = {"meta": {}, "rows": sequential_rows}
    report.analyse(doc)
    sequential = doc["ratios"]["m"]
    assert sequential["inprocess_comparison"] == "sequential"
    assert sequential["server_vs_inprocess"] == pytest.approx(0.75)
    assert sequential["p50_minus_inprocess_ms"] == pytest.approx(2.5)

    pairs = [(90.0, 11.0), (85.0, 11.8), (160.0, 95.0), (152.0, 100.0)]
    doc["rows"] += _four_rows("paired", pairs)
    report.analyse(doc)
    paired = doc["ratios"]["m"]
    assert paired["inprocess_comparison"] == "paired"
    assert paired["server_vs_inprocess"] == pytest.approx(0.95)
    assert paired["p50_minus_inprocess_ms"] == pytest.approx(0.8)
    assert paired["server_vs_inprocess_sequential"] == pytest.approx(0.75)
    passed = {t["target"]: t["passed"] for t in doc["targets"]}
    assert passed["images/s @c16 ÷ in-process"] and passed["p50 @c1 − in-process p50 (ms)"]
    assert "b′. In-process vs served" in report.to_markdown(doc)


@pytest.mark.parametrize(
    "row",
    [
        {"concurrency": 1, "images_per_s": 1.0, "p50_ms": 1.0, "p99_ms": 1.0},
        {"name": "x", "concurrency": 0, "images_per_s": 1.0, "p50_ms": 1.0, "p99_ms": 1.0},
        {"name": "x", "concurrency": 1, "images_per_s": -1.0, "p50_ms": 1.0, "p99_ms": 1.0},
        {"name": "x", "concurrency": 1, "images_per_s": 1.0, "p50_ms": "1", "p99_ms": 1.0},
    ],
)
def test_bad_rows_are_refused(row: dict) -> None:
    with pytest.raises(ValueError):
        report.validate_row(row)
