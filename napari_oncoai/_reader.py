"""Open bioimage.io model packages and OncoAI outputs in napari.

- A model zip, a folder holding ``rdf.yaml`` or ``bioimageio.yaml``, or such an
  RDF file is installed into the OncoAI model cache (so that *Run model* offers
  it) and its sample input is shown as an image layer.
- A TIFF or zarr that OncoAI wrote (it carries OncoAI provenance) opens as a
  Labels layer when it holds integer labels, else as one image layer per
  channel, with the provenance in the layer metadata.

Anything else is left to other readers: :func:`napari_get_reader` returns None.
Whole-slide files are not opened here: the engine has no slide reader yet, so
napari's own readers (or another plugin) open them.
"""

from __future__ import annotations

import json
import logging
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

LayerData = list[tuple[Any, ...]]
ReaderFunction = Callable[[Any], LayerData]

_RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
_RDF_SUFFIXES = (".rdf.yaml", ".bioimageio.yaml")
_TIFF_SUFFIXES = (".tif", ".tiff")
#: The private TIFF tag in which :mod:`model_zoo.outputs` stores the provenance
#: JSON; repeated here so that checking a file does not import the engine.
PROVENANCE_TAG = 65000
# Where a model's sample or test input is named, by spec version.
_SAMPLE_KEYS = ("sample_tensor", "test_tensor")
_SAMPLE_LISTS = ("sample_inputs", "test_inputs")


def napari_get_reader(path: str | list[str]) -> ReaderFunction | None:
    """Return a reader for ``path`` when it is a model package or OncoAI output.

    Parameters
    ----------
    path : str or list of str
        What the user opened; a list is handled only when it holds one path.

    Returns
    -------
    callable or None
        ``reader(path) -> [(data, kwargs, layer_type), ...]``; None for anything
        else. This function never raises.
    """
    try:
        return _choose(path)
    except Exception:  # noqa: BLE001 - napari must be free to try other readers
        log.debug("OncoAI does not read %r", path, exc_info=True)
        return None


def _choose(path: str | list[str]) -> ReaderFunction | None:
    if isinstance(path, list | tuple):
        if len(path) != 1:
            return None
        path = path[0]
    target = Path(str(path))
    if is_model_package(target):
        return read_model
    if is_oncoai_output(target):
        return read_output
    return None


def is_model_package(path: Path) -> bool:
    """Tell cheaply whether ``path`` is a bioimage.io model zip, folder or RDF."""
    name = path.name.lower()
    if path.is_dir():
        return _folder_rdf(path) is not None
    if not path.is_file():
        return False
    if name.endswith(".zip"):
        return _zip_has_rdf(path)
    return name in _RDF_NAMES or name.endswith(_RDF_SUFFIXES)


def _is_rdf_name(name: str) -> bool:
    name = name.lower()
    return name in _RDF_NAMES or name.endswith(_RDF_SUFFIXES)


def _folder_rdf(folder: Path) -> Path | None:
    for child in folder.iterdir():
        if child.is_file() and _is_rdf_name(child.name):
            return child
    return None


def _zip_has_rdf(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            parts = [p for p in name.split("/") if p and p != "__MACOSX"]
            # The RDF sits at the top or inside one wrapping folder.
            if 1 <= len(parts) <= 2 and _is_rdf_name(parts[-1]):
                return True
    return False


def is_oncoai_output(path: Path) -> bool:
    """Tell cheaply whether ``path`` is a TIFF or zarr that OncoAI wrote."""
    name = path.name.lower()
    if path.is_dir():
        return _zarr_attrs(path).get("oncoai") is not None
    if path.is_file() and name.endswith(_TIFF_SUFFIXES):
        return bool(_tiff_provenance(path))
    return False


def _zarr_attrs(path: Path) -> dict[str, Any]:
    """The attributes of a zarr group, format 3 (``zarr.json``) or 2."""
    if (path / "zarr.json").is_file():
        content = json.loads((path / "zarr.json").read_text(encoding="utf-8"))
        content = content.get("attributes", {}) if isinstance(content, dict) else {}
    elif (path / ".zattrs").is_file():
        content = json.loads((path / ".zattrs").read_text(encoding="utf-8"))
    else:
        return {}
    return content if isinstance(content, dict) else {}


def _tiff_provenance(path: Path) -> dict[str, Any]:
    """Return the provenance OncoAI stores in its private TIFF tag, or {}."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        tag = tif.pages.first.tags.get(PROVENANCE_TAG)
        text = tag.value if tag is not None else ""
    if not isinstance(text, str) or not text.startswith("{"):
        return {}
    content = json.loads(text)
    return content if isinstance(content, dict) else {}


def read_model(path: str | list[str]) -> LayerData:
    """Install a model package into the cache and show its sample input.

    Parameters
    ----------
    path : str or list of str
        The model zip, folder or RDF.

    Returns
    -------
    list of layer data
        The sample input as an image layer, or ``[(None,)]`` when the package
        has none or could not be installed (the reason is shown as a
        notification).
    """
    from napari.utils.notifications import show_error, show_info

    from model_zoo.cache import import_model
    from model_zoo.errors import one_line
    from napari_oncoai._models import events

    target = Path(str(path[0] if isinstance(path, list | tuple) else path))
    try:
        model = import_model(target)
    except Exception as err:  # noqa: BLE001 - the user sees one line, the log all
        log.error("could not import model %s", target, exc_info=True)
        show_error(one_line(err))
        return [(None,)]
    events.models_changed.emit()
    show_info(
        f"Model {model.name!r} was added to OncoAI; run it from Plugins › OncoAI › "
        "Run model"
    )
    sample = _sample_input(model.rdf)
    if sample is None:
        return [(None,)]
    meta = {"name": f"{model.name} · sample", "metadata": {"oncoai_model": model.id}}
    return [(sample, meta, "image")]


def _sample_input(rdf: Path) -> np.ndarray | None:
    """Load the first sample (or test) input a model ships, without batch axis."""
    import yaml

    content = yaml.safe_load(rdf.read_text(encoding="utf-8")) or {}
    names: list[Any] = []
    for tensor in content.get("inputs") or ():
        if isinstance(tensor, dict):
            names += [tensor.get(k) for k in _SAMPLE_KEYS]
    for key in _SAMPLE_LISTS:
        names += list(content.get(key) or ())
    for name in names:
        if isinstance(name, dict):
            name = name.get("source")
        if not isinstance(name, str) or "://" in name:
            continue
        file = rdf.parent / name
        if not file.is_file():
            continue
        try:
            return _squeeze_batch(_load_array(file))
        except Exception:  # noqa: BLE001 - try the next sample
            log.warning("cannot read the model sample %s", file, exc_info=True)
    return None


def _load_array(file: Path) -> np.ndarray:
    if file.suffix.lower() == ".npy":
        return np.load(file, allow_pickle=False)
    from model_zoo.images import read_image

    return np.asarray(read_image(file).array)


def _squeeze_batch(array: np.ndarray) -> np.ndarray:
    # Samples are stored batch-first with singleton batch and channel axes.
    while array.ndim > 2 and array.shape[0] == 1:
        array = array[0]
    return array


def read_output(path: str | list[str]) -> LayerData:
    """Open an OncoAI output as layers, with its provenance in the metadata.

    Parameters
    ----------
    path : str or list of str
        A TIFF or zarr written by OncoAI.

    Returns
    -------
    list of layer data
        A Labels layer for integer outputs, else one image layer per channel;
        ``[(None,)]`` after an error, which is shown as a notification.
    """
    from napari.utils.notifications import show_error

    from model_zoo.errors import one_line

    target = Path(str(path[0] if isinstance(path, list | tuple) else path))
    try:
        return _output_layers(target)
    except Exception as err:  # noqa: BLE001 - the user sees one line, the log all
        log.error("could not open %s", target, exc_info=True)
        show_error(one_line(err))
        return [(None,)]


def _output_layers(path: Path) -> LayerData:
    import dask.array as da

    from model_zoo.images import read_image

    image = read_image(path)
    provenance = (
        _tiff_provenance(path) if path.is_file() else _zarr_attrs(path).get("oncoai")
    )
    metadata: dict[str, Any] = {"oncoai": dict(provenance or {})}
    if image.pixel_size:
        metadata["pixel_size_um"] = list(image.pixel_size)
    array = image.array
    data = da.from_zarr(array) if hasattr(array, "chunks") else np.asarray(array)
    kind = "labels" if np.issubdtype(data.dtype, np.integer) else "image"
    if "C" not in image.axes:
        return [(data, {"name": image.name, "metadata": metadata}, kind)]
    c = image.axes.index("C")
    n = data.shape[c]
    layers: LayerData = []
    for k in range(n):
        meta = {
            "name": image.name + (f" · c{k}" if n > 1 else ""),
            "metadata": metadata,
        }
        layers.append((data.take(k, axis=c) if n > 1 else data.squeeze(c), meta, kind))
    return layers
