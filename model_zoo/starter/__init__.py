"""Starter models and sample images that ship with OncoAI.

Everything here works offline on first use: the models are bioimage.io packages
inside the installed package, trained by OncoAI's own script
(:mod:`model_zoo.starter.train_nuclei`) on synthetic images that OncoAI makes
(:mod:`model_zoo.starter.synthetic`), and the sample image is generated from a
fixed seed rather than read from a file.

Examples
--------
>>> from model_zoo.starter import nuclei_sample, starter_rdf
>>> starter_rdf().name
'rdf.yaml'
>>> nuclei_sample().shape
(512, 512)
"""

from __future__ import annotations

from pathlib import Path

from model_zoo.errors import OncoAIError
from model_zoo.starter.synthetic import nuclei_sample

__all__ = ["MODELS_DIR", "STARTER_MODELS", "nuclei_sample", "starter_rdf"]

MODELS_DIR = Path(__file__).resolve().parent / "models"
"""The folder that holds one bioimage.io package per starter model."""

STARTER_MODELS: dict[str, Path] = {
    "oncoai-nuclei": MODELS_DIR / "oncoai-nuclei" / "rdf.yaml",
}
"""Nickname of each starter model mapped to its ``rdf.yaml``."""


def starter_rdf(name: str = "oncoai-nuclei") -> Path:
    """Return the ``rdf.yaml`` of a bundled starter model.

    Parameters
    ----------
    name : str
        The model's nickname, a key of :data:`STARTER_MODELS`.

    Returns
    -------
    pathlib.Path
        The description file; its folder holds the weights and test tensors.

    Raises
    ------
    OncoAIError
        If ``name`` is not a starter model, or its package is missing from the
        installation.
    """
    try:
        rdf = STARTER_MODELS[name]
    except KeyError:
        raise OncoAIError(
            f"There is no starter model called {name!r}; choose one of "
            f"{', '.join(sorted(STARTER_MODELS))}."
        ) from None
    if not rdf.is_file():
        raise OncoAIError(
            f"The starter model {name!r} is missing its description {rdf}; "
            "reinstall OncoAI (the package data was not installed)."
        )
    return rdf
