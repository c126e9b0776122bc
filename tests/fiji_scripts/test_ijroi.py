"""ImageJ ROI reading, checked against read-roi's answers and ImageJ itself."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fiji_scripts.ijroi import (
    ImageJRoi,
    read_roi,
    read_roi_set,
    read_rois,
    rois_to_geojson,
    rois_to_labels,
)
from model_zoo.errors import OncoAIError

ROI_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "imagej_rois"
ROI_FILES = sorted(ROI_DIR.glob("*.roi"))
JSON_FILES = sorted(ROI_DIR.glob("*.json"))


def _expected(path: Path) -> dict[str, Any]:
    (entry,) = json.loads(path.read_text()).values()
    return entry


def _xy(entry: dict[str, Any]) -> np.ndarray:
    return np.column_stack([entry["x"], entry["y"]]).astype(float)


def test_every_roi_file_has_a_case() -> None:
    # Both lists come from the shared data; an empty glob must not pass quietly.
    assert len(ROI_FILES) == 23
    assert len(JSON_FILES) == 21


@pytest.mark.parametrize("expected_file", JSON_FILES, ids=lambda p: p.stem)
def test_roi_matches_its_expected_json(expected_file: Path) -> None:
    expected = _expected(expected_file)
    roi = read_roi(expected_file.with_suffix(".roi"))

    assert roi.imagej_type == (
        "rectangle" if expected["type"] == "composite" else expected["type"]
    )
    if expected["type"] in ("rectangle", "oval", "composite"):
        assert (roi.left, roi.top, roi.width, roi.height) == (
            expected["left"],
            expected["top"],
            expected["width"],
            expected["height"],
        )
    if expected["type"] == "composite":
        assert roi.kind == "composite"
        assert len(roi.paths) == len(expected["paths"])
        for path, want in zip(roi.paths, expected["paths"], strict=True):
            np.testing.assert_allclose(path, np.asarray(want), atol=1e-6)
    elif "ex1" in expected:
        assert roi.kind == "ellipse"
        params = roi.ellipse
        assert params is not None
        got = (params.x1, params.y1, params.x2, params.y2, params.aspect_ratio)
        want = tuple(expected[k] for k in ("ex1", "ey1", "ex2", "ey2", "aspect_ratio"))
        assert got == pytest.approx(want, abs=1e-6)
    elif "x" in expected:
        assert roi.kind == expected["type"]
        np.testing.assert_allclose(roi.coordinates, _xy(expected), atol=1e-5)
    else:
        assert roi.kind == expected["type"]
    if "width" in expected and expected["type"] not in (
        "rectangle",
        "oval",
        "composite",
    ):
        assert roi.stroke_width == expected["width"]
    if isinstance(expected.get("position"), dict):
        pos = expected["position"]
        assert roi.hyperstack_position == (pos["channel"], pos["slice"], pos["frame"])


def test_ellipse_outline_lies_on_its_ellipse() -> None:
    roi = read_roi(ROI_DIR / "ellipse.roi")
    params = roi.ellipse
    centre = np.array([(params.x1 + params.x2) / 2, (params.y1 + params.y2) / 2])
    major = np.hypot(params.x2 - params.x1, params.y2 - params.y1) / 2
    minor = major * params.aspect_ratio
    angle = np.arctan2(params.y2 - params.y1, params.x2 - params.x1)
    d = roi.coordinates - centre
    u = d[:, 0] * np.cos(angle) + d[:, 1] * np.sin(angle)
    v = -d[:, 0] * np.sin(angle) + d[:, 1] * np.cos(angle)
    np.testing.assert_allclose((u / major) ** 2 + (v / minor) ** 2, 1.0, atol=1e-3)


@pytest.mark.parametrize("roi_file", ROI_FILES, ids=lambda p: p.stem)
def test_roi_agrees_with_imagej(roi_file: Path, imagej: Any) -> None:
    """ImageJ's own decoder and polygon filler are the reference."""
    import jpype

    decoder = jpype.JClass("ij.io.RoiDecoder")
    byte_processor = jpype.JClass("ij.process.ByteProcessor")
    reference = decoder.open(str(roi_file))
    roi = read_roi(roi_file)

    if roi.is_area:
        width = height = 256
        canvas = byte_processor(width, height)
        canvas.setColor(255)
        canvas.fill(reference)
        want = np.array(canvas.getPixels(), dtype=np.int8).reshape(height, width) != 0
        got = roi.mask((height, width))
        assert want.sum() > 0
        np.testing.assert_array_equal(got, want)
    else:
        polygon = reference.getFloatPolygon()
        n = polygon.npoints
        want = np.column_stack(
            [np.array(polygon.xpoints[:n]), np.array(polygon.ypoints[:n])]
        )
        np.testing.assert_allclose(roi.coordinates, want, atol=1e-4)


def test_region_is_the_bounding_box() -> None:
    assert read_roi(ROI_DIR / "oval.roi").region() == (97, 58, 34, 37)
    assert read_roi(ROI_DIR / "rectangle.roi").region() == (43, 19, 43, 36)
    assert read_roi(ROI_DIR / "polygon.roi").region() == (65, 49, 109, 89)


def test_composite_with_a_hole_is_a_donut() -> None:
    roi = read_roi(ROI_DIR / "composite-rect-in-rect.roi")
    geometry = roi.geometry()
    assert geometry.geom_type == "Polygon"
    assert len(geometry.interiors) == 1
    assert geometry.area == pytest.approx(61 * 42 - 31 * 18)


def test_a_roi_set_zip_reads_in_order(tmp_path: Path) -> None:
    names = ["rectangle", "oval", "polygon", "multipoint"]
    archive = tmp_path / "RoiSet.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name in names:
            zf.write(ROI_DIR / f"{name}.roi", f"{name}.roi")
        zf.writestr("notes.txt", "not a ROI")

    rois = read_rois(archive)

    assert [r.name for r in rois] == names
    assert [r.kind for r in rois] == ["rectangle", "oval", "polygon", "point"]


def test_rois_become_labels_and_annotations() -> None:
    rois = [read_roi(ROI_DIR / f"{n}.roi") for n in ("polygon", "oval", "line1")]

    labels = rois_to_labels(rois, (200, 200))
    features = rois_to_geojson(rois)["features"]

    # The oval overlaps the polygon and was painted after it.
    assert set(np.unique(labels)) == {0, 1, 2}
    oval_mask = rois[1].mask((200, 200))
    assert np.all(labels[oval_mask] == 2)
    assert np.all(labels[rois[0].mask((200, 200)) & ~oval_mask] == 1)
    assert [f["geometry"]["type"] for f in features] == [
        "Polygon",
        "Polygon",
        "LineString",
    ]
    assert features[1]["properties"] == {
        "name": "oval",
        "kind": "oval",
        "objectType": "annotation",
    }


def test_missing_file_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(OncoAIError, match=r"ImageJ ROI file not found: .*nope\.roi"):
        read_roi(tmp_path / "nope.roi")


def test_a_file_that_is_not_a_roi_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.roi"
    bad.write_bytes(b"this is no ImageJ ROI")
    with pytest.raises(OncoAIError, match="not an ImageJ ROI"):
        read_roi(bad)


def test_a_zip_that_is_not_a_zip_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "RoiSet.zip"
    bad.write_text("plain text")
    with pytest.raises(OncoAIError, match="not an ImageJ RoiSet zip"):
        read_roi_set(bad)


def test_other_suffixes_are_refused(tmp_path: Path) -> None:
    with pytest.raises(OncoAIError, match=r"give a \.roi file or a RoiSet \.zip"):
        read_rois(tmp_path / "cells.csv")


def test_a_line_has_no_mask() -> None:
    line: ImageJRoi = read_roi(ROI_DIR / "line1.roi")
    with pytest.raises(OncoAIError, match="is a line, which has no area"):
        line.mask((10, 10))
