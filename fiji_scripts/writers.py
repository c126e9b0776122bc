"""Output formats for ImageJ: a RoiSet zip, a results table and a label image.

Registered with the engine by :func:`fiji_scripts.plugin.register`, so that
``write_result(result, "cells_RoiSet.zip")`` and the ``outputs`` of a service
job write them:

- ``.zip``: an ImageJ RoiSet, one ROI per object, named by its label, that the
  ROI Manager opens with *More › Open...* or ``roiManager("Open", path)``;
- ``.csv``: the measurements, one row per object, that ImageJ opens as a table;
- ``_labels.tif``: the label image, as a 32-bit TIFF with the image's
  calibration, which ImageJ opens with the same pixel size as the input.
"""

from __future__ import annotations

import csv
import io
import logging
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import roifile
from shapely.geometry import MultiPolygon, Polygon

from model_zoo.errors import OncoAIError
from model_zoo.outputs import atomic_path, imagej_integers

if TYPE_CHECKING:
    from model_zoo.result import PredictionResult

log = logging.getLogger(__name__)

# java.awt.geom.PathIterator segment types, as ImageJ stores a composite ROI.
_MOVETO, _LINETO, _CLOSE = 0.0, 1.0, 4.0

# ImageJ stores ROI corners and relative vertices as 16-bit integers; beyond
# this, vertices go in the float (sub-pixel) table instead.
_INT16_SAFE = 32000


def labels_to_rois(
    labels: np.ndarray, offset: tuple[float, float] = (0.0, 0.0)
) -> list[roifile.ImagejRoi]:
    """Outline each object of a label image as an ImageJ ROI.

    An object in one piece without holes becomes a polygon ROI; one with holes
    or in several pieces becomes a composite ROI, which ImageJ fills by the
    even-odd rule, so the ROI covers exactly the object's pixels.

    Parameters
    ----------
    labels : array of int, YX or ZYX
        0 is background.  For a ZYX stack, each object gets one ROI per plane it
        appears in, tied to that slice.
    offset : tuple of float
        ``(x0, y0)`` added to every vertex, e.g. where a region sits on the
        whole image.

    Returns
    -------
    list of roifile.ImagejRoi
        Sorted by label; named ``"<label>"``, or ``"<label>-z<slice>"`` in a
        stack.
    """
    from model_zoo.postprocess import labels_to_polygons

    labels = np.asarray(labels)
    if labels.ndim == 2:
        planes: list[tuple[int | None, np.ndarray]] = [(None, labels)]
    elif labels.ndim == 3:
        planes = list(enumerate(labels))
    else:
        raise OncoAIError(
            f"a RoiSet needs a YX or ZYX label image; got shape {labels.shape}. "
            "Write one time point at a time."
        )

    rois = []
    for z, plane in planes:
        outlines = labels_to_polygons(plane, offset=offset, simplify=0)
        for label, outline in outlines.items():
            name = str(label) if z is None else f"{label}-z{z + 1}"
            roi = _outline_to_roi(outline, name)
            if z is not None:
                roi.position = z + 1
            rois.append(roi)
    return rois


def write_roi_set(result: PredictionResult, path: Path) -> None:
    """Write a result's objects as an ImageJ RoiSet zip, one ``.roi`` per object.

    The provenance goes in the sidecar ``.oncoai.json`` that
    :func:`model_zoo.outputs.write_result` writes beside every output.
    """
    instances = result.instances
    rois = labels_to_rois(instances.labels, offset=tuple(instances.offset))
    with atomic_path(path) as temp, zipfile.ZipFile(temp, "w") as zf:
        for roi in rois:
            zf.writestr(f"{roi.name}.roi", roi.tobytes())
    log.info("wrote %d ImageJ ROIs to %s", len(rois), path)


def write_results_csv(result: PredictionResult, path: Path) -> None:
    """Write a result's measurements as CSV, one row per object.

    The first column is ``label``; the rest are the columns of
    :attr:`model_zoo.result.Instances.table`.
    """
    table = result.instances.table
    text = table_to_csv(table)
    with atomic_path(path) as temp:
        temp.write_text(text, encoding="utf-8", newline="")
    log.info("wrote %d rows of measurements to %s", len(table.get("label", [])), path)


def table_to_csv(table: dict[str, np.ndarray]) -> str:
    """Return a column table as CSV text, ``label`` first, one row per object.

    Parameters
    ----------
    table : dict of str to array, (N,)
        Equal-length columns.

    Returns
    -------
    str
        A header line and N rows; integers stay integers and floats keep full
        precision.
    """
    columns = [name for name in table if name == "label"]
    columns += [name for name in table if name != "label"]
    lengths = {len(np.asarray(table[name])) for name in columns}
    if len(lengths) > 1:
        raise OncoAIError(
            f"measurement columns differ in length: {sorted(lengths)}; cannot write "
            "a table."
        )
    values = [_column_text(np.asarray(table[name])) for name in columns]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(zip(*values, strict=True))
    return buffer.getvalue()


def make_labels_tif_writer(
    tif_writer: Callable[[PredictionResult, Path], None],
) -> Callable[[PredictionResult, Path], None]:
    """Build the ``_labels.tif`` writer on top of the engine's ``.tif`` writer.

    Parameters
    ----------
    tif_writer : callable
        The engine's writer for ``.tif``, ``writer(result, path)``.

    Returns
    -------
    callable
        ``writer(result, path)`` that wraps the result's label image as a result
        of its own and hands it to ``tif_writer``, so the labels carry the same
        calibration and provenance as any other OncoAI TIFF.
    """

    def write_labels_tif(result: PredictionResult, path: Path) -> None:
        from model_zoo.result import PredictionResult

        instances = result.instances
        labels_result = PredictionResult.from_labels(
            instances.labels,
            provenance=result.provenance,
            offset=result.offset,
            pixel_size=result.image.pixel_size,
        )
        labels_result.outputs = {"labels": imagej_labels(instances.labels)[None]}
        tif_writer(labels_result, path)

    return write_labels_tif


def imagej_labels(labels: np.ndarray) -> np.ndarray:
    """Return labels in a pixel type that ImageJ stores: 16-bit or 32-bit float.

    Up to 65535 objects fit in 16 bits, which ImageJ shows with its label lookup
    tables; beyond that a 32-bit float holds every label exactly up to 2**24
    (the engine's :func:`~model_zoo.outputs.imagej_integers`).

    Parameters
    ----------
    labels : array of int, ([T][Z])YX

    Returns
    -------
    array of uint16 or float32, same shape
    """
    labels = np.asarray(labels)
    if labels.size and int(labels.min()) < 0:
        raise OncoAIError(f"labels must be >= 0; got a minimum of {labels.min()}.")
    return imagej_integers(labels)


def _outline_to_roi(outline: Polygon | MultiPolygon, name: str) -> roifile.ImagejRoi:
    polygons = list(outline.geoms) if isinstance(outline, MultiPolygon) else [outline]
    rings = [np.asarray(ring.coords)[:-1] for p in polygons for ring in _rings(p)]
    if len(rings) == 1:
        return _polygon_roi(rings[0], name)
    return _composite_roi(rings, name)


def _rings(polygon: Polygon) -> Iterator[Any]:
    yield polygon.exterior
    yield from polygon.interiors


def _polygon_roi(vertices: np.ndarray, name: str) -> roifile.ImagejRoi:
    roi = roifile.ImagejRoi()
    roi.roitype = roifile.ROI_TYPE.POLYGON
    roi.name = name
    _set_bounds(roi, vertices)
    roi.n_coordinates = len(vertices)
    corner = np.array([roi.left, roi.top])
    roi.integer_coordinates = np.round(vertices - corner).astype(np.int32)
    whole = np.array_equal(vertices, np.round(vertices))
    if not whole or np.abs(vertices).max() > _INT16_SAFE:
        roi.options |= roifile.ROI_OPTIONS.SUB_PIXEL_RESOLUTION
        roi.subpixel_coordinates = vertices.astype(np.float32)
    return roi


def _composite_roi(rings: list[np.ndarray], name: str) -> roifile.ImagejRoi:
    segments = []
    for ring in rings:
        ops = np.full((len(ring), 1), _LINETO)
        ops[0] = _MOVETO
        segments.append(np.hstack([ops, ring]).ravel())
        segments.append(np.array([_CLOSE]))
    path = np.concatenate(segments).astype(np.float32)

    roi = roifile.ImagejRoi()
    roi.roitype = roifile.ROI_TYPE.RECT
    roi.name = name
    _set_bounds(roi, np.concatenate(rings))
    roi.multi_coordinates = path
    roi.shape_roi_size = len(path)
    return roi


def _set_bounds(roi: roifile.ImagejRoi, vertices: np.ndarray) -> None:
    left, top = np.floor(vertices.min(axis=0)).astype(int)
    right, bottom = np.ceil(vertices.max(axis=0)).astype(int)
    roi.left, roi.top = int(left), int(top)
    roi.right, roi.bottom = int(right), int(bottom)


def _column_text(column: np.ndarray) -> list[str]:
    if column.dtype.kind in "iub":
        return [str(int(v)) for v in column]
    if column.dtype.kind == "f":
        return [repr(float(v)) for v in column]
    return [str(v) for v in column]
