"""``python -m bench.harness``: the project's one-run comparison benchmark (bench/README.md).

Not part of the installed package: it compares visionrpc with a straightforward baseline, its own
pipeline in-process, a bare grpc.aio server and the peers. Users measure their own server with
``visionrpc bench --target HOST:PORT``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

console = Console()
DEFAULT_OUT = Path("bench-results.json")


def _int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"{what} must be comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise typer.BadParameter(f"{what} must list integers >= 1, got {text!r}")
    return values


def bench(
    model: Annotated[
        list[str] | None,
        typer.Option("--model", help="Model to bench (repeatable); default: every model."),
    ] = None,
    models_dir: Annotated[
        Path | None,
        typer.Option("--models-dir", help="Model repository; default: settings / packaged."),
    ] = None,
    baseline_model: Annotated[
        str | None,
        typer.Option(help="fp32 model for the straightforward baseline; default: first fp32."),
    ] = None,
    duration: Annotated[
        float | None, typer.Option(help="Seconds per measurement point (default 10; --quick: 1).")
    ] = None,
    warmup: Annotated[
        float | None, typer.Option(help="Warm-up seconds per series (default 2; --quick: 0.3).")
    ] = None,
    quick: Annotated[
        bool, typer.Option("--quick", help="Smoke mode: 1 s points, 8 images, 20 eval images.")
    ] = False,
    concurrency: Annotated[
        str, typer.Option(help="Client concurrencies for the server and in-process points.")
    ] = "1,4,16,64",
    batch_sizes: Annotated[
        str, typer.Option(help="Batch sizes tried by the straightforward baseline.")
    ] = "1,2,4,8",
    images: Annotated[
        int | None, typer.Option(min=1, help="Generated images (default 32; --quick: 8).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the generated image set.")] = 4242,
    max_requests: Annotated[
        int, typer.Option(min=1, help="Most requests per point, whatever the duration.")
    ] = 100_000,
    accuracy_count: Annotated[
        int | None, typer.Option(min=0, help="Images for mAP50 (default 200; --quick: 20).")
    ] = None,
    skip_accuracy: Annotated[bool, typer.Option("--skip-accuracy", help="No mAP50.")] = False,
    skip_stream: Annotated[bool, typer.Option("--skip-stream", help="No InferStream.")] = False,
    skip_core: Annotated[
        bool, typer.Option("--skip-core", help="No CoreServices vs bare grpc.aio.")
    ] = False,
    skip_security: Annotated[
        bool,
        typer.Option("--skip-security", help="No plaintext vs TLS vs TLS + token (section f)."),
    ] = False,
    skip_metrics: Annotated[
        bool,
        typer.Option("--skip-metrics", help="No metrics off vs on (section g)."),
    ] = False,
    skip_oip: Annotated[
        bool,
        typer.Option(
            "--skip-oip", help="No typed Infer vs Open Inference Protocol ModelInfer (section h)."
        ),
    ] = False,
    core_concurrency: Annotated[
        int, typer.Option(min=1, help="Ping calls in flight for section d.")
    ] = 16,
    paired_rounds: Annotated[
        int,
        typer.Option(
            min=0,
            help="Rounds of interleaved in-process/served slices per model (0: none; then the "
            "ratios compare sections a and b, measured minutes apart).",
        ),
    ] = 5,
    levers: Annotated[
        bool, typer.Option("--levers", help="Also measure every lever (server restarts).")
    ] = False,
    lever: Annotated[
        list[str] | None, typer.Option("--lever", help="Measure this lever (repeatable).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="JSON result file (default bench-results.json).")
    ] = None,
    markdown: Annotated[
        bool, typer.Option("--markdown", help="Print the tables as Markdown (for the README).")
    ] = False,
    peer_results: Annotated[
        list[Path] | None,
        typer.Option(
            "--peer-results", help="Merge rows from a peer's JSON (repeatable).", exists=True
        ),
    ] = None,
    from_json: Annotated[
        Path | None,
        typer.Option(
            "--from-json", help="Do not run: re-render (and merge into) this result.", exists=True
        ),
    ] = None,
    work_dir: Annotated[
        Path | None, typer.Option(help="Keep images and logs here (default: a temp dir).")
    ] = None,
    keep_work_dir: Annotated[bool, typer.Option(help="Keep the temp work dir.")] = False,
) -> None:
    """Baseline vs visionrpc in-process vs visionrpc over gRPC, CoreServices, memory, accuracy.

    Prints a table per section with the project's targets marked, and writes JSON to --out.
    """
    from bench.harness import report
    from bench.harness.runner import LEVERS, BenchConfig, run_bench

    if from_json is not None:
        doc: dict[str, Any] = report.read_json(from_json)
    else:
        chosen = list(LEVERS) if levers else list(dict.fromkeys(lever or []))
        config = BenchConfig(
            models_dir=models_dir,
            models=list(model or []),
            baseline_model=baseline_model,
            duration_s=duration if duration is not None else (1.0 if quick else 10.0),
            warmup_s=warmup if warmup is not None else (0.3 if quick else 2.0),
            concurrency=_int_list(concurrency, "--concurrency"),
            batch_sizes=_int_list(batch_sizes, "--batch-sizes"),
            images=images or (8 if quick else 32),
            image_seed=seed,
            max_requests=max_requests,
            stream=not skip_stream,
            core=not skip_core,
            core_concurrency=core_concurrency,
            security=not skip_security,
            metrics=not skip_metrics,
            oip=not skip_oip,
            accuracy_count=0
            if skip_accuracy
            else (accuracy_count if accuracy_count is not None else (20 if quick else 200)),
            paired_rounds=paired_rounds,
            levers=chosen,
            work_dir=work_dir,
            keep_work_dir=keep_work_dir,
        )
        target = out or DEFAULT_OUT
        try:
            doc = run_bench(config, console, on_update=lambda d: report.write_json(d, target))
        except (ValueError, FileNotFoundError, RuntimeError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
    for path in peer_results or []:
        try:
            report.merge_rows(doc, report.load_rows(path))
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
    if from_json is None or out is not None or peer_results:
        target = out or (from_json if from_json is not None else DEFAULT_OUT)
        report.write_json(doc, target)
    if markdown:
        typer.echo(report.to_markdown(doc))
    else:
        if not console.is_terminal:  # rich would wrap the wide tables at 80 columns
            console.width = max(console.width, 170)
        report.print_report(doc, console)
    if from_json is None:
        console.print(f"results: {out or DEFAULT_OUT}")


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
app.command()(bench)
