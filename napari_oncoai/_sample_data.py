"""Sample images for the tasks the starter models cover.

The starter models cover one task, fluorescent nuclei; its sample is made by the
engine from a fixed seed, so nothing is downloaded and no data file ships.
"""

from __future__ import annotations

from typing import Any


def nuclei_sample() -> list[tuple[Any, dict[str, Any], str]]:
    """Return the 512² fluorescent-nuclei sample as an image layer.

    Returns
    -------
    list of (array, dict, str)
        One uint16 YX image named ``nuclei (OncoAI sample)``, for the
        ``oncoai-nuclei`` starter model.

    Examples
    --------
    >>> data, meta, kind = nuclei_sample()[0]
    >>> data.shape, data.dtype.name, kind
    ((512, 512), 'uint16', 'image')
    """
    from model_zoo.starter import nuclei_sample as make_sample

    meta = {
        "name": "nuclei (OncoAI sample)",
        "colormap": "gray",
        "metadata": {"oncoai_sample": "nuclei", "model": "oncoai-nuclei"},
    }
    return [(make_sample(), meta, "image")]
