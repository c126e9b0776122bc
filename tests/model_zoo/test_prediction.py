"""The tiled prediction engine against whole-image forward passes.

The shared U-Net checks the issue's "tiled equals whole" contract on a real model
and a real image; the tiny scripted models check every axis layout, several
tensors, a ×2 output and fixed sizes against the module run directly.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from model_zoo import cli
from model_zoo.config import PredictionConfig
from model_zoo.errors import CancelledError, OncoAIError
from model_zoo.images import ImageData
from model_zoo.prediction import PredictionJob, Progress, predict

from . import tiny_models
from ._helpers import predict_args

BORDER = 64
EPS = 1e-6  # bioimageio's zero_mean_unit_variance epsilon


def assert_same(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.shape == expected.shape
    np.testing.assert_allclose(np.asarray(got), expected, rtol=0, atol=1e-5)


# -- the shared U-Net: tiled equals whole ----------------------------------------


def unet_whole_pass(unet_dir: Path, image: np.ndarray) -> np.ndarray:
    """One TorchScript forward pass over the whole image, as the RDF prescribes."""
    module = torch.jit.load(str(unet_dir / "weights.pt"), map_location="cpu").eval()
    data = image.astype(np.float64)
    data = ((data - data.mean()) / (data.std() + EPS)).astype(np.float32)
    with torch.inference_mode():
        out = torch.sigmoid(module(torch.from_numpy(data)[None, None]))
    return out[0, 0].numpy()


@pytest.fixture(scope="module")
def mirrored_1024(shared_data: Path) -> np.ndarray:
    """The real 512² nuclei image mirrored 2×2 into 1024²."""
    img = tifffile.imread(shared_data / "images" / "stardist_img2d.tif")
    return np.block([[img, img[:, ::-1]], [img[::-1], img[::-1, ::-1]]])


@pytest.fixture(scope="module")
def whole_1024(unet_dir: Path, mirrored_1024: np.ndarray) -> np.ndarray:
    return unet_whole_pass(unet_dir, mirrored_1024)


def assert_matches_away_from_border(got: np.ndarray, expected: np.ndarray) -> None:
    inner = (slice(BORDER, -BORDER), slice(BORDER, -BORDER))
    diff = np.abs(got[inner].astype(np.float64) - expected[inner])
    assert diff.max() <= 1e-2
    assert np.mean(diff > 1e-3) <= 1e-4


@pytest.mark.parametrize("weights", ["onnx", "torchscript"])
def test_default_tiling_equals_whole_pass_on_1024(
    unet_dir, mirrored_1024, whole_1024, weights
):
    config = PredictionConfig(model=str(unet_dir), weights=weights, device="cpu")
    steps: list[Progress] = []

    result = predict(config, mirrored_1024, progress=steps.append)

    assert result.output_axes == {"probability": "CYX"}
    out = np.asarray(result.outputs["probability"])
    assert out.shape == (1, 1024, 1024)
    assert_matches_away_from_border(out[0], whole_1024)
    # The fixed 512² model is tiled: more than one forward pass.
    assert steps[-1].done == steps[-1].total > 2
    assert [s.done for s in steps] == sorted(s.done for s in steps)
    assert result.provenance["weights_format"] == weights


def test_normalisation_is_whole_image_not_per_tile(unet_dir, shared_data):
    img = tifffile.imread(shared_data / "images" / "stardist_img2d.tif")
    img = img.astype(np.float32)
    # Left half as acquired, right half 8× brighter on a high offset: the
    # statistics of any one tile differ strongly from the whole image's.
    image = np.concatenate([img, img[:, ::-1] * 8 + 3000], axis=1)
    expected = unet_whole_pass(unet_dir, image)

    # A per-tile normalisation of the first tile would be far off: this image
    # tells the two apart.
    per_tile = unet_whole_pass(unet_dir, image[:, :512])
    inner = (slice(BORDER, -BORDER), slice(BORDER, 448))
    assert np.abs(per_tile[inner] - expected[inner]).max() > 0.1

    config = PredictionConfig(model=str(unet_dir), weights="onnx", device="cpu")
    result = predict(config, ImageData(image, "YX"))
    out = np.asarray(result.outputs["probability"])[0]
    assert_matches_away_from_border(out, expected)


# -- tiny models: every layout against the module run directly ------------------


def run(model_dir: Path, image, **config) -> object:
    return predict(
        PredictionConfig(model=str(model_dir), device="cpu", **config), image
    )


def test_3d_model_tiles_z_y_x(tmp_path):
    model = tiny_models.volume_3d(tmp_path / "m")
    image = np.random.default_rng(0).normal(size=(12, 50, 44)).astype(np.float32)

    result = run(model.folder, ImageData(image, "ZYX"), tile=24)

    assert result.output_axes == {"out": "CZYX"}
    assert_same(result.outputs["out"], model.run_yx(image))


def test_3d_model_runs_a_time_series_volume_by_volume(tmp_path):
    model = tiny_models.volume_3d(tmp_path / "m")
    movie = np.random.default_rng(0).normal(size=(2, 8, 30, 26)).astype(np.float32)

    result = run(model.folder, ImageData(movie, "TZYX"))

    assert result.output_axes == {"out": "TCZYX"}
    assert_same(result.outputs["out"], np.stack([model.run_yx(v) for v in movie]))


@pytest.mark.parametrize("axes", ["CYX", "YXS"])
def test_multichannel_model(tmp_path, axes):
    model = tiny_models.multichannel(tmp_path / "m")
    cyx = np.random.default_rng(1).normal(size=(2, 45, 38)).astype(np.float32)
    image = cyx if axes == "CYX" else np.moveaxis(cyx, 0, -1)

    result = run(model.folder, image, axes=axes, tile=32)

    assert result.output_axes == {"out": "CYX"}
    assert_same(result.outputs["out"], model.run_yx(cyx, channel_axis=0))


def test_two_inputs_two_outputs(tmp_path):
    model = tiny_models.two_in_two_out(tmp_path / "m")
    rng = np.random.default_rng(2)
    a = rng.normal(size=(40, 52)).astype(np.float32)
    b = rng.normal(size=(40, 52)).astype(np.float32)

    result = run(model.folder, {"a": a, "b": b}, axes="YX", tile=32)

    expected_sum, expected_product = model.forward(a[None, None], b[None, None])
    assert result.output_axes == {"sum": "CYX", "product": "CYX"}
    assert_same(result.outputs["sum"], expected_sum[0])
    assert_same(result.outputs["product"], expected_product[0])


def test_x2_output_doubles_the_shape(tmp_path):
    model = tiny_models.upsample_2x(tmp_path / "m")
    image = np.random.default_rng(3).normal(size=(40, 56)).astype(np.float32)

    result = run(model.folder, image, axes="YX", tile=32)

    assert result.outputs["up"].shape == (1, 80, 112)
    assert result.output_scale["up"] == (0.5, 0.5)
    assert_same(result.outputs["up"], model.run_yx(image))


def record_tile_shapes(folder: Path, monkeypatch) -> list[tuple[int, ...]]:
    """The shapes of the first input of every batch the loaded model will run."""
    from model_zoo import prediction

    loaded = prediction.get_model(PredictionConfig(model=str(folder), device="cpu"))
    shapes: list[tuple[int, ...]] = []
    forward = loaded.forward
    monkeypatch.setattr(
        loaded, "forward", lambda xs: (shapes.append(xs[0].shape), forward(xs))[1]
    )
    return shapes


def test_fixed_size_model_sees_only_its_size(tmp_path, monkeypatch):
    model = tiny_models.fixed_size(tmp_path / "m", size=64)
    image = np.random.default_rng(4).normal(size=(150, 130)).astype(np.float32)
    shapes = record_tile_shapes(model.folder, monkeypatch)

    result = run(model.folder, image, axes="YX")

    assert_same(result.outputs["out"], model.run_yx(image))
    assert len(shapes) > 1
    assert {s[-2:] for s in shapes} == {(64, 64)}


@pytest.mark.parametrize("loop", ["T", "Z"])
def test_2d_model_runs_frame_by_frame(tmp_path, loop):
    model = tiny_models.plain_2d(tmp_path / "m")
    stack = np.random.default_rng(5).normal(size=(3, 40, 56)).astype(np.float32)
    steps: list[Progress] = []

    result = predict(
        PredictionConfig(model=str(model.folder), device="cpu", axes=f"{loop}YX"),
        stack,
        progress=steps.append,
    )

    out = np.asarray(result.outputs["out"])
    expected = np.stack([model.run_yx(frame) for frame in stack])  # (n, C, Y, X)
    if loop == "T":
        assert result.output_axes == {"out": "TCYX"}
        assert_same(out, expected)
    else:
        assert result.output_axes == {"out": "CZYX"}
        assert_same(out, np.moveaxis(expected, 0, 1))
    assert sum("statistics" in s.message for s in steps) == 3


def test_tile_0_runs_the_whole_image_in_one_pass(tmp_path, monkeypatch):
    model = tiny_models.plain_2d(tmp_path / "m")
    image = np.random.default_rng(6).normal(size=(100, 70)).astype(np.float32)
    shapes = record_tile_shapes(model.folder, monkeypatch)

    result = run(model.folder, image, axes="YX", tile=0)

    # One pass at the smallest size the model takes that holds the image.
    assert shapes == [(1, 1, 112, 80)]
    assert_same(result.outputs["out"], model.run_yx(image))


def test_declared_halo_is_honoured(tmp_path):
    model = tiny_models.plain_2d(tmp_path / "m", minimum=16, step=8, radius=4)
    # Multiples of 16 px: the last tile ends on the image's border, so the
    # tiled result must equal the whole image everywhere.
    image = np.random.default_rng(10).normal(size=(96, 80)).astype(np.float32)

    result = run(model.folder, image, axes="YX", tile=32, halo=0)

    assert_same(result.outputs["out"], model.run_yx(image))


def test_tile_too_small_for_the_declared_halo_is_refused(tmp_path):
    model = tiny_models.plain_2d(tmp_path / "m", minimum=16, step=8, radius=4)
    image = np.random.default_rng(10).normal(size=(96, 80)).astype(np.float32)

    # 16 px tiles, aligned on 16 px, leave no room for 4 px of halo: refusing
    # beats tiles that silently miss the context the model needs.
    with pytest.raises(OncoAIError, match="halo of 4 px"):
        run(model.folder, image, axes="YX", tile=16)


def test_scale_range_uses_whole_image_percentiles(tmp_path, monkeypatch):
    from model_zoo import prediction

    model = tiny_models.scale_range(tmp_path / "m")
    rng = np.random.default_rng(7)
    image = rng.gamma(2.0, 300.0, size=(96, 80)).astype(np.float32)
    image[:, 40:] += 5000  # per-tile percentiles would differ wildly
    # Stream the statistics over many chunks of rows.
    monkeypatch.setattr(prediction, "_STATS_CHUNK_VALUES", 80 * 7)

    result = run(model.folder, image, axes="YX", tile=32)

    normalised = tiny_models.scale_range_reference(image[None, None])
    expected = model.forward(normalised)[0][0]
    assert_same(result.outputs["out"], expected)


# -- cancel ----------------------------------------------------------------------


def test_cancel_from_another_thread_stops_within_a_batch(tmp_path):
    model = tiny_models.plain_2d(tmp_path / "m")
    image = np.random.default_rng(8).normal(size=(256, 256)).astype(np.float32)
    config = PredictionConfig(
        model=str(model.folder), device="cpu", tile=32, batch_size=2
    )
    job = PredictionJob(config, ImageData(image, "YX"))
    steps = job.run()
    tiles_seen = []

    with pytest.raises(CancelledError, match="cancelled"):
        for step in steps:
            if step.message.startswith("tile"):
                tiles_seen.append(step.done)
                if len(tiles_seen) == 1:
                    canceller = threading.Thread(target=job.cancel)
                    canceller.start()
                    canceller.join()

    assert job.cancelled
    assert job.result is None
    assert len(tiles_seen) == 1
    assert step.total > 50  # many tiles were left undone


class _CancelAfterFirstTile(PredictionJob):
    """A job that a watcher thread cancels once the first tile is done."""

    def run(self):
        for step in super().run():
            if step.message.startswith("tile"):
                watcher = threading.Thread(target=self.cancel)
                watcher.start()
                watcher.join()
            yield step


class _InterruptAfterFirstTile:
    def __call__(self, progress):
        if progress.message.startswith("tile"):
            raise KeyboardInterrupt


@pytest.mark.parametrize("how", ["cancel", "ctrl-c"])
def test_cancelled_predict_leaves_no_output(tmp_path, monkeypatch, capsys, how):
    from model_zoo import prediction

    model = tiny_models.plain_2d(tmp_path / "m")
    work = tmp_path / "work"
    work.mkdir()
    image = np.random.default_rng(9).normal(size=(256, 256)).astype(np.float32)
    np.save(work / "in.npy", image)
    if how == "cancel":
        monkeypatch.setattr(prediction, "PredictionJob", _CancelAfterFirstTile)
    else:
        monkeypatch.setattr(
            cli, "_ProgressLine", lambda quiet: _InterruptAfterFirstTile()
        )
    out = work / "out.tif"

    code = cli.main(predict_args(model.folder, work / "in.npy", out, "--tile", 32))

    err = [
        line
        for line in capsys.readouterr().err.splitlines()
        if not line.startswith("WARNING")
    ]
    assert code == 130
    assert len(err) == 1 and err[0].startswith("error: ")
    assert "nothing was written" in err[0]
    assert sorted(p.name for p in work.iterdir()) == ["in.npy"]
