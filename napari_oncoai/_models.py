"""The models the *Run model* widget offers, described without loading them.

Descriptions are read from each RDF with PyYAML, which takes milliseconds; the
model itself (and torch, onnxruntime, bioimageio) is loaded only when it runs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from psygnal import Signal

log = logging.getLogger(__name__)

#: Task names of the engine, in the order the picker shows their groups.
TASK_GROUPS: dict[str, str] = {
    "nuclei": "Nuclei / cells",
    "cells": "Nuclei / cells",
    "organoids": "Organoids",
    "denoise": "Denoise",
    "super-resolution": "Super-resolution",
    "slide": "H&E slide",
    "unknown": "Other",
}

# bioimage.io axis types and ids in OncoAI letters (spec 0.5).
_AXIS_IDS = {"channel": "C", "time": "T", "z": "Z", "y": "Y", "x": "X"}


@dataclass(frozen=True)
class ModelInfo:
    """What the picker shows about one model.

    Attributes
    ----------
    source : str
        What goes into ``PredictionConfig.model``: a starter or cache id, or a
        local path.
    name : str
        The RDF's name.
    task : str
        The engine's task name, a key of :data:`TASK_GROUPS`.
    origin : str
        ``starter``, ``cache`` or ``local``.
    description : str
        The RDF's description.
    license : str
        The SPDX licence id.
    input_axes : str
        The first input's axes without batch, e.g. ``CYX``.
    cover : Path or None
        The first cover image found on disk.
    stardist : bool
        Whether the RDF has a ``config.stardist`` section.
    tags : tuple of str
        The RDF's tags, lower-case.
    """

    source: str
    name: str
    task: str
    origin: str
    description: str = ""
    license: str = ""
    input_axes: str = ""
    cover: Path | None = None
    stardist: bool = False
    tags: tuple[str, ...] = field(default=(), repr=False)

    @property
    def group(self) -> str:
        """The picker group this model belongs to."""
        return TASK_GROUPS.get(self.task, TASK_GROUPS["unknown"])


class _Events:
    """Tells open widgets that the cache changed (a model was imported)."""

    models_changed = Signal()


events = _Events()


def describe(rdf: Path, source: str, origin: str) -> ModelInfo:
    """Read what the picker shows from one RDF file.

    Parameters
    ----------
    rdf : Path
        The ``rdf.yaml`` or ``bioimageio.yaml``.
    source : str
        The value for ``PredictionConfig.model``.
    origin : str
        ``starter``, ``cache`` or ``local``.

    Returns
    -------
    ModelInfo

    Raises
    ------
    OncoAIError
        When the RDF cannot be read as YAML.
    """
    import yaml

    from model_zoo.errors import OncoAIError

    try:
        content = yaml.safe_load(rdf.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as err:
        raise OncoAIError(
            f"cannot read the model description {str(rdf)!r} "
            f"({' '.join(str(err).split())[:160]}); re-import the model"
        ) from err
    tags = tuple(str(t).lower() for t in content.get("tags") or ())
    config = content.get("config") or {}
    covers = [rdf.parent / str(c) for c in content.get("covers") or ()]
    inputs = content.get("inputs") or [{}]
    return ModelInfo(
        source=source,
        name=str(content.get("name") or rdf.parent.name),
        task=_task(config, tags),
        origin=origin,
        description=" ".join(str(content.get("description") or "").split()),
        license=str(content.get("license") or "unknown"),
        input_axes=_axes(inputs[0].get("axes")),
        cover=next((c for c in covers if c.is_file()), None),
        stardist=isinstance(config, dict) and "stardist" in config,
        tags=tags,
    )


def _task(config: Any, tags: tuple[str, ...]) -> str:
    # The same rule as the engine's OncoModel.task, so groups match the run.
    from model_zoo.model import _TASK_TAGS

    oncoai = config.get("oncoai") if isinstance(config, dict) else None
    if isinstance(oncoai, dict) and oncoai.get("task"):
        return str(oncoai["task"])
    for name, words in _TASK_TAGS:
        if set(tags) & words:
            return name
    return "unknown"


def _axes(axes: Any) -> str:
    if isinstance(axes, str):  # spec 0.4: "bcyx"
        return "".join(a.upper() for a in axes if a != "b")
    letters = []
    for axis in axes or ():
        if not isinstance(axis, dict) or axis.get("type") == "batch":
            continue
        kind = axis.get("type")
        # Spec 0.5 lets a space axis leave out its id, which then is "x".
        name = kind if kind in ("channel", "time") else str(axis.get("id", "x"))
        letters.append(_AXIS_IDS.get(name.lower(), "?"))
    return "".join(letters)


def available_models() -> list[ModelInfo]:
    """List the starter models, then the models in the cache.

    Returns
    -------
    list of ModelInfo
        Models whose RDF cannot be read are logged and left out.
    """
    from model_zoo import cache

    found: list[ModelInfo] = []
    sources: list[tuple[Path, str, str]] = []
    try:
        from model_zoo.starter import STARTER_MODELS
    except ImportError:
        log.warning("the OncoAI starter models are not installed", exc_info=True)
        STARTER_MODELS = {}
    for key, rdf in STARTER_MODELS.items():
        sources.append((Path(rdf), key, "starter"))
    for model in cache.list_models():
        sources.append((model.rdf, model.id, "cache"))
    for rdf, source, origin in sources:
        try:
            found.append(describe(rdf, source, origin))
        except Exception as err:  # noqa: BLE001 - one bad RDF must not hide others
            log.warning("skipping model %s: %s", rdf, err)
    return found


def local_model(path: str | Path) -> ModelInfo:
    """Describe a model zip or folder chosen by the user, without installing it.

    Parameters
    ----------
    path : str or Path
        A bioimage.io model zip, a folder holding its RDF, or the RDF itself.

    Returns
    -------
    ModelInfo
        With ``origin="local"`` and ``source`` the given path.

    Raises
    ------
    OncoAIError
        When the path holds no model description.
    """
    from model_zoo.cache import resolve_source

    rdf = resolve_source(Path(path))
    return describe(rdf, str(path), "local")


def fetch(model_id: str) -> ModelInfo:
    """Download a model from bioimage.io into the cache and describe it.

    Raises
    ------
    OncoAIError
        When the id is unknown or the network cannot be reached.
    """
    from model_zoo.cache import fetch_model

    model = fetch_model(model_id.strip())
    events.models_changed.emit()
    return describe(model.rdf, model.id, "cache")
