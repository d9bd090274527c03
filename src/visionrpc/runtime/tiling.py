"""Tiled inference of frames much larger than the model input: planning tiles, cutting them,
mapping each tile's detections to frame pixels and merging them across tile borders.

Why: letterboxing a 20 MP frame into a 320 px input shrinks it about fifteen times and a defect
a few pixels wide vanishes; tiles at model resolution keep every pixel. The pipeline runs the
tiles (and, optionally, the whole frame letterboxed: the *thumbnail*, which still sees defects
too large for one tile) as items of the model's one batcher, so they share batches and instances
with other requests; this module holds the pure parts, with no event loop and no gRPC.

Merging (all in frame pixels):

1. Border joins. A defect crossing a tile border is seen in pieces by neighbouring tiles. Two
   detections of different tiles are one defect when at least one of them is *cut* (its box
   reaches an inner edge of its tile), their classes agree (any class under class-agnostic NMS),
   and their masks share or touch a pixel (segmentation models), or, without masks, their boxes
   touch. Masks are what makes this safe: two distinct defects side by side near a border
   rarely touch, while the two halves of one defect always do (they share the overlap band, or
   meet at the border without overlap). Joined pieces become one detection: the union of their
   boxes, the OR of their masks, the best score and its class.
2. NMS over everything (joined detections, the tiles' whole ones and the thumbnail's) with the
   request's IoU threshold: a defect inside an overlap band, seen whole by two tiles, and a large
   one found both by the joined tiles and by the thumbnail, are reported once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from visionrpc.errors import InvalidInputError
from visionrpc.runtime.budget import Deadline
from visionrpc.runtime.image_headers import read_header
from visionrpc.runtime.imaging import PAD_VALUE, DecodedImage, ImageTransform
from visionrpc.runtime.repository import MAX_TILE_OVERLAP as MAX_OVERLAP
from visionrpc.runtime.repository import MIN_TILE_SIZE
from visionrpc.runtime.yolo import (
    BoxMask,
    DecodeParams,
    OutputSpec,
    RawDetections,
    decode_detections,
    mask_pixels,
    nms,
)
from visionrpc.runtime.yolo import instance_masks as _instance_masks
from visionrpc.types import InferenceInput, TilingMode, TilingOptions, TilingReport

TILES_SETTING = "limits.max_tiles (VISIONRPC_LIMITS__MAX_TILES)"
CUT_EDGE_INPUT_PX = 2.0
"""A box within this many model-input pixels of an inner tile edge is cut by it (boxes of a
defect running out of the tile end a pixel or so short of the edge)."""


@dataclass(frozen=True)
class TilingSpec:
    """A request's tiling with the model's defaults filled in, validated."""

    mode: TilingMode
    tile_width: int  # frame pixels
    tile_height: int
    overlap: float  # fraction of the tile side
    thumbnail: bool
    auto_factor: float


def resolve_tiling(
    request: TilingOptions, defaults: TilingOptions, input_size: tuple[int, int]
) -> TilingSpec:
    """Fill the request's unset fields from the model's and refuse what makes no sense."""
    mode = request.mode or defaults.mode or TilingMode.OFF
    size = request.tile_size
    if size and size < MIN_TILE_SIZE:
        raise InvalidInputError(
            f"tiling.tile_size is {size}; send at least {MIN_TILE_SIZE} pixels, or 0 for the "
            f"model's default",
            field="tiling.tile_size",
        )
    size = size or defaults.tile_size
    overlap = defaults.overlap if request.overlap is None else request.overlap
    if overlap is None or not 0 <= overlap <= MAX_OVERLAP:  # also refuses NaN
        raise InvalidInputError(
            f"tiling.overlap is {overlap}; send a fraction of the tile side in "
            f"[0, {MAX_OVERLAP}] (0.2 shares a fifth of each tile with its neighbour), or leave "
            "it unset for the model's default",
            field="tiling.overlap",
        )
    thumbnail = defaults.thumbnail if request.thumbnail is None else request.thumbnail
    tile_w, tile_h = (size, size) if size else input_size
    return TilingSpec(
        mode, tile_w, tile_h, float(overlap), bool(thumbnail), defaults.auto_factor or 2.0
    )


def frame_size(item: InferenceInput) -> tuple[int, int] | None:
    """The frame's size (width, height, EXIF rotation applied) from its header, before any
    decoding, so that auto mode leaves small frames on the ordinary path; None when the header
    cannot tell (decoding then reports what is wrong)."""
    if item.raw is not None:
        return item.raw.width, item.raw.height
    if not item.image_bytes:
        return None
    try:
        header = read_header(item.image_bytes)
    except InvalidInputError:
        return None
    if header.orientation in (5, 6, 7, 8):  # these turn the image a quarter
        return header.height, header.width
    return header.width, header.height


def wants_tiles(width: int, height: int, spec: TilingSpec) -> bool:
    """Whether a frame of this size is tiled: mode on, or auto and the frame is more than
    ``auto_factor`` tile sides long one way or the other."""
    if spec.mode is TilingMode.AUTO:
        return max(width / spec.tile_width, height / spec.tile_height) > spec.auto_factor
    return spec.mode is TilingMode.ON


@dataclass(frozen=True)
class Tile:
    """A rectangle of the frame, in frame pixels; ``index`` -1 is the thumbnail (whole frame)."""

    index: int
    x: int
    y: int
    width: int
    height: int


@dataclass(frozen=True)
class TilePlan:
    """Where the tiles of one frame lie."""

    frame_width: int
    frame_height: int
    tiles: tuple[Tile, ...]
    columns: int
    rows: int
    tile_width: int
    tile_height: int
    overlap_x: int  # the overlap asked for, in pixels; spreading the tiles may add to it
    overlap_y: int
    thumbnail: bool

    def report(self) -> TilingReport:
        return TilingReport(
            tiles=len(self.tiles),
            columns=self.columns,
            rows=self.rows,
            tile_width=self.tile_width,
            tile_height=self.tile_height,
            overlap_x=self.overlap_x,
            overlap_y=self.overlap_y,
            thumbnail=self.thumbnail,
        )


def axis_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Where tiles start along one axis of ``length`` pixels.

    As few tiles as cover the axis with neighbours sharing at least ``overlap`` pixels, spread
    evenly so the first starts at 0 and the last ends at the edge: no tile hangs over the frame
    (none is padded), and the extra overlap that rounding leaves is shared out instead of all
    going to the last pair. A frame shorter than the tile gets one tile, as long as the frame.
    """
    if length <= tile:
        return [0]
    step = tile - overlap
    count = math.ceil((length - tile) / step) + 1
    span = length - tile
    return [round(i * span / (count - 1)) for i in range(count)]


def plan_tiles(width: int, height: int, spec: TilingSpec, max_tiles: int) -> TilePlan | None:
    """The tiles of a ``width`` x ``height`` frame, or None when it is not to be tiled (mode
    off, or auto and the frame is at most ``auto_factor`` tile sides long each way).

    More than ``max_tiles`` tiles is refused before any model work, naming what to change.
    """
    tw, th = spec.tile_width, spec.tile_height
    if not wants_tiles(width, height, spec):
        return None
    ox, oy = min(tw - 1, round(spec.overlap * tw)), min(th - 1, round(spec.overlap * th))
    xs, ys = axis_starts(width, tw, ox), axis_starts(height, th, oy)
    count = len(xs) * len(ys)
    if count > max_tiles:
        raise InvalidInputError(
            f"tiling the {width}x{height} frame into {tw}x{th} tiles overlapping by "
            f"{spec.overlap:g} makes {len(xs)}x{len(ys)} = {count} tiles, more than the "
            f"server's limit of {max_tiles} ({TILES_SETTING}); send a larger tiling.tile_size, "
            "a smaller tiling.overlap or a smaller frame, or tiling mode off",
            field="tiling",
        )
    tiles = tuple(
        Tile(r * len(xs) + c, x, y, min(tw, width), min(th, height))
        for r, y in enumerate(ys)
        for c, x in enumerate(xs)
    )
    return TilePlan(width, height, tiles, len(xs), len(ys), tw, th, ox, oy, spec.thumbnail)


def crop_tile(
    rgb: np.ndarray, tile: Tile, tile_size: tuple[int, int], input_size: tuple[int, int]
) -> tuple[np.ndarray, ImageTransform]:
    """The model canvas of one tile and how its input pixels map to the tile's pixels.

    A tile of the model's input size is a view of the frame: no copy, no scaling (it becomes the
    model's input when the batch is stacked). Other tile sizes are scaled by input / tile size,
    the same factor for every tile of the frame, and a tile shorter than the tile size (a frame
    shorter than one tile) is padded on the right and bottom.
    """
    in_w, in_h = input_size
    crop = rgb[tile.y : tile.y + tile.height, tile.x : tile.x + tile.width]
    h, w = crop.shape[:2]
    r = min(in_w / tile_size[0], in_h / tile_size[1])
    new_w, new_h = min(in_w, max(1, round(w * r))), min(in_h, max(1, round(h * r)))
    canvas = crop
    if (new_w, new_h) != (w, h):
        canvas = cv2.resize(crop, (new_w, new_h), interpolation=cv2.INTER_AREA)
    if (new_w, new_h) != (in_w, in_h):
        canvas = cv2.copyMakeBorder(
            np.ascontiguousarray(canvas),
            0,
            in_h - new_h,
            0,
            in_w - new_w,
            cv2.BORDER_CONSTANT,
            value=(PAD_VALUE,) * 3,
        )
    transform = ImageTransform(
        orig_width=w,
        orig_height=h,
        input_width=in_w,
        input_height=in_h,
        resized_width=new_w,
        resized_height=new_h,
        pad_x=0,
        pad_y=0,
        lb_scale_x=new_w / w,
        lb_scale_y=new_h / h,
    )
    return canvas, transform


@dataclass(frozen=True)
class TileJob:
    """One tile (or the thumbnail) of a tiled request: an item of the model's batcher, which
    stacks ``canvas`` like a prepared image's, then :func:`tile_detections` maps its outputs."""

    canvas: np.ndarray  # (in_h, in_w, 3) uint8, possibly a view of the frame
    transform: ImageTransform  # input pixels -> pixels of the tile (of the frame: thumbnail)
    tile: Tile
    frame_width: int
    frame_height: int
    params: DecodeParams
    deadline: Deadline
    max_mask_pixels: int


@dataclass(frozen=True)
class FrameDetections:
    """One tile's detections in frame pixels, with their masks (segmentation models)."""

    tile: int  # Tile.index; -1: the thumbnail
    boxes: np.ndarray  # (n, 4) float32 x1, y1, x2, y2
    scores: np.ndarray  # (n,) float32
    class_ids: np.ndarray  # (n,) int64
    masks: tuple[BoxMask | None, ...]  # empty for detect models
    cut: np.ndarray  # (n,) bool: the box reaches an inner edge of its tile

    def __len__(self) -> int:
        return int(self.scores.shape[0])


def tile_detections(spec: OutputSpec, job: TileJob, outputs: Sequence[Any]) -> FrameDetections:
    """A tile's model outputs -> its detections in frame pixels (run on the instance's thread,
    while the tile's outputs are at hand: masks need its prototypes)."""
    raw = decode_detections(outputs, spec, job.params)
    tile, tr = job.tile, job.transform
    local = tr.boxes_to_original(raw.boxes)  # tile pixels, clipped to the tile
    inside = (local[:, 2] > local[:, 0]) & (local[:, 3] > local[:, 1])
    if not inside.all():  # boxes wholly in the padding (or empty) find nothing of the frame
        raw = RawDetections(
            raw.boxes[inside],
            raw.scores[inside],
            raw.class_ids[inside],
            None if raw.coeffs is None else raw.coeffs[inside],
        )
        local = local[inside]
    masks: tuple[BoxMask | None, ...] = ()
    if raw.coeffs is not None:
        masks = (None,) * len(raw)
        if len(raw) and mask_pixels(local) <= job.max_mask_pixels:
            job.deadline.check("before masks")
            built = _instance_masks(raw.coeffs, outputs[1], raw.boxes, local, tr)
            masks = tuple(
                BoxMask(m.x + tile.x, m.y + tile.y, m.mask, job.frame_width, job.frame_height)
                for m in built
            )
    boxes = local + np.array([tile.x, tile.y, tile.x, tile.y], np.float32)
    cut = np.zeros(len(raw), bool)
    if tile.index >= 0 and len(raw):
        kx, ky = tr.input_to_original
        ex, ey = CUT_EDGE_INPUT_PX * kx, CUT_EDGE_INPUT_PX * ky
        x0, y0 = tile.x, tile.y
        x1, y1 = tile.x + tile.width, tile.y + tile.height
        cut = (
            ((boxes[:, 0] <= x0 + ex) & (x0 > 0))
            | ((boxes[:, 1] <= y0 + ey) & (y0 > 0))
            | ((boxes[:, 2] >= x1 - ex) & (x1 < job.frame_width))
            | ((boxes[:, 3] >= y1 - ey) & (y1 < job.frame_height))
        )
    return FrameDetections(tile.index, boxes, raw.scores, raw.class_ids, masks, cut)


@dataclass(frozen=True)
class Merged:
    """One detection of the frame after merging."""

    box: tuple[float, float, float, float]
    score: float
    class_id: int
    mask: BoxMask | None


def masks_touch(a: BoxMask, b: BoxMask) -> bool:
    """Whether two full-resolution masks share a pixel or touch (8-neighbours)."""
    ha, wa = a.mask.shape
    hb, wb = b.mask.shape
    x0, y0 = max(a.x - 1, b.x), max(a.y - 1, b.y)
    x1, y1 = min(a.x + wa + 1, b.x + wb), min(a.y + ha + 1, b.y + hb)
    if x1 <= x0 or y1 <= y0:
        return False
    grown = cv2.dilate(np.pad(a.mask, 1).astype(np.uint8), np.ones((3, 3), np.uint8))
    ga = grown[y0 - a.y + 1 : y1 - a.y + 1, x0 - a.x + 1 : x1 - a.x + 1]
    gb = b.mask[y0 - b.y : y1 - b.y, x0 - b.x : x1 - b.x]
    return bool(np.logical_and(ga, gb).any())


def union_mask(masks: Sequence[BoxMask]) -> BoxMask:
    """The OR of full-resolution masks of one frame, over the union of their extents."""
    x0 = min(m.x for m in masks)
    y0 = min(m.y for m in masks)
    x1 = max(m.x + m.mask.shape[1] for m in masks)
    y1 = max(m.y + m.mask.shape[0] for m in masks)
    out = np.zeros((y1 - y0, x1 - x0), bool)
    for m in masks:
        h, w = m.mask.shape
        out[m.y - y0 : m.y - y0 + h, m.x - x0 : m.x - x0 + w] |= m.mask
    first = masks[0]
    return BoxMask(x0, y0, out, first.image_width, first.image_height)


class _Groups:
    """Union-find over detection indices."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def join(self, i: int, j: int) -> None:
        ri, rj = self.find(i), self.find(j)
        if ri != rj:
            self.parent[max(ri, rj)] = min(ri, rj)


def merge_detections(
    parts: Sequence[FrameDetections],
    *,
    iou: float,
    max_detections: int,
    agnostic: bool,
    deadline: Deadline | None = None,
) -> list[Merged]:
    """Every tile's (and the thumbnail's) detections -> the frame's, best score first (see the
    module docstring for the rules)."""
    parts = [p for p in parts if len(p)]
    if not parts:
        return []
    boxes = np.concatenate([p.boxes for p in parts]).astype(np.float64)
    scores = np.concatenate([p.scores for p in parts]).astype(np.float32)
    classes = np.concatenate([p.class_ids for p in parts]).astype(np.int64)
    cut = np.concatenate([p.cut for p in parts])
    source = np.concatenate([np.full(len(p), p.tile) for p in parts])
    with_masks = all(p.masks for p in parts)
    masks: list[BoxMask | None] = (
        [m for p in parts for m in p.masks] if with_masks else [None] * len(scores)
    )
    n = len(scores)
    groups = _Groups(n)
    order = np.argsort(boxes[:, 0], kind="stable")
    for a, i in enumerate(order):  # sweep along x: only boxes that reach each other are paired
        for j in order[a + 1 :]:
            if boxes[j, 0] > boxes[i, 2] + 1:
                break
            if not _joinable(i, j, boxes, classes, cut, source, agnostic):
                continue
            mi, mj = masks[i], masks[j]
            if mi is not None and mj is not None and not masks_touch(mi, mj):
                continue
            groups.join(int(i), int(j))
    if deadline is not None:
        deadline.check("before merging tiles")
    members: dict[int, list[int]] = {}
    for i in range(n):
        members.setdefault(groups.find(i), []).append(i)
    merged: list[Merged] = []
    for group in members.values():
        best = max(group, key=lambda k: float(scores[k]))
        b = boxes[group]
        box = (
            float(b[:, 0].min()),
            float(b[:, 1].min()),
            float(b[:, 2].max()),
            float(b[:, 3].max()),
        )
        present = [m for k in group if (m := masks[k]) is not None]
        mask = None
        if present:
            mask = present[0] if len(present) == 1 else union_mask(present)
        merged.append(Merged(box, float(scores[best]), int(classes[best]), mask))
    return _nms(merged, iou, agnostic)[:max_detections]


def _joinable(
    i: int,
    j: int,
    boxes: np.ndarray,
    classes: np.ndarray,
    cut: np.ndarray,
    source: np.ndarray,
    agnostic: bool,
) -> bool:
    """Two detections that may be pieces of one defect: of different tiles (never the
    thumbnail), one of them cut by its tile, same class unless agnostic, boxes touching."""
    if source[i] == source[j] or source[i] < 0 or source[j] < 0:
        return False
    if not (cut[i] or cut[j]) or (not agnostic and classes[i] != classes[j]):
        return False
    bi, bj = boxes[i], boxes[j]
    return bool(bj[1] <= bi[3] + 1 and bi[1] <= bj[3] + 1 and bj[0] <= bi[2] + 1)


def _nms(merged: list[Merged], iou: float, agnostic: bool) -> list[Merged]:
    if not merged:
        return merged
    b = np.array([m.box for m in merged], np.float64)
    xywh = np.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], axis=1)
    scores = np.array([m.score for m in merged], np.float32)
    classes = None if agnostic else np.array([m.class_id for m in merged], np.int32)
    idx = nms(xywh, scores, classes, iou)
    idx = idx[np.argsort(-scores[idx], kind="stable")]
    return [merged[int(k)] for k in idx]


def tile_jobs(
    image: DecodedImage,
    plan: TilePlan,
    input_size: tuple[int, int],
    params: DecodeParams,
    deadline: Deadline,
    max_mask_pixels: int,
) -> Callable[[Tile], TileJob]:
    """A maker of each tile's job, so tiles are cut one at a time as the batcher takes them."""

    def make(tile: Tile) -> TileJob:
        canvas, transform = crop_tile(
            image.rgb, tile, (plan.tile_width, plan.tile_height), input_size
        )
        return TileJob(
            canvas,
            transform,
            tile,
            plan.frame_width,
            plan.frame_height,
            params,
            deadline,
            max_mask_pixels,
        )

    return make


def shrink(image: DecodedImage, input_size: tuple[int, int]) -> DecodedImage:
    """The frame reduced to the size it has in the letterbox, averaging pixels (INTER_AREA), for
    the thumbnail: a plain linear resize by a factor of ten or more would skip most pixels."""
    in_w, in_h = input_size
    h, w = image.rgb.shape[:2]
    r = min(in_w / w, in_h / h)
    if r >= 1:
        return image
    new_w, new_h = min(in_w, max(1, round(w * r))), min(in_h, max(1, round(h * r)))
    small = cv2.resize(image.rgb, (new_w, new_h), interpolation=cv2.INTER_AREA)
    return DecodedImage(
        small, image.width, image.height, image.scale_x * w / new_w, image.scale_y * h / new_h
    )


def needs_resize(plan: TilePlan, input_size: tuple[int, int]) -> bool:
    """Whether cutting a tile costs more than a view (a resize or padding): then it is done off
    the event loop."""
    first = plan.tiles[0]
    return (first.width, first.height) != input_size
