"""Writing results: TIFF, zarr / OME-Zarr and ``.npy``, each with provenance.

Every writer writes beside the target and renames into place, so a failure or a
cancel never leaves a half-written file.  Each output also gets a sidecar
``<name>.oncoai.json`` with the provenance.  Bridges add more formats (GeoJSON,
ImageJ RoiSet, CSV) through :mod:`model_zoo.plugins`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from model_zoo.errors import OncoAIError
from model_zoo.plugins import Registry, get_registry
from model_zoo.result import PredictionResult

log = logging.getLogger(__name__)

PROVENANCE_TAG = 65000  # a private TIFF tag holding the provenance JSON
_TILE = 256


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it into place on success.

    Works for files and folders (zarr).  On an exception the temporary path is
    removed and ``target`` is left as it was.

    Parameters
    ----------
    target : str or Path
        The final path.
    """
    target = Path(target)
    if not target.parent.exists():
        raise OncoAIError(
            f"output folder {str(target.parent)!r} does not exist; create it first"
        )
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    work = tmp / target.name
    try:
        yield work
        if not work.exists():
            raise OncoAIError(f"nothing was written for {str(target)!r}")
        if target.is_dir() and not target.is_symlink():
            old = tmp / ".old"
            os.replace(target, old)
        os.replace(work, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_result(result: PredictionResult, path: str | Path) -> Path:
    """Write a result to ``path`` in the format its name asks for.

    Parameters
    ----------
    result : PredictionResult
        What a model run returned.
    path : str or Path
        ``.tif``/``.tiff``/``.ome.tif``, ``.zarr``/``.ome.zarr``, ``.npy``, or a
        format a bridge registered (``.geojson``, ``_RoiSet.zip``, ``.csv`` ...).

    Returns
    -------
    Path
        The path written.
    """
    path = Path(path)
    registry = get_registry()
    suffix, writer = writer_for(path)
    if suffix in registry.instance_suffixes:
        result.instances  # noqa: B018 -- computed here so errors come before writing
    writer(result, path)
    write_sidecar(result, path)
    log.info("wrote %s", path)
    return path


def writer_for(path: Path) -> tuple[str, Any]:
    """The registered suffix and writer for ``path``.

    Raises
    ------
    OncoAIError
        When no registered format matches the name, listing those that do exist.
    """
    registry = get_registry()
    match = registry.writer_for(path)
    if match is None:
        known = ", ".join(sorted(registry.writers))
        raise OncoAIError(
            f"cannot tell the output format of {path.name!r}; end the name with one "
            f"of {known}"
        )
    return match


def write_sidecar(result: PredictionResult, path: Path) -> Path:
    """Write ``<name>.oncoai.json`` with the provenance beside an output."""
    sidecar = path.with_name(path.name + ".oncoai.json")
    data = {**result.provenance, "output": path.name}
    with atomic_path(sidecar) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    return sidecar


def _main(result: PredictionResult) -> tuple[Any, str, str]:
    key = result.main_output
    return result.outputs[key], result.output_axes[key], key


def _pixel_size(result: PredictionResult, key: str) -> tuple[float, float] | None:
    size = result.image.pixel_size
    if size is None:
        return None
    scale = result.output_scale.get(key, (1.0, 1.0))
    return (size[0] * scale[-2], size[1] * scale[-1])


def write_tiff(result: PredictionResult, path: Path) -> None:
    """The main output as an ImageJ hyperstack, or a tiled BigTIFF when large."""
    array, axes, key = _main(result)
    _tiff(array, axes, path, result.provenance, _pixel_size(result, key))


def _tiff(
    array: Any,
    axes: str,
    path: Path,
    provenance: dict[str, Any],
    pixel_size: tuple[float, float] | None,
) -> None:
    import tifffile

    text = json.dumps(provenance, default=str)
    extratags = [(PROVENANCE_TAG, "s", 0, text, True)]
    resolution = None
    if pixel_size:
        resolution = (1.0 / pixel_size[1], 1.0 / pixel_size[0])
    nbytes = int(np.prod(array.shape)) * np.dtype(array.dtype).itemsize
    with atomic_path(path) as tmp:
        if isinstance(array, np.ndarray) and nbytes < 2**31:
            data, ij_axes = _imagej_order(array, axes)
            tifffile.imwrite(
                tmp,
                data,
                imagej=True,
                resolution=resolution,
                metadata=_imagej_metadata(ij_axes, pixel_size, text),
                extratags=extratags,
            )
        else:
            _tiled_tiff(tmp, array, axes, text, extratags, resolution)


def _imagej_metadata(
    axes: str, pixel_size: tuple[float, float] | None, text: str
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"axes": axes, "Info": text}
    if pixel_size:
        # Without a pixel size the unit is left out: ImageJ would show "None".
        metadata["unit"] = "um"
    return metadata


def _imagej_order(array: np.ndarray, axes: str) -> tuple[np.ndarray, str]:
    order = [a for a in "TZCYX" if a in axes]
    data = np.transpose(array, [axes.index(a) for a in order])
    if data.dtype == np.float64:
        data = data.astype(np.float32)
    if data.dtype.kind == "b" or (data.dtype.kind in "iu" and data.dtype.itemsize > 2):
        data = imagej_integers(data)
    return data, "".join(order)


def imagej_integers(data: np.ndarray) -> np.ndarray:
    """Integers (e.g. labels) in a pixel type ImageJ stores exactly.

    ImageJ has 8- and 16-bit integer and 32-bit float images only: values in
    0..65535 become 16-bit, others 32-bit float, which is exact up to 2**24.

    Parameters
    ----------
    data : array of int or bool, any shape

    Returns
    -------
    array of uint16 or float32, same shape

    Raises
    ------
    OncoAIError
        When a value is too large for a float32 to hold exactly.
    """
    low, top = (int(data.min()), int(data.max())) if data.size else (0, 0)
    if low >= 0 and top < 2**16:
        return data.astype(np.uint16)
    if max(abs(low), abs(top)) >= 2**24:
        raise OncoAIError(
            f"{max(abs(low), abs(top))} is more than an ImageJ image can number "
            "exactly (limit 2**24); split the image into smaller regions"
        )
    return data.astype(np.float32)


def _tiled_tiff(tmp, array, axes, text, extratags, resolution) -> None:
    import tifffile

    h, w = array.shape[-2:]

    def tiles() -> Iterator[np.ndarray]:
        for plane in np.ndindex(*array.shape[:-2]):
            for y in range(0, h, _TILE):
                # Index the plane and the rows at once: a lazy array then reads
                # only this band, never the whole plane.
                block = np.asarray(array[(*plane, slice(y, y + _TILE), slice(None))])
                for x in range(0, w, _TILE):
                    tile = np.zeros((_TILE, _TILE), dtype=array.dtype)
                    part = block[:, x : x + _TILE]
                    tile[: part.shape[0], : part.shape[1]] = part
                    yield tile

    tifffile.imwrite(
        tmp,
        data=tiles(),
        # The full shape, so that the axes in the metadata match it.
        shape=tuple(array.shape),
        dtype=array.dtype,
        tile=(_TILE, _TILE),
        bigtiff=True,
        resolution=resolution,
        metadata={"axes": axes, "oncoai": text},
        extratags=extratags,
    )


def write_zarr(result: PredictionResult, path: Path) -> None:
    """Every output as an OME-Zarr (v0.4) image with the provenance in attrs."""
    import zarr

    from model_zoo.streaming import zarr_v2

    with atomic_path(path) as tmp:
        root = zarr.open_group(str(tmp), mode="w", **zarr_v2())
        for key, array in result.outputs.items():
            axes = result.output_axes[key]
            group = root if len(result.outputs) == 1 else root.create_group(key)
            chunks = tuple(
                1 if a in "TCZ" else min(512, s) for a, s in zip(axes, array.shape)
            )
            target = group.create_dataset(
                "0",
                shape=array.shape,
                chunks=chunks,
                dtype=array.dtype,
                overwrite=True,
            )
            _copy_blocks(array, target, axes)
            group.attrs["multiscales"] = [_multiscales(result, key, axes)]
            group.attrs["oncoai"] = result.provenance
        root.attrs["oncoai"] = result.provenance


def _copy_blocks(source: Any, target: Any, axes: str) -> None:
    lead = source.shape[:-2]
    h = source.shape[-2]
    for plane in np.ndindex(*lead):
        for y in range(0, h, 1024):
            target[(*plane, slice(y, y + 1024))] = np.asarray(
                source[(*plane, slice(y, y + 1024))]
            )


def _multiscales(result: PredictionResult, key: str, axes: str) -> dict[str, Any]:
    types = {"T": "time", "C": "channel", "Z": "space", "Y": "space", "X": "space"}
    size = _pixel_size(result, key)
    scale = []
    for a in axes:
        if a == "Y" and size:
            scale.append(size[0])
        elif a == "X" and size:
            scale.append(size[1])
        else:
            scale.append(1.0)
    axis_list = []
    for a in axes:
        entry = {"name": a.lower(), "type": types.get(a, "space")}
        if a in "YX" and size:
            entry["unit"] = "micrometer"
        axis_list.append(entry)
    return {
        "version": "0.4",
        "name": f"{result.image.name} · {result.provenance.get('model_name', '')}",
        "axes": axis_list,
        "datasets": [
            {
                "path": "0",
                "coordinateTransformations": [{"type": "scale", "scale": scale}],
            }
        ],
    }


def write_npy(result: PredictionResult, path: Path) -> None:
    """The main output as a ``.npy`` array, axes as in ``output_axes``."""
    array, _, _ = _main(result)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.asarray(array))


def register(registry: Registry) -> None:
    """Register the engine's own formats."""
    registry.add_writer((".tif", ".tiff", ".ome.tif", ".ome.tiff"), write_tiff)
    registry.add_writer((".zarr", ".ome.zarr"), write_zarr)
    registry.add_writer((".npy",), write_npy)
