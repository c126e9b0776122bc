"""Reading images lazily, with their axes and pixel size.

TIFF (including OME-TIFF, ImageJ hyperstacks and tiled pyramids), zarr and OME-Zarr
are opened lazily so that a 20,000² mosaic never has to fit in memory; PNG, JPEG and
``.npy`` are read whole (``.npy`` through a memory map).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from model_zoo.errors import OncoAIError

log = logging.getLogger(__name__)

AXES_LETTERS = "TCZYXS"

# tifffile's axis letters that mean the same as ours; others are guessed from shape.
_TIFF_AXES = {"T": "T", "C": "C", "Z": "Z", "Y": "Y", "X": "X", "S": "S"}


@dataclass
class ImageData:
    """An image, possibly lazy, with what OncoAI needs to know about it.

    Attributes
    ----------
    array : array-like, axes given by ``axes``
        A numpy array, a memory map or a zarr array; anything with ``shape``,
        ``dtype`` and numpy slicing.
    axes : str
        One letter per dimension from ``TCZYXS`` (S: RGB samples); empty to
        guess them from the shape with :func:`guess_axes`.
    pixel_size : tuple of float or None
        ``(y, x)`` micrometres per pixel, when the file says.
    channel_names : list of str or None
        Names of the ``C`` (or ``S``) channels, when known.
    path : Path or None
        Where the image came from.
    name : str
        A short name for layers and output files.
    metadata : dict
        Anything else worth keeping (e.g. provenance of an OncoAI output).
    """

    array: Any
    axes: str
    pixel_size: tuple[float, float] | None = None
    channel_names: list[str] | None = None
    path: Path | None = None
    name: str = "image"
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Empty axes mean "not known": read them from the shape.
        self.axes = (self.axes or guess_axes(self.shape)).upper()
        if len(self.axes) != len(self.array.shape):
            raise OncoAIError(
                f"axes {self.axes!r} have {len(self.axes)} letters but the image has "
                f"{len(self.array.shape)} dimensions (shape {self.shape}); "
                "give one letter per dimension with --axes, e.g. --axes CYX"
            )
        bad = set(self.axes) - set(AXES_LETTERS)
        if bad or len(set(self.axes)) != len(self.axes):
            raise OncoAIError(
                f"axes must be distinct letters from {AXES_LETTERS}; got {self.axes!r}"
            )
        if "Y" not in self.axes or "X" not in self.axes:
            raise OncoAIError(f"axes must include Y and X; got {self.axes!r}")

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of :attr:`array`."""
        return tuple(int(s) for s in self.array.shape)

    def size(self, axis: str) -> int:
        """Length of ``axis``, or 1 when the image has no such axis."""
        return self.shape[self.axes.index(axis)] if axis in self.axes else 1

    @property
    def n_channels(self) -> int:
        """Channels per pixel, counting RGB samples as channels."""
        return self.size("C") * self.size("S")

    def intensity_for(
        self, label_shape: tuple[int, ...]
    ) -> tuple[np.ndarray | None, int | None]:
        """The image as an intensity array that lines up with a label image.

        Parameters
        ----------
        label_shape : tuple of int
            Shape of labels with axes ``[T][Z]YX``.

        Returns
        -------
        array or None, int or None
            The intensities with the channel axis last (or no channel axis), and
            the index of that axis; ``(None, None)`` when the grids differ, as
            for super-resolved outputs.
        """
        array = np.asarray(self.array)
        axes = self.axes
        if "S" in axes and "C" in axes:
            return None, None
        channel = "C" if "C" in axes else ("S" if "S" in axes else None)
        order = [a for a in "TZYX" if a in axes] + ([channel] if channel else [])
        array = np.transpose(array, [axes.index(a) for a in order])
        spatial = array.shape[:-1] if channel else array.shape
        if tuple(spatial) != tuple(label_shape):
            return None, None
        return array, (array.ndim - 1 if channel else None)


def guess_axes(shape: tuple[int, ...]) -> str:
    """Guess axes from a shape, the way most users would read it.

    Parameters
    ----------
    shape : tuple of int
        The array's shape.

    Returns
    -------
    str
        ``YX`` for 2D; ``YXS`` for a trailing 3 or 4; ``CYX`` for a leading axis
        of at most 4; ``ZYX`` otherwise in 3D; ``CZYX`` or ``TZYX`` beyond, by the
        same rule; ``TCZYX`` for 5D.
    """
    ndim = len(shape)
    if ndim == 2:
        return "YX"
    if ndim == 3:
        if shape[-1] in (3, 4) and shape[0] > 4:
            return "YXS"
        return "CYX" if shape[0] <= 4 else "ZYX"
    if ndim == 4:
        if shape[-1] in (3, 4) and shape[1] > 4:
            return "ZYXS"
        return "CZYX" if shape[0] <= 4 else "TZYX"
    if ndim == 5:
        return "TCZYX"
    raise OncoAIError(
        f"cannot guess the axes of an image with shape {shape}; give them with "
        "--axes, e.g. --axes TCZYX"
    )


def read_image(
    path: str | Path, axes: str | None = None, *, level: int = 0
) -> ImageData:
    """Open an image lazily, with axes and pixel size where the file has them.

    Parameters
    ----------
    path : str or Path
        A TIFF (``.tif``, ``.tiff``, ``.ome.tif``, ``.qptiff``, ``.svs``), zarr
        or OME-Zarr folder, ``.npy``, PNG or JPEG.
    axes : str or None
        Override the axes read from the file, e.g. ``"CYX"``.
    level : int
        Pyramid level for multiscale files; 0 is full resolution.

    Returns
    -------
    ImageData

    Raises
    ------
    OncoAIError
        When the file is missing, empty, corrupt or not an image.

    Examples
    --------
    >>> from model_zoo.images import read_image
    >>> image = read_image("../shared/data/images/stardist_img2d.tif")
    >>> image.axes, image.shape
    ('YX', (512, 512))
    """
    path = Path(path)
    if not path.exists():
        raise OncoAIError(f"image not found: {str(path)!r}; check the path")
    if path.is_file() and path.stat().st_size == 0:
        raise OncoAIError(f"image file is empty (0 bytes): {str(path)!r}")
    name = path.name.lower()
    try:
        if name.endswith((".zarr", ".zarr/")) or any(
            (path / marker).exists() for marker in (".zattrs", ".zgroup", "zarr.json")
        ):
            image = _read_zarr(path, level)
        elif name.endswith(".npy"):
            image = ImageData(np.load(path, mmap_mode="r"), "", path=path)
        elif name.endswith((".png", ".jpg", ".jpeg", ".bmp")):
            image = _read_flat(path)
        else:
            image = _read_tiff(path, level)
    except OncoAIError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise OncoAIError(
            f"cannot read {str(path)!r} as an image ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:200]}); is it a complete TIFF, zarr, npy, "
            "PNG or JPEG file?"
        ) from exc
    if axes:
        image = ImageData(
            image.array,
            axes,
            image.pixel_size,
            image.channel_names,
            path,
            metadata=image.metadata,
        )
    image.path = path
    image.name = _stem(path)
    return image


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif", ".ome.zarr"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _new(array: Any, axes: str | None, **kwargs: Any) -> ImageData:
    return ImageData(array, axes or guess_axes(tuple(array.shape)), **kwargs)


def _read_flat(path: Path) -> ImageData:
    from skimage import io as skio

    array = skio.imread(str(path))
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        return ImageData(array, "YXS", path=path)
    return _new(array, None, path=path)


def _read_tiff(path: Path, level: int) -> ImageData:
    import tifffile
    import zarr

    with tifffile.TiffFile(path) as tif:
        if not tif.series:
            raise OncoAIError(f"{str(path)!r} holds no image data")
        series = tif.series[0]
        levels = len(series.levels)
        if level >= levels:
            raise OncoAIError(
                f"pyramid level {level} requested but {str(path)!r} has {levels} "
                f"level(s); use --level 0..{levels - 1}"
            )
        tiff_axes = series.axes
        pixel_size = _tiff_pixel_size(tif)
        metadata = _oncoai_metadata(tif)
        shape = series.levels[level].shape
        full_width = series.levels[0].shape[-1 if series.axes[-1] != "S" else -2]
        if int(np.prod(shape)) < 2**26:
            # Decoding a small image now turns a truncated or corrupt file into a
            # clear error here rather than halfway through a prediction.
            series.levels[level].asarray()
    store = tifffile.imread(path, aszarr=True, series=0, level=level)
    array = zarr.open(store, mode="r")
    axes = _map_tiff_axes(tiff_axes, shape)
    if level and pixel_size:
        factor = full_width / shape[axes.index("X")]
        pixel_size = (pixel_size[0] * factor, pixel_size[1] * factor)
    return ImageData(array, axes, pixel_size=pixel_size, path=path, metadata=metadata)


def _map_tiff_axes(tiff_axes: str, shape: tuple[int, ...]) -> str:
    mapped = "".join(_TIFF_AXES.get(a, "?") for a in tiff_axes)
    if "?" not in mapped and len(set(mapped)) == len(mapped):
        return mapped
    guessed = guess_axes(shape)
    log.info("TIFF axes %r read as %r", tiff_axes, guessed)
    return guessed


def _tiff_pixel_size(tif: Any) -> tuple[float, float] | None:
    ij = tif.imagej_metadata or {}
    page = tif.pages[0]
    try:
        if tif.is_ome and tif.ome_metadata:
            import xml.etree.ElementTree as ET

            root = ET.fromstring(tif.ome_metadata)
            for node in root.iter():
                if node.tag.endswith("Pixels") and node.get("PhysicalSizeX"):
                    sx = float(node.get("PhysicalSizeX"))
                    sy = float(node.get("PhysicalSizeY", sx))
                    return (sy, sx)
        if tif.is_svs:
            desc = page.description
            for part in desc.split("|"):
                if part.strip().startswith("MPP"):
                    mpp = float(part.split("=")[1])
                    return (mpp, mpp)
        xres = page.tags.get("XResolution")
        yres = page.tags.get("YResolution")
        unit = page.tags.get("ResolutionUnit")
        if xres and yres:
            xn, xd = xres.value
            yn, yd = yres.value
            if xn and yn and (xn / xd) != 1.0:
                unit_name = ij.get("unit", "")
                per_unit = {2: 25400.0, 3: 10000.0}.get(int(unit.value) if unit else 1)
                if unit_name in ("micron", "um", "µm", "\\u00B5m"):
                    per_unit = 1.0
                # 72 and 96 dots per inch are screen defaults that many writers set
                # without meaning a physical size.
                dpi = (xn / xd) * 25400.0 / per_unit if per_unit else 0.0
                screen = per_unit in (25400.0, 10000.0) and round(dpi) in (72, 96)
                if per_unit and not screen:
                    return (per_unit * yd / yn, per_unit * xd / xn)
    except Exception:  # noqa: BLE001
        log.debug("could not read pixel size", exc_info=True)
    return None


def _oncoai_metadata(tif: Any) -> dict[str, Any]:
    tag = tif.pages[0].tags.get(65000)  # OncoAI's provenance tag
    if tag is not None:
        try:
            return {"oncoai": json.loads(tag.value)}
        except (TypeError, ValueError):
            log.debug("unreadable provenance tag", exc_info=True)
    desc = tif.pages[0].description or ""
    if desc.startswith("{") and "oncoai" in desc:
        try:
            return json.loads(desc)
        except ValueError:
            return {}
    return {}


def _read_zarr(path: Path, level: int) -> ImageData:
    import zarr

    group = zarr.open(str(path), mode="r")
    attrs = dict(group.attrs)
    if isinstance(group, zarr.Array):
        axes = attrs.get("axes")
        return _new(group, axes, path=path, metadata=attrs)
    multiscales = attrs.get("multiscales")
    if not multiscales:
        keys = list(group.array_keys())
        if not keys:
            raise OncoAIError(f"zarr {str(path)!r} holds no arrays")
        return _new(group[keys[0]], None, path=path, metadata=attrs)
    ms = multiscales[0]
    datasets = ms["datasets"]
    if level >= len(datasets):
        raise OncoAIError(
            f"pyramid level {level} requested but {str(path)!r} has {len(datasets)}"
        )
    array = group[datasets[level]["path"]]
    axes = "".join(a["name"] if isinstance(a, dict) else a for a in ms.get("axes", []))
    axes = axes.upper() or None
    pixel_size = None
    for t in datasets[level].get("coordinateTransformations", []):
        if t.get("type") == "scale" and axes:
            scale = t["scale"]
            pixel_size = (float(scale[axes.index("Y")]), float(scale[axes.index("X")]))
    return _new(array, axes, pixel_size=pixel_size, path=path, metadata=attrs)
