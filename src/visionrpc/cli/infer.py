"""CLI commands for inference: infer, infer-stream, models.

Both inference commands describe each image with one JSON shape (:func:`entry_json`):
``{"image": NAME, "result": {...}}`` or ``{"image": NAME, "error": {"code": ..., "message": ...}}``.
"""

from __future__ import annotations

import glob
import json
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import grpc
import numpy as np
import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from visionrpc.cli.common import (
    CliError,
    Connection,
    TargetOpt,
    connection_options,
    is_no_server,
    require_extra,
    rpc_errors,
    rpc_status,
    table_console,
    usage_error,
)
from visionrpc.inspection import hit_text
from visionrpc.types import (
    Detection,
    InferenceResult,
    MaskFormat,
    Measurement,
    RuleHit,
    RuleSet,
    TilingMode,
)

if TYPE_CHECKING:
    from visionrpc.client import Client

console = Console()

ModelOpt = Annotated[str, typer.Option("--model", help="Model name; empty = server default.")]
Conf = Annotated[float, typer.Option("--conf", help="Confidence threshold; 0 = model default.")]
Iou = Annotated[float, typer.Option("--iou", help="NMS IoU threshold; 0 = model default.")]
MaxDet = Annotated[int, typer.Option("--max-det", help="Max detections; 0 = model default.")]
Classes = Annotated[
    str, typer.Option("--classes", help="Comma-separated class names to keep; empty = all.")
]
AgnosticNms = Annotated[
    bool | None,
    typer.Option(
        "--agnostic-nms/--no-agnostic-nms",
        help="Class-agnostic NMS on or off (default: the model's setting, see `visionrpc models`).",
        show_default=False,
    ),
]
Masks = Annotated[bool, typer.Option("--masks", help="Return segmentation masks.")]
MaskFmt = Annotated[MaskFormat, typer.Option("--mask-format", help="rle, png or polygon.")]
Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
Tiling = Annotated[
    TilingMode | None,
    typer.Option(
        "--tiling",
        help="Cut large frames into tiles at model resolution: off, on or auto (default: the "
        "model's setting).",
        show_default=False,
    ),
]
TileSize = Annotated[
    int, typer.Option("--tile-size", help="Tile side in image pixels; 0 = the model's input.")
]
TileOverlap = Annotated[
    float | None,
    typer.Option(
        "--tile-overlap",
        help="Fraction of a tile shared with its neighbour, 0 to 0.5 (default: the model's).",
        show_default=False,
    ),
]
Measure = Annotated[
    bool,
    typer.Option("--measure", help="Measure each detection's length and width (area always)."),
]
PixelsPerMm = Annotated[
    float | None,
    typer.Option(
        "--pixels-per-mm",
        help="Scale for sizes in mm (default: the rules file's, else the model's).",
        show_default=False,
    ),
]
RulesFile = Annotated[
    Path | None,
    typer.Option(
        "--rules",
        help="Judge each image by these rules instead of the model's: a YAML file with "
        "model.yaml's rules, zones, ignore_zones (and pixels_per_mm), as `visionrpc eval "
        "--rules` reads.",
        show_default=False,
    ),
]

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
ANNOTATED_FILE_SUFFIXES = {".png", ".jpg", ".jpeg"}
UNREADABLE = "UNREADABLE"
"""Error code of an image file that could not be read (the others are gRPC status names)."""


def _class_list(classes: str) -> tuple[str, ...]:
    return tuple(c.strip() for c in classes.split(",") if c.strip())


def expand_images(source: str) -> list[Path]:
    """The image files ``source`` names: the file itself (sent whatever its suffix), a folder's
    image files, or a glob pattern's image files (``**`` recurses), sorted."""
    path = Path(source)
    if path.is_file():
        return [path]
    suffixes = "/".join(sorted(IMAGE_SUFFIXES))
    if path.is_dir():
        candidates, nothing = list(path.iterdir()), f"no {suffixes} files in folder {source}"
    elif glob.escape(source) != source:  # a pattern
        candidates = [Path(p) for p in glob.glob(source, recursive=True)]
        nothing = f"no {suffixes} files match {source}"
    else:
        raise usage_error(f"no such file or folder: {source}")
    files = sorted(p for p in candidates if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise usage_error(nothing)
    return files


def _rounded(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def measurement_json(m: Measurement) -> dict[str, Any]:
    """A measurement with its unknown sizes left out."""
    values = {k: _rounded(v) for k, v in asdict(m).items() if k != "from_mask"}
    return {**{k: v for k, v in values.items() if v is not None}, "from_mask": m.from_mask}


def hit_json(hit: RuleHit) -> dict[str, Any]:
    return {
        "rule": hit.rule,
        "verdict": hit.verdict.value,
        "metric": hit.metric.value,
        "value": round(hit.value, 4),
        "class_name": hit.class_name,
        "min": hit.minimum,
        "max": hit.maximum,
        "detection": hit.detection,
        "zone": hit.zone,
    }


def result_to_json(result: InferenceResult) -> dict[str, Any]:
    """A JSON-friendly dict of a result: pixel coordinates to 2 decimals, scores to 4, masks as
    their encodings (PNG bytes as their length only)."""
    out: dict[str, Any] = {
        "request_id": result.request_id,
        "model": result.model,
        "model_version": result.model_version,
        "image_width": result.image_width,
        "image_height": result.image_height,
        "detections": [],
        "defects": [
            {
                "class_name": s.class_name,
                "count": s.count,
                "max_score": round(s.max_score, 4),
                "total_area_px": round(s.total_area_px, 1),
                "area_fraction": round(s.area_fraction, 6),
            }
            for s in result.defects
        ],
        "timings": {k: round(v, 3) for k, v in asdict(result.timings).items()},
    }
    if result.tiling is not None:
        out["tiling"] = asdict(result.tiling)
    if result.pixels_per_mm is not None:
        out["pixels_per_mm"] = result.pixels_per_mm
    if result.verdict is not None:
        out["verdict"] = {
            "verdict": result.verdict.verdict.value,
            "hits": [hit_json(h) for h in result.verdict.hits],
        }
    for summary, s in zip(out["defects"], result.defects, strict=True):
        for key in ("total_area_mm2", "total_length_px", "total_length_mm"):
            if getattr(s, key) is not None:
                summary[key] = _rounded(getattr(s, key))
    for d in result.detections:
        det: dict[str, Any] = {
            "box": {k: round(v, 2) for k, v in asdict(d.box).items()},
            "score": round(d.score, 4),
            "class_id": d.class_id,
            "class_name": d.class_name,
        }
        if d.mask_area_px is not None:
            det["mask_area_px"] = d.mask_area_px
        if d.measurement is not None:
            det["measurement"] = measurement_json(d.measurement)
        if d.mask is not None:
            m = d.mask
            det["mask"] = {"format": m.format.value, "area_px": m.area_px}
            if m.format is MaskFormat.RLE:
                det["mask"]["rle"] = {"size": list(m.rle_size), "counts": m.rle_counts}
            elif m.format is MaskFormat.PNG:
                det["mask"]["png"] = {"origin": list(m.png_origin), "bytes": len(m.png)}
            else:
                det["mask"]["polygons"] = [np.round(p, 1).tolist() for p in m.polygons]
        if d.keypoints:  # pose models
            det["keypoints"] = [
                [round(k.x, 2), round(k.y, 2), round(k.visibility, 4)] for k in d.keypoints
            ]
        if d.rotated_box is not None:  # oriented-box models
            r = d.rotated_box
            det["rotated_box"] = {
                "cx": round(r.cx, 2),
                "cy": round(r.cy, 2),
                "width": round(r.width, 2),
                "height": round(r.height, 2),
                "angle_deg": round(r.angle_deg, 3),
                "corners": [[round(x, 2), round(y, 2)] for x, y in r.corners],
            }
        out["detections"].append(det)
    if result.classifications:  # classification models
        out["classifications"] = [
            {"class_id": c.class_id, "class_name": c.class_name, "score": round(c.score, 4)}
            for c in result.classifications
        ]
    return out


def entry_json(
    image: str, result: InferenceResult | None, error: tuple[str, str] = ("", "")
) -> dict[str, Any]:
    """One image's JSON entry: its result, or its error as (code, message)."""
    if result is not None:
        return {"image": image, "result": result_to_json(result)}
    return {"image": image, "error": {"code": error[0], "message": error[1]}}


def print_result(out: Console, name: str, result: InferenceResult) -> None:
    out.print(
        f"{name}: {result.image_width}×{result.image_height}, model "
        f"{result.model} v{result.model_version}, {result.timings.total_ms:.1f} ms"
        + (f", {result.tiling.tiles} tiles" if result.tiling is not None else ""),
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    if result.verdict is not None:
        _print_verdict(out, result)
    measured = any(d.measurement is not None for d in result.detections)
    in_mm = result.pixels_per_mm is not None
    size_columns = ("area mm²", "length mm", "width mm") if in_mm else ("length px", "width px")
    table = Table()
    columns = ("#", "class", "score", "x_min", "y_min", "x_max", "y_max", "mask px")
    for col in (*columns, *(size_columns if measured else ())):
        table.add_column(col, justify="left" if col == "class" else "right", overflow="fold")
    for i, d in enumerate(result.detections):
        table.add_row(
            str(i),
            d.class_name,
            f"{d.score:.3f}",
            f"{d.box.x_min:.1f}",
            f"{d.box.y_min:.1f}",
            f"{d.box.x_max:.1f}",
            f"{d.box.y_max:.1f}",
            str(d.mask.area_px if d.mask is not None else d.mask_area_px or ""),
            *(_sizes(d, in_mm) if measured else ()),
        )
    out.print(table)
    if result.classifications:
        for c in result.classifications:
            out.print(f"  {c.class_name} {c.score:.3f}", markup=False, highlight=False)
    if result.defects:
        defects = Table(title="defects")
        scaled = any(s.total_area_mm2 is not None for s in result.defects)
        totals = ("area mm²", "length mm") if scaled else ()
        for col in ("class", "count", "max score", "area px", "area %", *totals):
            defects.add_column(col, justify="left" if col == "class" else "right", overflow="fold")
        for s in result.defects:
            defects.add_row(
                s.class_name,
                str(s.count),
                f"{s.max_score:.3f}",
                f"{s.total_area_px:.0f}",
                f"{100 * s.area_fraction:.2f}",
                *((_size(s.total_area_mm2), _size(s.total_length_mm)) if scaled else ()),
            )
        out.print(defects)
    else:
        out.print("no defects found")


def _size(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def _sizes(d: Detection, in_mm: bool) -> tuple[str, ...]:
    m = d.measurement
    if m is None:
        return ("",) * (3 if in_mm else 2)
    if in_mm:
        return _size(m.area_mm2), _size(m.length_mm), _size(m.width_mm)
    return _size(m.length_px), _size(m.width_px)


def _print_verdict(out: Console, result: InferenceResult) -> None:
    verdict = result.verdict
    assert verdict is not None
    fired = len(verdict.hits)
    line = f"verdict: {verdict.verdict.value}" + (
        f" ({fired} rule hit{'s' if fired != 1 else ''})" if fired else ""
    )
    scale = f"; scale {result.pixels_per_mm:g} px/mm" if result.pixels_per_mm is not None else ""
    out.print(line + scale, markup=False, highlight=False, soft_wrap=True)
    for hit in verdict.hits:
        out.print(f"  {hit_text(hit)}", markup=False, highlight=False, soft_wrap=True)


def inspection_options(
    measure: bool, pixels_per_mm: float | None, rules_file: Path | None
) -> dict[str, Any]:
    """The Client.infer keywords of --measure, --pixels-per-mm and --rules (the file read as
    ``visionrpc eval --rules`` reads it; its pixels_per_mm unless --pixels-per-mm is given)."""
    if pixels_per_mm is not None and not pixels_per_mm > 0:
        raise usage_error(f"--pixels-per-mm is {pixels_per_mm:g}; give a number > 0")
    rules: RuleSet | None = None
    if rules_file is not None:
        require_extra("server", "--rules")
        from visionrpc.runtime.rules import read_rules_file

        try:
            rules, file_scale = read_rules_file(rules_file)
        except ValueError as exc:
            raise usage_error(f"--rules: {exc}") from None
        if pixels_per_mm is None:
            pixels_per_mm = file_scale
    return {"measure": measure, "pixels_per_mm": pixels_per_mm, "rules": rules}


def check_model(client: Client, model: str, classes: Sequence[str]) -> None:
    """Fail once, before any image is sent, when --model or --classes names something the server
    does not have (rather than once per image)."""
    if not model and not classes:
        return
    info = client.get_model_info(model)  # NOT_FOUND for an unknown model: one error line
    unknown = [c for c in classes if c not in info.class_names]
    if unknown:
        raise usage_error(
            f"--classes: model {info.name} has no class {', '.join(map(repr, unknown))}; "
            f"its classes: {', '.join(info.class_names)}"
        )


def annotated_paths(option: Path | None, images: Sequence[Path]) -> list[Path | None]:
    """Where each image's annotated copy goes: ``option`` itself when it has an image suffix (one
    input image only), else ``option/<stem>.annotated.png``; checked before any call."""
    if option is None:
        return [None] * len(images)
    if option.suffix.lower() in ANNOTATED_FILE_SUFFIXES:
        if len(images) != 1:
            raise usage_error(
                f"--save-annotated {option} names one file but there are {len(images)} images; "
                "give a folder instead"
            )
        if option.is_dir():
            raise usage_error(f"--save-annotated {option} is an existing folder, not a file")
        return [option]
    outs: list[Path | None] = [option / f"{p.stem}.annotated.png" for p in images]
    if len(set(outs)) != len(outs):
        twice = next(o for o in outs if outs.count(o) > 1)
        raise usage_error(f"--save-annotated: two images would both be saved as {twice}")
    return outs


def save_annotated_image(
    image: Path, result: InferenceResult, out: Path, rules: RuleSet | None = None
) -> None:
    """Draw ``result`` on ``image`` and write it to ``out`` (format from its suffix); the zones
    of ``rules`` (the request's) are outlined."""
    import cv2

    from visionrpc.annotate import draw

    bgr = cv2.imread(str(image), cv2.IMREAD_COLOR)
    if bgr is None:
        raise CliError(f"{image}: OpenCV cannot read this image to annotate it")
    drawn = draw(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), result, rules=rules)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR)):
        raise CliError(f"{image}: cannot write the annotated image to {out}")


def request_options(
    model: str,
    conf: float,
    iou: float,
    max_det: int,
    classes: str,
    agnostic_nms: bool | None,
    return_masks: bool,
) -> dict[str, Any]:
    """The Client.infer / infer_stream keywords of the shared options (0 = the model's default)."""
    return {
        "model": model,
        "confidence_threshold": conf or None,
        "iou_threshold": iou or None,
        "max_detections": max_det or None,
        "classes": _class_list(classes),
        "agnostic_nms": agnostic_nms,
        "return_masks": return_masks,
    }


def _infer_one(
    client: Client, path: Path, **options: Any
) -> tuple[InferenceResult | None, tuple[str, str]]:
    """(result, no error) or (None, (code, message)) for one image; "no server" is raised, since
    it would fail every other image too."""
    try:
        return client.infer(path, request_id=path.name, **options), ("", "")
    except grpc.RpcError as exc:
        if is_no_server(exc):
            raise
        return None, rpc_status(exc)
    except OSError as exc:
        return None, (UNREADABLE, f"cannot read the file: {exc.strerror or exc}")


@connection_options
def infer(
    images: Annotated[
        list[str],
        typer.Argument(
            help="Image files, folders (their image files) or quoted glob patterns.",
            show_default=False,
        ),
    ],
    target: TargetOpt = None,
    model: ModelOpt = "",
    conf: Conf = 0.0,
    iou: Iou = 0.0,
    max_det: MaxDet = 0,
    classes: Classes = "",
    agnostic_nms: AgnosticNms = None,
    masks: Masks = False,
    mask_format: MaskFmt = MaskFormat.RLE,
    tiling: Tiling = None,
    tile_size: TileSize = 0,
    tile_overlap: TileOverlap = None,
    measure: Measure = False,
    pixels_per_mm: PixelsPerMm = None,
    rules_file: RulesFile = None,
    json_out: Json = False,
    save_annotated: Annotated[
        Path | None,
        typer.Option(
            "--save-annotated",
            help="Draw the results: a .png/.jpg/.jpeg path is the file to write (one image "
            "only); any other path is a folder (created) that gets <stem>.annotated.png per image. "
            r'Needs OpenCV (pip install "visionrpc\[images]").',
        ),
    ] = None,
    *,
    connection: Connection,
) -> None:
    """Send images to InferenceMethods.Infer and print boxes and defects.

    Every image is tried; one that fails gets an error line (in --json, an entry with "error").
    --json prints one list, one object per image in order:
    {"image": PATH, "result": {...}} or {"image": PATH, "error": {"code": CODE, "message": TEXT}}
    (CODE is the gRPC status name, or UNREADABLE when the file could not be read).
    Exit code: 0 when every image succeeded, 1 when any failed, 2 for a usage error.
    """
    from visionrpc.client import Client

    out = table_console()
    entries: list[dict[str, Any]] = []
    failed = 0
    with rpc_errors(target):
        paths = [p for source in images for p in expand_images(source)]
        annotate_to = annotated_paths(save_annotated, paths)
        if save_annotated is not None:
            require_extra("images", "--save-annotated")
        inspection = inspection_options(measure, pixels_per_mm, rules_file)
        with Client(target, **connection.client_kwargs()) as client:
            check_model(client, model, _class_list(classes))
            for path, annotated in zip(paths, annotate_to, strict=True):
                options = request_options(
                    model, conf, iou, max_det, classes, agnostic_nms, masks or annotated is not None
                )
                options.update(tiling=tiling, tile_size=tile_size, tile_overlap=tile_overlap)
                options.update(inspection)
                result, error = _infer_one(client, path, mask_format=mask_format, **options)
                entry = entry_json(str(path), result, error)
                if result is None:
                    failed += 1
                    if not json_out:
                        typer.echo(f"error: {path}: {error[0]}: {error[1]}", err=True)
                elif not json_out:
                    print_result(out, str(path), result)
                if result is not None and annotated is not None:
                    try:
                        save_annotated_image(path, result, annotated, inspection["rules"])
                    except CliError as exc:
                        failed += 1
                        typer.echo(f"error: {exc}", err=True)
                    else:
                        entry["annotated"] = str(annotated)
                        if not json_out:
                            out.print(f"annotated image: {annotated}", markup=False)
                entries.append(entry)
    if json_out:
        typer.echo(json.dumps(entries, indent=2))
    if failed:
        raise typer.Exit(1)


def _frames(source: str) -> tuple[int | None, Iterator[tuple[str, bytes]]]:
    """(frame count if known, iterator of (name, encoded bytes)) for a video, folder or glob."""
    path = Path(source)
    if path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES:
        require_extra("images", "reading video")
        import cv2

        capture = cv2.VideoCapture(str(path))
        if not capture.isOpened():
            raise usage_error(f"cannot open video {source}")
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
    files = expand_images(source)
    return len(files), ((p.name, p.read_bytes()) for p in files)


def stream_summary(
    frames: int,
    failed: int,
    seconds: float,
    defects: Counter[str],
    verdicts: Counter[str] | None = None,
) -> dict[str, Any]:
    """What an infer-stream run did, for its last line (``verdicts`` when rules judged frames)."""
    summary: dict[str, Any] = {
        "frames": frames,
        "failed": failed,
        "images_per_s": round(frames / seconds, 1) if seconds > 0 else 0.0,
        "defects": dict(defects.most_common()),
    }
    if verdicts:
        summary["verdicts"] = dict(verdicts.most_common())
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """``42 frames, 0 failed, 18.3 images/s; defects: 12× crack, 3× spot``."""
    found = ", ".join(f"{n}× {name}" for name, n in summary["defects"].items()) or "none"
    judged = ", ".join(f"{n}× {v}" for v, n in summary.get("verdicts", {}).items())
    return (
        f"{summary['frames']} frames, {summary['failed']} failed, "
        f"{summary['images_per_s']:.1f} images/s; defects: {found}"
        + (f"; verdicts: {judged}" if judged else "")
    )


@connection_options
def infer_stream(
    source: Annotated[
        str, typer.Argument(help="A video file, a folder of images, an image or a quoted glob.")
    ],
    target: TargetOpt = None,
    model: ModelOpt = "",
    conf: Conf = 0.0,
    iou: Iou = 0.0,
    max_det: MaxDet = 0,
    classes: Classes = "",
    agnostic_nms: AgnosticNms = None,
    masks: Masks = False,
    tiling: Tiling = None,
    tile_size: TileSize = 0,
    tile_overlap: TileOverlap = None,
    measure: Measure = False,
    pixels_per_mm: PixelsPerMm = None,
    rules_file: RulesFile = None,
    json_out: Json = False,
    *,
    connection: Connection,
) -> None:
    """Stream frames through InferenceMethods.InferStream: one line per frame, then a summary.

    The last line sums the run up: "N frames, F failed, R images/s; defects: 12× crack, ...".
    --json prints one JSON object per line, {"image": NAME, "result": {...}} or
    {"image": NAME, "error": {"code": ..., "message": ...}}, then {"summary": {...}}.
    Video files need OpenCV (pip install "visionrpc\\[images]").
    Exit code: 0 when every frame succeeded, 1 when any failed, 2 for a usage error.
    """
    from visionrpc.client import Client

    names: list[str] = []
    failures = 0
    defects: Counter[str] = Counter()
    verdicts: Counter[str] = Counter()
    with rpc_errors(target):
        total, frames = _frames(source)
        options = request_options(model, conf, iou, max_det, classes, agnostic_nms, masks)
        options.update(tiling=tiling, tile_size=tile_size, tile_overlap=tile_overlap)
        options.update(inspection_options(measure, pixels_per_mm, rules_file))

        def named() -> Iterator[bytes]:
            for name, data in frames:
                names.append(name)
                yield data

        with Client(target, **connection.client_kwargs()) as client:
            check_model(client, model, _class_list(classes))
            started = time.perf_counter()
            with Progress(console=console, transient=True, disable=not console.is_terminal) as bar:
                task = bar.add_task("frames", total=total)
                index = -1
                for index, item in enumerate(client.infer_stream(named(), **options)):
                    name = names[index] if index < len(names) else str(index)
                    bar.advance(task)
                    failures += item.result is None
                    if item.result is not None:
                        defects.update({d.class_name: d.count for d in item.result.defects})
                        if item.result.verdict is not None:
                            verdicts[item.result.verdict.verdict.value] += 1
                    if json_out:
                        line = entry_json(name, item.result, (item.error_code, item.error_message))
                        _print_line(bar.console, json.dumps(line))
                    elif item.result is None:
                        error = f"ERROR {item.error_code}: {item.error_message}"
                        _print_line(bar.console, f"{name}: {error}")
                    else:
                        r = item.result
                        found = ", ".join(f"{d.count}× {d.class_name}" for d in r.defects)
                        judged = ""
                        if r.verdict is not None:
                            rules = sorted({h.rule for h in r.verdict.hits})
                            judged = f"  {r.verdict.verdict.value}" + (
                                f" ({', '.join(rules)})" if rules else ""
                            )
                        _print_line(
                            bar.console,
                            f"{name}: {found or 'no defects'}{judged}  "
                            f"({r.timings.total_ms:.1f} ms)",
                        )
            summary = stream_summary(
                index + 1, failures, time.perf_counter() - started, defects, verdicts
            )
    if json_out:
        _print_line(console, json.dumps({"summary": summary}))
    else:
        _print_line(console, format_summary(summary))
    if failures:
        raise typer.Exit(1)


def _print_line(out: Console, text: str) -> None:
    # soft_wrap: one line whatever the terminal width (JSON lines stay parseable)
    out.print(text, markup=False, highlight=False, soft_wrap=True)
