"""Conversions between napari layers and the engine's images and results.

Nothing here touches Qt, so the widget stays thin and this logic is tested on
plain arrays.

Placement convention
--------------------
napari puts the centre of data pixel ``i`` of a layer at world coordinate
``translate + i * scale``. A pixel of pyramid level ``L`` with downsample factor
``f`` covers level-0 pixels ``[i f, (i + 1) f)``, so its centre lies at level-0
pixel ``(i + 0.5) f - 0.5``. An output pixel ``j`` of a model with output scale
``s`` and output offset ``o`` (both in input pixels, offset measured between the
pixel corners) covers input pixels ``[o + j s, o + (j + 1) s)``, so its centre
lies at input pixel ``o + (j + 0.5) s - 0.5``. :func:`level_grid` and
:func:`output_grid` turn these rules into napari ``scale`` and ``translate``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from model_zoo.images import ImageData
    from model_zoo.result import PredictionResult

log = logging.getLogger(__name__)

LayerDataTuple = tuple[Any, dict[str, Any], str]

#: Tasks whose probabilities become objects (a Labels layer).
INSTANCE_TASKS = frozenset({"nuclei", "cells", "organoids"})

# Words napari users give as axis labels, mapped to OncoAI's axis letters.
_AXIS_WORDS = {
    "t": "T",
    "time": "T",
    "c": "C",
    "ch": "C",
    "channel": "C",
    "z": "Z",
    "y": "Y",
    "x": "X",
}
_DEFAULT_AXES = {2: "YX", 3: "ZYX", 4: "TZYX", 5: "TCZYX"}
# One micrometre in each length unit napari (pint) may carry.
_UNITS_PER_UM = {
    "micrometer": 1.0,
    "nanometer": 1e3,
    "millimeter": 1e-3,
    "centimeter": 1e-4,
    "meter": 1e-6,
}


@dataclass(frozen=True)
class Grid:
    """Where an array's pixels lie in napari's world.

    Attributes
    ----------
    axes : str
        One letter per array dimension that napari shows (no ``S``).
    scale : tuple of float
        World size of one pixel along each of ``axes``.
    translate : tuple of float
        World position of the centre of pixel 0 along each of ``axes``.
    pixel0 : tuple of float or None
        Size of one pixel in full-resolution (level-0) input pixels, per axis;
        None for 1.
    origin0 : tuple of float or None
        Where the corner of pixel 0 lies, in level-0 input pixels, per axis;
        None for 0.
    """

    axes: str
    scale: tuple[float, ...]
    translate: tuple[float, ...]
    pixel0: tuple[float, ...] | None = None
    origin0: tuple[float, ...] | None = None

    def level0(self, axis: str) -> tuple[float, float]:
        """Return ``(pixel size, origin)`` of ``axis`` in level-0 pixels."""
        if axis not in self.axes:
            return 1.0, 0.0
        i = self.axes.index(axis)
        pixel = self.pixel0[i] if self.pixel0 else 1.0
        origin = self.origin0[i] if self.origin0 else 0.0
        return pixel, origin

    def of(self, axis: str) -> tuple[float, float]:
        """Return ``(scale, translate)`` of ``axis``, or ``(1, 0)`` if absent."""
        if axis not in self.axes:
            return 1.0, 0.0
        i = self.axes.index(axis)
        return self.scale[i], self.translate[i]


def layer_axes(layer: Any) -> str:
    """Read the axes of an image layer in OncoAI letters.

    Parameters
    ----------
    layer : napari.layers.Image
        The input layer.

    Returns
    -------
    str
        E.g. ``YX``, ``YXS`` for RGB, ``ZYX``, ``TCZYX``. The layer's axis labels
        are used when they name every axis (``t``, ``c``, ``z``, ``y``, ``x``);
        otherwise ``YX``, ``ZYX``, ``TZYX`` or ``TCZYX`` by the number of
        dimensions: napari usually splits channels into separate layers, so a
        3D or 4D layer is read as a z-stack or time-lapse. An empty string
        means the axes must be given.
    """
    rgb = bool(getattr(layer, "rgb", False))
    labels = [str(a).strip().lower() for a in getattr(layer, "axis_labels", ())]
    letters = [_AXIS_WORDS.get(a) for a in labels]
    if (
        labels
        and None not in letters
        and len(set(letters)) == len(letters)
        and letters[-2:] == ["Y", "X"]
    ):
        axes = "".join(letters)  # type: ignore[arg-type]
    else:
        axes = _DEFAULT_AXES.get(int(layer.ndim), "")
        if not axes:
            return ""
    return axes + ("S" if rgb else "")


def layer_pixel_size(layer: Any) -> tuple[float, float] | None:
    """Return ``(y, x)`` micrometres per pixel when the layer's units say so."""
    units = getattr(layer, "units", None)
    if not units or len(units) < 2:
        return None
    sizes = []
    for unit, scale in zip(units[-2:], layer.scale[-2:], strict=True):
        per_um = _UNITS_PER_UM.get(str(unit))
        if per_um is None:
            return None
        sizes.append(float(scale) / per_um)
    return sizes[0], sizes[1]


def level_count(layer: Any) -> int:
    """Return how many pyramid levels the layer has (1 if not multiscale)."""
    return len(layer.data) if getattr(layer, "multiscale", False) else 1


def level_grid(layer: Any, axes: str, level: int = 0) -> Grid:
    """Place the pixels of one pyramid level of ``layer`` in the world.

    Parameters
    ----------
    layer : napari.layers.Image
        The input layer.
    axes : str
        The layer's axes as returned by :func:`layer_axes`.
    level : int
        Pyramid level; 0 is full resolution.

    Returns
    -------
    Grid
        Scale and translate of that level's pixels, for every axis but ``S``.
    """
    shown = axes.replace("S", "")
    scale = np.asarray(layer.scale, dtype=float)
    translate = np.asarray(layer.translate, dtype=float)
    factor = np.ones_like(scale)
    if level:
        base = np.asarray(_level_shape(layer, 0), dtype=float)
        here = np.asarray(_level_shape(layer, level), dtype=float)
        factor = base / here
        translate = translate + scale * (factor - 1.0) / 2.0
        scale = scale * factor
    return Grid(
        shown,
        tuple(scale.tolist()),
        tuple(translate.tolist()),
        pixel0=tuple(factor.tolist()),
        origin0=(0.0,) * len(shown),
    )


def _level_shape(layer: Any, level: int) -> tuple[int, ...]:
    data = layer.data[level] if getattr(layer, "multiscale", False) else layer.data
    shape = tuple(int(s) for s in data.shape)
    return shape[: int(layer.ndim)]


def layer_to_image(
    layer: Any, axes: str | None = None, level: int = 0
) -> tuple[ImageData, Grid]:
    """Wrap an image layer (one pyramid level of it) for the engine.

    Parameters
    ----------
    layer : napari.layers.Image
        The input layer; its data is not copied.
    axes : str or None
        Override of :func:`layer_axes`, e.g. ``CYX`` for a channel stack.
    level : int
        For a multiscale layer, the level to predict on.

    Returns
    -------
    ImageData, Grid
        The image, and where its pixels lie in napari's world.

    Raises
    ------
    OncoAIError
        When ``axes`` do not fit the layer or ``level`` does not exist.
    """
    from model_zoo.errors import OncoAIError
    from model_zoo.images import ImageData

    levels = level_count(layer)
    if not 0 <= level < levels:
        raise OncoAIError(
            f"pyramid level {level} requested but layer {layer.name!r} has "
            f"{levels} level(s); choose 0..{levels - 1}"
        )
    data = layer.data[level] if levels > 1 else layer.data
    axes = (axes or layer_axes(layer)).upper()
    if len(axes) != len(data.shape):
        raise OncoAIError(
            f"axes {axes!r} have {len(axes)} letters but layer {layer.name!r} has "
            f"{len(data.shape)} dimensions (shape {tuple(data.shape)}); give one "
            "letter per dimension, e.g. YX, ZYX or YXS"
        )
    if bool(getattr(layer, "rgb", False)) != axes.endswith("S"):
        raise OncoAIError(
            f"axes {axes!r} do not match layer {layer.name!r}: an RGB layer's axes "
            "end with S (e.g. YXS) and only an RGB layer's do"
        )
    image = ImageData(
        data,
        axes,
        pixel_size=_level_pixel_size(layer, level),
        name=layer.name,
    )
    return image, level_grid(layer, axes, level)


def _level_pixel_size(layer: Any, level: int) -> tuple[float, float] | None:
    size = layer_pixel_size(layer)
    if size is None or not level:
        return size
    base = _level_shape(layer, 0)[-2:]
    here = _level_shape(layer, level)[-2:]
    return size[0] * base[0] / here[0], size[1] * base[1] / here[1]


def output_grid(
    input_grid: Grid,
    axes: str,
    output_scale: tuple[float, ...] | None,
    output_offset: tuple[float, ...] | None,
) -> Grid:
    """Place a model output in the world, over the input it came from.

    Parameters
    ----------
    input_grid : Grid
        Where the input's pixels lie.
    axes : str
        The output's axes without ``C``, e.g. ``YX`` or ``TZYX``.
    output_scale : tuple of float or None
        Output pixel size in input pixels per spatial axis (``(y, x)`` or
        ``(z, y, x)``); None for 1.
    output_offset : tuple of float or None
        Where the corner of output pixel 0 lies, in input pixels, per spatial
        axis; None for 0.

    Returns
    -------
    Grid
    """
    spatial = [a for a in axes if a in "ZYX"]
    factors = dict(zip(spatial, output_scale or (1.0,) * len(spatial), strict=False))
    offsets = dict(zip(spatial, output_offset or (0.0,) * len(spatial), strict=False))
    scale, translate, pixel0, origin0 = [], [], [], []
    for axis in axes:
        s_in, t_in = input_grid.of(axis)
        p_in, o_in = input_grid.level0(axis)
        f = float(factors.get(axis, 1.0))
        o = float(offsets.get(axis, 0.0))
        scale.append(s_in * f)
        translate.append(t_in + s_in * (o + 0.5 * f - 0.5))
        pixel0.append(p_in * f)
        origin0.append(o_in + p_in * o)
    return Grid(axes, tuple(scale), tuple(translate), tuple(pixel0), tuple(origin0))


def result_layers(
    result: PredictionResult,
    input_grid: Grid,
    *,
    input_name: str,
    instances: bool,
    level: int = 0,
) -> list[LayerDataTuple]:
    """Turn a prediction result into napari layer data.

    Call it in the worker thread: for instance models it runs the threshold and
    watershed (or StarDist NMS) and measures every object.

    Parameters
    ----------
    result : PredictionResult
        What the engine returned.
    input_grid : Grid
        Where the input's pixels lie (see :func:`layer_to_image`).
    input_name : str
        The input layer's name, used to name the new layers.
    instances : bool
        Add a Labels layer of objects, with their measurements as ``features``.
    level : int
        The pyramid level the model ran on, recorded in the metadata.

    Returns
    -------
    list of (data, kwargs, layer_type)
        Image layers for every output channel (hidden when objects are shown)
        and, with ``instances``, one Labels layer on top.
    """
    model_name = str(result.provenance.get("model_name") or result.config.model)
    base_name = f"{input_name} · {model_name}"
    several = len(result.outputs) > 1
    layers: list[LayerDataTuple] = []
    for key, array in result.outputs.items():
        axes = result.output_axes[key]
        grid = output_grid(
            input_grid,
            axes.replace("C", ""),
            result.output_scale.get(key),
            result.output_offset.get(key),
        )
        c = axes.index("C")
        n_channels = array.shape[c]
        for k in range(n_channels):
            name = base_name + (f" · {key}" if several else "")
            name += f" · c{k}" if n_channels > 1 else ""
            meta = {
                "name": name,
                "scale": grid.scale,
                "translate": grid.translate,
                "metadata": {
                    "oncoai": _provenance(result, key, level, grid, input_grid)
                },
                "visible": not instances,
            }
            if result.task in ("denoise", "super-resolution"):
                meta["colormap"] = "gray"
            layers.append((np.take(array, k, axis=c), meta, "image"))
    if instances:
        layers.append(_labels_layer(result, input_grid, base_name, level))
    return layers


def _labels_layer(
    result: PredictionResult, input_grid: Grid, base_name: str, level: int
) -> LayerDataTuple:
    key = result.main_output
    objects = result.instances
    axes = result.output_axes[key].replace("C", "")
    grid = output_grid(
        input_grid, axes, result.output_scale.get(key), result.output_offset.get(key)
    )
    table = {"index": np.asarray(objects.table.get("label", []))}
    table.update({k: np.asarray(v) for k, v in objects.table.items()})
    meta = {
        "name": f"{base_name} · objects",
        "scale": grid.scale,
        "translate": grid.translate,
        "features": table,
        "metadata": {"oncoai": _provenance(result, key, level, grid, input_grid)},
    }
    return objects.labels, meta, "labels"


def _provenance(
    result: PredictionResult, key: str, level: int, grid: Grid, input_grid: Grid
) -> dict[str, Any]:
    info = dict(result.provenance)
    size = result.image.pixel_size
    if size:
        # The pixel size of the full-resolution image the layer sits on.
        fy, fx = input_grid.level0("Y")[0], input_grid.level0("X")[0]
        info["pixel_size_um"] = [size[0] / fy, size[1] / fx]
    (py, oy), (px, ox) = grid.level0("Y"), grid.level0("X")
    x0, y0 = result.offset
    info.update(
        {
            "output": key,
            "task": result.task,
            "level": level,
            # Where the layer's pixels lie on the full-resolution image, so that
            # writers can give QuPath level-0 coordinates.
            "level0": {"pixel": [py, px], "origin": [oy + y0, ox + x0]},
        }
    )
    return info
