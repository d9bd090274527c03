"""``visionrpc bench --target HOST:PORT``: load-test a running server with your model and images.

A closed loop on one channel (visionrpc.client.loadtest), like Triton's perf_analyzer: at
concurrency N, N unary Infer calls are in flight, or N InferStream streams with one frame in
flight on each. Each point runs for ``--duration`` seconds or ``--requests`` calls, whichever
comes first, after one warm-up per method. Client-only: nothing of the model runtime is needed
on the machine that generates the load.

The model is checked first with GetModelInfo, so an unknown model (or a server without
InferenceMethods) fails once with one line instead of a table of errors. Requests that fail
during the run are counted by status code; the command then exits with code 1.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from visionrpc.cli.common import (
    Connection,
    TargetOpt,
    TimeoutOpt,
    client_timeout,
    connection_options,
    rpc_errors,
    usage_error,
)
from visionrpc.cli.demo import demo_image
from visionrpc.cli.infer import ModelOpt, expand_images
from visionrpc.client import AsyncClient
from visionrpc.client.loadtest import LoadResult, infer_load, infer_requests, infer_stream_load
from visionrpc.types import ModelDescription
from visionrpc.v1 import inference_pb2

Driver = Callable[..., Awaitable[LoadResult]]
DRIVERS: dict[str, Driver] = {"Infer": infer_load, "InferStream": infer_stream_load}


class Method(StrEnum):
    INFER = "infer"
    STREAM = "stream"
    BOTH = "both"

    @property
    def rpcs(self) -> list[str]:
        return {"infer": ["Infer"], "stream": ["InferStream"]}.get(self.value, list(DRIVERS))


@dataclass(frozen=True)
class Point:
    method: str
    concurrency: int
    result: LoadResult

    def to_json(self) -> dict[str, Any]:
        r = self.result
        return {
            "method": self.method,
            "concurrency": self.concurrency,
            "requests": r.count + r.errors,
            "ok": r.count,
            "errors": r.errors,
            "errors_by_code": dict(r.error_codes),
            "first_error": r.first_error or None,
            "duration_s": round(r.elapsed_s, 3),
            "images_per_s": round(r.rate, 2),
            "p50_ms": _ms(r.p50_ms),
            "p90_ms": _ms(r.p90_ms),
            "p99_ms": _ms(r.p99_ms),
        }


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def parse_concurrency(text: str) -> list[int]:
    """``"1,4,16"`` → [1, 4, 16]; anything else is a usage error saying what to type."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise typer.BadParameter(f"--concurrency takes integers >= 1 like 1,4,16, not {text!r}")
    return list(dict.fromkeys(values))


def load_images(sources: Sequence[str]) -> list[tuple[str, bytes]]:
    """(name, encoded bytes) of every file, folder or glob in ``sources``; the demo image when
    there are none. The bytes are sent as they are: the server decodes them."""
    if not sources:
        return [("demo.jpg", demo_image()[0])]
    images = []
    for source in sources:
        for path in expand_images(source):
            try:
                images.append((path.name, path.read_bytes()))
            except OSError as exc:
                raise usage_error(f"--images: cannot read {path}: {exc.strerror}") from None
    return images


async def _timed(
    bar: Progress, label: str, seconds: float, work: Awaitable[LoadResult]
) -> LoadResult:
    """Await ``work`` while the bar advances with the clock over its ``seconds`` of budget."""
    task = bar.add_task(label, total=seconds)
    job = asyncio.ensure_future(work)
    start = time.perf_counter()
    while not job.done():
        await asyncio.wait({job}, timeout=0.25)  # the bar ticks on the load's loop: keep it rare
        bar.update(task, completed=min(seconds, time.perf_counter() - start))
    bar.update(task, completed=seconds)
    return job.result()


async def run_sweep(
    client: AsyncClient,
    requests: list[inference_pb2.InferRequest],
    rpcs: list[str],
    concurrency: list[int],
    *,
    duration_s: float,
    warmup_s: float,
    max_requests: int,
    bar: Progress,
) -> list[Point]:
    """Every method at every concurrency, each method warmed up once at the top concurrency."""
    points = []
    for rpc in rpcs:
        drive = DRIVERS[rpc]
        if warmup_s > 0:
            top = max(concurrency)
            work = drive(
                client, requests, concurrency=top, duration_s=warmup_s, max_requests=max_requests
            )
            await _timed(bar, f"{rpc} warm-up", warmup_s, work)
        for c in concurrency:
            work = drive(
                client, requests, concurrency=c, duration_s=duration_s, max_requests=max_requests
            )
            points.append(Point(rpc, c, await _timed(bar, f"{rpc} c{c}", duration_s, work)))
    return points


def _errors_text(result: LoadResult) -> str:
    if not result.errors:
        return "0"
    return ", ".join(f"{n} {code}" for code, n in result.error_codes.most_common())


def points_table(points: list[Point]) -> Table:
    table = Table(box=box.SIMPLE_HEAD)
    for col in ("method", "conc", "requests", "images/s", "p50 ms", "p90 ms", "p99 ms"):
        table.add_column(col, justify="left" if col == "method" else "right")
    table.add_column("errors", justify="left")
    for p in points:
        r = p.result
        cells = [f"{v:.1f}" if v is not None else "-" for v in (r.p50_ms, r.p90_ms, r.p99_ms)]
        table.add_row(
            p.method, str(p.concurrency), str(r.count + r.errors), f"{r.rate:.1f}", *cells,
            _errors_text(r),
        )  # fmt: skip
    return table


def _model_json(info: ModelDescription) -> dict[str, Any]:
    return {
        k: v.value if isinstance(v, StrEnum) else v for k, v in dataclasses.asdict(info).items()
    }


@connection_options
def bench(
    target: TargetOpt = None,
    model: ModelOpt = "",
    images: Annotated[
        list[str] | None,
        typer.Option(
            "--images",
            metavar="PATH",
            help="Image file, folder or glob (repeatable); default: the demo image.",
        ),
    ] = None,
    method: Annotated[
        Method, typer.Option("--method", help="Infer (unary), InferStream, or both.")
    ] = Method.INFER,
    concurrency: Annotated[
        str, typer.Option("--concurrency", help="Calls in flight, one point each: 1,4,16.")
    ] = "1,4,16",
    duration: Annotated[
        float, typer.Option("--duration", min=0.01, help="Seconds per point.")
    ] = 5.0,
    requests: Annotated[
        int, typer.Option("--requests", min=1, help="Most calls per point (and warm-up).")
    ] = 100_000,
    warmup: Annotated[
        float, typer.Option("--warmup", min=0.0, help="Warm-up seconds per method (0: none).")
    ] = 1.0,
    timeout: TimeoutOpt = None,
    json_out: Annotated[
        str | None,
        typer.Option("--json", metavar="FILE", help="Write the results as JSON ('-': stdout)."),
    ] = None,
    *,
    connection: Connection,
) -> None:
    """Load-test a server: images/s and p50/p90/p99 latency at each concurrency.

    Exits with code 1 when a request failed (the table counts failures by status code).
    """
    levels = parse_concurrency(concurrency)
    with rpc_errors(target):
        data = load_images(images or [])
    if json_out not in (None, "-") and not Path(json_out).parent.is_dir():
        raise typer.BadParameter(f"--json: folder {Path(json_out).parent} does not exist")
    out = Console(stderr=json_out == "-")
    if not out.is_terminal:  # rich would squeeze the table into 80 columns
        out.width = max(out.width, 120)
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description:<20}"),
        BarColumn(),
        TimeElapsedColumn(),
    )
    quiet = not out.is_terminal
    with rpc_errors(target):

        async def go() -> tuple[AsyncClient, ModelDescription, list[Point]]:
            async with AsyncClient(
                target, timeout=client_timeout(timeout), **connection.client_kwargs()
            ) as client:
                info = await client.get_model_info(model)
                reqs = infer_requests([d for _, d in data], info.name)
                with Progress(*columns, console=out, transient=True, disable=quiet) as bar:
                    points = await run_sweep(
                        client, reqs, method.rpcs, levels, duration_s=duration, warmup_s=warmup,
                        max_requests=requests, bar=bar,
                    )  # fmt: skip
            return client, info, points

        client, info, points = asyncio.run(go())
    out.print(
        f"{client.target}: model {info.name} v{info.version} ({info.execution_provider}), "
        f"{len(data)} image(s), {duration:g} s per point",
        highlight=False,
    )
    out.print(points_table(points))
    if json_out is not None:
        doc = {
            "config": {
                "target": client.target,
                "model": model,
                "methods": method.rpcs,
                "concurrency": levels,
                "duration_s": duration,
                "max_requests": requests,
                "warmup_s": warmup,
                "timeout_s": client.timeout,
                "images": [{"name": n, "bytes": len(d)} for n, d in data],
            },
            "model": _model_json(info),
            "points": [p.to_json() for p in points],
        }
        text = json.dumps(doc, indent=2)
        if json_out == "-":
            typer.echo(text)
        else:
            Path(json_out).write_text(text + "\n", encoding="utf-8")
    failed = sum(p.result.errors for p in points)
    if failed:
        total = sum(p.result.count + p.result.errors for p in points)
        first = next(p.result.first_error for p in points if p.result.first_error)
        typer.echo(f"error: {failed} of {total} requests failed; first: {first}", err=True)
        raise typer.Exit(1)
