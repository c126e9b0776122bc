"""QuPath GeoJSON read back: every form QuPath's importer accepts, and comparisons."""

from __future__ import annotations

import gzip
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
from shapely.affinity import translate

from model_zoo.errors import OncoAIError
from model_zoo.postprocess import labels_to_polygons
from qupath_bridge.geojson import (
    detections_of,
    match_objects,
    read_geojson,
    regions_from_objects,
)

SQUARE = {
    "type": "Polygon",
    "coordinates": [[[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]],
}
DONUT = {
    "type": "Polygon",
    "coordinates": [
        [[0, 0], [100, 0], [100, 100], [0, 100], [0, 0]],
        [[40, 40], [60, 40], [60, 60], [40, 60], [40, 40]],
    ],
    "plane": {"c": -1, "z": 3, "t": 1},
}
TWO_PARTS = {
    "type": "MultiPolygon",
    "coordinates": [
        [[[0, 0], [5, 0], [5, 5], [0, 5], [0, 0]]],
        [[[20, 20], [30, 20], [30, 30], [20, 30], [20, 20]]],
    ],
}


def annotation(geometry, **props):
    return {
        "type": "Feature",
        "id": "5c6c7a42-5b71-4b0e-9d61-ff8f1f0e0a11",
        "geometry": geometry,
        "properties": {"objectType": "annotation", **props},
    }


def detection(geometry, **props):
    return {
        "type": "Feature",
        "geometry": geometry,
        "properties": {"objectType": "detection", **props},
    }


COLLECTION = {
    "type": "FeatureCollection",
    "features": [
        annotation(
            DONUT,
            name="tumour region",
            classification={"name": "Tumor", "color": [200, 0, 0]},
        ),
        annotation(TWO_PARTS, classification="Stroma"),
        detection(
            SQUARE,
            classification={"names": ["Tumor", "Positive"], "color": [1, 2, 3]},
            measurements=[{"name": "Area µm^2", "value": 25.0}],
        ),
    ],
}


def write(tmp_path: Path, name: str, document) -> Path:
    path = tmp_path / name
    data = json.dumps(document).encode("utf-8")
    if name.endswith(".gz"):
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "form",
    ["collection", "array", "feature", "geometry", "gzip", "gzip-named-geojson", "zip"],
)
def test_every_form_qupath_reads(form, tmp_path):
    if form == "collection":
        source = write(tmp_path, "a.geojson", COLLECTION)
    elif form == "array":
        source = write(tmp_path, "a.json", COLLECTION["features"])
    elif form == "feature":
        source = write(tmp_path, "a.geojson", COLLECTION["features"][0])
    elif form == "geometry":
        source = write(tmp_path, "a.geojson", DONUT)
    elif form == "gzip":
        source = write(tmp_path, "a.geojson.gz", COLLECTION)
    elif form == "gzip-named-geojson":
        source = tmp_path / "a.geojson"
        source.write_bytes(gzip.compress(json.dumps(COLLECTION).encode()))
    else:
        source = tmp_path / "a.zip"
        with zipfile.ZipFile(source, "w") as z:
            z.writestr("first.geojson", json.dumps(COLLECTION["features"][:2]))
            z.writestr("sub/second.json", json.dumps(COLLECTION["features"][2]))
            z.writestr("readme.txt", "not GeoJSON")

    objects = read_geojson(source)

    donut = objects[0]
    assert donut.object_type == "annotation"
    assert len(donut.geometry.interiors) == 1 and donut.geometry.area == 100**2 - 20**2
    assert donut.plane == {"c": -1, "z": 3, "t": 1}
    if form in ("feature", "geometry"):
        assert len(objects) == 1
        return
    assert [o.object_type for o in objects] == ["annotation", "annotation", "detection"]
    assert donut.classification == "Tumor" and donut.color == (200, 0, 0)
    assert donut.name == "tumour region"
    assert objects[1].geometry.geom_type == "MultiPolygon"
    assert objects[1].classification == "Stroma"
    assert objects[2].classification == "Tumor: Positive"
    assert objects[2].measurements == {"Area µm^2": 25.0}


def test_text_and_parsed_json_are_read_too():
    assert read_geojson(json.dumps(SQUARE))[0].geometry.area == 100
    assert read_geojson(COLLECTION)[2].object_type == "detection"


def test_qupath_reader_rules_for_types_and_ids():
    props = [
        {},
        {"object_type": "cell"},
        {"type": "PathTileObject"},
        {"objectType": "blob"},
        {},
    ]
    features = [{"type": "Feature", "geometry": SQUARE, "properties": p} for p in props]
    features[4]["id"] = "not-a-uuid"
    objects = read_geojson(features)
    types = [o.object_type for o in objects]
    assert types == ["annotation", "cell", "tile", "annotation", "annotation"]
    assert objects[4].id is None


def test_cells_children_and_legacy_colours():
    cell = {
        "type": "Feature",
        "geometry": SQUARE,
        "nucleusGeometry": {
            "type": "Polygon",
            "coordinates": [[[2, 2], [4, 2], [4, 4], [2, 2]]],
        },
        "properties": {"objectType": "cell", "color": -16711936},
    }
    parent = annotation(SQUARE, childObjects=[cell, detection(SQUARE)])
    objects = read_geojson([parent])
    assert len(objects) == 1
    kinds = [o.object_type for o in detections_of(objects)]
    assert kinds == ["cell", "detection"]
    nucleus_cell = objects[0].children[0]
    assert nucleus_cell.nucleus.area == 2.0
    assert nucleus_cell.color == (0, 255, 0)


def test_regions_keep_holes_multipolygons_and_planes():
    line = annotation({"type": "LineString", "coordinates": [[0, 0], [5, 5]]})
    regions = regions_from_objects(read_geojson(COLLECTION["features"] + [line]))
    assert [r.geometry.geom_type for r in regions] == ["Polygon", "MultiPolygon"]
    assert regions[0].plane["z"] == 3 and len(regions[0].geometry.interiors) == 1


def test_qubalab_object_model_keeps_plane_and_class():
    pytest.importorskip("qubalab", reason="qubalab is in the optional [qupath] extra")
    from qubalab.objects import ObjectType

    donut = read_geojson(COLLECTION)[0]
    feature = donut.to_image_feature()
    assert feature.object_type == ObjectType.ANNOTATION
    assert feature.classification.names == ("Tumor",)
    assert dict(feature.geometry.plane) == {"z": 3, "t": 1}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{not json", "not valid GeoJSON"),
        (b'{"type": "Topology"}', "neither a Feature"),
        (
            json.dumps({"type": "Feature", "geometry": {"type": "Circle"}}).encode(),
            "no geometry QuPath reads",
        ),
        (
            json.dumps({"type": "Polygon", "coordinates": [[1, 2]]}).encode(),
            "malformed Polygon",
        ),
        (b"\x1f\x8b\x08\x00broken", "cannot be decompressed"),
    ],
)
def test_bad_files_give_one_line_errors(content, message, tmp_path):
    path = tmp_path / "bad.geojson"
    path.write_bytes(content)
    with pytest.raises(OncoAIError, match=message):
        read_geojson(path)


def test_missing_file_and_empty_zip(tmp_path):
    with pytest.raises(OncoAIError, match="GeoJSON file not found"):
        read_geojson(tmp_path / "nope.geojson")
    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w") as z:
        z.writestr("notes.txt", "nothing")
    with pytest.raises(OncoAIError, match="zip without a .json or .geojson"):
        read_geojson(empty)


def test_comparing_detections_with_ground_truth(shared_data):
    mask = tifffile.imread(shared_data / "images" / "stardist_mask2d.tif")
    truth = list(labels_to_polygons(mask.astype(np.int32)).values())

    same = match_objects(truth, truth)
    assert same["tp"] == len(truth) and same["f1"] == 1.0 and same["mean_iou"] == 1.0

    shifted = [translate(p, 3, 0) for p in truth]
    moved = match_objects(shifted, truth)
    assert 0 < moved["mean_iou"] < 1 and moved["tp"] + moved["fn"] == len(truth)

    half = match_objects(truth[: len(truth) // 2], truth)
    assert half["precision"] == 1.0 and half["recall"] == pytest.approx(
        (len(truth) // 2) / len(truth)
    )
    with pytest.raises(OncoAIError, match="iou_threshold"):
        match_objects(truth, truth, iou_threshold=1.5)
