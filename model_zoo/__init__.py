"""OncoAI's engine: run bioimage.io models on any image, offline, on CPU or GPU.

Heavy libraries (torch, onnxruntime, bioimageio) load only when a model runs, so
that hosts can import this package cheaply.
"""

from __future__ import annotations

from model_zoo.config import PredictionConfig
from model_zoo.errors import CancelledError, NotReproducedError, OncoAIError

__version__ = "0.1.0"

__all__ = [
    "CancelledError",
    "NotReproducedError",
    "OncoAIError",
    "PredictionConfig",
    "__version__",
]
