"""OncoAI in napari: run bioimage.io models from the *Plugins › OncoAI* menu.

Importing this package costs almost nothing: napari imports it at start-up to
read ``napari.yaml``, so the engine and its deep-learning back ends (torch,
onnxruntime, bioimageio) are imported only when a widget, reader or writer is
first used.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
