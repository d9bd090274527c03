"""One bench run, start to end: images, in-process pipelines, the server over gRPC, CoreServices,
accuracy, memory and (optionally) levers, with a progress bar, into one result document.

Order matters on a 2-core machine: nothing else of the bench runs while a point is measured. The
in-process workers run in child processes while this process waits; the servers run in child
processes while this process generates the load.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import shutil
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from bench.harness import models as bench_models
from bench.harness import oip, security
from bench.harness.images import BENCH_SEED, BenchImage, describe, make_images, save_images
from bench.harness.loadgen import grpc_ping, grpc_ping_after_idle, grpc_stream_numbers, row
from bench.harness.paired import load_pipeline, paired_points
from bench.harness.procs import (
    ServerProcess,
    bare_server,
    free_port,
    run_worker,
    visionrpc_server,
)
from bench.harness.report import (
    IDLE_PING,
    REFERENCE_CONCURRENCY,
    SCHEMA_VERSION,
    CoreRow,
    ResultRow,
    Section,
    analyse,
)
from visionrpc.client import AsyncClient, Client
from visionrpc.client.loadtest import LoadResult, infer_load, infer_requests, infer_stream_load
from visionrpc.evaluation import EVAL_SEED
from visionrpc.settings import Settings

SERVER_NAME = "visionrpc gRPC"

# Each lever changes one server setting (VISIONRPC_* env); int8 vs fp32 is the model list itself.
LEVERS: dict[str, dict[str, str]] = {
    "default": {},
    "reduced_decode=off": {"VISIONRPC_REDUCED_DECODE": "false"},
    "instances=1 (one ORT call on all cores, batches of 8)": {"VISIONRPC_RUNTIME__INSTANCES": "1"},
    "max_batch_size=8": {"VISIONRPC_BATCHING__MAX_BATCH_SIZE": "8"},
    "max_batch_size=8, max_queue_delay_us=2000": {
        "VISIONRPC_BATCHING__MAX_BATCH_SIZE": "8",
        "VISIONRPC_BATCHING__MAX_QUEUE_DELAY_US": "2000",
    },
    "decode_workers=1": {"VISIONRPC_RUNTIME__DECODE_WORKERS": "1"},
    "access_log=on": {"VISIONRPC_ACCESS_LOG": "true"},
}

METRICS_OFF, METRICS_ON = "metrics off", "metrics on"
METRICS_CONCURRENCY = (1, 16)  # section g: p50 at c1, images/s at c16

# Rough seconds per step, so the progress bar's time estimate means something.
_IMAGE_S = 0.15
_EVAL_IMAGE_S = 0.3


@dataclass
class BenchConfig:
    """Everything a run needs; the CLI fills it from its options."""

    models_dir: Path | None = None
    models: list[str] = field(default_factory=list)  # empty = every model of the directory
    baseline_model: str | None = None  # default: the first fp32 model
    duration_s: float = 10.0  # per measurement point
    warmup_s: float = 2.0
    concurrency: list[int] = field(default_factory=lambda: [1, 4, 16, 64])
    batch_sizes: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    images: int = 32
    image_seed: int = BENCH_SEED
    max_requests: int = 100_000  # per point, on top of the duration
    stream: bool = True
    core: bool = True
    core_concurrency: int = 16
    accuracy_count: int = 200  # 0 = skip
    paired_rounds: int = 5  # interleaved in-process/served rounds per model; 0 = skip
    eval_seed: int = EVAL_SEED
    levers: list[str] = field(default_factory=list)  # names of LEVERS
    lever_concurrency: list[int] = field(default_factory=lambda: [1, 16])
    security: bool = True  # section f: plaintext vs TLS vs TLS + token
    metrics: bool = True  # section g: metrics off vs on
    oip: bool = True  # section h: typed Infer vs Open Inference Protocol ModelInfer
    work_dir: Path | None = None
    keep_work_dir: bool = False
    timeout_s: float = 120.0  # client deadline per call


@dataclass
class _Plan:
    """The progress bar: one task whose total is the estimated seconds of the whole run."""

    bar: Progress
    task: Any

    def step(self, label: str, weight: float) -> None:
        self.bar.update(self.task, advance=weight, description=escape(label))

    def label(self, label: str) -> None:
        self.bar.update(self.task, description=escape(label))


def _estimate(config: BenchConfig, n_models: int) -> float:
    point = config.duration_s
    points = len(config.batch_sizes) + n_models * (1 + len(config.concurrency))
    points += n_models * len(config.concurrency) * (2 if config.stream else 1)
    points += 4 if config.core else 0
    points += n_models * 4 if config.paired_rounds else 0
    points += len(config.levers) * len(config.lever_concurrency)
    points += len(security.CONCURRENCY) * 3 if config.security else 0
    points += len(METRICS_CONCURRENCY) * 2 if config.metrics else 0
    points += len(oip.CONCURRENCY) * 2 if config.oip else 0
    return (
        config.images * _IMAGE_S + points * point + n_models * config.accuracy_count * _EVAL_IMAGE_S
    )


def _versions() -> dict[str, str]:
    out = {}
    for name in ("visionrpc", "onnxruntime", "grpcio", "numpy", "opencv-python-headless"):
        with contextlib.suppress(PackageNotFoundError):
            out[name] = version(name)
    return out


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}"


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _meta(
    config: BenchConfig,
    settings: Settings,
    selected: list[bench_models.ModelEntry],
    baseline: bench_models.ModelEntry,
) -> dict[str, Any]:
    return {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": _machine(),
        "cpu_count": os.cpu_count(),
        "loadavg_start": _loadavg(),
        "python": sys.version.split()[0],
        "versions": _versions(),
        "duration_s": config.duration_s,
        "warmup_s": config.warmup_s,
        "max_requests": config.max_requests,
        "concurrency": config.concurrency,
        "batch_sizes": config.batch_sizes,
        "models": [
            {"name": m.name, "precision": m.precision, "onnx": str(m.onnx)} for m in selected
        ],
        "baseline_model": baseline.name,
        "settings": settings.model_dump(
            mode="json",
            include={"access_log", "log_format", "reduced_decode", "stream_window"}
            | {"batching", "runtime"},
        ),
        "client": "AsyncClient channel (one), pre-built requests, closed loop, answers not "
        "converted; InferStream: N streams, one frame in flight each",
        "server": "python -m visionrpc.cli.main serve (separate process, default settings + "
        "VISIONRPC_* env); stdout/stderr to a file",
    }


async def _served_points(
    address: str,
    model: str,
    data: list[bytes],
    config: BenchConfig,
    plan: _Plan,
    *,
    concurrency: Iterable[int],
    stream: bool,
    name: str = SERVER_NAME,
    section: Section = Section.GRPC,
    **extra: Any,
) -> list[ResultRow]:
    """Infer (and InferStream) at each concurrency, on one AsyncClient channel."""
    rows = []
    requests = infer_requests(data, model)
    async with AsyncClient(address, timeout=config.timeout_s) as client:
        methods = [("Infer", infer_load)] + ([("InferStream", infer_stream_load)] if stream else [])
        for method, drive in methods:
            plan.label(f"{name} {model} {method} warm-up")
            await drive(
                client, requests, concurrency=4, duration_s=config.warmup_s, max_requests=64
            )
            for c in concurrency:
                plan.label(f"{name} {model} {method} c{c}")
                result = await drive(
                    client,
                    requests,
                    concurrency=c,
                    duration_s=config.duration_s,
                    max_requests=config.max_requests,
                )
                rows.append(row(result, name, section, model, method, c, **extra))
                plan.step(f"{name} {model} {method} c{c}", config.duration_s)
    return rows


async def _core_points(servers: dict[str, str], config: BenchConfig, rounds: int) -> list[CoreRow]:
    """Ping and StreamNumbers on each server (name -> address), in alternating slices.

    The servers take turns ``rounds`` times (one slice each per round, counts pooled), so a
    drift of the machine's speed during the measurement hits them alike.
    """
    rounds = max(1, rounds)
    slice_s = config.duration_s / rounds
    pings = {name: LoadResult(0, 0.0) for name in servers}
    idle_pings = {name: LoadResult(0, 0.0) for name in servers}
    numbers = {name: LoadResult(0, 0.0) for name in servers}
    async with contextlib.AsyncExitStack() as stack:
        clients = {
            name: await stack.enter_async_context(AsyncClient(address, timeout=config.timeout_s))
            for name, address in servers.items()
        }
        for client in clients.values():
            await grpc_ping(
                client, concurrency=4, duration_s=config.warmup_s / 2, max_requests=2000
            )
        for _ in range(rounds):
            for name, client in clients.items():
                pings[name].add(
                    await grpc_ping(
                        client,
                        concurrency=config.core_concurrency,
                        duration_s=slice_s,
                        max_requests=config.max_requests * 10,
                    ),
                )
            for name, client in clients.items():
                idle_pings[name].add(await grpc_ping_after_idle(client, duration_s=slice_s))
            for name, client in clients.items():
                numbers[name].add(
                    await grpc_stream_numbers(
                        client,
                        streams=1,
                        duration_s=slice_s,
                        max_messages=config.max_requests * 50,
                    ),
                )
    return [
        core_row
        for name in servers
        for core_row in (
            _core_row(name, "Ping", config.core_concurrency, pings[name], "calls/s"),
            _core_row(name, IDLE_PING, 1, idle_pings[name], "calls/s"),
            _core_row(name, "StreamNumbers", 1, numbers[name], "messages/s"),
        )
    ]


def _core_row(server: str, method: str, concurrency: int, result: LoadResult, unit: str) -> CoreRow:
    """A CoreServices row; streams record no per-message latencies, so their p50/p99 are None."""
    return {
        "server": server,
        "method": method,
        "concurrency": concurrency,
        "rate_per_s": result.rate,
        "unit": unit,
        "p50_ms": result.p50_ms,
        "p99_ms": result.p99_ms,
        "count": result.count,
        "errors": result.errors,
        "duration_s": round(result.elapsed_s, 3),
    }


async def _paired(
    config: BenchConfig,
    server: ServerProcess,
    models_dir: Path,
    names: list[str],
    data: list[bytes],
    plan: _Plan,
) -> list[ResultRow]:
    """Section b′: each model in-process (in this process) and served, in alternating slices."""
    plan.label("paired: loading the pipeline in-process")
    pipeline = await asyncio.to_thread(load_pipeline, models_dir)
    slice_s = config.duration_s / config.paired_rounds
    rows: list[ResultRow] = []
    try:
        for model in names:
            rows += await paired_points(
                pipeline,
                server.address,
                server.pid,
                model,
                data,
                rounds=config.paired_rounds,
                slice_s=slice_s,
                concurrency=REFERENCE_CONCURRENCY,
                timeout_s=config.timeout_s,
                on_slice=lambda label: plan.step(label, slice_s),
            )
    finally:
        await pipeline.close()
    return rows


def _run_oip(
    config: BenchConfig,
    doc: dict[str, Any],
    server: ServerProcess,
    model: str,
    jpegs: list[bytes],
    plan: _Plan,
) -> None:
    """Section h: typed Infer and ModelInfer on the same server, in alternating slices, after
    checking once that both answer the same detections."""
    rounds = max(1, config.paired_rounds)
    slice_s = config.duration_s / rounds
    plan.label(f"Open Inference Protocol {model}: equality check, warm-up")
    rows, check = asyncio.run(
        oip.oip_points(
            server.address,
            server.pid,
            model,
            jpegs,
            rounds=rounds,
            slice_s=slice_s,
            warmup_s=config.warmup_s,
            max_requests=config.max_requests,
            timeout_s=config.timeout_s,
            on_slice=lambda label: plan.step(label, slice_s),
        )
    )
    doc["rows"] += rows
    doc["meta"]["oip_check"] = check


def _accuracy(address: str, model: str, config: BenchConfig, plan: _Plan) -> dict[str, float | int]:
    """Box/mask mAP50 through the server, as ``visionrpc eval`` measures it."""
    from visionrpc.evaluation import evaluate, served

    def progress(indices: Iterable[int]) -> Iterator[int]:
        for i in indices:
            yield i
            plan.step(f"accuracy {model} ({i + 1}/{config.accuracy_count})", _EVAL_IMAGE_S)

    with Client(address, timeout=config.timeout_s) as client:
        report = evaluate(
            served(client, model),
            seed=config.eval_seed,
            count=config.accuracy_count,
            progress=progress,
        )
    return {
        "images": report.images,
        "instances": report.instances,
        "seed": config.eval_seed,
        "box_map50": report.box_map50,
        "mask_map50": report.mask_map50,
        "box_map50_95": report.box_map50_95,
        "mask_map50_95": report.mask_map50_95,
    }


def run_bench(
    config: BenchConfig,
    console: Console,
    on_update: Callable[[dict[str, Any]], None] = lambda doc: None,
) -> dict[str, Any]:
    """Run every section; ``on_update`` gets the (partial) document after each phase."""
    unknown = [name for name in config.levers if name not in LEVERS]
    if unknown:
        raise ValueError(f"unknown lever(s) {unknown}; choose from: {', '.join(LEVERS)}")
    settings = Settings()
    available = bench_models.discover(config.models_dir or settings.models_dir)
    selected = bench_models.select(available, config.models)
    baseline = bench_models.pick_baseline(selected, available, config.baseline_model)
    work = Path(config.work_dir or tempfile.mkdtemp(prefix="visionrpc-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    models_dir = bench_models.link_subset(selected, work / "models")
    doc: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "meta": _meta(config, settings, selected, baseline),
        "rows": [],
        "core": [],
        "memory": {},
        "accuracy": {},
    }
    names = [m.name for m in selected]
    started = time.perf_counter()
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description:<48}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    ok = False
    try:
        with Progress(*columns, console=console, transient=False) as bar:
            plan = _Plan(bar, bar.add_task("images", total=_estimate(config, len(selected))))
            images = _images(config, plan)
            save_images(images, work / "images")
            data = [i.data for i in images]
            jpegs = [i.data for i in images if i.format == "jpeg"]
            doc["meta"]["images"] = describe(images, config.image_seed)
            _run_workers(config, doc, work, models_dir, names, baseline, plan)
            on_update(doc)
            _run_server(config, doc, work, models_dir, names, data, jpegs, plan)
            on_update(doc)
            if config.security:
                _run_security(config, doc, work, models_dir, names[0], data, plan)
                on_update(doc)
            if config.metrics:
                _run_metrics(config, doc, work, models_dir, names[0], data, plan)
                on_update(doc)
            if config.levers:
                _run_levers(config, doc, work, models_dir, names[0], data, plan)
                on_update(doc)
        ok = True
    finally:
        doc["meta"]["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        doc["meta"]["wall_s"] = round(time.perf_counter() - started, 1)
        doc["meta"]["loadavg_end"] = _loadavg()
        analyse(doc)
        on_update(doc)
        if ok and not config.keep_work_dir and config.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
        else:
            doc["meta"]["work_dir"] = str(work)
            console.print(f"bench work directory (logs, images): {work}")
    return doc


def _run_levers(
    config: BenchConfig,
    doc: dict[str, Any],
    work: Path,
    models_dir: Path,
    model: str,
    data: list[bytes],
    plan: _Plan,
) -> None:
    """Every lever's server up at once (idle ones cost nothing), measured in alternating slices,
    so that a lever's ratio to the default is not the machine's drift between two minutes."""
    variants = [security.Variant(lever, LEVERS[lever]) for lever in config.levers]
    with _servers(variants, "lever {}", "lever", work, models_dir, model, plan) as servers:
        doc["rows"] += asyncio.run(
            _alternating_points(
                servers, model, data, config, plan, config.lever_concurrency, Section.LEVER, "lever"
            )
        )


def _run_security(
    config: BenchConfig,
    doc: dict[str, Any],
    work: Path,
    models_dir: Path,
    model: str,
    data: list[bytes],
    plan: _Plan,
) -> None:
    """Section f: plaintext, TLS and TLS + token servers, measured in alternating slices."""
    variants = security.variants(work)
    clients = {variant.name: variant.client for variant in variants}
    with _servers(variants, "security {}", "security", work, models_dir, model, plan) as servers:
        doc["rows"] += asyncio.run(
            _alternating_points(
                servers,
                model,
                data,
                config,
                plan,
                list(security.CONCURRENCY),
                Section.SECURITY,
                "variant",
                clients,
            )
        )


def _run_metrics(
    config: BenchConfig,
    doc: dict[str, Any],
    work: Path,
    models_dir: Path,
    model: str,
    data: list[bytes],
    plan: _Plan,
) -> None:
    """Section g: a server without and one with Prometheus metrics, in alternating slices; then
    the metrics server is scraped once, to show it counted the load it was measured under."""
    port = free_port()
    variants = [
        security.Variant(METRICS_OFF),
        security.Variant(METRICS_ON, {"VISIONRPC_METRICS__PORT": str(port)}),
    ]
    with _servers(variants, "{}", "metrics", work, models_dir, model, plan) as servers:
        rows = asyncio.run(
            _alternating_points(
                servers,
                model,
                data,
                config,
                plan,
                list(METRICS_CONCURRENCY),
                Section.METRICS,
                "variant",
            )
        )
        doc["rows"] += rows
        doc["meta"]["metrics_scrape"] = {
            "inference_requests": _scraped_requests(f"http://127.0.0.1:{port}/metrics"),
            "sent": sum(r.get("requests", 0) for r in rows if r.get("variant") == METRICS_ON),
        }


@contextlib.contextmanager
def _servers(
    variants: Iterable[security.Variant],
    called: str,
    logs: str,
    work: Path,
    models_dir: Path,
    model: str,
    plan: _Plan,
) -> Iterator[dict[str, ServerProcess]]:
    """A server per variant (name -> server), all up at once: idle ones cost nothing. Each is
    checked to be still alive when the block ends without an error. ``called`` formats a
    variant's name for the progress bar and errors; the logs are work/server-``logs``-N.log."""
    with contextlib.ExitStack() as stack:
        servers: dict[str, ServerProcess] = {}
        for index, variant in enumerate(variants):
            plan.label(f"{called.format(variant.name)}: starting the server")
            log = work / f"server-{logs}-{index}.log"
            servers[variant.name] = stack.enter_context(
                visionrpc_server(models_dir, log, variant.env, model, variant.credentials)
            )
        yield servers
        for name, server in servers.items():
            server.check_alive(called.format(name))


def _scraped_requests(url: str) -> int:
    """visionrpc_inference_requests_total summed over models, from one scrape of ``url``."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=30) as reply:
        text = reply.read().decode()
    return round(
        sum(
            sample.value
            for family in text_string_to_metric_families(text)
            if family.name == "visionrpc_inference_requests"
            for sample in family.samples
            if sample.name == "visionrpc_inference_requests_total"
        )
    )


async def _alternating_points(
    servers: dict[str, ServerProcess],
    model: str,
    data: list[bytes],
    config: BenchConfig,
    plan: _Plan,
    concurrency: list[int],
    section: Section,
    key: str,
    client_options: dict[str, dict[str, Any]] | None = None,
) -> list[ResultRow]:
    """Infer on each server (name -> process) at each concurrency, the servers taking turns in
    short slices (``paired_rounds`` rounds, pooled, the first server rotating from round to
    round); rows carry the server's name under ``key``.
    ``client_options`` (per name) are the AsyncClient's TLS/token arguments."""
    rounds = max(1, config.paired_rounds)
    slice_s = config.duration_s / rounds
    requests = infer_requests(data, model)
    pooled = {(name, c): LoadResult(0, 0.0) for name in servers for c in concurrency}
    options = client_options or {}
    async with contextlib.AsyncExitStack() as stack:
        clients = {
            name: await stack.enter_async_context(
                AsyncClient(server.address, timeout=config.timeout_s, **options.get(name, {}))
            )
            for name, server in servers.items()
        }
        for name, client in clients.items():
            plan.label(f"{key} {name}: warm-up")
            await infer_load(
                client, requests, concurrency=4, duration_s=config.warmup_s, max_requests=64
            )
        names = list(clients)
        for r in range(rounds):
            # each round starts with the next server, so no one always follows the same neighbour
            order = names[r % len(names) :] + names[: r % len(names)]
            for c in concurrency:
                for name in order:
                    client = clients[name]
                    result = await infer_load(
                        client,
                        requests,
                        concurrency=c,
                        duration_s=slice_s,
                        max_requests=config.max_requests,
                    )
                    pooled[name, c].add(result)
                    plan.step(f"{key} {name} c{c} (round {r + 1}/{rounds})", slice_s)

    def labels(name: str) -> dict[str, Any]:
        return {"rounds": rounds, "slice_s": slice_s, key: name}

    return [
        row(result, f"{SERVER_NAME} [{name}]", section, model, "Infer", c, **labels(name))
        for (name, c), result in pooled.items()
    ]


def _images(config: BenchConfig, plan: _Plan) -> list[BenchImage]:
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        plan.step(f"generating images ({done}/{config.images})", _IMAGE_S)

    return make_images(config.images, config.image_seed, on_image=tick)


def _run_workers(
    config: BenchConfig,
    doc: dict[str, Any],
    work: Path,
    models_dir: Path,
    names: list[str],
    baseline: bench_models.ModelEntry,
    plan: _Plan,
) -> None:
    """Section a: the straightforward baseline and visionrpc's pipeline, each in a child."""
    common = {
        "images_dir": str(work / "images"),
        "duration_s": config.duration_s,
        "warmup_s": config.warmup_s,
        "max_requests": config.max_requests,
    }
    n_points = len(config.batch_sizes) + len(names) * (1 + len(config.concurrency))
    timeout = n_points * (config.duration_s + 2 * config.warmup_s + 60) + 300

    def tick(label: str) -> None:
        plan.step(label, config.duration_s)

    plan.label("baseline: loading")
    result = run_worker(
        {
            **common,
            "phase": "baseline",
            "batch_sizes": config.batch_sizes,
            "baseline": {
                "name": baseline.name,
                "onnx": str(baseline.onnx),
                "precision": baseline.precision,
                "confidence": baseline.confidence,
                "iou": baseline.iou,
                "max_detections": baseline.max_detections,
            },
        },
        work,
        tick,
        timeout,
    )
    doc["rows"] += result["rows"]
    doc["memory"]["baseline_peak_rss_mb"] = result["peak_rss_mb"]
    plan.label("in-process pipeline: loading")
    result = run_worker(
        {
            **common,
            "phase": "inprocess",
            "models_dir": str(models_dir),
            "models": names,
            "concurrency": config.concurrency,
        },
        work,
        tick,
        timeout,
    )
    doc["rows"] += result["rows"]
    doc["memory"]["inprocess_peak_rss_mb"] = result["peak_rss_mb"]


def _run_server(
    config: BenchConfig,
    doc: dict[str, Any],
    work: Path,
    models_dir: Path,
    names: list[str],
    data: list[bytes],
    jpegs: list[bytes],
    plan: _Plan,
) -> None:
    """Sections b, d, e, h and accuracy: one ``visionrpc serve`` process (plus the bare server)."""
    plan.label("visionrpc serve: starting")
    with visionrpc_server(models_dir, work / "server.log", default_model=names[0]) as server:
        for model in names:
            doc["rows"] += asyncio.run(
                _served_points(
                    server.address,
                    model,
                    data,
                    config,
                    plan,
                    concurrency=config.concurrency,
                    stream=config.stream,
                )
            )
            server.check_alive(f"the {model} inference points")
        doc["memory"]["server_peak_rss_mb"] = server.peak_rss_mb()
        if config.paired_rounds:
            doc["rows"] += asyncio.run(_paired(config, server, models_dir, names, data, plan))
            server.check_alive("the paired points")
        if config.oip:
            _run_oip(config, doc, server, names[0], jpegs or data, plan)
            server.check_alive("the Open Inference Protocol points")
        if config.core:
            plan.label("bare grpc.aio server: starting")
            with bare_server(work / "bare-server.log") as bare:
                plan.label("CoreServices: visionrpc and bare grpc.aio, alternating")
                doc["core"] += asyncio.run(
                    _core_points(
                        {"visionrpc": server.address, "bare grpc.aio": bare.address},
                        config,
                        config.paired_rounds,
                    )
                )
                server.check_alive("the CoreServices points")
                plan.step("CoreServices", 4 * config.duration_s)
                doc["memory"]["bare_server_peak_rss_mb"] = bare.peak_rss_mb()
        if config.accuracy_count > 0:
            for model in names:
                doc["accuracy"][model] = _accuracy(server.address, model, config, plan)
            server.check_alive("the accuracy run")
        doc["memory"]["server_final_peak_rss_mb"] = server.peak_rss_mb()
