"""Turn model outputs into objects: labels, outlines and measurements.

Every host (napari layers, QuPath GeoJSON, ImageJ RoiSets, CSV tables) reads
what these functions return, so the conventions are fixed here once:

- Label images are int32, 0 is background and objects are numbered 1..N.
- Measurement tables are dicts of equal-length numpy arrays, one row per label,
  sorted by label. Centroids are in array-index coordinates: the centre of
  pixel ``(r, c)`` is ``(y, x) = (r, c)``, as in napari and scikit-image.
- Outlines follow pixel edges, as in QuPath and ImageJ: pixel ``(r, c)`` covers
  the square ``[c, c + 1] x [r, r + 1]`` in ``(x, y)``, so a polygon's centroid
  is the table's centroid plus 0.5 on each axis.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import shapely
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.measure import regionprops
from skimage.segmentation import relabel_sequential, watershed

from model_zoo.errors import OncoAIError

if TYPE_CHECKING:
    from shapely import Geometry

__all__ = [
    "labels_to_polygons",
    "measure_instances",
    "polygons_to_labels",
    "probability_to_labels",
    "stardist_to_labels",
]

log = logging.getLogger(__name__)

_STARDIST_HINT = "install the stardist extra: pip install napari-oncoai[stardist]"


# --------------------------------------------------------------------------
# Probability maps to labels
# --------------------------------------------------------------------------


def probability_to_labels(
    probability: np.ndarray,
    *,
    threshold: float = 0.5,
    split_touching: bool = True,
    min_distance: int = 4,
    min_size: int = 10,
) -> np.ndarray:
    """Label the objects of a foreground probability map.

    Pixels with ``probability > threshold`` are foreground. With
    ``split_touching``, touching objects are separated by a watershed on the
    distance to the background, seeded at its local maxima; all maxima on one
    flat ridge form a single seed, so elongated objects are not cut into pieces.
    Objects smaller than ``min_size`` pixels are dropped and the rest numbered
    1..N (in raster order of their seed, or of their first pixel without
    splitting).

    Parameters
    ----------
    probability : array of float, (Z)YX
        Foreground probability in [0, 1].
    threshold : float
        Foreground is strictly above this value, in [0, 1).
    split_touching : bool
        Split touching objects by a distance-transform watershed; without it,
        each face-connected foreground component is one object.
    min_distance : int
        Smallest distance in pixels between two seeds (at least 1); larger
        values merge more.
    min_size : int
        Objects with fewer pixels than this are removed.

    Returns
    -------
    array of int32, (Z)YX
        Labels of the same shape; all zeros when nothing is above threshold.

    Raises
    ------
    OncoAIError
        For a map that is not 2D or 3D, holds values outside [0, 1] or NaN, or
        for parameters out of range.

    Examples
    --------
    >>> p = np.zeros((20, 20)); p[2:8, 2:8] = 0.9; p[12:18, 12:18] = 0.9
    >>> int(probability_to_labels(p, min_size=4).max())
    2
    """
    probability = _check_probability(probability)
    if not 0.0 <= threshold < 1.0:
        raise OncoAIError(
            f"threshold must be in [0, 1); got {threshold}. Pick e.g. 0.5."
        )
    if int(min_distance) != min_distance or min_distance < 1:
        raise OncoAIError(
            f"min_distance must be a whole number of pixels >= 1; got "
            f"{min_distance}. Pick e.g. 4."
        )
    if int(min_size) != min_size or min_size < 0:
        raise OncoAIError(
            f"min_size must be a whole number of pixels >= 0; got {min_size}. "
            "Pick e.g. 10."
        )

    foreground = probability > threshold
    if not foreground.any():
        return np.zeros(probability.shape, dtype=np.int32)
    if split_touching:
        labels = _split_each_component(foreground, int(min_distance))
    else:
        labels, _ = ndi.label(foreground)

    labels = _remove_small(labels, int(min_size))
    labels, _, _ = relabel_sequential(labels)
    return labels.astype(np.int32, copy=False)


def _check_probability(probability: np.ndarray) -> np.ndarray:
    array = np.asarray(probability)
    if array.dtype == bool:
        array = array.astype(np.float32)
    if array.ndim not in (2, 3):
        raise OncoAIError(
            f"the probability map must be 2D (YX) or 3D (ZYX); got shape "
            f"{array.shape}. Select one channel and time point first."
        )
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(
        array.dtype, np.complexfloating
    ):
        raise OncoAIError(
            f"the probability map must hold real numbers; got dtype {array.dtype}."
        )
    if array.size == 0:
        raise OncoAIError(
            f"the probability map is empty; got shape {array.shape}. Check the input."
        )
    low, high = float(np.min(array)), float(np.max(array))
    if not (0.0 <= low and high <= 1.0):
        raise OncoAIError(
            f"probabilities must lie in [0, 1]; got values from {low} to {high}. "
            "Apply the model's sigmoid or softmax, or rescale the output first."
        )
    return array


def _split_each_component(foreground: np.ndarray, min_distance: int) -> np.ndarray:
    """Split touching objects one connected component at a time.

    Working on each component's bounding box (one pixel wider, inside the image)
    gives the same distance map as the whole image, while keeping every call into
    scipy and scikit-image short: whole-image calls held Python's interpreter lock
    for up to 0.4 s on a 2048² image and froze the host's event loop.
    """
    components, _ = ndi.label(foreground)
    labels = np.zeros(foreground.shape, dtype=np.int32)
    next_label = 0
    for index, box in enumerate(ndi.find_objects(components), start=1):
        if box is None:
            continue
        wide = tuple(
            slice(max(0, b.start - 1), min(n, b.stop + 1))
            for b, n in zip(box, foreground.shape)
        )
        mask = components[wide] == index
        local = _split_by_watershed(mask, min_distance)
        inside = local > 0
        labels[wide][inside] = local[inside] + next_label
        next_label += int(local.max())
    return labels


def _split_by_watershed(foreground: np.ndarray, min_distance: int) -> np.ndarray:
    """Separate touching objects; every foreground pixel ends up labelled."""
    distance = ndi.distance_transform_edt(foreground)
    components, _ = ndi.label(foreground)
    peaks = peak_local_max(
        distance,
        min_distance=min_distance,
        labels=components,
        exclude_border=False,
    )

    # The distance map of an elongated object has a flat ridge, and
    # peak_local_max puts several peaks on it, min_distance apart. Pixels that
    # no neighbour exceeds form connected plateaus of equal height; seeding
    # from whole plateaus gives one seed per ridge.
    full = ndi.generate_binary_structure(foreground.ndim, foreground.ndim)
    plateau = foreground & (distance == ndi.maximum_filter(distance, footprint=full))
    plateaus, _ = ndi.label(plateau, structure=full)
    chosen = np.unique(plateaus[tuple(peaks.T)])
    markers = np.where(np.isin(plateaus, chosen[chosen > 0]), plateaus, 0)

    labels = watershed(-distance, markers, mask=foreground)

    # A component without any seed (not expected, but cheap to guard) is kept
    # whole rather than silently lost.
    unseeded = foreground & (labels == 0)
    if unseeded.any():
        extra, _ = ndi.label(unseeded)
        labels = np.where(extra > 0, extra + labels.max(), labels)
    return labels


def _remove_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    if min_size <= 1:
        return labels
    sizes = np.bincount(labels.ravel())
    small = sizes < min_size
    small[0] = False
    return np.where(small[labels], 0, labels)


# --------------------------------------------------------------------------
# StarDist
# --------------------------------------------------------------------------


def stardist_to_labels(
    probability: np.ndarray,
    distances: np.ndarray,
    *,
    prob_threshold: float,
    nms_threshold: float,
    grid: tuple[int, int] = (1, 1),
) -> np.ndarray:
    """Label star-convex objects from a StarDist model's two outputs.

    Candidates are the pixels with ``probability > prob_threshold``, except the
    two pixels nearest each border (stardist's default). Their polygons are
    pruned by stardist's non-maximum suppression and painted in order of
    increasing probability, so the most probable object wins where two overlap.
    Only ``stardist.nms`` and ``stardist.geometry`` are used; they need no
    TensorFlow (``stardist.models`` does, and is not imported).

    Parameters
    ----------
    probability : array of float, (Y', X')
        Object probability at the model's output resolution.
    distances : array of float, (Y', X', n_rays)
        Radial distances in full-resolution pixels, rays evenly spaced.
    prob_threshold : float
        Keep candidates above this probability, in [0, 1).
    nms_threshold : float
        Suppress a polygon overlapping a more probable one by more than this
        fraction, in [0, 1].
    grid : tuple of int
        The model's output subsampling ``(gy, gx)``; the labels have shape
        ``(Y' * gy, X' * gx)``.

    Returns
    -------
    array of int32, YX
        Labels numbered 1..N; zeros when nothing passes.

    Raises
    ------
    OncoAIError
        When the ``stardist`` package is missing, or for mismatched shapes and
        out-of-range parameters.
    """
    try:
        from stardist.geometry import polygons_to_label
        from stardist.nms import non_maximum_suppression
    except ImportError as error:
        raise OncoAIError(
            f"StarDist post-processing needs the stardist package ({error}); "
            f"{_STARDIST_HINT}"
        ) from error

    probability, distances, grid = _check_stardist_inputs(
        probability, distances, prob_threshold, nms_threshold, grid
    )
    shape = (probability.shape[0] * grid[0], probability.shape[1] * grid[1])
    points, scores, rays = non_maximum_suppression(
        distances,
        probability,
        grid=grid,
        prob_thresh=prob_threshold,
        nms_thresh=nms_threshold,
    )
    log.debug("stardist NMS kept %d polygons", len(points))
    if len(points) == 0:
        return np.zeros(shape, dtype=np.int32)
    labels = polygons_to_label(rays, points, shape=shape, prob=scores)
    # A polygon painted over completely by more probable ones leaves a gap in
    # the numbering.
    labels, _, _ = relabel_sequential(labels)
    return labels.astype(np.int32, copy=False)


def _check_stardist_inputs(
    probability: np.ndarray,
    distances: np.ndarray,
    prob_threshold: float,
    nms_threshold: float,
    grid: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    probability = np.asarray(probability, dtype=np.float32)
    distances = np.asarray(distances, dtype=np.float32)
    if probability.ndim != 2:
        raise OncoAIError(
            f"StarDist probability must be 2D (YX); got shape {probability.shape}. "
            "3D StarDist models are not supported."
        )
    if distances.ndim != 3 or distances.shape[:2] != probability.shape:
        raise OncoAIError(
            f"StarDist distances must have shape (Y, X, n_rays) matching the "
            f"probability {probability.shape}; got {distances.shape}. Put the "
            "ray axis last."
        )
    if distances.shape[2] < 3:
        raise OncoAIError(
            f"StarDist needs at least 3 rays; got {distances.shape[2]}. Check "
            "which output holds the distances."
        )
    if not 0.0 <= prob_threshold < 1.0:
        raise OncoAIError(
            f"prob_threshold must be in [0, 1); got {prob_threshold}. "
            "Use the model's value, e.g. 0.5."
        )
    if not 0.0 <= nms_threshold <= 1.0:
        raise OncoAIError(
            f"nms_threshold must be in [0, 1]; got {nms_threshold}. "
            "Use the model's value, e.g. 0.4."
        )
    if len(grid) != 2 or any(int(g) != g or g < 1 for g in grid):
        raise OncoAIError(
            f"grid must be two whole numbers >= 1; got {tuple(grid)}. "
            "Use the model's grid, e.g. (2, 2)."
        )
    return probability, distances, (int(grid[0]), int(grid[1]))


# --------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------


def measure_instances(
    labels: np.ndarray,
    intensity: np.ndarray | None = None,
    *,
    channel_axis: int | None = None,
    probability: np.ndarray | None = None,
    pixel_size: tuple[float, ...] | None = None,
    classes: np.ndarray | None = None,
    class_names: list[str] | None = None,
) -> dict[str, np.ndarray]:
    """Measure every object of a label image.

    Parameters
    ----------
    labels : array of int, (Z)YX
        0 is background; numbering may have gaps.
    intensity : array, (Z)YX or with one extra channel axis, optional
        The image to average inside each object.
    channel_axis : int, optional
        The channel axis of ``intensity``; None for a single channel.
    probability : array of float, (Z)YX, optional
        Averaged inside each object into the ``probability`` column.
    pixel_size : tuple of float, optional
        Micrometres per pixel: ``(y, x)`` for 2D labels, ``(z, y, x)`` for 3D.
        3D labels with only ``(y, x)`` get no physical columns.
    classes : array of int, optional
        Either one class id per object, (N,) in label order, or a class map,
        (Z)YX, from which each object takes its most frequent class (the
        lowest id on a tie).
    class_names : list of str, optional
        The name of each class id; adds the ``class_name`` column.

    Returns
    -------
    dict of str to array, (N,)
        ``label``, ``area_px`` (pixels or voxels), ``centroid_y``,
        ``centroid_x`` (and ``centroid_z`` in 3D), in 2D also
        ``perimeter_px``, ``eccentricity`` and ``circularity``; then
        ``mean_intensity`` or ``mean_intensity_c0``, ``mean_intensity_c1``...,
        ``probability``, ``class_id``, ``class_name``, and ``area_um2``,
        ``perimeter_um`` (2D) or ``volume_um3`` (3D) as the inputs allow.
        With no objects every column is present with length 0.

    Notes
    -----
    ``perimeter_px`` is the Crofton estimate (four directions), which is close
    to the true length for round objects and for one-pixel-wide lines alike;
    ``circularity`` is ``4 pi area / perimeter**2`` clipped to [0, 1], so tiny
    objects read as round. For anisotropic pixels ``perimeter_um`` uses the
    geometric mean of the two pixel sizes, an approximation.

    Raises
    ------
    OncoAIError
        When shapes disagree, the labels are not integers, or class ids fall
        outside ``class_names``.
    """
    labels = _check_labels(labels, dims=(2, 3))
    spatial = labels.ndim == 2
    intensity, n_channels = _intensity_channel_last(intensity, channel_axis, labels)

    raw = _basic_properties(labels, spatial)

    table: dict[str, np.ndarray] = {
        "label": raw["label"].astype(np.int64),
        "area_px": raw["area"].astype(np.int64),
    }
    if spatial:
        table["perimeter_px"] = raw["perimeter_crofton"].astype(np.float64)
    for index, axis in enumerate("zyx"[3 - labels.ndim :]):
        table[f"centroid_{axis}"] = raw[f"centroid-{index}"].astype(np.float64)
    if spatial:
        table["eccentricity"] = raw["eccentricity"].astype(np.float64)
        table["circularity"] = _circularity(table["area_px"], table["perimeter_px"])
    if intensity is not None:
        table.update(_intensity_columns(intensity, n_channels, labels, table["label"]))
    if probability is not None:
        table["probability"] = _mean_inside(probability, labels, table["label"])
    if classes is not None:
        table.update(_class_columns(classes, class_names, labels, table["label"]))
    if pixel_size is not None:
        table.update(_physical_columns(table, pixel_size, labels.ndim))
    return table


def _basic_properties(labels: np.ndarray, spatial: bool) -> dict[str, np.ndarray]:
    """Label, area, centroid, and in 2D perimeter and eccentricity.

    Areas and centroids come from pixel counts per label; the shape properties
    from skimage object by object.  Both keep each call into compiled code short:
    skimage's whole-image paths held the GIL for about half a second on a 2048²
    image, which froze the host's event loop.
    """
    flat = labels.ravel()
    size = int(flat.max()) + 1 if flat.size else 1
    area = np.bincount(flat, minlength=size)
    ids = np.nonzero(area)[0]
    ids = ids[ids > 0]
    raw: dict[str, np.ndarray] = {"label": ids, "area": area[ids]}
    for index, coords in enumerate(np.indices(labels.shape, sparse=True)):
        full = np.broadcast_to(coords, labels.shape).ravel()
        sums = np.bincount(flat, weights=full.astype(np.float64), minlength=size)
        raw[f"centroid-{index}"] = sums[ids] / area[ids]
    if spatial:
        regions = {r.label: r for r in regionprops(labels)}
        raw["perimeter_crofton"] = np.array(
            [regions[i].perimeter_crofton for i in ids], dtype=np.float64
        )
        raw["eccentricity"] = np.array(
            [regions[i].eccentricity for i in ids], dtype=np.float64
        )
    return raw


def _check_labels(labels: np.ndarray, dims: tuple[int, ...]) -> np.ndarray:
    array = np.asarray(labels)
    if array.ndim not in dims:
        names = " or ".join({2: "2D (YX)", 3: "3D (ZYX)"}[d] for d in dims)
        raise OncoAIError(
            f"labels must be {names}; got shape {array.shape}. Select one plane "
            "or time point first."
        )
    if array.dtype == bool:
        array = array.astype(np.int32)
    if not np.issubdtype(array.dtype, np.integer):
        raise OncoAIError(
            f"labels must be an integer array; got dtype {array.dtype}. Convert "
            "a probability map with probability_to_labels first."
        )
    if array.size and array.min() < 0:
        raise OncoAIError(
            f"labels must be >= 0; got a minimum of {array.min()}. Use 0 for "
            "background and positive numbers for objects."
        )
    return array


def _intensity_channel_last(
    intensity: np.ndarray | None, channel_axis: int | None, labels: np.ndarray
) -> tuple[np.ndarray | None, int]:
    if intensity is None:
        return None, 0
    array = np.asarray(intensity)
    if channel_axis is not None:
        try:
            array = np.moveaxis(array, channel_axis, -1)
        except np.exceptions.AxisError as error:
            raise OncoAIError(
                f"channel_axis {channel_axis} does not exist in an intensity image "
                f"of shape {array.shape}; pass the index of its channel axis."
            ) from error
        spatial_shape = array.shape[:-1]
    else:
        spatial_shape = array.shape
    if spatial_shape != labels.shape:
        raise OncoAIError(
            f"intensity image of spatial shape {spatial_shape} does not match the "
            f"labels {labels.shape}; pass the image the labels were made from "
            "(and channel_axis if it has channels)."
        )
    if channel_axis is None:
        return array, 1
    if array.shape[-1] == 1:
        return array[..., 0], 1
    return array, array.shape[-1]


def _intensity_columns(
    intensity: np.ndarray, n_channels: int, labels: np.ndarray, label_ids: np.ndarray
) -> dict[str, np.ndarray]:
    if n_channels == 1:
        return {"mean_intensity": _mean_inside(intensity, labels, label_ids)}
    return {
        f"mean_intensity_c{channel}": _mean_inside(
            intensity[..., channel], labels, label_ids
        )
        for channel in range(n_channels)
    }


def _circularity(area: np.ndarray, perimeter: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        value = 4.0 * np.pi * area / perimeter**2
    return np.clip(np.nan_to_num(value, nan=1.0, posinf=1.0), 0.0, 1.0)


def _mean_inside(
    values: np.ndarray, labels: np.ndarray, label_ids: np.ndarray
) -> np.ndarray:
    values = np.asarray(values)
    if values.shape != labels.shape:
        raise OncoAIError(
            f"probability map of shape {values.shape} does not match the labels "
            f"{labels.shape}; pass the map the labels were made from."
        )
    if len(label_ids) == 0:
        return np.zeros(0, dtype=np.float64)
    # Sums per label by bincount: one short pass, where scipy's labelled mean
    # sorts every pixel first and holds the GIL for a noticeable time.
    flat = labels.ravel()
    size = int(flat.max()) + 1
    sums = np.bincount(flat, weights=values.ravel().astype(np.float64), minlength=size)
    counts = np.bincount(flat, minlength=size)
    ids = np.asarray(label_ids, dtype=np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums[ids] / counts[ids]


def _class_columns(
    classes: np.ndarray,
    class_names: list[str] | None,
    labels: np.ndarray,
    label_ids: np.ndarray,
) -> dict[str, np.ndarray]:
    classes = np.asarray(classes)
    if not np.issubdtype(classes.dtype, np.integer):
        raise OncoAIError(
            f"classes must be integer class ids; got dtype {classes.dtype}."
        )
    if classes.shape == labels.shape:
        class_id = _majority_class(classes, labels, label_ids)
    elif classes.shape == label_ids.shape:
        class_id = classes.astype(np.int64)
    else:
        raise OncoAIError(
            f"classes must have one id per object ({len(label_ids)},) or the "
            f"labels' shape {labels.shape}; got {classes.shape}."
        )
    columns = {"class_id": class_id}
    if class_names is not None:
        names = list(class_names)
        bad = class_id[(class_id < 0) | (class_id >= len(names))]
        if bad.size:
            raise OncoAIError(
                f"class id {int(bad[0])} has no name among {len(names)} "
                f"class_names {names}; give one name per class id from 0."
            )
        columns["class_name"] = np.array([names[i] for i in class_id], dtype=str)
    return columns


def _majority_class(
    classes: np.ndarray, labels: np.ndarray, label_ids: np.ndarray
) -> np.ndarray:
    if len(label_ids) == 0:
        return np.zeros(0, dtype=np.int64)
    inside = labels > 0
    object_class = classes[inside].astype(np.int64)
    if object_class.min() < 0:
        raise OncoAIError(
            f"class ids must be >= 0; got {object_class.min()}. Use 0, 1, 2..."
        )
    n_classes = int(object_class.max()) + 1
    counts = np.bincount(
        labels[inside].astype(np.int64) * n_classes + object_class,
        minlength=(int(label_ids.max()) + 1) * n_classes,
    ).reshape(-1, n_classes)
    # argmax takes the first maximum: the lowest class id wins a tie.
    return counts[label_ids].argmax(axis=1).astype(np.int64)


def _physical_columns(
    table: dict[str, np.ndarray], pixel_size: tuple[float, ...], ndim: int
) -> dict[str, np.ndarray]:
    sizes = tuple(float(s) for s in pixel_size)
    if any(not np.isfinite(s) or s <= 0 for s in sizes):
        raise OncoAIError(
            f"pixel_size must be positive micrometres per pixel; got {pixel_size}."
        )
    if ndim == 3 and len(sizes) == 2:
        log.warning("3D labels with a (y, x) pixel size only: no volume_um3 column")
        return {}
    if len(sizes) != ndim:
        raise OncoAIError(
            f"pixel_size must have {ndim} values for {ndim}D labels; got "
            f"{pixel_size}. Give {'(y, x)' if ndim == 2 else '(z, y, x)'}."
        )
    area = table["area_px"].astype(np.float64)
    if ndim == 3:
        return {"volume_um3": area * sizes[0] * sizes[1] * sizes[2]}
    return {
        "area_um2": area * sizes[0] * sizes[1],
        "perimeter_um": table["perimeter_px"] * np.sqrt(sizes[0] * sizes[1]),
    }


# --------------------------------------------------------------------------
# Outlines
# --------------------------------------------------------------------------


def labels_to_polygons(
    labels: np.ndarray,
    *,
    offset: tuple[float, float] = (0.0, 0.0),
    simplify: float = 0.5,
) -> dict[int, Geometry]:
    """Outline every object along its pixel edges.

    Each row run of an object becomes a box and the boxes are merged, so the
    outline is exact: pixel ``(r, c)`` covers ``[c, c + 1] x [r, r + 1]``.
    Holes are kept; an object in several pieces (including pieces that touch
    only at a corner) becomes a ``MultiPolygon``.

    Parameters
    ----------
    labels : array of int, YX
        0 is background.
    offset : tuple of float
        ``(x0, y0)`` added to every coordinate, e.g. the tile's place on the
        level-0 slide.
    simplify : float
        Douglas-Peucker tolerance in pixels, topology preserved; 0 only drops
        redundant vertices along straight edges, so the outline stays exact.

    Returns
    -------
    dict of int to shapely Polygon or MultiPolygon
        Valid geometries in ``(x, y)`` pixel coordinates, keyed by label in
        increasing order.

    Notes
    -----
    Objects are simplified one at a time, so with ``simplify > 0`` the
    outlines of two touching objects may overlap or leave a sliver between
    them by up to the tolerance.

    Examples
    --------
    >>> labels = np.array([[0, 1], [0, 1]])
    >>> labels_to_polygons(labels, simplify=0)[1].bounds
    (1.0, 0.0, 2.0, 2.0)
    """
    labels = _check_labels(labels, dims=(2,))
    if simplify < 0 or not np.isfinite(simplify):
        raise OncoAIError(
            f"simplify must be a tolerance >= 0 pixels; got {simplify}. Use 0 for "
            "exact pixel outlines."
        )
    rows, starts, stops, values = _row_runs(labels)
    if len(values) == 0:
        return {}

    order = np.argsort(values, kind="stable")
    rows, starts, stops, values = (
        rows[order],
        starts[order],
        stops[order],
        values[order],
    )
    boxes = shapely.box(starts, rows, stops, rows + 1)
    label_ids, first = np.unique(values, return_index=True)
    bounds = np.append(first, len(values))

    merged = np.empty(len(label_ids), dtype=object)
    for index in range(len(label_ids)):
        merged[index] = shapely.union_all(boxes[bounds[index] : bounds[index + 1]])
    outlines = shapely.simplify(merged, float(simplify), preserve_topology=True)
    outlines = _ensure_valid(outlines)
    x0, y0 = float(offset[0]), float(offset[1])
    if x0 or y0:
        outlines = shapely.transform(outlines, lambda xy: xy + (x0, y0))
    return {int(i): g for i, g in zip(label_ids, outlines, strict=True)}


def _row_runs(
    labels: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return (row, first column, column after last, label) of every run."""
    height, width = labels.shape
    padded = np.zeros((height, width + 2), dtype=labels.dtype)
    padded[:, 1:-1] = labels
    # Comparing each padded column with the one before marks the left edge of
    # pixel c at index c, where a run starts or the previous one ends.
    edge_rows, edge_cols = np.nonzero(padded[:, 1:] != padded[:, :-1])
    same_row = edge_rows[1:] == edge_rows[:-1]
    rows = edge_rows[:-1][same_row]
    starts = edge_cols[:-1][same_row]
    stops = edge_cols[1:][same_row]
    values = labels[rows, starts]
    keep = values > 0
    return rows[keep], starts[keep], stops[keep], values[keep]


def _ensure_valid(geometries: np.ndarray) -> np.ndarray:
    invalid = ~shapely.is_valid(geometries)
    for index in np.flatnonzero(invalid):
        repaired = shapely.make_valid(geometries[index])
        # make_valid may return lines or points beside the polygons; an outline
        # keeps only the areas.
        parts = [
            p
            for p in shapely.get_parts(repaired)
            if p.geom_type in ("Polygon", "MultiPolygon")
        ]
        geometries[index] = shapely.union_all(parts)
    return geometries


def polygons_to_labels(
    polygons: dict[int, Geometry],
    shape: tuple[int, int],
    *,
    offset: tuple[float, float] = (0.0, 0.0),
) -> np.ndarray:
    """Paint outlines back into a label image; the inverse of ``labels_to_polygons``.

    A pixel takes a polygon's label when its centre ``(c + 0.5, r + 0.5)`` lies
    strictly inside it (holes excluded). Where polygons overlap, the higher
    label wins.

    Parameters
    ----------
    polygons : dict of int to shapely geometry
        Label to ``Polygon`` or ``MultiPolygon`` in ``(x, y)`` pixel coordinates.
    shape : tuple of int
        ``(height, width)`` of the label image.
    offset : tuple of float
        ``(x0, y0)`` of the image's pixel (0, 0) corner in polygon coordinates.

    Returns
    -------
    array of int32, YX

    Raises
    ------
    OncoAIError
        For labels that are not positive, or a shape that is not 2D.
    """
    if len(shape) != 2 or any(int(s) != s or s < 0 for s in shape):
        raise OncoAIError(
            f"shape must be (height, width) in pixels; got {tuple(shape)}."
        )
    height, width = int(shape[0]), int(shape[1])
    labels = np.zeros((height, width), dtype=np.int32)
    x0, y0 = float(offset[0]), float(offset[1])
    for label in sorted(polygons):
        if int(label) != label or not 0 < label <= np.iinfo(np.int32).max:
            raise OncoAIError(
                f"polygon labels must be positive int32 numbers; got {label}."
            )
        geometry = polygons[label]
        if geometry is None or geometry.is_empty:
            continue
        xmin, ymin, xmax, ymax = geometry.bounds
        c0 = max(int(np.floor(xmin - x0)), 0)
        c1 = min(int(np.ceil(xmax - x0)), width)
        r0 = max(int(np.floor(ymin - y0)), 0)
        r1 = min(int(np.ceil(ymax - y0)), height)
        if c0 >= c1 or r0 >= r1:
            continue
        cols, rows = np.meshgrid(np.arange(c0, c1), np.arange(r0, r1))
        inside = shapely.contains_xy(geometry, cols + 0.5 + x0, rows + 0.5 + y0)
        labels[rows[inside], cols[inside]] = label
    return labels
