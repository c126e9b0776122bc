"""Device choice and out-of-memory recovery; the GPU group runs with ``-m gpu``."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from model_zoo.config import PredictionConfig
from model_zoo.errors import OncoAIError
from model_zoo.model import load_model, resolve_device
from model_zoo.prediction import predict


def test_auto_device_is_cpu_without_gpu() -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present; auto would pick it")
    assert resolve_device("auto") in ("cpu", "mps")


def test_cuda_without_gpu_is_a_clear_error() -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    with pytest.raises(OncoAIError, match="no CUDA GPU is available"):
        resolve_device("cuda:0")


def test_bad_device_string_is_refused() -> None:
    with pytest.raises(ValueError, match="device must be auto, cpu"):
        PredictionConfig(model="x", device="tpu")


def test_out_of_memory_halves_batch_then_tile(unet_dir, caplog) -> None:
    """A forward pass that runs out of memory is retried smaller, and says so."""
    model = load_model(unet_dir, "torchscript", "cpu")
    real = model._runner
    seen: list[tuple[int, ...]] = []

    def flaky(inputs):
        seen.append(inputs[0].shape)
        if inputs[0].shape[0] > 1:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(inputs)

    model._runner = flaky
    image = np.random.default_rng(0).normal(size=(700, 700)).astype(np.float32)
    config = PredictionConfig(model=str(unet_dir), weights="torchscript", batch_size=4)
    with caplog.at_level(logging.WARNING):
        result = predict(config, image, model=model)
    assert seen[0][0] == 4
    assert seen[-1][0] == 1
    assert "out of memory" in caplog.text
    reference = predict(
        config.model_copy(update={"batch_size": 1}),
        image,
        model=load_model(unet_dir, "torchscript", "cpu"),
    )
    np.testing.assert_allclose(
        result.outputs["probability"], reference.outputs["probability"], atol=1e-5
    )


@pytest.mark.gpu
def test_gpu_matches_cpu(unet_dir) -> None:
    """On a CUDA machine, TorchScript on the GPU reproduces the CPU result."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.fail("the gpu group needs a CUDA device")
    image = np.load(unet_dir / "test_input.npy")[0, 0]
    expected = np.load(unet_dir / "test_output.npy")[0]
    config = PredictionConfig(model=str(unet_dir), weights="torchscript", device="cuda")
    result = predict(config, image)
    assert load_model(unet_dir, "torchscript", "cuda").device == "cuda"
    np.testing.assert_allclose(result.outputs["probability"], expected, atol=1e-4)


@pytest.mark.gpu
def test_gpu_auto_picks_cuda() -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.fail("the gpu group needs a CUDA device")
    assert resolve_device("auto") == "cuda"
