"""QuPath objects as GeoJSON, written the way QuPath's importer reads them.

QuPath reads GeoJSON with its own Gson type adapters (``QuPathTypeAdapters`` and
``ROITypeAdapters`` in ``qupath-core``).  The rules that matter here:

- every feature says what it is in ``properties.objectType`` (``detection``,
  ``cell``, ``tile``, ``annotation``); without it QuPath makes an annotation;
- a ``classification`` object must carry a ``color`` or the whole import fails;
- cells carry their nucleus outline in a top-level ``nucleusGeometry``;
- coordinates are level-0 pixels, x right and y down, polygon rings closed;
- ``plane`` inside a geometry places it on a z-slice or time point;
- nested objects go in ``properties.childObjects``.

``qubalab`` (QuPath's Python library) models the same objects, but its writer
emits ``"object_type": "DETECTION"`` and puts the nucleus under
``extra_geometries``, which QuPath's reader turns into plain annotations; its
reader also drops a geometry's ``plane``.  So this module writes and reads the
JSON itself, and hands finished features to qubalab's live QuPath connection
(:func:`send_to_qupath`) and its object model (:meth:`QuPathObject.to_image_feature`).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import math
import uuid
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import shapely
from shapely.geometry import box, mapping, shape
from shapely.geometry.base import BaseGeometry
from shapely.prepared import prep

from model_zoo.errors import OncoAIError

if TYPE_CHECKING:
    from model_zoo.result import Instances, PredictionResult

log = logging.getLogger(__name__)

OBJECT_TYPES = ("annotation", "detection", "cell", "tile", "tmaCore", "root")
# Older names QuPath's reader still maps onto its object types.
_OBJECT_TYPE_ALIASES = {
    "PathAnnotationObject": "annotation",
    "PathDetectionObject": "detection",
    "PathCellObject": "cell",
    "PathTileObject": "tile",
    "TMACoreObject": "tmaCore",
    "tma_core": "tmaCore",
    "PathRootObject": "root",
    "unknown": "annotation",
}
_GEOMETRY_TYPES = {
    "Point",
    "MultiPoint",
    "LineString",
    "MultiLineString",
    "Polygon",
    "MultiPolygon",
    "GeometryCollection",
}
# QuPath's own default class colours, so that our classes look familiar.
_CLASS_COLORS = {
    "Tumor": (200, 0, 0),
    "Stroma": (150, 200, 150),
    "Immune cells": (160, 90, 160),
    "Necrosis": (50, 50, 50),
    "Other": (255, 200, 0),
    "Region*": (0, 0, 180),
    "Ignore*": (180, 180, 180),
    "Positive": (200, 50, 50),
    "Negative": (112, 112, 225),
    "Nucleus": (0, 160, 255),
    "Cell": (255, 120, 0),
}
DECIMALS = 2
"""Coordinates are written with two decimals, as QuPath writes them."""


# --------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------


def class_color(name: str) -> list[int]:
    """The colour OncoAI gives a class: QuPath's default, or one from the name.

    Parameters
    ----------
    name : str
        A class name such as ``"Tumor"`` or ``"Nucleus"``.

    Returns
    -------
    list of int
        ``[r, g, b]`` in 0..255; the same name always gets the same colour.
    """
    if name in _CLASS_COLORS:
        return list(_CLASS_COLORS[name])
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    # Keep colours away from black and white so they show on any image.
    return [48 + digest[i] % 176 for i in range(3)]


def classification(name: str, color: Sequence[int] | None = None) -> dict[str, Any]:
    """A QuPath ``classification`` object, always with a colour.

    Parameters
    ----------
    name : str
        The class name; ``"A: B"`` is QuPath's derived class B of A.
    color : sequence of int, optional
        ``(r, g, b)``; by default :func:`class_color` of ``name``.

    Returns
    -------
    dict
        ``{"name": ..., "color": [r, g, b]}``.
    """
    rgb = [int(c) for c in (color if color is not None else class_color(name))][:3]
    if len(rgb) != 3 or any(not 0 <= c <= 255 for c in rgb):
        raise OncoAIError(
            f"a class colour must be three integers 0-255; got {color!r} for "
            f"class {name!r}"
        )
    return {"name": name, "color": rgb}


def geometry_json(
    geometry: BaseGeometry, plane: Mapping[str, int] | None = None
) -> dict[str, Any]:
    """A shapely geometry as QuPath GeoJSON: closed rings, two decimals.

    Parameters
    ----------
    geometry : shapely geometry
        In level-0 pixel coordinates.
    plane : mapping, optional
        ``{"z": ..., "t": ...}`` (and ``"c"``); written only when it is not the
        first plane, as QuPath does.

    Returns
    -------
    dict
        A GeoJSON geometry.
    """
    geometry = shapely.set_precision(geometry, 10.0**-DECIMALS)
    if geometry.is_empty:
        raise OncoAIError(
            "an outline vanished when rounded to 0.01 px; objects must be at "
            "least one pixel across"
        )
    out = _round_coordinates(mapping(geometry))
    if plane and (plane.get("z", 0) or plane.get("t", 0)):
        out["plane"] = {
            "c": int(plane.get("c", -1)),
            "z": int(plane.get("z", 0)),
            "t": int(plane.get("t", 0)),
        }
    return out


def _round_coordinates(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _round_coordinates(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, (int, float)) for v in value):
            return [round(float(v), DECIMALS) for v in value]
        return [_round_coordinates(v) for v in value]
    return value


def feature(
    geometry: BaseGeometry,
    object_type: str,
    *,
    classification_name: str | None = None,
    color: Sequence[int] | None = None,
    name: str | None = None,
    measurements: Mapping[str, float] | None = None,
    metadata: Mapping[str, Any] | None = None,
    nucleus: BaseGeometry | None = None,
    children: Sequence[dict[str, Any]] | None = None,
    plane: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """One QuPath object as a GeoJSON Feature.

    Parameters
    ----------
    geometry : shapely geometry
        The outline in level-0 pixels.
    object_type : str
        ``detection``, ``cell``, ``tile`` or ``annotation``.
    classification_name : str, optional
        The class; it is written with a colour.
    color : sequence of int, optional
        The class colour; by default :func:`class_color`.
    name : str, optional
        The object's name.
    measurements : mapping of str to float, optional
        Numbers; NaN and None are left out (QuPath has no JSON NaN).
    metadata : mapping, optional
        Written as strings; dicts and lists as JSON text.
    nucleus : shapely geometry, optional
        The nucleus outline of a ``cell``.
    children : sequence of dict, optional
        Features nested under this one (``childObjects``).
    plane : mapping, optional
        ``{"z": ..., "t": ...}`` for a z-slice or time point.

    Returns
    -------
    dict
        A GeoJSON Feature with a UUID ``id``.
    """
    if object_type not in OBJECT_TYPES:
        raise OncoAIError(
            f"objectType must be one of {', '.join(OBJECT_TYPES)}; got {object_type!r}"
        )
    if object_type == "cell" and nucleus is None:
        raise OncoAIError(
            "a cell needs its nucleus outline; write it as a detection instead"
        )
    props: dict[str, Any] = {"objectType": object_type}
    if name is not None:
        props["name"] = str(name)
    if classification_name is not None:
        props["classification"] = classification(classification_name, color)
    values = clean_measurements(measurements or {})
    if values:
        props["measurements"] = values
    if metadata:
        props["metadata"] = {str(k): _metadata_text(v) for k, v in metadata.items()}
    if children:
        props["childObjects"] = list(children)
    out: dict[str, Any] = {
        "type": "Feature",
        "id": str(uuid.uuid4()),
        "geometry": geometry_json(geometry, plane),
    }
    if nucleus is not None:
        out["nucleusGeometry"] = geometry_json(nucleus, plane)
    out["properties"] = props
    return out


def clean_measurements(measurements: Mapping[str, Any]) -> dict[str, float]:
    """Measurements as plain finite floats; NaN, infinities and None left out."""
    out = {}
    for key, value in measurements.items():
        if value is None:
            continue
        number = float(value)
        if math.isfinite(number):
            out[str(key)] = number
    return out


def _metadata_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def measurement_names(
    table: Mapping[str, np.ndarray], channel_names: Sequence[str] | None = None
) -> dict[str, str]:
    """Map the engine's instance-table columns to QuPath measurement names.

    Parameters
    ----------
    table : mapping of str to array
        Columns from :func:`model_zoo.postprocess.measure_instances`.
    channel_names : sequence of str, optional
        Names of the image channels, for the mean-intensity columns.

    Returns
    -------
    dict of str to str
        Column to measurement name, e.g. ``area_um2`` to ``"Area µm^2"``;
        only the columns present in ``table`` and meant for QuPath.
    """
    fixed = {
        "label": "Label",
        "area_px": "Area px^2",
        "perimeter_px": "Perimeter px",
        "area_um2": "Area µm^2",
        "perimeter_um": "Perimeter µm",
        "volume_um3": "Volume µm^3",
        "circularity": "Circularity",
        "eccentricity": "Eccentricity",
        "probability": "Probability",
        "mean_intensity": f"{_channel_name(channel_names, 0)}: Mean",
    }
    names = {column: title for column, title in fixed.items() if column in table}
    for column in table:
        if column.startswith("mean_intensity_c") and column[16:].isdigit():
            names[column] = f"{_channel_name(channel_names, int(column[16:]))}: Mean"
    return names


def _channel_name(channel_names: Sequence[str] | None, index: int) -> str:
    if channel_names and index < len(channel_names) and channel_names[index]:
        return str(channel_names[index])
    return f"Channel {index + 1}"


@dataclass
class ObjectRows:
    """The table rows of each labelled object, looked up by label."""

    table: Mapping[str, np.ndarray]
    names: dict[str, str]
    index: dict[int, int] = field(init=False)

    def __post_init__(self) -> None:
        labels = self.table.get("label", np.zeros(0, dtype=np.int64))
        self.index = {int(v): i for i, v in enumerate(labels)}

    def measurements(self, label: int, prefix: str = "") -> dict[str, float]:
        """The QuPath measurements of one object, each name prefixed."""
        row = self.index.get(int(label))
        if row is None:
            return {}
        return {
            prefix + title: self.table[column][row]
            for column, title in self.names.items()
        }

    def class_name(self, label: int) -> str | None:
        """The object's class from a ``class_name`` column, when there is one."""
        row = self.index.get(int(label))
        if row is None or "class_name" not in self.table:
            return None
        value = self.table["class_name"][row]
        return str(value) if value is not None and str(value) else None


def _planes(labels: np.ndarray, axes: str) -> Iterator[tuple[np.ndarray, dict]]:
    """Yield each 2D plane of ``labels`` and its QuPath ``plane``."""
    if labels.ndim == 2:
        yield labels, {}
        return
    lead = axes[: labels.ndim - 2]
    if len(lead) != labels.ndim - 2 or set(lead) - {"T", "Z"}:
        raise OncoAIError(
            f"labels of shape {labels.shape} need axes ending in YX with only T "
            f"and Z before; got {axes!r}"
        )
    for index in np.ndindex(*labels.shape[:-2]):
        plane = {axis.lower(): int(i) for axis, i in zip(lead, index, strict=True)}
        yield labels[index], plane


def instances_to_features(
    instances: Instances,
    *,
    axes: str | None = None,
    channel_names: Sequence[str] | None = None,
    class_name: str = "Nucleus",
    nuclei: Instances | None = None,
    within: BaseGeometry | None = None,
    simplify: float = 0.5,
) -> list[dict[str, Any]]:
    """Objects as QuPath ``detection`` features, or ``cell`` features.

    Parameters
    ----------
    instances : Instances
        Labels (([T][Z])YX), their table and offset.  With ``nuclei`` these are
        the cells.
    axes : str, optional
        Axes of ``instances.labels``, e.g. ``"ZYX"``; by default ``YX``, ``ZYX``
        or ``TZYX`` by dimension.
    channel_names : sequence of str, optional
        Image channel names, for the ``"<channel>: Mean"`` measurements.
    class_name : str
        The class of objects without a ``class_name`` column.
    nuclei : Instances, optional
        Nucleus labels on the same grid.  Each cell takes the nucleus that
        overlaps it most and becomes a ``cell`` with ``nucleusGeometry``;
        cells without a nucleus stay detections.
    within : shapely geometry, optional
        Keep only objects whose centroid lies inside (level-0 pixels), as QuPath
        does for detections in an annotation.
    simplify : float
        Outline simplification tolerance in pixels (sub-pixel by default).

    Returns
    -------
    list of dict
        One feature per object and plane, in label order.
    """
    from model_zoo.postprocess import labels_to_polygons

    labels = np.asarray(instances.labels)
    axes = (axes or {2: "YX", 3: "ZYX", 4: "TZYX"}.get(labels.ndim, "")).upper()
    names = measurement_names(instances.table, channel_names)
    rows = ObjectRows(instances.table, names)
    nucleus_rows = None
    if nuclei is not None:
        if np.shape(nuclei.labels) != labels.shape:
            raise OncoAIError(
                f"nucleus labels {np.shape(nuclei.labels)} and cell labels "
                f"{labels.shape} must have the same shape"
            )
        nucleus_rows = ObjectRows(
            nuclei.table, measurement_names(nuclei.table, channel_names)
        )
    inside = prep(within) if within is not None else None

    features = []
    offset = tuple(float(v) for v in instances.offset)
    nucleus_planes = (
        _planes(np.asarray(nuclei.labels), axes) if nuclei is not None else None
    )
    for plane_labels, plane in _planes(labels, axes):
        outlines = labels_to_polygons(plane_labels, offset=offset, simplify=simplify)
        partner: dict[int, tuple[int, BaseGeometry]] = {}
        if nucleus_planes is not None:
            nucleus_labels = next(nucleus_planes)[0]
            nucleus_outlines = labels_to_polygons(
                nucleus_labels, offset=offset, simplify=simplify
            )
            for cell, nucleus in _best_overlap(plane_labels, nucleus_labels).items():
                partner[cell] = (nucleus, nucleus_outlines[nucleus])
        for label, outline in outlines.items():
            if inside is not None and not inside.contains(outline.centroid):
                continue
            features.append(
                _object_feature(
                    label, outline, plane, rows, nucleus_rows, partner, class_name
                )
            )
    return features


def _object_feature(
    label: int,
    outline: BaseGeometry,
    plane: dict,
    rows: ObjectRows,
    nucleus_rows: ObjectRows | None,
    partner: dict[int, tuple[int, BaseGeometry]],
    class_name: str,
) -> dict[str, Any]:
    name = rows.class_name(label) or class_name
    if nucleus_rows is not None and label in partner:
        nucleus_label, nucleus_outline = partner[label]
        values = rows.measurements(label, "Cell: ")
        values.update(nucleus_rows.measurements(nucleus_label, "Nucleus: "))
        return feature(
            outline,
            "cell",
            classification_name=name,
            measurements=values,
            nucleus=nucleus_outline,
            plane=plane,
        )
    return feature(
        outline,
        "detection",
        classification_name=name,
        measurements=rows.measurements(label),
        plane=plane,
    )


def _best_overlap(cells: np.ndarray, nuclei: np.ndarray) -> dict[int, int]:
    """For each cell label, the nucleus label covering most of its pixels."""
    both = (cells > 0) & (nuclei > 0)
    if not both.any():
        return {}
    pairs, counts = np.unique(
        np.stack([cells[both], nuclei[both]]), axis=1, return_counts=True
    )
    best: dict[int, tuple[int, int]] = {}
    for (cell, nucleus), count in zip(pairs.T, counts, strict=True):
        if count > best.get(int(cell), (0, 0))[1]:
            best[int(cell)] = (int(nucleus), int(count))
    return {cell: nucleus for cell, (nucleus, _) in best.items()}


def expand_to_cells(instances: Instances, distance: float) -> np.ndarray:
    """Grow nucleus labels into cell labels, as QuPath's cell expansion does.

    Parameters
    ----------
    instances : Instances
        Nucleus labels, (Z)YX.
    distance : float
        How far to grow each nucleus, in pixels; growing stops where two cells
        meet.

    Returns
    -------
    array of int32, same axes as the labels
        Cell labels that keep each nucleus's number.
    """
    from skimage.segmentation import expand_labels

    if not distance > 0:
        raise OncoAIError(
            f"cell expansion must be a distance > 0 pixels; got {distance}"
        )
    return expand_labels(np.asarray(instances.labels), distance=distance).astype(
        np.int32
    )


def tiles_to_features(
    boxes: np.ndarray,
    probabilities: np.ndarray,
    class_names: Sequence[str],
    *,
    plane: Mapping[str, int] | None = None,
) -> list[dict[str, Any]]:
    """Patch predictions as QuPath ``tile`` features.

    Parameters
    ----------
    boxes : array, (N, 4)
        ``x, y, width, height`` of each patch in level-0 pixels.
    probabilities : array, (N, K)
        Class probabilities of each patch.
    class_names : sequence of str
        The K class names.
    plane : mapping, optional
        ``{"z": ..., "t": ...}`` of the patches.

    Returns
    -------
    list of dict
        One tile per patch, classified by its most probable class, with a
        ``"Probability: <class>"`` measurement per class.
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise OncoAIError(
            f"tile boxes must be an (N, 4) array of x, y, width, height; got shape "
            f"{boxes.shape}"
        )
    if probabilities.shape != (len(boxes), len(class_names)):
        raise OncoAIError(
            f"tile probabilities must be (N, K) = ({len(boxes)}, {len(class_names)}) "
            f"for {len(boxes)} tiles and {len(class_names)} classes; got "
            f"{probabilities.shape}"
        )
    features = []
    for (x, y, w, h), row in zip(boxes, probabilities, strict=True):
        values = {f"Probability: {c}": p for c, p in zip(class_names, row, strict=True)}
        best = class_names[int(np.nanargmax(row))] if np.isfinite(row).any() else None
        features.append(
            feature(
                box(x, y, x + w, y + h),
                "tile",
                classification_name=best,
                measurements=values,
                plane=plane,
            )
        )
    return features


def region_annotation(
    geometry: BaseGeometry,
    children: Sequence[dict[str, Any]],
    *,
    name: str,
    provenance: Mapping[str, Any] | None = None,
    plane: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """The annotation that records where a model ran and holds its results.

    Parameters
    ----------
    geometry : shapely geometry
        The region in level-0 pixels.
    children : sequence of dict
        The result features, nested as ``childObjects``.
    name : str
        Shown in QuPath's hierarchy, e.g. ``"OncoAI: oncoai-nuclei"``.
    provenance : mapping, optional
        Model id and sha256, OncoAI version, parameters; goes in ``metadata``.
    plane : mapping, optional
        ``{"z": ..., "t": ...}``.

    Returns
    -------
    dict
        An ``annotation`` feature.
    """
    metadata = dict(provenance or {})
    metadata["oncoai_objects"] = len(children)
    return feature(
        geometry,
        "annotation",
        name=name,
        metadata=metadata,
        children=children,
        plane=plane,
    )


def result_to_features(
    result: PredictionResult,
    *,
    region: BaseGeometry | None = None,
    plane: Mapping[str, int] | None = None,
    cell_expansion: float = 0.0,
    class_name: str | None = None,
    simplify: float = 0.5,
) -> list[dict[str, Any]]:
    """A prediction's objects under one annotation, ready for QuPath.

    A probability output is turned into instances (threshold, then a watershed
    split, as set in the result's configuration) the first time they are needed.

    Parameters
    ----------
    result : PredictionResult
        The prediction; its ``offset`` places it on the level-0 image.
    region : shapely geometry, optional
        The annotation the model ran in, in level-0 pixels: only objects with
        their centroid inside are kept, and it becomes the parent annotation.
        By default the rectangle the result covers.
    plane : mapping, optional
        ``{"z": ..., "t": ...}`` for a 2D result taken from one plane.
    cell_expansion : float
        When > 0, grow each nucleus by this many pixels into a cell and write
        ``cell`` objects with both outlines.
    class_name : str, optional
        Class of objects that have none of their own; ``Nucleus`` for
        detections and ``Cell`` for cells by default.
    simplify : float
        Outline simplification tolerance in pixels.

    Returns
    -------
    list of dict
        One ``annotation`` feature whose ``childObjects`` are the objects.
    """
    instances = result.instances
    labels = np.asarray(instances.labels)
    x0, y0 = (float(v) for v in result.offset)
    height, width = labels.shape[-2:]
    covered = box(x0, y0, x0 + width, y0 + height)
    axes = _label_axes(result, labels.ndim)
    channel_names = getattr(result.image, "channel_names", None)
    default_class = "Cell" if cell_expansion > 0 else "Nucleus"
    kwargs = dict(
        axes=axes,
        channel_names=channel_names,
        class_name=class_name or default_class,
        within=region,
        simplify=simplify,
    )
    if cell_expansion > 0:
        cells = _cell_instances(result, instances, cell_expansion)
        children = instances_to_features(cells, nuclei=instances, **kwargs)
    else:
        children = instances_to_features(instances, **kwargs)
    if plane:
        for child in children:
            _set_plane(child, plane)
    model = result.provenance.get("model_name") or result.provenance.get("model_id")
    return [
        region_annotation(
            region if region is not None else covered,
            children,
            name=f"OncoAI: {model or 'model'}",
            provenance=result.provenance,
            plane=plane,
        )
    ]


def _label_axes(result: PredictionResult, ndim: int) -> str:
    try:
        axes = result.output_axes[result.main_output]
    except (AttributeError, KeyError, StopIteration):
        axes = ""
    spatial = "".join(a for a in axes.upper() if a in "TZYX")
    return spatial if len(spatial) == ndim else {2: "YX", 3: "ZYX"}.get(ndim, "TZYX")


def _set_plane(child: dict[str, Any], plane: Mapping[str, int]) -> None:
    for key in ("geometry", "nucleusGeometry"):
        if key in child and (plane.get("z", 0) or plane.get("t", 0)):
            child[key]["plane"] = {
                "c": int(plane.get("c", -1)),
                "z": int(plane.get("z", 0)),
                "t": int(plane.get("t", 0)),
            }


def _cell_instances(
    result: PredictionResult, nuclei: Instances, distance: float
) -> Instances:
    from model_zoo.postprocess import measure_instances
    from model_zoo.result import Instances

    cells = expand_to_cells(nuclei, distance)
    intensity, channel_axis = (None, None)
    image = getattr(result, "image", None)
    if image is not None and hasattr(image, "intensity_for"):
        intensity, channel_axis = image.intensity_for(cells.shape)
    table = measure_instances(
        cells,
        intensity,
        channel_axis=channel_axis,
        pixel_size=nuclei.pixel_size,
    )
    return Instances(
        labels=cells, table=table, offset=nuclei.offset, pixel_size=nuclei.pixel_size
    )


def feature_collection(features: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Wrap features in a GeoJSON FeatureCollection."""
    return {"type": "FeatureCollection", "features": list(features)}


def write_geojson(
    features: Sequence[dict[str, Any]] | dict[str, Any],
    path: str | Path,
    *,
    collection: bool = True,
) -> Path:
    """Write features atomically as ``.geojson`` or gzip-compressed ``.geojson.gz``.

    Parameters
    ----------
    features : sequence of dict, or dict
        Features, or a FeatureCollection.
    path : str or Path
        The target; a name ending in ``.gz`` is gzip-compressed.
    collection : bool
        True writes a FeatureCollection, False a bare JSON array of features;
        QuPath reads both.

    Returns
    -------
    Path
        The file written.
    """
    path = Path(path)
    if isinstance(features, dict):
        features = features.get("features", [features])
    document: Any = feature_collection(features) if collection else list(features)
    if not path.parent.is_dir():
        raise OncoAIError(
            f"output folder does not exist: {str(path.parent)!r}; create it first"
        )
    # allow_nan=False: QuPath's files and most JSON readers reject a bare NaN.
    data = json.dumps(document, ensure_ascii=False, allow_nan=False).encode("utf-8")
    if path.name.lower().endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    _atomic_write(path, data)
    return path


def _atomic_write(path: Path, data: bytes) -> None:
    from model_zoo.outputs import atomic_path

    with atomic_path(path) as temp:
        temp.write_bytes(data)


def write_result_geojson(result: PredictionResult, path: Path) -> None:
    """The ``.geojson`` and ``.geojson.gz`` writer registered with the engine.

    Writes a FeatureCollection holding one annotation over the region the model
    ran on, with the detected objects as its children.
    """
    write_geojson(result_to_features(result), path)


def send_to_qupath(
    features: Sequence[dict[str, Any]],
    image_data: Any = None,
    gateway: Any = None,
) -> None:
    """Add features to the image open in a running QuPath, through qubalab.

    QuPath must run qubalab's Py4J extension; QuPath then parses the features
    with the same reader as *File › Import objects*.

    Parameters
    ----------
    features : sequence of dict
        QuPath features, e.g. from :func:`result_to_features`.
    image_data : Py4J object, optional
        The target ``ImageData``; by default the image open in QuPath.
    gateway : py4j JavaGateway, optional
        By default qubalab's default gateway.
    """
    import geojson
    from qubalab.qupath import qupath_gateway

    qupath_gateway.add_objects(
        [geojson.Feature(**f) for f in features], image_data=image_data, gateway=gateway
    )


# --------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------


@dataclass
class QuPathObject:
    """One object read from QuPath GeoJSON.

    Attributes
    ----------
    geometry : shapely geometry
        Level-0 pixel coordinates.
    object_type : str
        As QuPath reads it: ``annotation``, ``detection``, ``cell``, ``tile``...
    classification : str or None
        ``"Tumor"``, or ``"Tumor: Positive"`` for a derived class.
    color : tuple of int or None
        The class colour (or else the object's own colour).
    name : str or None
    measurements : dict of str to float
    metadata : dict of str to str
    plane : dict
        ``{"c": ..., "z": ..., "t": ...}``; ``z`` and ``t`` are 0 by default.
    nucleus : shapely geometry or None
        The nucleus outline of a cell.
    id : str or None
        The feature's UUID.
    children : list of QuPathObject
        Nested objects (``childObjects``).
    """

    geometry: BaseGeometry
    object_type: str = "annotation"
    classification: str | None = None
    color: tuple[int, int, int] | None = None
    name: str | None = None
    measurements: dict[str, float] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    plane: dict[str, int] = field(default_factory=lambda: {"c": -1, "z": 0, "t": 0})
    nucleus: BaseGeometry | None = None
    id: str | None = None
    children: list[QuPathObject] = field(default_factory=list)

    def walk(self) -> Iterator[QuPathObject]:
        """This object, then all nested objects, depth first."""
        yield self
        for child in self.children:
            yield from child.walk()

    def to_image_feature(self) -> Any:
        """This object as a qubalab ``ImageFeature`` (QuPath's Python object model).

        The plane is carried over; nested objects are not.
        """
        import geojson
        from qubalab.objects import Classification, ImageFeature, ObjectType

        kind = {
            "tmaCore": ObjectType.TMA_CORE,
        }.get(self.object_type, ObjectType[self.object_type.upper()])
        geometry = geojson.GeoJSON.to_instance(mapping(self.geometry), strict=False)
        extra = None
        if self.nucleus is not None:
            extra = {
                "nucleus": geojson.GeoJSON.to_instance(
                    mapping(self.nucleus), strict=False
                )
            }
        out = ImageFeature(
            geometry,
            classification=(
                Classification(self.classification, self.color)
                if self.classification
                else None
            ),
            name=self.name,
            measurements=dict(self.measurements),
            object_type=kind,
            extra_geometries=extra,
            id=self.id,
        )
        # qubalab's constructor resets the plane to z=0, t=0.
        from qubalab.objects import add_plane_to_geometry

        out.geometry = add_plane_to_geometry(
            out.geometry, z=self.plane.get("z", 0), t=self.plane.get("t", 0)
        )
        return out


def load_geojson(source: str | Path | bytes | Any) -> Any:
    """Load GeoJSON from a file (plain, gzip or zip), bytes, text or parsed JSON.

    A zip's ``.json`` and ``.geojson`` entries are all read and their features
    joined, as QuPath does.

    Parameters
    ----------
    source : path, bytes, str or parsed JSON
        A str that starts with ``{`` or ``[`` is JSON text; other strs are paths.

    Returns
    -------
    dict or list
        The parsed document (a list when a zip held several).
    """
    if isinstance(source, (dict, list)):
        return source
    if isinstance(source, str) and source.lstrip()[:1] in ("{", "["):
        return _parse_json(source.encode("utf-8"), "text")
    if isinstance(source, bytes):
        return _parse_bytes(source, "bytes")
    path = Path(source)
    if not path.is_file():
        raise OncoAIError(f"GeoJSON file not found: {str(path)!r}; check the path")
    return _parse_bytes(path.read_bytes(), str(path))


def _parse_bytes(raw: bytes, where: str) -> Any:
    if raw[:4] == b"PK\x03\x04":
        with zipfile.ZipFile(io.BytesIO(raw)) as archive:
            names = [
                n
                for n in archive.namelist()
                if n.lower().endswith((".json", ".geojson"))
                and not n.startswith("__MACOSX/")
            ]
            if not names:
                raise OncoAIError(
                    f"{where} is a zip without a .json or .geojson entry; zip the "
                    "GeoJSON files exported from QuPath"
                )
            documents = [_parse_bytes(archive.read(n), f"{where}:{n}") for n in names]
        if len(documents) == 1:
            return documents[0]
        return [f for d in documents for f in _features_of(d, where)]
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise OncoAIError(
                f"{where} looks gzip-compressed but cannot be decompressed ({exc}); "
                "is the file complete?"
            ) from exc
    return _parse_json(raw, where)


def _parse_json(raw: bytes, where: str) -> Any:
    try:
        # QuPath's Gson reader is lenient about NaN, and so are we.
        return json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise OncoAIError(
            f"{where} is not valid GeoJSON ({' '.join(str(exc).split())[:120]}); "
            "export it again from QuPath with File > Export objects as GeoJSON"
        ) from exc


def _features_of(document: Any, where: str) -> list[Any]:
    if isinstance(document, list):
        return document
    kind = document.get("type") if isinstance(document, dict) else None
    if kind == "FeatureCollection":
        return list(document.get("features") or [])
    if kind == "Feature":
        return [document]
    if kind in _GEOMETRY_TYPES:
        return [{"type": "Feature", "geometry": document, "properties": {}}]
    raise OncoAIError(
        f"{where} holds neither a Feature, a FeatureCollection, an array of features "
        f"nor a geometry (top-level type {kind!r})"
    )


def read_geojson(source: str | Path | bytes | Any) -> list[QuPathObject]:
    """Read QuPath GeoJSON in every form QuPath's importer accepts.

    Parameters
    ----------
    source : path, bytes, str or parsed JSON
        A Feature, a FeatureCollection, an array of features or a bare geometry
        (which becomes an annotation); plain, gzip-compressed or in a zip.

    Returns
    -------
    list of QuPathObject
        The top-level objects; nested ones are in their ``children``.

    Raises
    ------
    OncoAIError
        When the file is missing or unreadable, or a feature is malformed.

    Examples
    --------
    >>> objects = read_geojson('{"type": "Polygon", "coordinates": '
    ...                        '[[[0, 0], [4, 0], [4, 4], [0, 0]]]}')
    >>> objects[0].object_type, objects[0].geometry.area
    ('annotation', 8.0)
    """
    where = "GeoJSON" if not isinstance(source, (str, Path)) else str(source)
    if isinstance(source, str) and source.lstrip()[:1] in ("{", "["):
        where = "GeoJSON text"
    document = load_geojson(source)
    return [
        _read_feature(f, f"{where} feature {i}")
        for i, f in enumerate(_features_of(document, where))
    ]


def _read_feature(raw: Any, where: str) -> QuPathObject:
    if not isinstance(raw, dict) or raw.get("type") != "Feature":
        raise OncoAIError(f"{where} is not a GeoJSON Feature: {str(raw)[:80]!r}")
    props = raw.get("properties") or {}
    geometry, plane = _read_geometry(raw.get("geometry"), where)
    nucleus = None
    if raw.get("nucleusGeometry") is not None:
        nucleus, _ = _read_geometry(raw["nucleusGeometry"], f"{where} nucleus")
    name, color = _read_classification(props.get("classification"))
    if color is None and props.get("color") is not None:
        color = _read_color(props["color"])
    children = props.get("childObjects", props.get("children")) or []
    return QuPathObject(
        geometry=geometry,
        object_type=_read_object_type(props, where),
        classification=name,
        color=color,
        name=props.get("name"),
        measurements=_read_measurements(props.get("measurements")),
        metadata={str(k): str(v) for k, v in (props.get("metadata") or {}).items()},
        plane=plane,
        nucleus=nucleus,
        id=_read_id(raw.get("id")),
        children=[
            _read_feature(c, f"{where} child {i}") for i, c in enumerate(children)
        ],
    )


def _read_geometry(raw: Any, where: str) -> tuple[BaseGeometry, dict[str, int]]:
    if not isinstance(raw, dict) or raw.get("type") not in _GEOMETRY_TYPES:
        kind = raw.get("type") if isinstance(raw, dict) else raw
        raise OncoAIError(
            f"{where} has no geometry QuPath reads (got {kind!r}); expected one of "
            f"{', '.join(sorted(_GEOMETRY_TYPES))}"
        )
    plane = {"c": -1, "z": 0, "t": 0}
    for key, value in (raw.get("plane") or {}).items():
        if key in plane and value is not None:
            plane[key] = int(value)
    try:
        geometry = shape(raw)
    except (ValueError, TypeError, AttributeError, IndexError) as exc:
        raise OncoAIError(
            f"{where} has a malformed {raw.get('type')} geometry ({exc}); check its "
            "coordinates"
        ) from exc
    return geometry, plane


def _read_object_type(props: Mapping[str, Any], where: str) -> str:
    raw = props.get("objectType", props.get("object_type", props.get("type")))
    if raw is None:
        return "annotation"
    kind = _OBJECT_TYPE_ALIASES.get(str(raw), str(raw))
    if kind not in OBJECT_TYPES:
        log.warning("%s: objectType %r is unknown; read as an annotation", where, raw)
        return "annotation"
    return kind


def _read_classification(raw: Any) -> tuple[str | None, tuple[int, int, int] | None]:
    if raw is None:
        return None, None
    if isinstance(raw, str):
        return raw, None
    if isinstance(raw, dict):
        names = raw.get("names")
        name = ": ".join(str(n) for n in names) if names else raw.get("name")
        color = raw.get("color", raw.get("colorRGB"))
        return (str(name) if name else None), (
            _read_color(color) if color is not None else None
        )
    return None, None


def _read_color(raw: Any) -> tuple[int, int, int] | None:
    if isinstance(raw, (list, tuple)) and len(raw) >= 3:
        return int(raw[0]), int(raw[1]), int(raw[2])
    if isinstance(raw, (int, float)):
        packed = int(raw) & 0xFFFFFF
        return (packed >> 16) & 255, (packed >> 8) & 255, packed & 255
    return None


def _read_measurements(raw: Any) -> dict[str, float]:
    if isinstance(raw, dict):
        items: Iterable = raw.items()
    elif isinstance(raw, list):
        items = ((m.get("name"), m.get("value")) for m in raw if isinstance(m, dict))
    else:
        return {}
    out = {}
    for name, value in items:
        if isinstance(name, str) and isinstance(value, (int, float)):
            out[name] = float(value)
    return out


def _read_id(raw: Any) -> str | None:
    # QuPath keeps an id only when it is a UUID.
    try:
        return str(uuid.UUID(str(raw))) if raw is not None else None
    except ValueError:
        return None


def walk(objects: Iterable[QuPathObject]) -> Iterator[QuPathObject]:
    """Every object and all its nested objects, depth first."""
    for obj in objects:
        yield from obj.walk()


def regions_from_objects(objects: Iterable[QuPathObject]) -> list[QuPathObject]:
    """The annotations with an area: the regions to run a model in.

    Parameters
    ----------
    objects : iterable of QuPathObject
        As read by :func:`read_geojson`; nested annotations count too.

    Returns
    -------
    list of QuPathObject
        Polygon and MultiPolygon annotations (holes kept), with their planes.
    """
    regions = []
    for obj in walk(objects):
        if obj.object_type != "annotation":
            continue
        area = _areal_part(obj.geometry)
        if area is None:
            log.info("skipping annotation %r: it has no area", obj.name)
            continue
        obj.geometry = area
        regions.append(obj)
    return regions


def _areal_part(geometry: BaseGeometry) -> BaseGeometry | None:
    if geometry.geom_type in ("Polygon", "MultiPolygon"):
        return geometry if geometry.area > 0 else None
    if geometry.geom_type == "GeometryCollection":
        areal = ("Polygon", "MultiPolygon")
        parts = [g for g in geometry.geoms if g.geom_type in areal]
        merged = shapely.union_all(parts) if parts else None
        return merged if merged is not None and merged.area > 0 else None
    return None


def detections_of(objects: Iterable[QuPathObject]) -> list[QuPathObject]:
    """The detections, cells and tiles among ``objects`` and their children."""
    return [o for o in walk(objects) if o.object_type in ("detection", "cell", "tile")]


def match_objects(
    predicted: Sequence[BaseGeometry],
    reference: Sequence[BaseGeometry],
    iou_threshold: float = 0.5,
) -> dict[str, float]:
    """Compare two sets of outlines by one-to-one matching at an IoU threshold.

    Parameters
    ----------
    predicted, reference : sequence of shapely geometry
        E.g. OncoAI's detections and a pathologist's detections from QuPath.
    iou_threshold : float
        A pair matches when its intersection over union exceeds this (> 0.5
        makes the matching unique).

    Returns
    -------
    dict
        ``tp``, ``fp``, ``fn``, ``precision``, ``recall``, ``f1`` and
        ``mean_iou`` of the matched pairs.
    """
    from shapely import STRtree

    if not 0 < iou_threshold < 1:
        raise OncoAIError(f"iou_threshold must be in (0, 1); got {iou_threshold}")
    tree = STRtree(list(reference))
    pairs = []
    for i, geom in enumerate(predicted):
        for j in tree.query(geom, predicate="intersects"):
            other = reference[int(j)]
            inter = geom.intersection(other).area
            union = geom.area + other.area - inter
            iou = inter / union if union > 0 else 0.0
            if iou > iou_threshold:
                pairs.append((iou, i, int(j)))
    pairs.sort(reverse=True)
    used_p: set[int] = set()
    used_r: set[int] = set()
    ious = []
    for iou, i, j in pairs:
        if i not in used_p and j not in used_r:
            used_p.add(i)
            used_r.add(j)
            ious.append(iou)
    tp = len(ious)
    fp = len(predicted) - tp
    fn = len(reference) - tp
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "mean_iou": float(np.mean(ious)) if ious else 0.0,
    }
