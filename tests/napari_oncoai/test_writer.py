"""Labels, shapes and points layers saved through the engine's writer registry."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import roifile
from napari.layers import Labels, Points, Shapes
from napari.utils.notifications import notification_manager

from napari_oncoai._writer import (
    layer_result,
    points_to_labels,
    shapes_to_labels,
    write_csv,
    write_geojson,
    write_roiset,
)


def _state(layer) -> tuple[object, dict]:
    """What napari hands a single-layer writer: data and attributes."""
    data, meta, _ = layer.as_layer_data_tuple()
    return data, meta


@pytest.fixture
def objects_layer(nuclei_result) -> Labels:
    """A Labels layer as the Run model widget makes it."""
    from napari_oncoai._layers import Grid, result_layers

    grid = Grid("YX", (1.0, 1.0), (0.0, 0.0), (1.0, 1.0), (0.0, 0.0))
    data, meta, _ = result_layers(
        nuclei_result, grid, input_name="nuclei", instances=True
    )[-1]
    return Labels(data, **meta)


def _detections(path: Path) -> list[dict]:
    """Every detection in a GeoJSON file, nested ones included."""
    found, todo = [], list(json.loads(path.read_text())["features"])
    while todo:
        feature = todo.pop()
        properties = feature.get("properties", {})
        todo += properties.get("childObjects", [])
        if properties.get("objectType") == "detection":
            found.append(feature)
    return found


def _check_geojson(path: Path, shared_data: Path) -> subprocess.CompletedProcess:
    checker = shared_data.parent / "tools" / "qupath_geojson_check.py"
    return subprocess.run(
        [sys.executable, str(checker), str(path), "--expect-type", "detection"],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_labels_geojson_passes_the_qupath_check(
    objects_layer, tmp_path, shared_data
) -> None:
    target = tmp_path / "nuclei.geojson"
    assert write_geojson(str(target), *_state(objects_layer)) == [str(target)]
    checked = _check_geojson(target, shared_data)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert len(_detections(target)) == len(np.unique(objects_layer.data)) - 1


def test_labels_roiset_reads_back_with_one_roi_per_object(
    objects_layer, tmp_path
) -> None:
    target = tmp_path / "nuclei_RoiSet.zip"
    assert write_roiset(str(target), *_state(objects_layer)) == [str(target)]
    rois = roifile.roiread(target)
    assert len(rois) == len(np.unique(objects_layer.data)) - 1


def test_labels_csv_has_one_row_per_label_with_layer_features(
    objects_layer, tmp_path
) -> None:
    target = tmp_path / "nuclei.csv"
    assert write_csv(str(target), *_state(objects_layer)) == [str(target)]
    with target.open(newline="") as stream:
        rows = list(csv.DictReader(stream))
    labels = np.unique(objects_layer.data)[1:]
    assert len(rows) == len(labels)
    header = set(rows[0])
    # Intensity and probability come from the layer's features table.
    assert any(name.lower().startswith("mean") for name in header), header
    assert any("prob" in name.lower() for name in header), header
    assert any("area" in name.lower() for name in header), header


def test_layer_result_carries_intensity_and_provenance(objects_layer) -> None:
    result = layer_result(*_state(objects_layer))
    table = result.instances.table
    features = objects_layer.features
    np.testing.assert_array_equal(table["label"], features["index"])
    np.testing.assert_allclose(table["mean_intensity"], features["mean_intensity"])
    np.testing.assert_array_equal(table["area_px"], features["area_px"])
    assert (
        result.provenance["model_name"]
        == objects_layer.metadata["oncoai"]["model_name"]
    )


def test_coarse_level_labels_are_written_in_level_0_pixels(
    tmp_path, shared_data
) -> None:
    labels = np.zeros((8, 8), np.int32)
    labels[2:4, 3:5] = 1
    metadata = {"oncoai": {"level0": {"pixel": [2.0, 2.0], "origin": [10.0, 20.0]}}}
    layer = Labels(labels, metadata=metadata)
    target = tmp_path / "coarse.geojson"
    assert write_geojson(str(target), *_state(layer)) == [str(target)]
    assert _check_geojson(target, shared_data).returncode == 0
    (feature,) = _detections(target)
    ring = np.asarray(feature["geometry"]["coordinates"][0])
    # Rows 2..3 and columns 3..4 of the level-2x grid: y 4..8, x 6..10, moved
    # by the origin (y 10, x 20).
    assert ring[:, 0].min() == 26 and ring[:, 0].max() == 30
    assert ring[:, 1].min() == 14 and ring[:, 1].max() == 18


def test_shapes_become_one_object_each(tmp_path, shared_data) -> None:
    shapes = Shapes(
        [
            np.array([[10, 10], [10, 29], [29, 29], [29, 10]]),
            np.array([[40, 50], [60, 50], [60, 70]]),
            np.array([[0, 0], [5, 5]]),
        ],
        shape_type=["rectangle", "polygon", "line"],
    )
    labels, offset = shapes_to_labels(*_state(shapes)[:1], shapes.shape_type)
    # The labels cover the shapes' bounding box, whose corner is the offset.
    assert offset == (10.0, 10.0)
    assert sorted(np.unique(labels)) == [0, 1, 2]
    assert np.count_nonzero(labels == 1) == 20 * 20
    target = tmp_path / "shapes.geojson"
    assert write_geojson(str(target), *_state(shapes)) == [str(target)]
    assert _check_geojson(target, shared_data).returncode == 0
    assert len(_detections(target)) == 2
    rois = tmp_path / "shapes.zip"
    assert write_roiset(str(rois), *_state(shapes)) == [str(rois)]
    assert len(roifile.roiread(rois)) == 2


def test_points_become_discs_as_wide_as_drawn(tmp_path) -> None:
    points = Points(np.array([[20.0, 30.0], [50.0, 60.0], [51.0, 90.0]]), size=7)
    labels, (x0, y0) = points_to_labels(points.data, points.size)
    assert labels.max() == 3
    # A disc of radius 3.5 on the pixel grid holds 37 pixels.
    assert [np.count_nonzero(labels == i) for i in (1, 2, 3)] == [37, 37, 37]
    rows, cols = np.nonzero(labels == 1)
    assert (rows.mean() + y0, cols.mean() + x0) == (20.0, 30.0)
    target = tmp_path / "points.csv"
    assert write_csv(str(target), *_state(points)) == [str(target)]
    with target.open(newline="") as stream:
        assert len(list(csv.DictReader(stream))) == 3


def test_bad_name_or_layer_is_one_line_notification_and_no_file(tmp_path) -> None:
    before = len(notification_manager.records)
    layer = Labels(np.ones((4, 4), np.int32))
    assert write_geojson(str(tmp_path / "x.txt"), *_state(layer)) == []
    empty = Shapes([np.array([[0, 0], [5, 5]])], shape_type="line")
    assert write_csv(str(tmp_path / "lines.csv"), *_state(empty)) == []
    messages = [str(n.message) for n in notification_manager.records[before:]]
    assert messages == [
        "cannot save 'x.txt' with this writer: its name must end in .geojson or "
        ".geojson.gz; rename the file",
        "the shapes layer has no polygon, rectangle or ellipse to save; lines and "
        "paths have no area",
    ]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", [".geojson", ".zip", ".csv"])
def test_napari_save_finds_the_writers_through_the_manifest(
    objects_layer, tmp_path, suffix
) -> None:
    from napari import save_layers

    target = tmp_path / f"objects{suffix}"
    written = save_layers(str(target), [objects_layer], plugin="napari-oncoai")
    assert written == [str(target)]
    assert target.stat().st_size > 0
