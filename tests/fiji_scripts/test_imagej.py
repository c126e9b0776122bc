"""The Python-to-ImageJ bridge, with ImageJ running in this process (JPype)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from fiji_scripts.imagej import (
    find_ij_jar,
    from_imageplus,
    open_image,
    open_result,
    open_rois,
    run_macro,
    to_imageplus,
)
from model_zoo.errors import OncoAIError


def test_the_jar_is_found_where_debian_puts_it(ij_jar: Path) -> None:
    assert find_ij_jar() == ij_jar


def test_an_imagej_folder_is_searched_first(tmp_path: Path) -> None:
    (tmp_path / "jars").mkdir()
    jar = tmp_path / "jars" / "ij-1.54f.jar"
    jar.write_bytes(b"")
    assert find_ij_jar(tmp_path) == jar


def test_arrays_round_trip_through_imageplus(imagej: Any) -> None:
    rng = np.random.default_rng(0)
    for array in (
        rng.integers(0, 255, (7, 12), dtype=np.uint8),
        rng.integers(0, 65535, (7, 12), dtype=np.uint16),
        rng.random((3, 5, 4)).astype(np.float32),
    ):
        image = to_imageplus(array, "t", pixel_size=(0.5, 0.25))
        assert (image.getWidth(), image.getHeight()) == (
            array.shape[-1],
            array.shape[-2],
        )
        assert image.getStackSize() == (array.shape[0] if array.ndim == 3 else 1)
        calibration = image.getCalibration()
        assert (calibration.pixelWidth, calibration.pixelHeight) == (0.25, 0.5)
        back = from_imageplus(image)
        assert back.dtype == array.dtype
        np.testing.assert_array_equal(back, array)


def test_labels_become_exact_floats(imagej: Any) -> None:
    labels = np.array([[0, 1], [70000, 2**24 - 1]], dtype=np.int32)
    image = to_imageplus(labels)
    assert image.getBitDepth() == 32
    np.testing.assert_array_equal(from_imageplus(image), labels.astype(np.float32))


def test_imagej_opens_a_real_image(imagej: Any, shared_data: Path) -> None:
    path = shared_data / "images" / "stardist_img2d.tif"
    image = open_image(path)
    np.testing.assert_array_equal(from_imageplus(image), tifffile.imread(path))


def test_a_macro_runs_and_returns(imagej: Any) -> None:
    assert run_macro('return "" + (6 * 7) + getArgument();', "!") == "42!"


def test_rois_are_decoded_by_imagej(imagej: Any, shared_data: Path) -> None:
    (roi,) = open_rois(shared_data / "imagej_rois" / "oval.roi")
    assert str(roi.getTypeAsString()) == "Oval"
    bounds = roi.getBounds()
    assert (bounds.x, bounds.y, bounds.width, bounds.height) == (97, 58, 34, 37)


def test_missing_files_are_one_line_errors(tmp_path: Path, imagej: Any) -> None:
    with pytest.raises(OncoAIError, match=r"image not found: .*gone\.tif"):
        open_image(tmp_path / "gone.tif")
    with pytest.raises(OncoAIError, match=r"ImageJ ROI file not found: .*gone\.zip"):
        open_rois(tmp_path / "gone.zip")
    bad = tmp_path / "bad.tif"
    bad.write_text("not an image")
    with pytest.raises(OncoAIError, match="ImageJ could not open"):
        open_image(bad)


def test_a_result_without_roiset_opens_alone(tmp_path: Path, imagej: Any) -> None:
    path = tmp_path / "x_labels.tif"
    tifffile.imwrite(path, np.arange(12, dtype=np.uint16).reshape(3, 4))
    opened = open_result(path)
    assert (opened.image.getWidth(), opened.image.getHeight()) == (4, 3)
    assert opened.rois == [] and opened.table is None
