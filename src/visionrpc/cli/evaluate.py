"""``visionrpc eval``: accuracy of a served model on a held-out generated set."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import Progress
from rich.table import Table

from visionrpc.cli.common import TargetOpt, rpc_errors
from visionrpc.cli.infer import Json, ModelOpt, console


def evaluate(
    target: TargetOpt = None,
    models_dir: Annotated[
        Path | None, typer.Option("--models", help="Serve this model folder locally instead.")
    ] = None,
    model: ModelOpt = "",
    count: Annotated[
        int, typer.Option(help="Held-out images to generate (>= 200 for a report).")
    ] = 200,
    seed: Annotated[int, typer.Option(help="Generator seed; training used 1 and 2.")] = 1000,
    json_out: Json = False,
) -> None:
    """Accuracy through the gRPC API: box and mask mAP50 on a held-out generated set.

    Without --target a server is started in this process on a free loopback port.
    """
    from visionrpc.client import Client
    from visionrpc.evaluation import evaluate as run_eval
    from visionrpc.evaluation import served

    def go(address: str) -> None:
        with (
            rpc_errors(),
            Client(address, timeout=120.0) as client,
            Progress(console=console, transient=True) as bar,
        ):
            task = bar.add_task("evaluating", total=count)

            def progress(it: Iterable[int]) -> Iterator[int]:
                for i in it:
                    yield i
                    bar.advance(task)

            report = run_eval(served(client, model), seed=seed, count=count, progress=progress)
        if json_out:
            typer.echo(json.dumps(asdict(report), indent=2))
            return
        table = Table(
            title=f"held-out set: seed {seed}, {report.images} images, {report.instances} defects"
        )
        for col in ("class", "box mAP50", "mask mAP50"):
            table.add_column(col)
        for name, box in report.per_class_box_map50.items():
            table.add_row(name, f"{box:.3f}", f"{report.per_class_mask_map50[name]:.3f}")
        table.add_row("all", f"{report.box_map50:.3f}", f"{report.mask_map50:.3f}")
        console.print(table)
        console.print(
            f"box mAP50-95 {report.box_map50_95:.3f}, mask mAP50-95 "
            f"{report.mask_map50_95:.3f}, mean server time {report.mean_latency_ms:.1f} ms"
        )

    if target:
        go(target)
        return
    from visionrpc.server.local import running_server
    from visionrpc.settings import Settings

    overrides: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "access_log": False}
    if models_dir is not None:
        overrides["models_dir"] = models_dir
    with running_server(Settings(**overrides)) as server:
        go(server.address)
