"""The ImageJ outputs: RoiSet zip, results CSV and label TIFF, read back by ImageJ."""

from __future__ import annotations

import csv
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from fiji_scripts.writers import imagej_labels, labels_to_rois, table_to_csv
from model_zoo.errors import OncoAIError
from model_zoo.outputs import write_result
from model_zoo.result import PredictionResult


@pytest.fixture(scope="module")
def mask(shared_data: Path) -> np.ndarray:
    """Real ground-truth nucleus labels, 512x512, not numbered consecutively."""
    return tifffile.imread(shared_data / "images" / "stardist_mask2d.tif")


def _imagej_masks(rois: list[Any], shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """Decode each ROI with ImageJ and fill it with ImageJ's polygon filler."""
    import jpype

    decoder = jpype.JClass("ij.io.RoiDecoder")
    byte_processor = jpype.JClass("ij.process.ByteProcessor")
    height, width = shape
    masks = {}
    for roi in rois:
        decoded = decoder(roi.tobytes(), f"{roi.name}.roi").getRoi()
        canvas = byte_processor(width, height)
        canvas.setColor(255)
        canvas.fill(decoded)
        pixels = np.array(canvas.getPixels(), dtype=np.int8).reshape(height, width)
        masks[str(decoded.getName())] = pixels != 0
    return masks


def test_each_roi_covers_exactly_its_object_in_imagej(
    mask: np.ndarray, imagej: Any
) -> None:
    rois = labels_to_rois(mask)
    labels = [int(v) for v in np.unique(mask) if v]

    masks = _imagej_masks(rois, mask.shape)

    assert [r.name for r in rois] == [str(v) for v in labels]
    assert len(masks) == len(labels) == 125
    for value in labels:
        np.testing.assert_array_equal(masks[str(value)], mask == value)


def test_holes_and_pieces_become_composite_rois(imagej: Any) -> None:
    labels = np.zeros((12, 14), dtype=np.int32)
    labels[1:8, 1:8] = 1
    labels[3:5, 3:5] = 0  # a hole
    labels[9:11, 2:4] = 2
    labels[9:11, 10:13] = 2  # a second piece
    labels[2:4, 10:12] = 3

    rois = labels_to_rois(labels)
    masks = _imagej_masks(rois, labels.shape)

    kinds = {r.name: r.roitype.name for r in rois}
    assert kinds == {"1": "RECT", "2": "RECT", "3": "POLYGON"}
    assert all(rois[i].composite for i in (0, 1))
    for value in (1, 2, 3):
        np.testing.assert_array_equal(masks[str(value)], labels == value)


def test_offset_moves_rois_onto_the_whole_image(imagej: Any) -> None:
    labels = np.zeros((5, 5), dtype=np.int32)
    labels[1:3, 2:4] = 7

    (roi,) = labels_to_rois(labels, offset=(100.0, 40.0))

    assert (roi.left, roi.top, roi.right, roi.bottom) == (102, 41, 104, 43)
    whole = np.zeros((60, 120), dtype=bool)
    whole[41:43, 102:104] = True
    np.testing.assert_array_equal(_imagej_masks([roi], whole.shape)["7"], whole)


def test_a_stack_gets_one_roi_per_object_and_slice() -> None:
    labels = np.zeros((3, 6, 6), dtype=np.int32)
    labels[0, 1:3, 1:3] = 1
    labels[2, 1:3, 1:3] = 1
    labels[2, 4:6, 4:6] = 2

    rois = labels_to_rois(labels)

    assert [(r.name, r.position) for r in rois] == [
        ("1-z1", 1),
        ("1-z3", 3),
        ("2-z3", 3),
    ]


def test_four_dimensional_labels_are_refused() -> None:
    with pytest.raises(OncoAIError, match=r"needs a YX or ZYX label image; got shape"):
        labels_to_rois(np.zeros((2, 2, 4, 4), dtype=np.int32))


def test_csv_has_label_first_and_exact_values() -> None:
    table = {
        "area_px": np.array([12, 30]),
        "label": np.array([3, 9], dtype=np.int32),
        "circularity": np.array([0.1234567890123, 1.0]),
    }

    rows = list(csv.reader(table_to_csv(table).splitlines()))

    assert rows == [
        ["label", "area_px", "circularity"],
        ["3", "12", "0.1234567890123"],
        ["9", "30", "1.0"],
    ]


def test_csv_columns_must_have_one_length() -> None:
    with pytest.raises(OncoAIError, match=r"columns differ in length: \[1, 2\]"):
        table_to_csv({"label": np.array([1, 2]), "area_px": np.array([5])})


def test_labels_get_a_type_imagej_can_store() -> None:
    assert imagej_labels(np.array([[0, 65535]])).dtype == np.uint16
    wide = imagej_labels(np.array([[0, 70000]], dtype=np.int32))
    assert wide.dtype == np.float32 and wide.max() == 70000
    with pytest.raises(OncoAIError, match="more than an ImageJ image can number"):
        imagej_labels(np.array([[2**24]], dtype=np.int64))
    with pytest.raises(OncoAIError, match="labels must be >= 0"):
        imagej_labels(np.array([[-1]]))


def test_write_result_writes_all_three_for_imagej(
    mask: np.ndarray, tmp_path: Path, imagej: Any
) -> None:
    from fiji_scripts.imagej import from_imageplus, open_result

    result = PredictionResult.from_labels(mask, pixel_size=(0.5, 0.5))
    paths = [
        tmp_path / f"cells{s}" for s in ("_labels.tif", "_RoiSet.zip", "_results.csv")
    ]

    for path in paths:
        write_result(result, path)
    opened = open_result(paths[0])

    calibration = opened.image.getCalibration()
    assert (opened.image.getWidth(), opened.image.getHeight()) == (512, 512)
    assert opened.image.getBitDepth() == 16
    assert (calibration.pixelWidth, calibration.pixelHeight) == (0.5, 0.5)
    np.testing.assert_array_equal(from_imageplus(opened.image), mask)
    assert len(opened.rois) == 125
    assert opened.table.size() == 125
    assert list(opened.table.getColumn("label")) == sorted(
        float(v) for v in np.unique(mask) if v
    )
    with zipfile.ZipFile(paths[1]) as zf:
        assert all(name.endswith(".roi") for name in zf.namelist())
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_a_failed_write_leaves_nothing(tmp_path: Path) -> None:
    labels = np.zeros((2, 2, 4, 4), dtype=np.int32)
    labels[..., 1:3, 1:3] = 1
    result = PredictionResult.from_labels(labels)
    target = tmp_path / "cells_RoiSet.zip"

    with pytest.raises(OncoAIError, match="needs a YX or ZYX label image"):
        write_result(result, target)

    assert list(tmp_path.iterdir()) == []
