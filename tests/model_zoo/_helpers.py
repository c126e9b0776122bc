"""Helpers shared by the engine's test modules."""

from __future__ import annotations

from pathlib import Path


def predict_args(model: object, images: object, out: Path, *extra: object) -> list[str]:
    """The arguments of a quiet ``oncoai predict`` on the CPU.

    ``images`` is one input path or a list of them, in the model's input order;
    ``extra`` options go before them.
    """
    inputs = images if isinstance(images, list | tuple) else [images]
    args = ["predict", "--quiet", "--model", model, "--device", "cpu", *extra]
    return [str(a) for a in [*args, *inputs, "-o", out]]
