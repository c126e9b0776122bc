"""Fixtures shared by every test package."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only third-party test data beside the repository."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"test data not found at {SHARED_DATA}; CI lays ../shared beside")
    return SHARED_DATA


@pytest.fixture(scope="session")
def unet_dir(shared_data: Path) -> Path:
    """The real bioimage.io nucleus U-Net (TorchScript and ONNX weights)."""
    return shared_data / "bioimageio" / "unet2d_nuclei_broad"


@pytest.fixture(scope="session")
def nuclei_model() -> str:
    """The bundled starter nucleus model, small and fast enough for host tests."""
    from model_zoo.starter import STARTER_MODELS

    if not STARTER_MODELS["oncoai-nuclei"].is_file():
        pytest.fail("the starter model package model_zoo/starter/models is missing")
    return "oncoai-nuclei"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch) -> None:
    """Keep every test's model cache and service token out of the user's home."""
    root = tmp_path_factory.mktemp("oncoai-home")
    monkeypatch.setenv("ONCOAI_CACHE_DIR", str(root / "cache"))
    monkeypatch.setenv("ONCOAI_CONFIG_DIR", str(root / "config"))
