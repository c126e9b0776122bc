"""Layers to engine images and results to layers, placed exactly."""

from __future__ import annotations

import numpy as np
import pytest
from napari.layers import Image

from model_zoo.errors import OncoAIError
from napari_oncoai._layers import (
    Grid,
    layer_axes,
    layer_pixel_size,
    layer_to_image,
    level_grid,
    output_grid,
    result_layers,
)


@pytest.mark.parametrize(
    ("shape", "kwargs", "axes"),
    [
        ((32, 40), {}, "YX"),
        ((40, 40, 3), {"rgb": True}, "YXS"),
        ((5, 32, 40), {}, "ZYX"),
        ((3, 5, 32, 40), {}, "TZYX"),
        ((2, 3, 5, 32, 40), {}, "TCZYX"),
        ((4, 32, 40), {"axis_labels": ("t", "y", "x")}, "TYX"),
        ((2, 4, 32, 40), {"axis_labels": ("Channel", "z", "y", "x")}, "CZYX"),
        ((2, 2, 2, 2, 32, 40), {}, ""),
    ],
)
def test_layer_axes_follow_labels_or_dimensions(shape, kwargs, axes) -> None:
    layer = Image(np.zeros(shape, dtype=np.uint8), **kwargs)
    assert layer_axes(layer) == axes


@pytest.mark.parametrize(
    ("units", "scale", "expected"),
    [
        (("um", "um"), (0.5, 0.25), (0.5, 0.25)),
        (("nm", "nm"), (500.0, 250.0), (0.5, 0.25)),
        (None, (0.5, 0.5), None),
    ],
)
def test_pixel_size_in_micrometres(units, scale, expected) -> None:
    layer = Image(np.zeros((8, 8)), scale=scale, units=units)
    assert layer_pixel_size(layer) == expected


def test_level_grid_puts_coarse_pixel_centres_over_level_0() -> None:
    pyramid = [np.zeros((64, 64)), np.zeros((32, 32)), np.zeros((16, 16))]
    layer = Image(pyramid, multiscale=True, scale=(0.5, 0.5), translate=(10, 20))
    grid = level_grid(layer, "YX", level=1)
    assert grid.scale == (1.0, 1.0)
    assert grid.translate == (10.25, 20.25)
    assert grid.pixel0 == (2.0, 2.0)
    # Level-1 pixel 3 covers level-0 pixels 6 and 7: its centre is at 6.5.
    assert grid.translate[0] + 3 * grid.scale[0] == 10 + 0.5 * 6.5
    level2 = level_grid(layer, "YX", level=2)
    assert level2.translate[1] + 1 * level2.scale[1] == 20 + 0.5 * 5.5


def test_output_grid_places_super_resolved_and_shifted_outputs() -> None:
    grid = Grid("YX", (2.0, 2.0), (100.0, 50.0), (1.0, 1.0), (0.0, 0.0))
    same = output_grid(grid, "YX", (1.0, 1.0), (0.0, 0.0))
    assert (same.scale, same.translate) == ((2.0, 2.0), (100.0, 50.0))
    # x4 super-resolution: output pixel 0 covers input [0, 0.25), centre 0.125,
    # which is input-pixel coordinate -0.375.
    fine = output_grid(grid, "YX", (0.25, 0.25), (0.0, 0.0))
    assert fine.scale == (0.5, 0.5)
    assert fine.translate == (100.0 - 0.75, 50.0 - 0.75)
    assert fine.pixel0 == (0.25, 0.25)
    # An output that starts 8 input pixels in (a valid-padding model).
    cropped = output_grid(grid, "YX", (1.0, 1.0), (8.0, 8.0))
    assert cropped.translate == (116.0, 66.0)
    assert cropped.origin0 == (8.0, 8.0)


def test_layer_to_image_reads_one_level_with_its_pixel_size() -> None:
    pyramid = [np.zeros((64, 48), np.uint16), np.ones((32, 24), np.uint16)]
    layer = Image(pyramid, multiscale=True, scale=(0.5, 0.5), units=("um", "um"))
    image, grid = layer_to_image(layer, level=1)
    assert image.axes == "YX"
    assert image.shape == (32, 24)
    assert image.pixel_size == (1.0, 1.0)
    assert grid.scale == (1.0, 1.0)


@pytest.mark.parametrize(
    ("shape", "axes", "level", "message"),
    [
        ((16, 16), "CYX", 0, "axes 'CYX' have 3 letters but layer 'img' has 2 dim"),
        ((16, 16, 3), "YXS", 0, "an RGB layer's axes end with S"),
        ((16, 16), None, 2, "pyramid level 2 requested but layer 'img' has 1 level"),
    ],
)
def test_layer_to_image_refuses_bad_choices(shape, axes, level, message) -> None:
    layer = Image(np.zeros(shape), name="img", rgb=False)
    with pytest.raises(OncoAIError, match=message):
        layer_to_image(layer, axes, level)


def test_result_layers_name_place_and_describe_objects(nuclei_result) -> None:
    grid = Grid("YX", (0.5, 0.5), (3.0, 4.0), (1.0, 1.0), (0.0, 0.0))
    layers = result_layers(
        nuclei_result, grid, input_name="nuclei", instances=True, level=0
    )
    model_name = nuclei_result.provenance["model_name"]
    assert [(meta["name"], kind) for _, meta, kind in layers] == [
        (f"nuclei · {model_name}", "image"),
        (f"nuclei · {model_name} · objects", "labels"),
    ]
    probability, labels = layers[0], layers[1]
    assert probability[0].shape == (512, 512)
    assert probability[1]["visible"] is False
    for _, meta, _ in layers:
        assert meta["scale"] == (0.5, 0.5)
        assert meta["translate"] == (3.0, 4.0)
        provenance = meta["metadata"]["oncoai"]
        assert provenance["model_name"] == model_name
        assert (
            provenance["weights_sha256"] == nuclei_result.provenance["weights_sha256"]
        )
        assert provenance["level0"] == {"pixel": [1.0, 1.0], "origin": [0.0, 0.0]}
    data, meta, _ = labels
    n = int(data.max())
    assert n > 50
    features = meta["features"]
    assert list(features["index"]) == list(range(1, n + 1))
    for column in ("area_px", "mean_intensity", "centroid_y", "centroid_x"):
        assert len(features[column]) == n
    assert {"eccentricity", "probability"} <= set(features)
    # Areas are pixel counts of the labels themselves.
    assert features["area_px"][0] == np.count_nonzero(data == 1)
