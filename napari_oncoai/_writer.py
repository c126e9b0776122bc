"""Save labels, shapes and points layers as objects for QuPath, ImageJ or a table.

Every writer turns the layer into a label image, wraps it with
:meth:`model_zoo.result.PredictionResult.from_labels` and hands it to
:func:`model_zoo.outputs.write_result`, which picks the format registered for the
file's suffix: QuPath GeoJSON and the per-object CSV by the QuPath bridge, the
ImageJ RoiSet by the Fiji bridge. The files are written atomically by them.

How each layer type becomes objects:

- **Labels**: one object per label. A layer that OncoAI predicted at a coarser
  pyramid level is first resampled (nearest neighbour) onto the full-resolution
  grid, so that coordinates are level-0 pixels as QuPath expects; that needs
  memory for the full-resolution label image.
- **Shapes**: one object per polygon, rectangle or ellipse, filled with napari's
  own rasteriser; lines and paths have no area and are skipped. Where shapes
  overlap, the later shape wins the shared pixels.
- **Points**: one disc per point, as wide as the point is drawn. Discs that
  overlap share their pixels with the later point.

Coordinates are the layer's data pixels; a layer's ``scale`` and ``translate``
are not applied, except for the pyramid-level placement OncoAI records.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def write_geojson(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write a layer as QuPath GeoJSON detections.

    Parameters
    ----------
    path : str
        Target file, ending ``.geojson``.
    data : array or list of array
        The layer's data: labels ``(Z)YX``, shapes' vertices or points ``(N, D)``.
    meta : dict
        The layer's attributes, as napari passes them.

    Returns
    -------
    list of str
        ``[path]`` when written; ``[]`` after an error, which is shown as a
        notification.
    """
    return _write(path, data, meta, (".geojson", ".geojson.gz"))


def write_roiset(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write a layer as an ImageJ RoiSet ``.zip``, one polygon ROI per object.

    Parameters and return value are as for :func:`write_geojson`.
    """
    return _write(path, data, meta, (".zip",))


def write_csv(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write one CSV row of measurements per object of a layer.

    Parameters and return value are as for :func:`write_geojson`.
    """
    return _write(path, data, meta, (".csv",))


def _write(
    path: str, data: Any, meta: dict[str, Any], suffixes: tuple[str, ...]
) -> list[str]:
    from model_zoo.errors import one_line

    try:
        target = _checked_target(path, suffixes)
        result = layer_result(data, meta)
        _write_result(result, target)
    except Exception as err:  # noqa: BLE001 - the user sees one line, the log all
        log.error("could not save %s", path, exc_info=True)
        _notify_error(one_line(err))
        return []
    log.info("saved %s", target)
    return [str(target)]


def _checked_target(path: str, suffixes: tuple[str, ...]) -> Path:
    from model_zoo.errors import OncoAIError

    target = Path(path)
    if not target.name.lower().endswith(suffixes):
        raise OncoAIError(
            f"cannot save {target.name!r} with this writer: its name must end in "
            f"{' or '.join(suffixes)}; rename the file"
        )
    return target


def _write_result(result: Any, target: Path) -> None:
    from model_zoo.errors import OncoAIError
    from model_zoo.outputs import write_result
    from model_zoo.plugins import get_registry

    if get_registry().writer_for(target) is None:
        raise OncoAIError(
            f"no OncoAI writer is registered for {target.name!r}; the bridge that "
            "provides it (qupath_bridge or fiji_scripts) is not installed: run "
            "`pip install -e .` in the OncoAI folder"
        )
    write_result(result, target)


def _notify_error(message: str) -> None:
    from napari.utils.notifications import show_error

    show_error(message)


def layer_result(data: Any, meta: dict[str, Any]) -> Any:
    """Turn a layer's data and attributes into a result that writers accept.

    Parameters
    ----------
    data : array or list of array
        Labels, shapes' vertices or points, as in napari.
    meta : dict
        The layer's attributes; ``shape_type`` marks shapes and ``symbol``
        points.

    Returns
    -------
    PredictionResult
        From :meth:`PredictionResult.from_labels`, with the provenance and
        pixel size OncoAI recorded in the layer's metadata when there are any.
        Columns of a labels layer's ``features`` that the engine does not
        measure from the labels alone (mean intensity, probability, class) are
        added to the objects' table.
    """
    from model_zoo.result import PredictionResult

    provenance = dict((meta.get("metadata") or {}).get("oncoai") or {})
    if "shape_type" in meta:
        labels, offset = shapes_to_labels(data, meta.get("shape_type"))
    elif "symbol" in meta:
        labels, offset = points_to_labels(np.asarray(data), meta.get("size", 10))
    else:
        labels, offset = _labels_on_level0(np.asarray(data), provenance)
    provenance.setdefault("input", str(meta.get("name") or "napari layer"))
    size = provenance.get("pixel_size_um")
    result = PredictionResult.from_labels(
        labels,
        provenance=provenance,
        offset=offset,
        pixel_size=(float(size[0]), float(size[1])) if size else None,
        name=str(meta.get("name") or "labels"),
    )
    if "shape_type" not in meta and "symbol" not in meta:
        _add_feature_columns(result.instances.table, meta.get("features"))
    return result


def _add_feature_columns(table: dict[str, np.ndarray], features: Any) -> None:
    """Copy the layer's per-label columns that ``table`` lacks, row by label."""
    if features is None or len(features) == 0:
        return
    columns = {str(k): np.asarray(features[k]) for k in features}
    keys = columns.pop("index", columns.get("label"))
    if keys is None:
        return
    rows = {int(k): i for i, k in enumerate(keys)}
    wanted = [rows.get(int(label), -1) for label in table["label"]]
    for name, values in columns.items():
        if name in table or values.dtype.kind not in "biuf":
            continue
        filled = np.full(len(wanted), np.nan)
        for out, row in enumerate(wanted):
            if row >= 0:
                filled[out] = values[row]
        table[name] = filled


def _labels_on_level0(
    labels: np.ndarray, provenance: dict[str, Any]
) -> tuple[np.ndarray, tuple[float, float]]:
    """Resample labels OncoAI predicted on a coarser level onto level 0."""
    from model_zoo.errors import OncoAIError

    if not np.issubdtype(labels.dtype, np.integer):
        raise OncoAIError(
            f"a labels layer must hold integers; got {labels.dtype}. Convert it "
            "with layer.data = layer.data.astype(int)"
        )
    level0 = provenance.get("level0")
    if not level0:
        return labels, (0.0, 0.0)
    (fy, fx), (y0, x0) = level0["pixel"], level0["origin"]
    if math.isclose(fy, 1.0) and math.isclose(fx, 1.0):
        return labels, (float(x0), float(y0))
    rows = _nearest(labels.shape[-2], float(fy))
    cols = _nearest(labels.shape[-1], float(fx))
    return labels[..., rows[:, None], cols[None, :]], (float(x0), float(y0))


def _nearest(n: int, factor: float) -> np.ndarray:
    """Indices of the coarse pixel under each fine pixel along one axis."""
    fine = int(round(n * factor))
    return np.minimum((np.arange(fine) / factor).astype(np.intp), n - 1)


def shapes_to_labels(
    data: list[np.ndarray], shape_type: Any
) -> tuple[np.ndarray, tuple[float, float]]:
    """Fill each closed shape of a shapes layer with its own label.

    Parameters
    ----------
    data : list of array, (N, 2) or (N, D)
        Vertices per shape in data pixels, the last two columns y and x.
    shape_type : str or list of str
        napari shape types; ``line`` and ``path`` are skipped.

    Returns
    -------
    array of int32, YX
        Labels 1..K over the shapes' bounding box (K closed shapes).
    tuple of float
        ``(x0, y0)``: where the box's pixel (0, 0) lies.

    Raises
    ------
    OncoAIError
        When there is no closed shape, or shapes lie on different planes.
    """
    from napari.layers import Shapes

    from model_zoo.errors import OncoAIError

    types = [shape_type] * len(data) if isinstance(shape_type, str) else shape_type
    closed = [
        np.asarray(v, dtype=float)
        for v, t in zip(data, types or [], strict=False)
        if t not in ("line", "path")
    ]
    if not closed:
        raise OncoAIError(
            "the shapes layer has no polygon, rectangle or ellipse to save; lines "
            "and paths have no area"
        )
    kinds = [t for t in types if t not in ("line", "path")]
    _check_one_plane(np.concatenate(closed))
    yx = [v[:, -2:] for v in closed]
    start = np.floor(np.concatenate(yx).min(axis=0))
    stop = np.ceil(np.concatenate(yx).max(axis=0)) + 1
    shifted = [v - start for v in yx]
    layer = Shapes(shifted, shape_type=kinds)
    labels = layer.to_labels(labels_shape=tuple(int(s) for s in stop - start))
    return labels.astype(np.int32), (float(start[1]), float(start[0]))


def points_to_labels(
    points: np.ndarray, size: Any
) -> tuple[np.ndarray, tuple[float, float]]:
    """Draw each point of a points layer as a disc with its own label.

    Parameters
    ----------
    points : array, (N, 2) or (N, D)
        Point coordinates in data pixels, the last two columns y and x.
    size : float or array, (N,)
        Diameter of each point in data pixels, as napari draws it.

    Returns
    -------
    array of int32, YX
        Labels 1..N over the points' bounding box.
    tuple of float
        ``(x0, y0)``: where the box's pixel (0, 0) lies.

    Raises
    ------
    OncoAIError
        When the layer has no points, or points lie on different planes.
    """
    from skimage.draw import disk

    from model_zoo.errors import OncoAIError

    if points.size == 0:
        raise OncoAIError("the points layer is empty; add points before saving")
    _check_one_plane(points)
    yx = points[:, -2:].astype(float)
    radii = np.broadcast_to(np.asarray(size, dtype=float), (len(yx),)) / 2.0
    radii = np.maximum(radii, 0.5)
    start = np.floor((yx - radii[:, None]).min(axis=0))
    stop = np.ceil((yx + radii[:, None]).max(axis=0)) + 1
    shape = tuple(int(s) for s in stop - start)
    labels = np.zeros(shape, dtype=np.int32)
    for i, (centre, radius) in enumerate(zip(yx - start, radii, strict=True)):
        rr, cc = disk(tuple(centre), radius, shape=shape)
        labels[rr, cc] = i + 1
    return labels, (float(start[1]), float(start[0]))


def _check_one_plane(coords: np.ndarray) -> None:
    from model_zoo.errors import OncoAIError

    if coords.shape[1] <= 2:
        return
    leading = coords[:, :-2]
    if not np.all(leading == leading[0]):
        raise OncoAIError(
            "the layer's objects lie on several planes (z or t); objects are saved "
            "from one plane: copy that plane's objects to a new layer first"
        )
