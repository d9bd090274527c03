"""The bench result document: row schema, ratios, targets, and the rich / Markdown tables.

Row schema (``ResultRow``), shared with the peer benchmarks under bench/peers/
------------------------------------------------------------------------------
Every throughput/latency measurement is one JSON object. Five keys are required:

* ``name`` (str): what was measured, e.g. ``"visionrpc gRPC"``, ``"MLServer"``, ``"Triton"``.
* ``concurrency`` (int >= 1): requests (images) in flight, closed loop: N client tasks on one
  channel each send a request, wait for its answer, send the next. For the in-process baseline it
  is the batch size (images in flight).
* ``images_per_s`` (float >= 0): completed images / wall time of the measurement.
* ``p50_ms``, ``p99_ms`` (float or null): per-request latency percentiles (client side,
  send to answer), null when not measured.

Optional keys: ``section`` (``baseline``, ``inprocess``, ``grpc``, ``peer``, ``lever``, ``paired``,
``security``, ``metrics``, ``oip``; rows read with ``--peer-results`` default to ``peer``),
``model`` (model name, e.g. ``defects``), ``method`` (``Infer``, ``InferStream``, ``infer``,
``infer_sync``, ``batch``, ``ModelInfer``), ``batch_size``, ``requests``, ``errors``,
``duration_s``, ``peak_rss_mb``, ``lever``, ``variant`` (security, metrics, oip), ``peer`` and
``configuration`` (peer rows: the server and its set-up; table b″ shows each server's best),
``matches_visionrpc`` and ``notes``. Unknown keys are kept. A peer file is a JSON list of rows or
an object with a ``rows`` list; ``validate_row`` says what is wrong with a bad row.

The document (``bench-results.json``) holds ``schema_version``, ``meta`` (machine, settings, image
set), ``rows`` (sections a, b, levers and peers), ``core`` (section d, ``CoreRow``), ``memory``
(section e, peak RSS in MiB), ``accuracy`` (per model), and the derived ``ratios`` and
``targets`` (section c), which ``analyse`` recomputes so that merged peer rows get ratios too.
Section h adds ``meta.oip_check``: typed Infer's and ModelInfer's detections compared per image.
"""

from __future__ import annotations

import json
import math
import operator
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Required, TypedDict

from rich.console import Console
from rich.markup import escape
from rich.table import Table

SCHEMA_VERSION = 1
REQUIRED_ROW_FIELDS = ("name", "concurrency", "images_per_s", "p50_ms", "p99_ms")
REFERENCE_CONCURRENCY = 16  # the project's targets are stated at concurrency 16
IDLE_PING = "Ping after 10 ms idle"  # section d: the wake-up cost of a call to an idle server
OIP_TYPED = "typed Infer"  # section h's variants: the reference ...
OIP_PROTOCOL = "Open Inference Protocol ModelInfer"  # ... and the protocol path
_OPS = {">=": operator.ge, "<=": operator.le, "<": operator.lt}


class Section(StrEnum):
    BASELINE = "baseline"  # straightforward pipeline, in-process (bench code)
    INPROCESS = "inprocess"  # visionrpc's InferencePipeline, in-process
    GRPC = "grpc"  # visionrpc server over loopback gRPC
    PEER = "peer"  # another server (MLServer, Triton) measured by bench/peers/
    LEVER = "lever"  # visionrpc server with one setting changed
    PAIRED = "paired"  # in-process vs served, interleaved slices (bench/paired.py)
    SECURITY = "security"  # plaintext vs TLS vs TLS + token servers (bench/security.py)
    METRICS = "metrics"  # metrics off vs on (Prometheus port), alternating slices
    OIP = "oip"  # typed Infer vs Open Inference Protocol ModelInfer, one server (bench/oip.py)


class ResultRow(TypedDict, total=False):
    """One measurement; see the module docstring for the meaning of each key."""

    name: Required[str]
    concurrency: Required[int]
    images_per_s: Required[float]
    p50_ms: Required[float | None]
    p99_ms: Required[float | None]
    section: str
    model: str
    method: str
    batch_size: int
    requests: int
    errors: int
    duration_s: float
    peak_rss_mb: float | None
    lever: str
    variant: str  # security, metrics, oip: which server set-up or method
    peer: str  # peer rows: the server (MLServer, Triton, visionrpc)
    configuration: str  # peer rows: that server's set-up (batching, workers, instances)
    matches_visionrpc: bool  # peer rows: its answers equal visionrpc's own
    notes: str
    cpu_ms_per_image: float | None  # paired rows: CPU of the process doing the work
    client_cpu_ms_per_image: float | None  # paired served rows: the load generator's CPU
    rounds: int
    slice_s: float


class CoreRow(TypedDict):
    """Section d: CoreServices throughput of one server (visionrpc or the bare grpc.aio one)."""

    server: str  # "visionrpc" or "bare grpc.aio"
    method: str  # "Ping" or "StreamNumbers"
    concurrency: int  # calls (Ping) or streams (StreamNumbers) in flight
    rate_per_s: float
    unit: str  # "calls/s" or "messages/s"
    p50_ms: float | None
    p99_ms: float | None
    count: int
    errors: int
    duration_s: float


def _number(raw: Mapping[str, Any], key: str, *, nullable: bool) -> float | None:
    value = raw.get(key)
    if value is None and nullable:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"row {raw.get('name')!r}: {key} must be a finite number, got {value!r}")
    if value < 0:
        raise ValueError(f"row {raw.get('name')!r}: {key} must be >= 0, got {value!r}")
    return float(value)


def validate_row(raw: Mapping[str, Any], *, default_section: str | None = None) -> ResultRow:
    """Check the five required keys (types and ranges) and return the row as a ResultRow."""
    if not isinstance(raw, Mapping):
        raise ValueError(f"a result row must be a JSON object, got {type(raw).__name__}")
    missing = [k for k in REQUIRED_ROW_FIELDS if k not in raw]
    if missing:
        raise ValueError(f"row {raw.get('name')!r} lacks {', '.join(missing)}")
    if not isinstance(raw["name"], str) or not raw["name"]:
        raise ValueError(f"row name must be a non-empty string, got {raw['name']!r}")
    concurrency = raw["concurrency"]
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError(f"row {raw['name']!r}: concurrency must be an int >= 1")
    row: dict[str, Any] = dict(raw)
    row["images_per_s"] = _number(raw, "images_per_s", nullable=False)
    row["p50_ms"] = _number(raw, "p50_ms", nullable=True)
    row["p99_ms"] = _number(raw, "p99_ms", nullable=True)
    if default_section and not row.get("section"):
        row["section"] = default_section
    return row  # type: ignore[return-value]  # keys checked above


def load_rows(path: Path, *, default_section: str = Section.PEER) -> list[ResultRow]:
    """Rows of a peer result file: a JSON list of rows, or an object with a ``rows`` list."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    rows = data.get("rows") if isinstance(data, dict) else data
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected a JSON list of rows or an object with 'rows'")
    return [validate_row(r, default_section=default_section) for r in rows]


def merge_rows(doc: dict[str, Any], rows: Iterable[ResultRow]) -> None:
    """Add rows (e.g. a peer's) to the document, replacing rows with the same identity."""

    def key(r: Mapping[str, Any]) -> tuple[Any, ...]:
        return (r.get("section"), r["name"], r.get("model"), r.get("method"), r["concurrency"])

    new = list(rows)
    new_keys = {key(r) for r in new}
    doc["rows"] = [r for r in doc.get("rows", []) if key(r) not in new_keys] + new
    analyse(doc)


# -- derived numbers ---------------------------------------------------------------------------


def _rows(doc: Mapping[str, Any], section: str, **match: Any) -> list[ResultRow]:
    return [
        r
        for r in doc.get("rows", [])
        if r.get("section") == section and all(r.get(k) == v for k, v in match.items())
    ]


def _best(rows: Sequence[ResultRow]) -> ResultRow | None:
    return max(rows, key=lambda r: r["images_per_s"], default=None)


def _at(rows: Sequence[ResultRow], concurrency: int) -> ResultRow | None:
    return next((r for r in rows if r["concurrency"] == concurrency), None)


def _div(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _sub(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def baseline_best(doc: Mapping[str, Any]) -> ResultRow | None:
    """The straightforward baseline at its best batch size (the images/s denominator)."""
    return _best(_rows(doc, Section.BASELINE))


def baseline_batch1(doc: Mapping[str, Any]) -> ResultRow | None:
    return next((r for r in _rows(doc, Section.BASELINE) if r.get("batch_size") == 1), None)


def inprocess_best(doc: Mapping[str, Any], model: str) -> ResultRow | None:
    return _best(_rows(doc, Section.INPROCESS, model=model))


def inprocess_sync(doc: Mapping[str, Any], model: str) -> ResultRow | None:
    return next(iter(_rows(doc, Section.INPROCESS, model=model, method="infer_sync")), None)


def models_of(doc: Mapping[str, Any]) -> list[str]:
    """Models with gRPC or in-process rows, in first-seen order."""
    seen: dict[str, None] = {}
    for r in doc.get("rows", []):
        if r.get("section") in (Section.GRPC, Section.INPROCESS) and r.get("model"):
            seen.setdefault(r["model"], None)
    return list(seen)


def analyse(doc: dict[str, Any]) -> None:
    """(Re)compute ``ratios`` and ``targets`` (section c and the targets) from the rows."""
    ref = REFERENCE_CONCURRENCY
    base = baseline_best(doc)
    base1 = baseline_batch1(doc)
    accuracy = doc.get("accuracy", {})
    ratios: dict[str, dict[str, Any]] = {}
    targets: list[dict[str, Any]] = []

    def target(what: str, model: str, value: float | None, limit: float, op: str) -> None:
        passed = None if value is None else bool(_OPS[op](value, limit))
        targets.append(
            {"target": what, "model": model, "value": value, "op": op, "limit": limit}
            | {"passed": passed}
        )

    for model in models_of(doc):
        infer = _rows(doc, Section.GRPC, model=model, method="Infer")
        stream = _rows(doc, Section.GRPC, model=model, method="InferStream")
        at_ref, at_one = _at(infer, ref), _at(infer, 1)
        stream_ref = _at(stream, ref)
        ip_best, ip_sync = inprocess_best(doc, model), inprocess_sync(doc, model)
        ips = at_ref["images_per_s"] if at_ref else None
        p50_one = at_one["p50_ms"] if at_one else None
        p99_ref = at_ref["p99_ms"] if at_ref else None
        budget = 1.2 * ref / ips * 1000 if ips else None
        acc = accuracy.get(model, {})
        ratios[model] = {
            "server_images_per_s": ips,
            "server_vs_baseline": _div(ips, base["images_per_s"] if base else None),
            "server_vs_inprocess": _div(ips, ip_best["images_per_s"] if ip_best else None),
            "stream_images_per_s": stream_ref["images_per_s"] if stream_ref else None,
            "stream_vs_baseline": _div(
                stream_ref["images_per_s"] if stream_ref else None,
                base["images_per_s"] if base else None,
            ),
            "server_p50_c1_ms": p50_one,
            "p50_minus_baseline_ms": _sub(p50_one, base1["p50_ms"] if base1 else None),
            "p50_minus_inprocess_ms": _sub(p50_one, ip_sync["p50_ms"] if ip_sync else None),
            "server_p99_ms": p99_ref,
            "p99_budget_ms": budget,
            "box_map50": acc.get("box_map50"),
            "mask_map50": acc.get("mask_map50"),
        }
        # In-process vs served: from the interleaved pairs when the run has them (drift on this
        # machine is larger than the gaps measured), else from the sequential sections a and b.
        paired = _rows(doc, Section.PAIRED, model=model)
        pair_n = [_paired(paired, m, ref) for m in ("infer", "Infer")]
        pair_1 = [_paired(paired, m, 1) for m in ("infer_sync", "Infer")]
        r = ratios[model]
        r["server_vs_inprocess_sequential"] = r["server_vs_inprocess"]
        r["p50_minus_inprocess_sequential_ms"] = r["p50_minus_inprocess_ms"]
        r["inprocess_comparison"] = "sequential"
        if all(pair_n) and all(pair_1):
            (ip_n, srv_n), (ip_1, srv_1) = pair_n, pair_1
            r["server_vs_inprocess"] = _div(srv_n["images_per_s"], ip_n["images_per_s"])  # type: ignore[index]
            r["p50_minus_inprocess_ms"] = _sub(srv_1["p50_ms"], ip_1["p50_ms"])  # type: ignore[index]
            r["inprocess_comparison"] = "paired"
        target(f"images/s @c{ref} ÷ baseline", model, r["server_vs_baseline"], 1.3, ">=")
        target(f"images/s @c{ref} ÷ in-process", model, r["server_vs_inprocess"], 0.95, ">=")
        target("p50 @c1 − baseline p50 (ms)", model, r["p50_minus_baseline_ms"], 0.0, "<")
        target("p50 @c1 − in-process p50 (ms)", model, r["p50_minus_inprocess_ms"], 1.0, "<=")
        target(f"p99 @c{ref} ÷ (1.2 × {ref} ÷ images/s)", model, _div(p99_ref, budget), 1.0, "<=")
    ping = core_ratio(doc, "Ping")
    if ping is not None:
        target("Ping calls/s ÷ bare grpc.aio", "", ping, 0.9, ">=")
    _oip_targets(doc, target)
    memory = doc.get("memory", {})
    rss = _div(memory.get("server_peak_rss_mb"), memory.get("inprocess_peak_rss_mb"))
    if rss is not None:
        target("server peak RSS ÷ in-process peak RSS", "", rss, 2.0, "<=")
    doc["ratios"] = ratios
    doc["targets"] = targets


def _oip_targets(
    doc: Mapping[str, Any], target: Callable[[str, str, float | None, float, str], None]
) -> None:
    """Section h: the protocol path within a few percent of the typed one, and equal answers."""
    rows = _rows(doc, Section.OIP)
    if not rows:
        return
    model = rows[0].get("model", "")
    typed = [r for r in rows if r.get("method") == "Infer"]
    protocol = [r for r in rows if r.get("method") == "ModelInfer"]
    wide = max(r["concurrency"] for r in rows)
    none: Mapping[str, Any] = {}
    t_wide, p_wide = _at(typed, wide) or none, _at(protocol, wide) or none
    t_one, p_one = _at(typed, 1) or none, _at(protocol, 1) or none
    ips = _div(p_wide.get("images_per_s"), t_wide.get("images_per_s"))
    target(f"ModelInfer images/s @c{wide} ÷ typed Infer", model, ips, 0.95, ">=")
    p50 = _div(p_one.get("p50_ms"), t_one.get("p50_ms"))
    target("ModelInfer p50 @c1 ÷ typed Infer p50", model, p50, 1.05, "<=")
    check = doc.get("meta", {}).get("oip_check")
    if check:
        differing = float(len(check.get("mismatched_images", [])))
        target("images whose ModelInfer detections differ from Infer's", model, differing, 0, "<=")


def _paired(rows: Sequence[ResultRow], method: str, concurrency: int) -> ResultRow | None:
    return next(
        (r for r in rows if r.get("method") == method and r["concurrency"] == concurrency), None
    )


def core_ratio(doc: Mapping[str, Any], method: str) -> float | None:
    """visionrpc rate ÷ bare grpc.aio rate for a CoreServices method."""
    rows = [r for r in doc.get("core", []) if r["method"] == method]
    ours = next((r["rate_per_s"] for r in rows if r["server"] == "visionrpc"), None)
    bare = next((r["rate_per_s"] for r in rows if r["server"] != "visionrpc"), None)
    return _div(ours, bare)


# -- tables ------------------------------------------------------------------------------------


@dataclass
class TextTable:
    """A rendering-neutral table: rich for the terminal, Markdown for the README."""

    title: str
    headers: list[str]
    rows: list[list[str]]
    note: str = ""


def fmt(value: float | None, digits: int = 1, suffix: str = "") -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}{suffix}"


def _mark(passed: bool | None) -> str:
    return {True: "✅ pass", False: "❌ fail", None: "– n/a"}[passed]


def _row_cells(r: ResultRow) -> list[str]:
    return [
        fmt(r["images_per_s"]),
        fmt(r["p50_ms"], 2),
        fmt(r["p99_ms"], 2),
    ]


def build_tables(doc: Mapping[str, Any]) -> list[TextTable]:
    """Every section of the report as neutral tables, in order a–e, then targets."""
    tables: list[TextTable] = []
    base = baseline_best(doc)
    base_ips = base["images_per_s"] if base else None
    meta = doc.get("meta", {})

    best_ids = {id(b) for b in [base, *(inprocess_best(doc, m) for m in models_of(doc))] if b}
    local = [
        [
            r["name"],
            r.get("model", ""),
            r.get("method", ""),
            str(r.get("batch_size", r["concurrency"])) if r.get("method") == "batch" else "",
            str(r["concurrency"]),
            fmt(r["images_per_s"]) + (" ★" if id(r) in best_ids else ""),
            fmt(r["p50_ms"], 2),
            fmt(r["p99_ms"], 2),
        ]
        for r in doc.get("rows", [])
        if r.get("section") in (Section.BASELINE, Section.INPROCESS)
    ]
    tables.append(
        TextTable(
            "a. In-process pipelines (same images)",
            ["pipeline", "model", "mode", "batch", "in flight", "images/s", "p50 ms", "p99 ms"],
            local,
            "baseline = cv2.imdecode full size → resize+pad → fp32 ORT (default options) → numpy "
            "+ NMSBoxesBatched + full-frame masks; ★ = best images/s, the ratios' denominators",
        )
    )

    served = []
    for r in doc.get("rows", []):
        if r.get("section") not in (Section.GRPC, Section.PEER):
            continue
        ip = inprocess_best(doc, r.get("model", ""))
        served.append(
            [
                r["name"],
                r.get("model", ""),
                r.get("method", ""),
                str(r["concurrency"]),
                *_row_cells(r),
                fmt(_div(r["images_per_s"], base_ips), 2, "×"),
                fmt(_div(r["images_per_s"], ip["images_per_s"] if ip else None), 2, "×"),
                str(r.get("errors", 0) or ""),
            ]
        )
    tables.append(
        TextTable(
            "b. Served over loopback gRPC (one channel, closed loop)",
            [
                "server",
                "model",
                "method",
                "concurrency",
                "images/s",
                "p50 ms",
                "p99 ms",
                "÷ baseline",
                "÷ in-process",
                "errors",
            ],
            served,
            "InferStream at concurrency N = N streams on the channel, one frame in flight each",
        )
    )

    paired = [r for r in doc.get("rows", []) if r.get("section") == Section.PAIRED]
    if paired:
        tables.append(
            TextTable(
                "b′. In-process vs served, interleaved (same process, alternating slices)",
                [
                    "side",
                    "model",
                    "mode",
                    "concurrency",
                    "images/s",
                    "p50 ms",
                    "p99 ms",
                    "CPU ms/image",
                    "client CPU ms/image",
                ],
                [
                    [
                        r["name"],
                        r.get("model", ""),
                        r.get("method", ""),
                        str(r["concurrency"]),
                        *_row_cells(r),
                        fmt(r.get("cpu_ms_per_image"), 2),
                        fmt(r.get("client_cpu_ms_per_image"), 2),
                    ]
                    for r in paired
                ],
                f"{paired[0].get('rounds', '?')} rounds of {fmt(paired[0].get('slice_s'), 1)} s "
                "slices per side, pooled; CPU = the process doing the work (the server for "
                "served rows); client = the load generator. These pairs are the in-process "
                "references of table c.",
            )
        )

    best_peers = peers_at_best(doc)
    if best_peers:
        tables.append(_peers_best_table(best_peers))

    ref = REFERENCE_CONCURRENCY
    ratio_rows = [
        [
            model,
            fmt(r["server_images_per_s"]),
            fmt(r["server_vs_baseline"], 2, "×"),
            fmt(r["server_vs_inprocess"], 2, "×"),
            fmt(r["stream_vs_baseline"], 2, "×"),
            fmt(r["server_p50_c1_ms"], 2),
            fmt(r["p50_minus_baseline_ms"], 2),
            fmt(r["p50_minus_inprocess_ms"], 2),
            f"{fmt(r['server_p99_ms'], 1)} / {fmt(r['p99_budget_ms'], 1)}",
            fmt(r["box_map50"], 3),
            fmt(r["mask_map50"], 3),
        ]
        for model, r in doc.get("ratios", {}).items()
    ]
    tables.append(
        TextTable(
            "c. Ratios and accuracy (server = Infer)",
            [
                "model",
                f"img/s @c{ref}",
                "÷ baseline",
                "÷ in-process",
                "stream ÷ baseline",
                "p50 @c1 ms",
                "− baseline p50",
                "− in-process p50",
                f"p99 @c{ref} / budget ms",
                "box mAP50",
                "mask mAP50",
            ],
            ratio_rows,
            f"baseline = {meta.get('baseline_model', '?')} at its best batch size; in-process = "
            "the interleaved pairs of table b′ (infer_sync for p50, infer at the same concurrency "
            "for images/s) when measured, else the best of table a; budget = 1.2 × 16 ÷ images/s",
        )
    )

    core_rows: list[list[str]] = []
    for method in ("Ping", IDLE_PING, "StreamNumbers"):
        rows = [r for r in doc.get("core", []) if r["method"] == method]
        if not rows:
            continue
        ours = next((r for r in rows if r["server"] == "visionrpc"), None)
        bare = next((r for r in rows if r["server"] != "visionrpc"), None)
        any_row = ours or bare
        assert any_row is not None
        core_rows.append(
            [
                method,
                str(any_row["concurrency"]),
                any_row["unit"],
                fmt(ours["rate_per_s"], 0) if ours else "–",
                fmt(bare["rate_per_s"], 0) if bare else "–",
                fmt(core_ratio(doc, method), 2, "×"),
                fmt(ours["p50_ms"], 3) if ours else "–",
                fmt(bare["p50_ms"], 3) if bare else "–",
                str(sum(r.get("errors", 0) for r in rows) or ""),
            ]
        )
    access_log = meta.get("settings", {}).get("access_log")
    tables.append(
        TextTable(
            "d. CoreServices vs a bare grpc.aio server",
            [
                "method",
                "in flight",
                "unit",
                "visionrpc",
                "bare grpc.aio",
                "ratio",
                "p50 ms visionrpc",
                "p50 ms bare",
                "errors",
            ],
            core_rows,
            f"visionrpc served with its defaults: access log {'ON' if access_log else 'off'} "
            "(written to a file), readiness gate, health and reflection; the two servers take "
            f"turns in short slices, counts pooled. {IDLE_PING}: one call at a time after 10 ms "
            "of silence, the wake-up cost a served request pays at concurrency 1",
        )
    )

    memory = doc.get("memory", {})
    labels = {
        "server_peak_rss_mb": "visionrpc server (after load, before accuracy)",
        "server_final_peak_rss_mb": "visionrpc server (end of run)",
        "inprocess_peak_rss_mb": "visionrpc pipeline in-process",
        "baseline_peak_rss_mb": "straightforward baseline in-process",
        "bare_server_peak_rss_mb": "bare grpc.aio server",
    }
    mem_rows = [[label, fmt(memory.get(key), 1)] for key, label in labels.items() if key in memory]
    tables.append(TextTable("e. Peak RSS (VmHWM, MiB)", ["process", "peak RSS MiB"], mem_rows))

    levers = [r for r in doc.get("rows", []) if r.get("section") == Section.LEVER]
    if levers:
        default = {
            (r.get("model"), r["concurrency"]): r["images_per_s"]
            for r in levers
            if r.get("lever") == "default"
        }
        tables.append(
            TextTable(
                "Levers (server Infer, one setting changed at a time)",
                ["lever", "model", "concurrency", "images/s", "p50 ms", "p99 ms", "÷ default"],
                [
                    [
                        r.get("lever", r["name"]),
                        r.get("model", ""),
                        str(r["concurrency"]),
                        *_row_cells(r),
                        fmt(
                            _div(
                                r["images_per_s"], default.get((r.get("model"), r["concurrency"]))
                            ),
                            2,
                            "×",
                        ),
                    ]
                    for r in levers
                ],
                "one server per lever, all up at once, measured in alternating slices "
                f"({levers[0].get('rounds', 1)} rounds, pooled)",
            )
        )

    secured = [r for r in doc.get("rows", []) if r.get("section") == Section.SECURITY]
    if secured:
        tables.append(_security_table(secured))
    metered = [r for r in doc.get("rows", []) if r.get("section") == Section.METRICS]
    if metered:
        tables.append(_metrics_table(metered, doc.get("meta", {}).get("metrics_scrape")))
    protocol = [r for r in doc.get("rows", []) if r.get("section") == Section.OIP]
    if protocol:
        tables.append(_oip_table(protocol, doc.get("meta", {}).get("oip_check")))

    tables.append(
        TextTable(
            "Targets",
            ["target", "model", "value", "limit", "result"],
            [
                [
                    t["target"],
                    t["model"],
                    fmt(t["value"], 2),
                    f"{t['op']} {t['limit']:g}",
                    _mark(t["passed"]),
                ]
                for t in doc.get("targets", [])
            ],
            f"machine: {meta.get('machine', '?')}",
        )
    )
    return tables


def _security_table(rows: list[ResultRow]) -> TextTable:
    """Section f: one line per variant, images/s at c16 and p50 at c1 against plaintext."""
    return _variant_table(
        rows,
        "plaintext",
        "f. Cost of TLS and tokens (server Infer)",
        "three servers up at once, differing only in TLS (server certificate, no client "
        "certificate) and a bearer token checked per call; measured in alternating slices "
        f"({rows[0].get('rounds', 1)} rounds, pooled)",
    )


def _metrics_table(rows: list[ResultRow], scrape: Mapping[str, Any] | None) -> TextTable:
    """Section g: metrics off vs on, images/s at c16 and p50 at c1."""
    counted = ""
    if scrape:
        counted = (
            f"; the metrics-on server counted {scrape.get('inference_requests', '?')} inference "
            f"requests, the load sent {scrape.get('sent', '?')} (plus the warm-up)"
        )
    return _variant_table(
        rows,
        "metrics off",
        "g. Cost of Prometheus metrics (server Infer)",
        "two servers up at once, differing only in VISIONRPC_METRICS__PORT; measured in "
        f"alternating slices ({rows[0].get('rounds', 1)} rounds, pooled){counted}",
    )


def peers_at_best(doc: Mapping[str, Any]) -> list[tuple[ResultRow, ResultRow | None]]:
    """Per server of the peers' run (the rows' ``peer``, else their name), the configuration
    with the most images/s at the reference concurrency: its row there and its row at c1."""
    rows = _rows(doc, Section.PEER)
    best: dict[str, ResultRow] = {}
    for r in rows:
        if r["concurrency"] != REFERENCE_CONCURRENCY:
            continue
        server = str(r.get("peer") or r["name"])
        if server not in best or r["images_per_s"] > best[server]["images_per_s"]:
            best[server] = r
    return [
        (r, next((o for o in rows if o["name"] == r["name"] and o["concurrency"] == 1), None))
        for r in best.values()
    ]


def _peers_best_table(best: list[tuple[ResultRow, ResultRow | None]]) -> TextTable:
    """Each server of the peers' run in its best configuration, against visionrpc's best there."""
    ref = REFERENCE_CONCURRENCY
    ours = next((r for r, _ in best if str(r.get("peer", "")).startswith("visionrpc")), None)
    lines = []
    for r, at_one in best:
        match = r.get("matches_visionrpc")
        lines.append(
            [
                str(r.get("peer") or r["name"]),
                str(r.get("configuration", r["name"])),
                fmt(r["images_per_s"]),
                fmt(_div(r["images_per_s"], ours["images_per_s"] if ours else None), 2, "×"),
                fmt(at_one["p50_ms"] if at_one else None, 2),
                fmt(r["p99_ms"], 2),
                "" if match is None else ("yes" if match else "NO"),
            ]
        )
    return TextTable(
        f"b″. Each server at its best (peers' run: most images/s at c{ref})",
        [
            "server",
            "best configuration",
            f"img/s @c{ref}",
            "÷ visionrpc",
            "p50 @c1 ms",
            f"p99 @c{ref} ms",
            "answers match visionrpc",
        ],
        lines,
        "every configuration of each server was run (table b has all rows); one load generator "
        "(tritonclient.grpc, one thread and channel per request in flight) drove every server "
        "through KServe v2 / Open Inference Protocol ModelInfer; p50 @c1 is the same "
        "configuration's; ÷ visionrpc = against visionrpc's row of the same run",
    )


def _oip_table(rows: list[ResultRow], check: Mapping[str, Any] | None) -> TextTable:
    """Section h: typed Infer vs ModelInfer on one server, plus the server's CPU per image."""
    checked = ""
    if check:
        verdict = "equal" if check.get("equal") else f"DIFFERENT: {check.get('mismatched_images')}"
        checked = (
            f"; answers checked once before the load: {check.get('detections', '?')} detections "
            f"in {check.get('images', '?')} images, {verdict} (max box difference "
            f"{fmt(check.get('max_box_diff_px'), 3)} px, "
            f"score {fmt(check.get('max_score_diff'), 5)})"
        )
    table = _variant_table(
        rows,
        OIP_TYPED,
        "h. Open Inference Protocol vs typed Infer (same server)",
        "one server, the same JPEGs; ModelInfer sends each as a BYTES tensor IMAGE of shape [1] "
        "in raw_input_contents (Triton's 4-byte length framing) and asks for the detection "
        "tensors; the two methods take turns in short slices "
        f"({rows[0].get('rounds', 1)} rounds, pooled); CPU = the server process{checked}",
    )
    wide = max(r["concurrency"] for r in rows)
    cpu = {(str(r.get("variant")), r["concurrency"]): r.get("cpu_ms_per_image") for r in rows}
    table.headers += [f"server CPU ms/image @c{wide}", "server CPU ms/image @c1"]
    for line in table.rows:
        line += [fmt(cpu.get((line[0], wide)), 2), fmt(cpu.get((line[0], 1)), 2)]
    return table


def _variant_table(rows: list[ResultRow], reference: str, title: str, caption: str) -> TextTable:
    """One line per variant: images/s at the widest concurrency and p50 at c1, each against the
    ``reference`` variant's."""
    by: dict[tuple[str, int], Mapping[str, Any]] = {
        (str(r.get("variant")), r["concurrency"]): r for r in rows
    }
    variants = list(dict.fromkeys(str(r.get("variant")) for r in rows))
    wide = max(r["concurrency"] for r in rows)
    none: Mapping[str, Any] = {}
    plain_ips = by.get((reference, wide), none).get("images_per_s")
    plain_p50 = by.get((reference, 1), none).get("p50_ms")
    lines = []
    for variant in variants:
        at_wide, at_one = by.get((variant, wide), none), by.get((variant, 1), none)
        ips, p50 = at_wide.get("images_per_s"), at_one.get("p50_ms")
        lines.append(
            [
                variant,
                str(rows[0].get("model", "")),
                fmt(ips),
                fmt(_div(ips, plain_ips), 2, "×"),
                fmt(p50, 2),
                fmt(_sub(p50, plain_p50), 2),
                fmt(at_wide.get("p99_ms"), 2),
                str(sum(r.get("errors", 0) for r in (at_wide, at_one)) or ""),
            ]
        )
    return TextTable(
        title,
        [
            "variant",
            "model",
            f"img/s @c{wide}",
            f"÷ {reference}",
            "p50 @c1 ms",
            f"− {reference} p50",
            f"p99 @c{wide} ms",
            "errors",
        ],
        lines,
        caption,
    )


_NUMERIC = re.compile(r"^(?:[-–+]?[\d,.]+|–)")


def _numeric_columns(t: TextTable) -> list[bool]:
    """Columns whose every cell reads as a number (right-aligned); text stays left-aligned."""
    return [
        bool(t.rows) and all(not row[i] or _NUMERIC.match(row[i]) for row in t.rows)
        for i in range(len(t.headers))
    ]


def print_report(doc: Mapping[str, Any], console: Console) -> None:
    """The whole report as rich tables."""
    for t in build_tables(doc):
        table = Table(title=t.title, title_justify="left", caption=escape(t.note) or None)
        for header, numeric in zip(t.headers, _numeric_columns(t), strict=True):
            table.add_column(header, justify="right" if numeric else "left", overflow="fold")
        for row in t.rows:
            table.add_row(*(escape(cell) for cell in row))
        console.print(table)


def to_markdown(doc: Mapping[str, Any]) -> str:
    """The whole report as Markdown tables (for the README)."""
    out: list[str] = []
    for t in build_tables(doc):
        out.append(f"**{t.title}**\n")
        out.append("| " + " | ".join(t.headers) + " |")
        out.append("|" + "|".join("---:" if n else "---" for n in _numeric_columns(t)) + "|")
        out.extend("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in t.rows)
        if t.note:
            out.append(f"\n_{t.note}_")
        out.append("")
    return "\n".join(out)


def write_json(doc: Mapping[str, Any], path: Path) -> None:
    Path(path).write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def read_json(path: Path) -> dict[str, Any]:
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(doc, dict) or "rows" not in doc:
        raise ValueError(f"{path} is not a bench.harness result (no 'rows')")
    doc["rows"] = [validate_row(r) for r in doc["rows"]]
    return doc
