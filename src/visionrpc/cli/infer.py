"""CLI commands for inference: infer, infer-stream, models."""

from __future__ import annotations

import glob
import json
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from visionrpc.cli.common import TargetOpt, rpc_errors
from visionrpc.types import InferenceResult, MaskFormat

console = Console()

ModelOpt = Annotated[str, typer.Option("--model", help="Model name; empty = server default.")]
Conf = Annotated[float, typer.Option("--conf", help="Confidence threshold; 0 = model default.")]
Iou = Annotated[float, typer.Option("--iou", help="NMS IoU threshold; 0 = model default.")]
MaxDet = Annotated[int, typer.Option("--max-det", help="Max detections; 0 = model default.")]
Classes = Annotated[
    str, typer.Option("--classes", help="Comma-separated class names to keep; empty = all.")
]
Masks = Annotated[bool, typer.Option("--masks", help="Return segmentation masks.")]
MaskFmt = Annotated[MaskFormat, typer.Option("--mask-format", help="rle, png or polygon.")]
Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def _class_list(classes: str) -> tuple[str, ...]:
    return tuple(c.strip() for c in classes.split(",") if c.strip())


def result_to_json(result: InferenceResult) -> dict[str, Any]:
    """A JSON-friendly dict of a result (masks as their encodings, PNG bytes as length only)."""
    out: dict[str, Any] = {
        "request_id": result.request_id,
        "model": result.model,
        "model_version": result.model_version,
        "image_width": result.image_width,
        "image_height": result.image_height,
        "detections": [],
        "defects": [asdict(d) for d in result.defects],
        "timings": asdict(result.timings),
    }
    for d in result.detections:
        det: dict[str, Any] = {
            "box": asdict(d.box),
            "score": round(d.score, 4),
            "class_id": d.class_id,
            "class_name": d.class_name,
        }
        if d.mask is not None:
            m = d.mask
            det["mask"] = {"format": m.format.value, "area_px": m.area_px}
            if m.format is MaskFormat.RLE:
                det["mask"]["rle"] = {"size": list(m.rle_size), "counts": m.rle_counts}
            elif m.format is MaskFormat.PNG:
                det["mask"]["png"] = {"origin": list(m.png_origin), "bytes": len(m.png)}
            else:
                det["mask"]["polygons"] = [np.round(p, 1).tolist() for p in m.polygons]
        out["detections"].append(det)
    return out


def print_result(name: str, result: InferenceResult) -> None:
    table = Table(
        title=f"{name}: {result.image_width}×{result.image_height}, model "
        f"{result.model} v{result.model_version}, {result.timings.total_ms:.1f} ms"
    )
    for col in ("class", "score", "x_min", "y_min", "x_max", "y_max", "mask px"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for d in result.detections:
        table.add_row(
            d.class_name,
            f"{d.score:.3f}",
            f"{d.box.x_min:.1f}",
            f"{d.box.y_min:.1f}",
            f"{d.box.x_max:.1f}",
            f"{d.box.y_max:.1f}",
            str(d.mask.area_px) if d.mask is not None else "",
        )
    console.print(table)
    if result.defects:
        defects = Table(title="defects")
        for col in ("class", "count", "max score", "area px", "area %"):
            defects.add_column(col, justify="left" if col == "class" else "right")
        for s in result.defects:
            defects.add_row(
                s.class_name,
                str(s.count),
                f"{s.max_score:.3f}",
                f"{s.total_area_px:.0f}",
                f"{100 * s.area_fraction:.2f}",
            )
        console.print(defects)
    else:
        console.print("no defects found")


def infer(
    images: Annotated[list[Path], typer.Argument(help="Image files to send.", exists=True)],
    target: TargetOpt = None,
    model: ModelOpt = "",
    conf: Conf = 0.0,
    iou: Iou = 0.0,
    max_det: MaxDet = 0,
    classes: Classes = "",
    masks: Masks = False,
    mask_format: MaskFmt = MaskFormat.RLE,
    json_out: Json = False,
    save_annotated: Annotated[
        Path | None, typer.Option("--save-annotated", help="Folder for images with results drawn.")
    ] = None,
) -> None:
    """Send images to InferenceMethods.Infer and print boxes and defects."""
    from visionrpc.client import Client

    if save_annotated is not None:
        save_annotated.mkdir(parents=True, exist_ok=True)
    outputs = []
    with rpc_errors(), Client(target) as client:
        for path in images:
            result = client.infer(
                path,
                model=model,
                confidence_threshold=conf or None,
                iou_threshold=iou or None,
                max_detections=max_det or None,
                classes=_class_list(classes),
                return_masks=masks or save_annotated is not None,
                mask_format=mask_format,
                request_id=path.name,
            )
            if json_out:
                outputs.append(result_to_json(result))
            else:
                print_result(str(path), result)
            if save_annotated is not None:
                import cv2

                from visionrpc.annotate import draw

                bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
                if bgr is None:
                    raise typer.BadParameter(f"OpenCV cannot read {path} to annotate it")
                drawn = draw(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), result)
                out = save_annotated / f"{path.stem}.annotated.png"
                cv2.imwrite(str(out), cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
                if not json_out:
                    console.print(f"annotated image: {out}")
    if json_out:
        typer.echo(json.dumps(outputs if len(outputs) != 1 else outputs[0], indent=2))


def image_files(source: str) -> list[Path]:
    """The images of a folder (by suffix), the files a glob matches, or the file itself; sorted."""
    path = Path(source)
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    return sorted(Path(p) for p in glob.glob(source))


def _frames(source: str) -> tuple[int | None, Iterator[tuple[str, bytes]]]:
    """(frame count if known, iterator of (name, encoded bytes)) for a video, folder or glob."""
    path = Path(source)
    if path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES:
        import cv2

        capture = cv2.VideoCapture(str(path))
        if not capture.isOpened():
            raise typer.BadParameter(f"cannot open video {source}")
        total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None

        def video() -> Iterator[tuple[str, bytes]]:
            index = 0
            try:
                while True:
                    ok, frame = capture.read()
                    if not ok:
                        return
                    ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])
                    yield f"frame{index:06d}", buf.tobytes()
                    index += 1
            finally:
                capture.release()

        return total, video()
    files = image_files(source)
    if not files:
        raise typer.BadParameter(f"no images or video found at {source}")
    return len(files), ((p.name, p.read_bytes()) for p in files)


def infer_stream(
    source: Annotated[str, typer.Argument(help="A video file, a folder of images or a glob.")],
    target: TargetOpt = None,
    model: ModelOpt = "",
    conf: Conf = 0.0,
    iou: Iou = 0.0,
    max_det: MaxDet = 0,
    classes: Classes = "",
    masks: Masks = False,
    json_out: Json = False,
) -> None:
    """Stream frames through InferenceMethods.InferStream and print one line per frame."""
    from visionrpc.client import Client

    total, frames = _frames(source)
    names: list[str] = []

    def named() -> Iterator[bytes]:
        for name, data in frames:
            names.append(name)
            yield data

    failures = 0
    with (
        rpc_errors(),
        Client(target) as client,
        Progress(console=console, transient=True) as bar,
    ):
        task = bar.add_task("frames", total=total)
        for index, item in enumerate(
            client.infer_stream(
                named(),
                model=model,
                confidence_threshold=conf or None,
                iou_threshold=iou or None,
                max_detections=max_det or None,
                classes=_class_list(classes),
                return_masks=masks,
            )
        ):
            name = names[index] if index < len(names) else str(index)
            bar.advance(task)
            if json_out:
                line = {
                    "frame": name,
                    **(
                        {"error": {"code": item.error_code, "message": item.error_message}}
                        if item.result is None
                        else result_to_json(item.result)
                    ),
                }
                # soft_wrap: one JSON document per line whatever the terminal width
                bar.console.print(json.dumps(line), markup=False, highlight=False, soft_wrap=True)
                failures += item.result is None
                continue
            if item.result is None:
                failures += 1
                bar.console.print(
                    f"{name}: ERROR {item.error_code}: {item.error_message}",
                    markup=False,
                    soft_wrap=True,
                )
                continue
            r = item.result
            summary = ", ".join(f"{d.count}× {d.class_name}" for d in r.defects) or "no defects"
            bar.console.print(
                f"{name}: {summary}  ({r.timings.total_ms:.1f} ms)", markup=False, soft_wrap=True
            )
    if failures:
        raise typer.Exit(1)


def models(target: TargetOpt = None, json_out: Json = False) -> None:
    """List the models the server holds."""
    from visionrpc.client import Client

    with rpc_errors(), Client(target) as client:
        infos, default = client.list_models()
    if json_out:
        typer.echo(
            json.dumps(
                {
                    "default_model": default,
                    "models": [
                        {**asdict(i), "task": i.task.value, "layout": i.layout.value} for i in infos
                    ],
                },
                indent=2,
            )
        )
        return
    table = Table(title="models")
    for col in (
        "name",
        "version",
        "task",
        "input",
        "classes",
        "provider",
        "conf",
        "iou",
        "max det",
    ):
        table.add_column(col)
    for i in infos:
        table.add_row(
            i.name + (" (default)" if i.name == default else ""),
            i.version,
            i.task.value,
            f"{i.input_width}×{i.input_height}",
            ", ".join(i.class_names),
            i.execution_provider,
            f"{i.default_confidence_threshold:g}",
            f"{i.default_iou_threshold:g}",
            str(i.default_max_detections),
        )
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("infer")(infer)
    app.command("infer-stream")(infer_stream)
    app.command("models")(models)
