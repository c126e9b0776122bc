"""What a prediction returns, and the objects derived from it."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

from model_zoo.config import PredictionConfig
from model_zoo.errors import OncoAIError

if TYPE_CHECKING:
    from model_zoo.images import ImageData

log = logging.getLogger(__name__)


@dataclass
class Instances:
    """Objects found in a result.

    Attributes
    ----------
    labels : array of int32, ([T][Z])YX
        0 is background; objects are numbered 1..N.
    table : dict of str to array, (N,)
        One row per object, sorted by ``label``; see
        :func:`model_zoo.postprocess.measure_instances` for the columns.
    offset : tuple of float
        ``(x0, y0)`` in level-0 pixels of the region the labels cover.
    pixel_size : tuple of float or None
        ``(y, x)`` micrometres per pixel, when known.
    """

    labels: np.ndarray
    table: dict[str, np.ndarray]
    offset: tuple[float, float] = (0.0, 0.0)
    pixel_size: tuple[float, float] | None = None

    def polygons(self, simplify: float = 0.5) -> dict[int, Any]:
        """Outline each 2D object as a shapely polygon in level-0 pixels.

        Parameters
        ----------
        simplify : float
            Simplification tolerance in pixels; 0 keeps the exact pixel outline.

        Returns
        -------
        dict of int to shapely geometry
            ``Polygon`` or ``MultiPolygon`` per label, holes kept.
        """
        from model_zoo.postprocess import labels_to_polygons

        if self.labels.ndim != 2:
            raise OncoAIError(
                f"outlines need a 2D label image; got shape {self.labels.shape}. "
                "Pick one plane (z or t) first."
            )
        return labels_to_polygons(self.labels, offset=self.offset, simplify=simplify)


@dataclass
class PredictionResult:
    """The outputs of one model run on one image.

    Attributes
    ----------
    outputs : dict of str to array
        One array per model output tensor id, with axes ``output_axes[id]``.
    output_axes : dict of str to str
        E.g. ``"CYX"``, ``"CZYX"`` or ``"TCYX"``; ``C`` is always present.
    output_scale : dict of str to tuple of float
        Per output, the size of one output pixel in input pixels along each
        spatial axis (``(y, x)`` or ``(z, y, x)``); 0.25 for ×4 super-resolution.
    output_offset : dict of str to tuple of float
        Per output, where output pixel 0 sits, in input pixels.
    image : ImageData
        The input the model ran on.
    config : PredictionConfig
        The validated parameters.
    provenance : dict
        Model id, name, weights format and sha256, OncoAI version, parameters.
    offset : tuple of float
        ``(x0, y0)``: where the image's pixel (0, 0) lies on the level-0 slide.
    task : str
        The model's task, e.g. ``nuclei``, ``denoise``; used to name layers.
    """

    outputs: dict[str, np.ndarray]
    output_axes: dict[str, str]
    output_scale: dict[str, tuple[float, ...]]
    output_offset: dict[str, tuple[float, ...]]
    image: ImageData
    config: PredictionConfig
    provenance: dict[str, Any]
    offset: tuple[float, float] = (0.0, 0.0)
    task: str = "unknown"
    stardist: dict[str, Any] | None = field(default=None)

    @property
    def main_output(self) -> str:
        """The id of the first output tensor."""
        return next(iter(self.outputs))

    def probability(self) -> np.ndarray:
        """Return the foreground probability of the main output, ([T][Z])YX.

        With several channels, the last is taken as the foreground, as in the
        common background/foreground and background/boundary/foreground layouts.
        """
        key = self.main_output
        array, axes = self.outputs[key], self.output_axes[key]
        c = axes.index("C")
        if array.shape[c] != 1:
            # Several channels: take the last as foreground, the common
            # background/foreground (or background/boundary/foreground) layout.
            log.info("main output has %d channels; using the last", array.shape[c])
        return np.take(array, array.shape[c] - 1, axis=c)

    @cached_property
    def instances(self) -> Instances:
        """Objects from the main output, by threshold and watershed split.

        StarDist-type models use star-convex non-maximum suppression instead.
        """
        from model_zoo import postprocess

        cfg = self.config
        if self.stardist is not None:
            labels = _stardist_labels(self, cfg)
        else:
            probability = self.probability()
            labels = _per_plane(
                probability,
                self._spatial_ndim(),
                lambda p: postprocess.probability_to_labels(
                    p,
                    threshold=cfg.threshold,
                    split_touching=cfg.split_touching,
                    min_distance=cfg.min_distance,
                    min_size=cfg.min_size,
                ),
            )
        intensity, channel_axis = self.image.intensity_for(labels.shape)
        table = _measure(
            labels,
            intensity,
            channel_axis,
            self.probability() if self.stardist is None else None,
            self.image.pixel_size,
        )
        return Instances(
            labels=labels,
            table=table,
            offset=self.offset,
            pixel_size=self.image.pixel_size,
        )

    def _spatial_ndim(self) -> int:
        axes = self.output_axes[self.main_output]
        return sum(a in "ZYX" for a in axes)


def _per_plane(array: np.ndarray, spatial_ndim: int, func: Any) -> np.ndarray:
    """Apply ``func`` to each trailing ``spatial_ndim``-D plane, numbering on."""
    if array.ndim == spatial_ndim:
        return func(array).astype(np.int32)
    out = np.zeros(array.shape, dtype=np.int32)
    next_label = 0
    for index in np.ndindex(*array.shape[: array.ndim - spatial_ndim]):
        # Numbering runs on across planes so that every object has its own label.
        plane = func(array[index]).astype(np.int32)
        plane[plane > 0] += next_label
        next_label = max(next_label, int(plane.max()))
        out[index] = plane
    return out


def _stardist_labels(result: PredictionResult, cfg: PredictionConfig) -> np.ndarray:
    from model_zoo import postprocess

    settings = result.stardist or {}
    prob_id = settings.get("prob_output", result.main_output)
    dist_id = settings["dist_output"]
    prob = np.take(
        result.outputs[prob_id], 0, axis=result.output_axes[prob_id].index("C")
    )
    dist_axes = result.output_axes[dist_id]
    dist = np.moveaxis(result.outputs[dist_id], dist_axes.index("C"), -1)
    return postprocess.stardist_to_labels(
        prob,
        dist,
        prob_threshold=settings.get("prob_threshold", cfg.threshold),
        nms_threshold=cfg.nms_threshold or settings.get("nms_threshold", 0.3),
        grid=tuple(settings.get("grid", (1, 1))),
    ).astype(np.int32)


def result_from_labels(
    labels: np.ndarray,
    *,
    image: ImageData | np.ndarray | None = None,
    provenance: dict[str, Any] | None = None,
    offset: tuple[float, float] = (0.0, 0.0),
    pixel_size: tuple[float, float] | None = None,
    name: str = "labels",
) -> PredictionResult:
    """Wrap a label image (e.g. a napari Labels layer) so that writers can write it.

    Parameters
    ----------
    labels : array of int, ([T][Z])YX
        Objects numbered from 1; 0 is background.
    image : ImageData, array or None
        The intensities to measure, on the same grid.
    provenance : dict or None
        Where the labels came from.
    offset : tuple of float
        ``(x0, y0)`` of the labels on the level-0 image.
    pixel_size : tuple of float or None
        ``(y, x)`` micrometres per pixel.
    name : str
        A name for outputs.

    Returns
    -------
    PredictionResult
        With ``instances`` already set and measured.
    """
    from model_zoo.images import ImageData

    labels = np.asarray(labels).astype(np.int32)
    spatial = "".join("TZYX"[4 - labels.ndim :])
    if image is None:
        image_data = ImageData(labels, spatial, pixel_size=pixel_size, name=name)
        intensity, channel_axis = None, None
    else:
        image_data = (
            image
            if isinstance(image, ImageData)
            else ImageData(np.asarray(image), "", pixel_size=pixel_size, name=name)
        )
        if pixel_size is not None:
            image_data.pixel_size = pixel_size
        intensity, channel_axis = image_data.intensity_for(labels.shape)
    table = _measure(labels, intensity, channel_axis, None, image_data.pixel_size)
    prov = dict(provenance or {})
    prov.setdefault("model_name", "labels")
    from model_zoo import __version__

    prov.setdefault("oncoai_version", __version__)
    result = PredictionResult(
        outputs={"labels": labels[np.newaxis]},
        output_axes={"labels": "C" + spatial},
        output_scale={"labels": (1.0,) * (len(spatial) - spatial.count("T"))},
        output_offset={"labels": (0.0,) * (len(spatial) - spatial.count("T"))},
        image=image_data,
        config=PredictionConfig(model=prov.get("model_id", "labels")),
        provenance=prov,
        offset=offset,
        task="labels",
    )
    result.__dict__["instances"] = Instances(
        labels=labels, table=table, offset=offset, pixel_size=image_data.pixel_size
    )
    return result


def _measure(labels, intensity, channel_axis, probability, pixel_size):
    """Measure objects plane by plane when labels carry T or Z beyond 2D/3D."""
    from model_zoo import postprocess

    if labels.ndim <= 3:
        return postprocess.measure_instances(
            labels,
            intensity,
            channel_axis=channel_axis,
            probability=probability,
            pixel_size=pixel_size,
        )
    tables = []
    for t in range(labels.shape[0]):
        part = postprocess.measure_instances(
            labels[t],
            None if intensity is None else intensity[t],
            channel_axis=None if channel_axis is None else channel_axis - 1,
            probability=None if probability is None else probability[t],
            pixel_size=pixel_size,
        )
        part["frame"] = np.full(len(part["label"]), t)
        tables.append(part)
    return {k: np.concatenate([p[k] for p in tables]) for k in tables[0]}


# ``PredictionResult.from_labels(...)`` reads naturally at call sites in the hosts.
PredictionResult.from_labels = staticmethod(result_from_labels)  # type: ignore[attr-defined]
