"""Read ImageJ ``.roi`` files and RoiSet zips as regions and annotations.

An ImageJ ROI comes in as an :class:`ImageJRoi`: its kind, its vertices in
image pixels, and a shapely geometry.  A ROI can then serve as the region a
model runs on (:meth:`ImageJRoi.region`), or as an annotation to compare a
result against (:func:`rois_to_labels`, :func:`rois_to_geojson`).

Coordinates follow ImageJ: ``x`` to the right, ``y`` down, in pixels, with
``(0, 0)`` the top-left corner of the top-left pixel.  A pixel belongs to an
area ROI when its centre lies inside the outline, with ImageJ's rule for
centres exactly on an edge, so masks match ImageJ's own pixel for pixel (tested
on every ROI type against ImageJ 1.53t).

The binary format is decoded by :mod:`roifile`; this module adds the meaning.

Known limitations: rounded corners of a rectangle are ignored (the square
corners are kept); an oval is outlined as a smooth ellipse of 72 vertices,
whereas ImageJ traces it on the pixel grid, so for some sizes their masks may
differ by a pixel along the edge; text, arrow and image ROIs are read as their
bounding rectangle.
"""

from __future__ import annotations

import logging
import struct
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import roifile
import shapely
from shapely.geometry import LineString, MultiPoint, MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

from model_zoo.errors import OncoAIError

log = logging.getLogger(__name__)

AREA_KINDS = frozenset(
    {"rectangle", "oval", "ellipse", "polygon", "freehand", "traced", "composite"}
)
"""Kinds that enclose an area and can be filled into a mask or a label."""

LINE_KINDS = frozenset({"line", "polyline", "freeline", "angle"})

_OVAL_VERTICES = 72

# ImageJ's ROI_TYPE names, as read-roi and ImageJ's getTypeAsString() spell them.
_IMAGEJ_TYPES = {
    roifile.ROI_TYPE.POLYGON: "polygon",
    roifile.ROI_TYPE.RECT: "rectangle",
    roifile.ROI_TYPE.OVAL: "oval",
    roifile.ROI_TYPE.LINE: "line",
    roifile.ROI_TYPE.FREELINE: "freeline",
    roifile.ROI_TYPE.POLYLINE: "polyline",
    roifile.ROI_TYPE.NOROI: "noroi",
    roifile.ROI_TYPE.FREEHAND: "freehand",
    roifile.ROI_TYPE.TRACED: "traced",
    roifile.ROI_TYPE.ANGLE: "angle",
    roifile.ROI_TYPE.POINT: "point",
}

# The operations of a java.awt.geom.PathIterator, as ImageJ stores a ShapeRoi.
_MOVETO, _LINETO, _QUADTO, _CUBICTO, _CLOSE = 0, 1, 2, 3, 4
_PATH_ARGS = {_MOVETO: 2, _LINETO: 2, _QUADTO: 4, _CUBICTO: 6, _CLOSE: 0}
_CURVE_STEPS = 8


@dataclass(frozen=True)
class EllipseParams:
    """An ImageJ ellipse ROI: the ends of its major axis and its aspect ratio.

    Attributes
    ----------
    x1, y1, x2, y2 : float
        The two ends of the major axis, in pixels.
    aspect_ratio : float
        Minor over major axis length, in (0, 1].
    """

    x1: float
    y1: float
    x2: float
    y2: float
    aspect_ratio: float


@dataclass(frozen=True, eq=False)
class ImageJRoi:
    """One ImageJ ROI, decoded.

    Attributes
    ----------
    name : str
        The ROI's name, or the file or zip entry name when it has none.
    kind : str
        ``rectangle``, ``oval``, ``ellipse``, ``polygon``, ``freehand``,
        ``traced``, ``line``, ``polyline``, ``freeline``, ``angle``, ``point``
        or ``composite``.
    imagej_type : str
        The type ImageJ stores, e.g. ``freehand`` for an ellipse and
        ``rectangle`` for a composite.
    left, top, width, height : int
        The integer bounding box ImageJ stores, in pixels.
    coordinates : array of float64, (N, 2)
        Vertices as ``(x, y)``: the outline for the polygon kinds, the two ends
        of a line, the points of a point ROI, the corners of a rectangle and the
        outline of an oval or ellipse.
    paths : tuple of array of float64, (N, 2)
        For a composite ROI, each sub-path as ``(x, y)`` vertices, unclosed.
    ellipse : EllipseParams or None
        The ellipse's own parameters, for ``kind == "ellipse"``.
    position : int
        The stack slice (1-based) the ROI belongs to; 0 means every slice.
    hyperstack_position : tuple of int
        ``(c, z, t)``, 1-based; zeros when the ROI is not tied to a hyperstack.
    stroke_width : float
        The line width; a line ROI with a width covers a band of that width.
    """

    name: str
    kind: str
    imagej_type: str
    left: int
    top: int
    width: int
    height: int
    coordinates: np.ndarray
    paths: tuple[np.ndarray, ...] = ()
    ellipse: EllipseParams | None = None
    position: int = 0
    hyperstack_position: tuple[int, int, int] = (0, 0, 0)
    stroke_width: float = 0.0

    @property
    def is_area(self) -> bool:
        """True when the ROI encloses an area."""
        return self.kind in AREA_KINDS

    def geometry(self) -> BaseGeometry:
        """Return the ROI as a shapely geometry in pixels.

        Returns
        -------
        shapely geometry
            ``Polygon`` or ``MultiPolygon`` for area kinds (a composite fills
            its paths by the even-odd rule, so an inner path is a hole);
            ``LineString`` for line kinds; ``MultiPoint`` for points.
        """
        if self.kind == "composite":
            return _even_odd(self.paths)
        if self.kind in AREA_KINDS:
            return _valid_polygon(self.coordinates)
        if self.kind in LINE_KINDS:
            return LineString(self.coordinates)
        return MultiPoint(self.coordinates)

    def region(self) -> tuple[int, int, int, int]:
        """Return the bounding box ``(x, y, width, height)`` in whole pixels.

        This is the region to run a model on, e.g. the ``region`` of a service
        job.
        """
        x0, y0, x1, y1 = self.geometry().bounds
        x, y = int(np.floor(x0)), int(np.floor(y0))
        return x, y, max(int(np.ceil(x1)) - x, 1), max(int(np.ceil(y1)) - y, 1)

    def mask(self, shape: tuple[int, int]) -> np.ndarray:
        """Fill the ROI into a boolean image.

        Parameters
        ----------
        shape : tuple of int
            ``(height, width)`` of the image.

        Returns
        -------
        array of bool, YX
            True where a pixel's centre lies inside the ROI.

        Raises
        ------
        OncoAIError
            For a line or point ROI, which has no area.
        """
        if not self.is_area:
            raise OncoAIError(
                f"ImageJ ROI {self.name!r} is a {self.kind}, which has no area; "
                "draw a rectangle, oval, polygon or freehand ROI instead."
            )
        return _fill(_rings(self), shape)


def read_roi(path: str | Path) -> ImageJRoi:
    """Read one ImageJ ``.roi`` file.

    Parameters
    ----------
    path : str or Path
        The ``.roi`` file.

    Returns
    -------
    ImageJRoi

    Raises
    ------
    OncoAIError
        When the file is missing or is not an ImageJ ROI.

    Examples
    --------
    >>> roi = read_roi("oval.roi")  # doctest: +SKIP
    >>> roi.kind, roi.region()  # doctest: +SKIP
    ('oval', (97, 58, 34, 37))
    """
    path = Path(path)
    if not path.is_file():
        raise OncoAIError(f"ImageJ ROI file not found: {path}; check the path.")
    return _decode(path.read_bytes(), path.stem, str(path))


def read_roi_set(path: str | Path) -> list[ImageJRoi]:
    """Read an ImageJ RoiSet ``.zip``, as the ROI Manager saves it.

    Parameters
    ----------
    path : str or Path
        The zip of ``.roi`` files.

    Returns
    -------
    list of ImageJRoi
        In the order of the zip's entries, which is the ROI Manager's order.
    """
    path = Path(path)
    if not path.is_file():
        raise OncoAIError(f"ImageJ RoiSet not found: {path}; check the path.")
    try:
        with zipfile.ZipFile(path) as zf:
            entries = [
                (name, zf.read(name))
                for name in zf.namelist()
                if name.lower().endswith(".roi")
            ]
    except zipfile.BadZipFile as err:
        raise OncoAIError(
            f"not an ImageJ RoiSet zip: {path} ({err}); save the ROI Manager with "
            "More > Save..."
        ) from err
    return [_decode(data, Path(name).stem, f"{path}:{name}") for name, data in entries]


def read_rois(path: str | Path) -> list[ImageJRoi]:
    """Read a ``.roi`` file or a RoiSet ``.zip`` into a list of ROIs."""
    path = Path(path)
    if path.suffix.lower() == ".zip":
        return read_roi_set(path)
    if path.suffix.lower() == ".roi":
        return [read_roi(path)]
    raise OncoAIError(
        f"not an ImageJ ROI file: {path}; give a .roi file or a RoiSet .zip."
    )


def rois_to_labels(rois: Sequence[ImageJRoi], shape: tuple[int, int]) -> np.ndarray:
    """Paint area ROIs into a label image, the first ROI as label 1.

    Later ROIs paint over earlier ones where they overlap, as in a stack of
    annotations.  Line and point ROIs are skipped with a log message.

    Parameters
    ----------
    rois : sequence of ImageJRoi
        The annotations.
    shape : tuple of int
        ``(height, width)`` of the image.

    Returns
    -------
    array of int32, YX
        0 is background; ROI ``i`` (0-based) is label ``i + 1``.
    """
    labels = np.zeros(shape, dtype=np.int32)
    for index, roi in enumerate(rois):
        if not roi.is_area:
            log.info("skipping %s ROI %r: it has no area", roi.kind, roi.name)
            continue
        labels[roi.mask(shape)] = index + 1
    return labels


def rois_to_geojson(rois: Iterable[ImageJRoi]) -> dict[str, Any]:
    """Return ROIs as a GeoJSON FeatureCollection of annotations, in pixels.

    Each feature carries ``name``, ``kind`` and ``objectType: annotation`` in
    its properties, the form QuPath and the OncoAI service read.
    """
    features = [
        {
            "type": "Feature",
            "geometry": shapely.geometry.mapping(roi.geometry()),
            "properties": {
                "name": roi.name,
                "kind": roi.kind,
                "objectType": "annotation",
            },
        }
        for roi in rois
    ]
    return {"type": "FeatureCollection", "features": features}


def _decode(data: bytes, default_name: str, where: str) -> ImageJRoi:
    try:
        raw = roifile.ImagejRoi.frombytes(data)
    except Exception as err:  # roifile raises ValueError and struct.error alike
        raise OncoAIError(
            f"not an ImageJ ROI: {where} ({err}); save ROIs from ImageJ's ROI Manager."
        ) from err

    imagej_type = _IMAGEJ_TYPES.get(raw.roitype, "rectangle")
    common: dict[str, Any] = {
        "name": raw.name or default_name,
        "imagej_type": imagej_type,
        "left": int(raw.left),
        "top": int(raw.top),
        "width": int(raw.right) - int(raw.left),
        "height": int(raw.bottom) - int(raw.top),
        "position": int(raw.position),
        "hyperstack_position": (
            int(raw.c_position),
            int(raw.z_position),
            int(raw.t_position),
        ),
        "stroke_width": float(raw.float_stroke_width or raw.stroke_width),
    }
    if raw.composite:
        paths = _decode_paths(np.asarray(raw.multi_coordinates, dtype=np.float64))
        if not paths:
            raise OncoAIError(f"ImageJ composite ROI has no outline: {where}.")
        return ImageJRoi(
            kind="composite",
            coordinates=np.concatenate(paths),
            paths=tuple(paths),
            **common,
        )
    if raw.roitype == roifile.ROI_TYPE.RECT:
        return ImageJRoi(kind="rectangle", coordinates=_rect_corners(raw), **common)
    if raw.roitype == roifile.ROI_TYPE.OVAL:
        return ImageJRoi(kind="oval", coordinates=_oval_outline(raw), **common)
    if raw.roitype == roifile.ROI_TYPE.LINE:
        ends = np.array([[raw.x1, raw.y1], [raw.x2, raw.y2]], dtype=np.float64)
        return ImageJRoi(kind="line", coordinates=ends, **common)
    if imagej_type in ("rectangle", "noroi"):
        log.info(
            "ImageJ ROI %r of type %s read as its box", common["name"], raw.roitype
        )
        return ImageJRoi(kind="rectangle", coordinates=_rect_corners(raw), **common)

    coordinates = np.asarray(raw.coordinates(), dtype=np.float64).reshape(-1, 2)
    if raw.subtype == roifile.ROI_SUBTYPE.ELLIPSE:
        return ImageJRoi(
            kind="ellipse",
            coordinates=coordinates,
            ellipse=_ellipse_params(raw),
            **common,
        )
    return ImageJRoi(kind=imagej_type, coordinates=coordinates, **common)


def _box(raw: roifile.ImagejRoi) -> tuple[float, float, float, float]:
    """``(x, y, width, height)``, sub-pixel when ImageJ stored it so."""
    if raw.subpixelrect:
        return raw.xd, raw.yd, raw.widthd, raw.heightd
    return raw.left, raw.top, raw.right - raw.left, raw.bottom - raw.top


def _rect_corners(raw: roifile.ImagejRoi) -> np.ndarray:
    x0, y0, w, h = _box(raw)
    return np.array(
        [[x0, y0], [x0 + w, y0], [x0 + w, y0 + h], [x0, y0 + h]], dtype=np.float64
    )


def _oval_outline(raw: roifile.ImagejRoi) -> np.ndarray:
    x0, y0, w, h = _box(raw)
    angles = np.linspace(0.0, 2.0 * np.pi, _OVAL_VERTICES, endpoint=False)
    return np.column_stack(
        [x0 + w / 2 * (1 + np.cos(angles)), y0 + h / 2 * (1 + np.sin(angles))]
    )


def _ellipse_params(raw: roifile.ImagejRoi) -> EllipseParams:
    # ImageJ stores the aspect ratio as a float in the four header bytes that
    # other ROI types use for the arrow style, arrow head size and arc size.
    packed = struct.pack(
        ">BBh",
        int(raw.arrow_style_or_aspect_ratio) & 0xFF,
        int(raw.arrow_head_size) & 0xFF,
        int(raw.rounded_rect_arc_size),
    )
    (aspect,) = struct.unpack(">f", packed)
    return EllipseParams(
        float(raw.x1), float(raw.y1), float(raw.x2), float(raw.y2), float(aspect)
    )


def _decode_paths(ops: np.ndarray) -> list[np.ndarray]:
    """Decode a ShapeRoi's path-iterator array into closed sub-paths."""
    paths: list[np.ndarray] = []
    current: list[tuple[float, float]] = []
    i = 0
    while i < len(ops):
        op = int(ops[i])
        if op not in _PATH_ARGS:
            raise OncoAIError(f"unknown path segment {op} in an ImageJ composite ROI")
        args = ops[i + 1 : i + 1 + _PATH_ARGS[op]]
        i += 1 + _PATH_ARGS[op]
        if op == _MOVETO:
            _flush(paths, current)
            current = [(args[0], args[1])]
        elif op == _LINETO:
            current.append((args[0], args[1]))
        elif op in (_QUADTO, _CUBICTO):
            current.extend(_bezier(current[-1], args))
        else:
            _flush(paths, current)
            current = []
    _flush(paths, current)
    return paths


def _flush(paths: list[np.ndarray], points: list[tuple[float, float]]) -> None:
    if points:
        paths.append(np.asarray(points, dtype=np.float64))


def _bezier(start: tuple[float, float], args: np.ndarray) -> list[tuple[float, float]]:
    control = np.vstack([np.asarray(start), np.asarray(args).reshape(-1, 2)])
    t = np.linspace(0.0, 1.0, _CURVE_STEPS + 1)[1:, None]
    # De Casteljau on all parameters at once.
    points = np.broadcast_to(control, (len(t), *control.shape)).copy()
    for _ in range(len(control) - 1):
        points = (1 - t[:, :, None]) * points[:, :-1] + t[:, :, None] * points[:, 1:]
    return [tuple(p) for p in points[:, 0]]


def _valid_polygon(coordinates: np.ndarray) -> BaseGeometry:
    if len(coordinates) < 3:
        return Polygon()
    polygon = Polygon(coordinates)
    if polygon.is_valid:
        return polygon
    # Freehand outlines may cross themselves; make_valid keeps every lobe, and
    # may add the crossing's zero-area lines, which are dropped.
    repaired = shapely.make_valid(polygon)
    parts = [
        part
        for part in getattr(repaired, "geoms", [repaired])
        if isinstance(part, Polygon | MultiPolygon)
    ]
    return shapely.unary_union(parts) if parts else Polygon()


def _even_odd(paths: Sequence[np.ndarray]) -> BaseGeometry:
    result: BaseGeometry = Polygon()
    for path in paths:
        result = result.symmetric_difference(_valid_polygon(path))
    return result


def _rings(roi: ImageJRoi) -> list[np.ndarray]:
    return list(roi.paths) if roi.kind == "composite" else [roi.coordinates]


def _fill(rings: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Fill closed rings by the even-odd rule, on pixel centres, as ImageJ does.

    A centre exactly on an edge counts as outside on the left and top edges
    and inside on the right and bottom ones, ImageJ's own convention, so that
    two ROIs that share an edge never share a pixel.
    """
    height, width = shape
    mask = np.zeros((height, width), dtype=bool)
    edges = [(ring, np.roll(ring, -1, axis=0)) for ring in rings if len(ring) >= 3]
    if not edges:
        return mask
    start = np.concatenate([a for a, _ in edges])
    end = np.concatenate([b for _, b in edges])
    y_low = np.minimum(start[:, 1], end[:, 1])
    y_high = np.maximum(start[:, 1], end[:, 1])
    top = max(int(np.floor(y_low.min())) - 1, 0)
    bottom = min(int(np.ceil(y_high.max())) + 1, height)
    for row in range(top, bottom):
        centre = row + 0.5
        hit = (y_low < centre) & (centre <= y_high)
        if not hit.any():
            continue
        a, b = start[hit], end[hit]
        t = (centre - a[:, 1]) / (b[:, 1] - a[:, 1])
        crossings = np.sort(a[:, 0] + t * (b[:, 0] - a[:, 0]))
        for x_in, x_out in zip(crossings[::2], crossings[1::2], strict=False):
            first = max(int(np.floor(x_in - 0.5)) + 1, 0)
            stop = min(int(np.floor(x_out - 0.5)) + 1, width)
            # XOR, not assignment: overlapping spans cancel (even-odd).
            mask[row, first:stop] ^= True
    return mask


__all__ = [
    "AREA_KINDS",
    "LINE_KINDS",
    "EllipseParams",
    "ImageJRoi",
    "read_roi",
    "read_roi_set",
    "read_rois",
    "rois_to_geojson",
    "rois_to_labels",
]
