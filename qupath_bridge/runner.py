"""Run a model on an image, or on one annotated region of it, into QuPath objects.

Shared by the service (``POST /jobs``) and ``oncoai qupath run``.  A region is
cut out of the image at full resolution, the model runs on the cut-out with its
level-0 offset, and the objects come back in level-0 coordinates under an
annotation that records the region.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np

from model_zoo.config import PredictionConfig
from model_zoo.errors import OncoAIError
from model_zoo.images import ImageData

log = logging.getLogger(__name__)

Box = tuple[int, int, int, int]
"""``(x, y, width, height)`` in level-0 pixels."""

CONTEXT = 32
"""Pixels of context around a region, on each side."""


def clip_box(
    x: float, y: float, width: float, height: float, image_size: tuple[int, int]
) -> Box:
    """A rectangle in whole pixels, clipped to the image.

    Parameters
    ----------
    x, y, width, height : float
        The rectangle in level-0 pixels.
    image_size : tuple of int
        ``(width, height)`` of the image.

    Returns
    -------
    tuple of int
        ``(x, y, width, height)`` covering every pixel the rectangle touches.

    Raises
    ------
    OncoAIError
        When the rectangle is empty or lies outside the image.
    """
    if not width > 0 or not height > 0:
        raise OncoAIError(
            f"a region needs a width and height > 0; got {[x, y, width, height]}"
        )
    image_w, image_h = image_size
    x0, y0 = max(0, int(np.floor(x))), max(0, int(np.floor(y)))
    x1 = min(image_w, int(np.ceil(x + width)))
    y1 = min(image_h, int(np.ceil(y + height)))
    if x1 <= x0 or y1 <= y0:
        raise OncoAIError(
            f"region {[x, y, width, height]} lies outside the {image_w}x{image_h} image"
        )
    return x0, y0, x1 - x0, y1 - y0


def crop(
    image: ImageData, box: Box | None, plane: dict[str, int] | None = None
) -> tuple[ImageData, tuple[float, float]]:
    """Cut a box (and a z or t plane) out of an image.

    Parameters
    ----------
    image : ImageData
        The full image; only the cut-out is read.
    box : tuple of int or None
        ``(x, y, width, height)``; None keeps the whole plane.
    plane : dict, optional
        ``{"z": ..., "t": ...}`` picks one plane of an image with those axes.

    Returns
    -------
    ImageData, tuple of float
        The cut-out and its ``(x0, y0)`` offset on the level-0 image.
    """
    plane = {k: v for k, v in (plane or {}).items() if k in ("z", "t")}
    if box is None and not any(plane.values()):
        return image, (0.0, 0.0)
    index: list[Any] = []
    axes = ""
    for axis in image.axes:
        key = axis.lower()
        if axis in "ZT" and key in plane:
            size = image.size(axis)
            if not 0 <= plane[key] < size:
                raise OncoAIError(
                    f"the region is on {key}={plane[key]} but the image has {size} "
                    f"{key}-plane(s)"
                )
            index.append(plane[key])
        elif axis == "X" and box is not None:
            index.append(slice(box[0], box[0] + box[2]))
            axes += axis
        elif axis == "Y" and box is not None:
            index.append(slice(box[1], box[1] + box[3]))
            axes += axis
        else:
            index.append(slice(None))
            axes += axis
    array = np.asarray(image.array[tuple(index)])
    cut = ImageData(
        array,
        axes,
        image.pixel_size,
        image.channel_names,
        image.path,
        image.name,
        dict(image.metadata),
    )
    offset = (float(box[0]), float(box[1])) if box is not None else (0.0, 0.0)
    return cut, offset


class RegionPrediction:
    """One model run on one image or one annotated region, giving QuPath objects.

    Parameters
    ----------
    config : PredictionConfig
        What to run.
    image : ImageData
        The whole image.
    annotation : QuPathObject, optional
        The region to run in: the model sees its bounding box, and only objects
        whose centroid lies inside are kept.  Its plane picks the z or t plane.
    box : tuple of int, optional
        ``(x, y, width, height)`` to run in when there is no annotation: the
        model sees exactly this rectangle, and every object found in it is kept.
    cell_expansion : float
        Grow nuclei by this many pixels into cells (0: nuclei only).
    context : int
        Pixels of image around an annotation that the model also sees, so that
        objects on its edge are outlined whole; objects are kept when their
        centroid lies in the annotation.

    Attributes
    ----------
    features : list of dict or None
        After :meth:`run`: one annotation feature holding the objects.
    result : PredictionResult or None
        After :meth:`run`: the engine's result.
    """

    def __init__(
        self,
        config: PredictionConfig,
        image: ImageData,
        *,
        annotation: Any = None,
        box: Box | None = None,
        cell_expansion: float = 0.0,
        context: int = CONTEXT,
    ) -> None:
        from shapely.geometry import box as rectangle

        self.config = config
        self.image = image
        self.annotation = annotation
        self.cell_expansion = cell_expansion
        size = (image.size("X"), image.size("Y"))
        self.region = None
        self.box = None
        if annotation is not None:
            self.region = annotation.geometry
            x0, y0, x1, y1 = self.region.bounds
            # Objects cut by the annotation's edge are seen whole by the model.
            self.box = clip_box(
                x0 - context,
                y0 - context,
                x1 - x0 + 2 * context,
                y1 - y0 + 2 * context,
                size,
            )
        elif box is not None:
            self.box = clip_box(*box, size)
            x, y, w, h = self.box
            self.region = rectangle(x, y, x + w, y + h)
        self._job: Any = None
        self._cancelled = False
        self.features: list[dict[str, Any]] | None = None
        self.result: Any = None

    @property
    def plane(self) -> dict[str, int]:
        """The annotation's z/t plane, empty for the first plane."""
        if self.annotation is None:
            return {}
        plane = {k: int(v) for k, v in self.annotation.plane.items() if k in ("z", "t")}
        return {**plane, "c": -1} if any(plane.values()) else {}

    def cancel(self) -> None:
        """Stop the prediction before its next batch of tiles."""
        self._cancelled = True
        if self._job is not None:
            self._job.cancel()

    def run(self) -> Iterator[tuple[float, str]]:
        """Predict and outline, yielding ``(fraction done, message)``.

        Raises
        ------
        OncoAIError
            For bad input; ``CancelledError`` after :meth:`cancel`.
        """
        from model_zoo.prediction import PredictionJob
        from qupath_bridge.geojson import result_to_features

        cut, offset = crop(self.image, self.box, self.plane)
        self._job = PredictionJob(self.config, cut, offset=offset)
        if self._cancelled:
            self._job.cancel()
        for step in self._job.run():
            yield 0.9 * step.done / max(step.total, 1), step.message
        self.result = self._job.result
        if self.result is None:
            raise OncoAIError("the prediction ended without a result")
        yield 0.92, "outlining objects"
        self.features = result_to_features(
            self.result,
            region=self.region,
            plane=self.plane,
            cell_expansion=self.cell_expansion,
        )
        count = len(self.features[0]["properties"].get("childObjects", []))
        yield 1.0, f"{count} objects"
