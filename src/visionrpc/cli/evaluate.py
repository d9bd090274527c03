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

from visionrpc.cli.common import (
    Connection,
    TargetOpt,
    connection_options,
    require_extra,
    rpc_errors,
)
from visionrpc.cli.infer import AgnosticNms, Json, ModelOpt, console


@connection_options
def evaluate(
    target: TargetOpt = None,
    models_dir: Annotated[
        Path | None, typer.Option("--models", help="Serve this model folder locally instead.")
    ] = None,
    model: ModelOpt = "",
    count: Annotated[
        int, typer.Option(min=1, help="Held-out images to generate (>= 200 for a report).")
    ] = 200,
    seed: Annotated[int, typer.Option(help="Generator seed; training used 1 and 2.")] = 1000,
    agnostic_nms: AgnosticNms = None,
    rules_file: Annotated[
        Path | None,
        typer.Option(
            "--rules",
            help="Also score verdicts: a YAML file with model.yaml's rules, zones, ignore_zones "
            "(and pixels_per_mm), sent with each image and applied to the planted defects.",
        ),
    ] = None,
    json_out: Json = False,
    *,
    connection: Connection,
) -> None:
    """Accuracy through the gRPC API: box and mask mAP on a held-out generated set, and count
    accuracy (reported vs planted defects per image) at the model's default confidence.

    Without --target a server is started in this process on a free loopback port (needs the
    server extra); with --target only the images extra is needed (the generator and COCO scoring),
    unless --rules asks for verdicts too (the rules engine is the server's).
    """
    with rpc_errors(target):
        require_extra("images" if target and rules_file is None else "server", "eval")
    from visionrpc.client import Client
    from visionrpc.evaluation import evaluate as run_eval
    from visionrpc.evaluation import served

    rule_set, scale = None, None
    if rules_file is not None:
        from visionrpc.runtime.rules import MM_METRICS, read_rules_file

        try:
            rule_set, scale = read_rules_file(rules_file)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--rules") from None
        in_mm = [r.name for r in rule_set.rules if r.metric in MM_METRICS]
        if in_mm and scale is None:
            raise typer.BadParameter(
                f"rule(s) {', '.join(in_mm)} measure in mm: set pixels_per_mm in {rules_file} "
                "(the planted defects are measured with it too)",
                param_hint="--rules",
            )

    def go(address: str, local: Connection = connection) -> None:
        with (
            rpc_errors(address),
            Client(address, timeout=120.0, **local.client_kwargs()) as client,
            Progress(console=console, transient=True) as bar,
        ):
            task = bar.add_task("evaluating", total=count)

            def progress(it: Iterable[int]) -> Iterator[int]:
                for i in it:
                    yield i
                    bar.advance(task)

            chosen = served(
                client, model, agnostic_nms=agnostic_nms, rules=rule_set, pixels_per_mm=scale
            )
            report = run_eval(chosen, seed=seed, count=count, progress=progress)
        if json_out:
            typer.echo(json.dumps(asdict(report), indent=2))
            return
        counts = report.counts
        table = Table(
            title=f"{report.model}, agnostic NMS {'on' if report.agnostic_nms else 'off'}; "
            f"held-out set: seed {seed}, {report.images} images, {report.instances} defects",
            caption=f"exact count: share of images reporting as many defects as planted; count "
            f"error: mean |reported - planted|; at confidence {counts.confidence_threshold:g}",
        )
        for col in ("class", "box mAP50", "mask mAP50", "exact count", "count error"):
            table.add_column(col)
        for name, box in report.per_class_box_map50.items():
            table.add_row(
                name,
                f"{box:.3f}",
                f"{report.per_class_mask_map50[name]:.3f}",
                f"{counts.per_class_exact_rate[name]:.1%}",
                f"{counts.per_class_mean_abs_error[name]:.3f}",
            )
        table.add_row(
            "all",
            f"{report.box_map50:.3f}",
            f"{report.mask_map50:.3f}",
            f"{counts.exact_rate:.1%}",
            f"{counts.mean_abs_error:.3f}",
        )
        console.print(table)
        console.print(
            f"box mAP50-95 {report.box_map50_95:.3f}, mask mAP50-95 "
            f"{report.mask_map50_95:.3f}, mean server time {report.mean_latency_ms:.1f} ms"
        )
        console.print(
            f"counts at confidence {counts.confidence_threshold:g}: {counts.over_rate:.1%} of "
            f"images report more defects than planted, {counts.under_rate:.1%} fewer; "
            f"{counts.duplicate_pairs} duplicate pair(s) (different classes, box IoU >= 0.5) in "
            f"{counts.images_with_duplicates} image(s)"
        )
        if report.verdicts is not None:
            v = report.verdicts
            console.print(
                f"verdicts ({v.rules} rules, at the default confidence): {v.accuracy:.1%} of "
                "images get the verdict the rules give on the planted defects"
            )
            matrix = Table(title="verdicts: planted (rows) vs server (columns), images")
            matrix.add_column("planted")
            for name in v.confusion:
                matrix.add_column(name)
            for truth, row in v.confusion.items():
                matrix.add_row(truth, *(str(n) for n in row.values()))
            console.print(matrix)
            console.print(
                "per rule, images where it fired on both sides or neither: "
                + ", ".join(f"{k} {a:.1%}" for k, a in v.per_rule_agreement.items())
            )

    if target:
        go(target)
        return
    overrides: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "access_log": False}
    if models_dir is not None:
        overrides["models_dir"] = models_dir
    with rpc_errors(local=True):
        from visionrpc.server.local import running_server
        from visionrpc.settings import Settings

        with running_server(Settings(**overrides)) as server:
            go(server.address, Connection(tls=False, token=""))  # plaintext, no tokens
