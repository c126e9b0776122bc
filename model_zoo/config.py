"""The one validated configuration that every host builds.

The command line, the napari widgets, the service and the macros all fill a
:class:`PredictionConfig`; the engine reads nothing else.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

WeightsFormat = Literal[
    "onnx",
    "torchscript",
    "pytorch_state_dict",
    "tensorflow_saved_model_bundle",
    "keras_hdf5",
]

_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
_AXES = re.compile(r"^[TCZYXS]+$")


class PredictionConfig(BaseModel):
    """What to run and how.

    Attributes
    ----------
    model : str
        A model id or nickname in the cache, a folder with ``rdf.yaml`` or
        ``bioimageio.yaml``, a zip, or the path of the RDF itself.
    weights : str or None
        The weights format to use; None picks the fastest for the device.
    device : str
        ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
    tile : int or None
        Tile edge in input pixels; None picks one, 0 runs the whole image at once.
    halo : int or None
        Overlap kept on each side of a tile; None uses at least the model's halo.
    batch_size : int or None
        Tiles per forward pass; None chooses from the free memory.
    axes : str or None
        The image's axes, from ``TCZYXS`` (S is RGB samples); None reads them from
        the file or guesses from the shape.
    channel : str, int or None
        For a model with fewer channels than the image: which channel to use, by
        index or by name.
    threshold : float
        Foreground probability threshold for instances.
    split_touching : bool
        Split touching objects by a distance-transform watershed.
    min_distance : int
        Smallest distance in pixels between two object centres when splitting.
    min_size : int
        Objects smaller than this many pixels are dropped.
    nms_threshold : float or None
        Overlap above which StarDist-type models suppress a candidate; None uses
        the model's own value.
    """

    model_config = ConfigDict(extra="forbid")

    model: str
    weights: WeightsFormat | None = None
    device: str = "auto"
    tile: int | None = Field(default=None, ge=0)
    halo: int | None = Field(default=None, ge=0)
    batch_size: int | None = Field(default=None, ge=1)
    axes: str | None = None
    channel: str | int | None = None
    threshold: float = Field(default=0.5, gt=0.0, lt=1.0)
    split_touching: bool = True
    min_distance: int = Field(default=4, ge=1)
    min_size: int = Field(default=10, ge=0)
    nms_threshold: float | None = Field(default=None, gt=0.0, lt=1.0)

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if not _DEVICE.match(value):
            raise ValueError(
                f"device must be auto, cpu, cuda, cuda:N or mps; got {value!r}"
            )
        return value

    @field_validator("axes")
    @classmethod
    def _check_axes(cls, value: str | None) -> str | None:
        if value is None:
            return None
        axes = value.upper()
        if not _AXES.match(axes) or len(set(axes)) != len(axes):
            raise ValueError(
                f"axes must be distinct letters from TCZYXS, e.g. YX, CYX, YXS or "
                f"TCZYX; got {value!r}"
            )
        if "Y" not in axes or "X" not in axes:
            raise ValueError(f"axes must include Y and X; got {value!r}")
        return axes
