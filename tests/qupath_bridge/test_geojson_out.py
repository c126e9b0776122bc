"""GeoJSON written for QuPath: the shared checker, exact measurements, round trips."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import shapely
import tifffile
from shapely.geometry import shape

from model_zoo.errors import OncoAIError
from model_zoo.images import read_image
from model_zoo.result import PredictionResult
from qupath_bridge.geojson import (
    classification,
    detections_of,
    read_geojson,
    result_to_features,
    send_to_qupath,
    tiles_to_features,
    write_geojson,
)

PIXEL = 0.5  # micrometres per pixel, for the physical measurements


@pytest.fixture(scope="module")
def mask(shared_data: Path) -> np.ndarray:
    return tifffile.imread(shared_data / "images" / "stardist_mask2d.tif").astype(
        np.int32
    )


@pytest.fixture(scope="module")
def image(shared_data: Path):
    return read_image(shared_data / "images" / "stardist_img2d.tif")


def labels_result(mask, image, offset=(0.0, 0.0)) -> PredictionResult:
    return PredictionResult.from_labels(
        mask,
        image=image,
        provenance={"model_id": "ground-truth", "weights_sha256": "ab" * 32},
        offset=offset,
        pixel_size=(PIXEL, PIXEL),
    )


def children(features):
    return features[0]["properties"]["childObjects"]


def all_positions(geometry):
    return np.array(shapely.get_coordinates(shape(geometry)))


def test_ground_truth_instances_pass_the_checker_inside_the_image(
    mask, image, tmp_path, check_geojson
):
    features = result_to_features(labels_result(mask, image))
    path = write_geojson(features, tmp_path / "gt.geojson")

    n_objects = len(np.unique(mask)) - 1
    out = check_geojson(path, "detection", min_features=n_objects, size=(512, 512))
    assert f"{n_objects} detection" in out
    for child in children(features):
        xy = all_positions(child["geometry"])
        assert xy.min() >= 0 and xy[:, 0].max() <= 512 and xy[:, 1].max() <= 512


def test_offset_is_added_back_and_the_region_is_recorded(mask, image, check_geojson):
    plain = result_to_features(labels_result(mask, image))
    moved = result_to_features(labels_result(mask, image, offset=(1000.0, 250.0)))

    a = all_positions(children(plain)[0]["geometry"])
    b = all_positions(children(moved)[0]["geometry"])
    np.testing.assert_allclose(b - a, np.tile([1000.0, 250.0], (len(a), 1)))
    region = shape(moved[0]["geometry"])
    assert region.bounds == (1000.0, 250.0, 1512.0, 762.0)
    assert moved[0]["properties"]["objectType"] == "annotation"


def test_measurements_are_exact_and_carry_units(mask, image):
    features = result_to_features(labels_result(mask, image))
    pixels = np.asarray(image.array)
    for child in children(features)[:25]:
        values = child["properties"]["measurements"]
        label = int(values["Label"])
        inside = mask == label
        assert values["Area px^2"] == inside.sum()
        assert values["Area µm^2"] == pytest.approx(inside.sum() * PIXEL * PIXEL)
        assert values["Perimeter µm"] == pytest.approx(values["Perimeter px"] * PIXEL)
        assert values["Channel 1: Mean"] == pytest.approx(pixels[inside].mean())
        assert 0 < values["Circularity"] <= 1


def test_every_classification_has_a_colour_and_provenance_is_in_metadata(mask, image):
    features = result_to_features(labels_result(mask, image))
    for child in children(features):
        cls = child["properties"]["classification"]
        assert cls == {"name": "Nucleus", "color": [0, 160, 255]}
    metadata = features[0]["properties"]["metadata"]
    assert metadata["model_id"] == "ground-truth"
    assert metadata["weights_sha256"] == "ab" * 32
    assert metadata["oncoai_version"]
    assert all(isinstance(v, str) for v in metadata.values())
    assert metadata["oncoai_objects"] == str(len(children(features)))


def test_round_trip_keeps_geometry_classes_and_measurements(mask, image, tmp_path):
    features = result_to_features(labels_result(mask, image))
    path = write_geojson(features, tmp_path / "trip.geojson")

    objects = read_geojson(path)
    assert len(objects) == 1 and objects[0].object_type == "annotation"
    back = detections_of(objects)
    written = children(features)
    assert len(back) == len(written)
    for obj, original in zip(back, written, strict=True):
        assert obj.object_type == "detection"
        assert obj.classification == "Nucleus" and obj.color == (0, 160, 255)
        assert obj.measurements == original["properties"]["measurements"]
        assert obj.geometry.equals_exact(shape(original["geometry"]), 1e-9)
        assert obj.id == original["id"]
    assert objects[0].metadata["model_id"] == "ground-truth"


def test_outlines_cover_the_labelled_pixels(mask, image):
    # Simplified to a sub-pixel tolerance: each outline stays within 0.5 px of
    # the exact pixel outline.
    features = result_to_features(labels_result(mask, image))
    for child in children(features)[:30]:
        label = int(child["properties"]["measurements"]["Label"])
        rows, cols = np.nonzero(mask == label)
        exact = shapely.union_all(shapely.box(cols, rows, cols + 1, rows + 1))
        outline = shape(child["geometry"])
        assert outline.hausdorff_distance(exact) <= 0.75
        assert abs(outline.area - exact.area) / exact.area < 0.1


def test_gzip_and_bare_array_forms(mask, image, tmp_path, check_geojson):
    features = result_to_features(labels_result(mask, image))
    gz = write_geojson(features, tmp_path / "gt.geojson.gz")
    array = write_geojson(features, tmp_path / "array.geojson", collection=False)

    assert gzip.decompress(gz.read_bytes()).startswith(b'{"type": "FeatureCollection"')
    assert isinstance(json.loads(array.read_text(encoding="utf-8")), list)
    for path in (gz, array):
        check_geojson(path, "detection", min_features=20, size=(512, 512))
        assert len(detections_of(read_geojson(path))) == len(children(features))


def test_holes_are_kept_and_rings_closed(tmp_path, check_geojson):
    labels = np.zeros((40, 40), np.int32)
    labels[5:30, 5:30] = 1
    labels[12:20, 12:20] = 0  # a hole
    labels[33:38, 2:8] = 2
    result = PredictionResult.from_labels(labels)
    features = result_to_features(result, simplify=0)
    path = write_geojson(features, tmp_path / "holes.geojson")
    check_geojson(path, "detection", min_features=2)

    ring = children(features)[0]["geometry"]
    assert ring["type"] == "Polygon" and len(ring["coordinates"]) == 2
    for part in ring["coordinates"]:
        assert part[0] == part[-1]
    assert shape(ring).area == 25 * 25 - 8 * 8


def test_cells_have_nucleus_geometry_inside(mask, image, tmp_path, check_geojson):
    features = result_to_features(labels_result(mask, image), cell_expansion=4)
    path = write_geojson(features, tmp_path / "cells.geojson")
    check_geojson(path, "cell", min_features=20, size=(512, 512))

    for child in children(features):
        assert child["properties"]["objectType"] == "cell"
        assert child["properties"]["classification"]["name"] == "Cell"
        cell, nucleus = shape(child["geometry"]), shape(child["nucleusGeometry"])
        assert cell.buffer(0.5).contains(nucleus)
        values = child["properties"]["measurements"]
        assert values["Cell: Area px^2"] >= values["Nucleus: Area px^2"]
        assert values["Cell: Label"] == values["Nucleus: Label"]


def test_z_planes_are_written_and_read_back(tmp_path, check_geojson):
    labels = np.zeros((3, 30, 30), np.int32)
    labels[0, 2:8, 2:8] = 1
    labels[2, 10:20, 10:20] = 2
    features = result_to_features(PredictionResult.from_labels(labels), simplify=0)
    path = write_geojson(features, tmp_path / "z.geojson")
    check_geojson(path, "detection", min_features=2)

    planes = {
        tuple(shape(c["geometry"]).bounds): c["geometry"].get("plane")
        for c in children(features)
    }
    assert planes[(2.0, 2.0, 8.0, 8.0)] is None  # z = 0 is QuPath's default
    assert planes[(10.0, 10.0, 20.0, 20.0)] == {"c": -1, "z": 2, "t": 0}
    back = {o.plane["z"] for o in detections_of(read_geojson(path))}
    assert back == {0, 2}


def test_patch_predictions_become_tiles(tmp_path, check_geojson):
    boxes = np.array([[0, 0, 224, 224], [224, 0, 224, 224], [0, 224, 224, 224]])
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [np.nan, np.nan]])
    features = tiles_to_features(boxes, probabilities, ["Tumor", "Stroma"])
    path = write_geojson(features, tmp_path / "tiles.geojson")
    check_geojson(path, "tile", min_features=3, size=(448, 448))

    first, second, empty = (f["properties"] for f in features)
    assert first["classification"] == {"name": "Tumor", "color": [200, 0, 0]}
    assert second["classification"]["name"] == "Stroma"
    expected = {"Probability: Tumor": 0.9, "Probability: Stroma": 0.1}
    assert first["measurements"] == expected
    # NaN is not JSON: unknown probabilities are left out, and no class is set.
    assert "measurements" not in empty and "classification" not in empty


def test_bad_inputs_are_refused_with_one_line(tmp_path):
    with pytest.raises(OncoAIError, match="three integers 0-255"):
        classification("Tumor", (300, 0, 0))
    with pytest.raises(OncoAIError, match=r"\(N, 4\) array"):
        tiles_to_features(np.zeros((2, 3)), np.zeros((2, 1)), ["A"])
    with pytest.raises(OncoAIError, match="output folder"):
        write_geojson([], tmp_path / "missing" / "x.geojson")


def test_the_registered_writer_is_used_by_write_result(
    mask, image, tmp_path, check_geojson
):
    from model_zoo.outputs import write_result

    path = write_result(labels_result(mask, image), tmp_path / "gt.geojson")
    check_geojson(path, "detection", min_features=20)
    assert not list(tmp_path.glob(".gt.geojson*")), "a temporary file was left behind"


def test_predict_command_writes_geojson_for_the_stardist_image(
    shared_data, unet_dir, tmp_path, check_geojson
):
    out = tmp_path / "nuclei.geojson"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "model_zoo.cli",
            "predict",
            str(shared_data / "images" / "stardist_img2d.tif"),
            "--model",
            str(unet_dir),
            "--device",
            "cpu",
            "-o",
            str(out),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    report = check_geojson(out, "detection", min_features=20, size=(512, 512))
    assert "detection" in report
    objects = read_geojson(out)
    assert objects[0].metadata["model_id"] == "unet2d_nuclei_broad"
    assert len(detections_of(objects)) >= 20


class _RecordingGateway:
    """Stands in for a Py4J gateway to a running QuPath; records what it is sent."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        gateway = self

        class EntryPoint:
            def toPathObjects(self, text: str) -> list:  # noqa: N802 (QuPath's name)
                gateway.sent.append(text)
                return ["objects"]

        self.entry_point = EntryPoint()


class _StandInImageData:
    def __init__(self) -> None:
        self.added: list = []

    def getHierarchy(self):  # noqa: N802 (QuPath's name)
        return self

    def addObjects(self, objects) -> None:  # noqa: N802 (QuPath's name)
        self.added.append(objects)


def test_qubalab_live_connection_sends_our_features_unchanged(
    mask, image, tmp_path, check_geojson
):
    pytest.importorskip("qubalab", reason="qubalab is in the optional [qupath] extra")
    features = result_to_features(labels_result(mask, image))
    gateway, image_data = _RecordingGateway(), _StandInImageData()
    send_to_qupath(features, image_data=image_data, gateway=gateway)

    assert image_data.added == [["objects"]]
    sent = tmp_path / "sent.geojson"
    sent.write_text(gateway.sent[0], encoding="utf-8")
    check_geojson(sent, "detection", min_features=20)
    assert json.loads(gateway.sent[0])[0]["properties"] == features[0]["properties"]
