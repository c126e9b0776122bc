"""Fixtures for the napari plugin's tests: a model to run and its result."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


@pytest.fixture(scope="session")
def nuclei_image(shared_data: Path) -> np.ndarray:
    """StarDist's 512² fluorescence nuclei image, uint16 YX."""
    import tifffile

    return tifffile.imread(shared_data / "images" / "stardist_img2d.tif")


@pytest.fixture(scope="session")
def nuclei_result(nuclei_model: str, nuclei_image: np.ndarray):
    """One prediction of the nucleus model on the 512² image, objects computed."""
    from model_zoo.config import PredictionConfig
    from model_zoo.images import ImageData
    from model_zoo.prediction import predict

    result = predict(
        PredictionConfig(model=nuclei_model, device="cpu"),
        ImageData(nuclei_image, "YX", name="stardist_img2d"),
    )
    result.instances  # noqa: B018 - computed once for every test that reads it
    return result


@pytest.fixture
def artifacts() -> Path:
    """``tests/artifacts/``: files kept for CI to collect, never committed."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
