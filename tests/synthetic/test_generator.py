"""The generator: reproducible, in range, exact labels, defects really drawn, YOLO layout."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from visionrpc.synthetic import CLASS_NAMES, generate_sample, write_yolo_dataset, yolo_label_lines
from visionrpc.synthetic.defects import ribbon_axis
from visionrpc.synthetic.textures import TEXTURES


def test_same_seed_and_index_give_the_same_image_and_labels() -> None:
    a, b = generate_sample(5, 3), generate_sample(5, 3)
    assert np.array_equal(a.image, b.image)
    assert [d.class_id for d in a.defects] == [d.class_id for d in b.defects]
    for da, db in zip(a.defects, b.defects, strict=True):
        assert np.array_equal(da.polygon, db.polygon)


def test_other_seed_or_index_gives_another_image() -> None:
    base = generate_sample(5, 3, size=(300, 300))
    assert not np.array_equal(base.image, generate_sample(6, 3, size=(300, 300)).image)
    assert not np.array_equal(base.image, generate_sample(5, 4, size=(300, 300)).image)


def test_sizes_textures_and_classes_cover_the_promised_ranges() -> None:
    samples = [generate_sample(11, i) for i in range(60)]
    sides = [s for x in samples for s in (x.width, x.height)]
    assert min(sides) >= 256 and max(sides) <= 1280
    assert max(sides) > 900 and min(sides) < 500
    assert any(x.width > x.height for x in samples) and any(x.height > x.width for x in samples)
    assert {x.texture for x in samples} == set(TEXTURES)
    assert {d.class_name for x in samples for d in x.defects} == set(CLASS_NAMES)
    for x in samples:
        assert x.image.dtype == np.uint8 and x.image.shape == (x.height, x.width, 3)


def test_polygons_lie_inside_the_image_and_do_not_overlap() -> None:
    for i in range(30):
        sample = generate_sample(12, i)
        boxes = [d.bbox for d in sample.defects]
        for x0, y0, x1, y1 in boxes:
            assert 0 <= x0 < x1 <= sample.width and 0 <= y0 < y1 <= sample.height
        for j, a in enumerate(boxes):
            for b in boxes[j + 1 :]:
                assert a[2] < b[0] or b[2] < a[0] or a[3] < b[1] or b[3] < a[1]


@pytest.mark.parametrize("index", range(6))
def test_pixels_inside_each_polygon_differ_from_the_background_around_it(index: int) -> None:
    sample = generate_sample(13, index, jpeg=False)
    gray = cv2.cvtColor(sample.image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    for defect in sample.defects:
        inside = np.zeros(gray.shape, np.uint8)
        cv2.fillPoly(inside, [np.round(defect.polygon).astype(np.int32)], 1)
        ring = cv2.dilate(inside, np.ones((9, 9), np.uint8), iterations=2) - inside
        core = cv2.erode(inside, np.ones((3, 3), np.uint8))
        if core.sum() < 5:
            core = inside
        contrast = abs(gray[core > 0].mean() - gray[ring > 0].mean())
        assert contrast > 12, f"{defect.class_name} barely visible (contrast {contrast:.1f})"


def test_yolo_labels_are_normalised_polygons_with_class_ids() -> None:
    sample = generate_sample(14, 0, size=(640, 480))
    lines = yolo_label_lines(sample)
    assert len(lines) == len(sample.defects)
    for line, defect in zip(lines, sample.defects, strict=True):
        values = line.split()
        assert int(values[0]) == defect.class_id
        coords = np.array(values[1:], float).reshape(-1, 2)
        assert np.all((coords >= 0) & (coords <= 1))
        assert np.allclose(coords * [640, 480], defect.polygon, atol=1e-3)


def test_dataset_writer_lays_out_images_labels_and_data_yaml(tmp_path) -> None:
    data_yaml = write_yolo_dataset(tmp_path, train_seed=1, train_count=5, val_seed=2, val_count=2)
    text = data_yaml.read_text()
    assert "train: images/train" in text and "2: crack" in text
    train_images = sorted((tmp_path / "images" / "train").iterdir())
    train_labels = sorted((tmp_path / "labels" / "train").iterdir())
    assert len(train_images) == 5 and len(train_labels) == 5
    assert {p.suffix for p in train_images} == {".jpg", ".png"}
    assert [p.stem for p in train_images] == [p.stem for p in train_labels]
    assert cv2.imread(str(train_images[0])) is not None
    assert len(list((tmp_path / "images" / "val").iterdir())) == 2


def test_planted_defects_know_their_exact_sizes() -> None:
    """Area from the polygon; scratches and cracks measure along the centreline they were drawn
    on (length) and area / length (mean width); spots by their minimum-area rectangle."""
    seen = set()
    for i in range(30):
        sample = generate_sample(21, i)
        for defect in sample.defects:
            seen.add(defect.class_name)
            # drawn 8 times finer over its box, so the edge pixels OpenCV fills count little
            x0, y0, _, _ = defect.bbox
            fine = (defect.polygon - [x0 - 1, y0 - 1]) * 8
            drawn = np.zeros((int(fine[:, 1].max()) + 9, int(fine[:, 0].max()) + 9), np.uint8)
            cv2.fillPoly(drawn, [np.round(fine * 16).astype(np.int32)], 1, shift=4)
            assert defect.area == pytest.approx(drawn.sum() / 64, rel=0.06)
            if defect.class_name == "spot":
                assert defect.width <= defect.length
                assert defect.area < defect.length * defect.width
                continue
            centreline, widths = ribbon_axis(defect.polygon)
            chord = float(np.linalg.norm(centreline[-1] - centreline[0]))
            assert chord <= defect.length <= 2.5 * chord
            assert defect.length * defect.width == pytest.approx(defect.area)
            assert widths.min() <= defect.width <= widths.max()
    assert seen == set(CLASS_NAMES)
