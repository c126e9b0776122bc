"""Post-processing: labels from probabilities, outlines, measurements."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import shapely
import tifffile
from scipy import ndimage as ndi
from skimage.draw import disk, ellipse
from skimage.filters import threshold_otsu

from model_zoo.errors import OncoAIError
from model_zoo.postprocess import (
    labels_to_polygons,
    measure_instances,
    polygons_to_labels,
    probability_to_labels,
    stardist_to_labels,
)


@pytest.fixture(scope="module")
def real_mask(shared_data: Path) -> np.ndarray:
    """Ground-truth nucleus labels, 512x512, 125 objects, one in two pieces."""
    return tifffile.imread(shared_data / "images" / "stardist_mask2d.tif").astype(
        np.int32
    )


@pytest.fixture(scope="module")
def real_image(shared_data: Path) -> np.ndarray:
    return tifffile.imread(shared_data / "images" / "stardist_img2d.tif")


def _discs(shape: tuple[int, int], centres: list[tuple[int, int]], radius: int):
    mask = np.zeros(shape, dtype=bool)
    for centre in centres:
        rr, cc = disk(centre, radius, shape=shape)
        mask[rr, cc] = True
    return mask


def _best_iou(labels: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """For every object of ``truth``, its best IoU with any object of ``labels``."""
    n, k = int(labels.max()) + 1, int(truth.max()) + 1
    pairs = labels.ravel().astype(np.int64) * k + truth.ravel()
    overlap = np.bincount(pairs, minlength=n * k).reshape(n, k)
    union = overlap.sum(1)[:, None] + overlap.sum(0)[None, :] - overlap
    iou = overlap[1:, 1:] / np.maximum(union[1:, 1:], 1)
    present = np.bincount(truth.ravel(), minlength=k)[1:] > 0
    return iou.max(axis=0)[present]


# --------------------------------------------------------------------------
# labels_to_polygons / polygons_to_labels
# --------------------------------------------------------------------------


def test_exact_outlines_reproduce_the_real_mask(real_mask: np.ndarray) -> None:
    polygons = labels_to_polygons(real_mask, simplify=0)

    assert len(polygons) == len(np.unique(real_mask)) - 1 == 125
    np.testing.assert_array_equal(
        polygons_to_labels(polygons, real_mask.shape), real_mask
    )
    table = measure_instances(real_mask)
    assert list(polygons) == table["label"].tolist()
    areas = np.array([polygons[label].area for label in table["label"]])
    np.testing.assert_array_equal(areas, table["area_px"])
    assert all(shapely.is_valid(g) for g in polygons.values())
    # Label 129 of this mask is in two pieces.
    assert polygons[129].geom_type == "MultiPolygon"


def test_simplified_outlines_stay_within_two_percent(real_mask: np.ndarray) -> None:
    exact = labels_to_polygons(real_mask, simplify=0)
    polygons = labels_to_polygons(real_mask, simplify=0.5)

    back = polygons_to_labels(polygons, real_mask.shape)
    assert len(np.unique(back)) - 1 == len(polygons) == 125
    assert _best_iou(back, real_mask).min() >= 0.98
    assert all(shapely.is_valid(g) for g in polygons.values())
    vertices = sum(shapely.get_num_coordinates(g) for g in polygons.values())
    exact_vertices = sum(shapely.get_num_coordinates(g) for g in exact.values())
    assert vertices < 0.9 * exact_vertices


def test_outline_follows_pixel_edges() -> None:
    labels = np.zeros((5, 6), dtype=np.uint16)
    labels[2, 3] = 7
    labels[0:2, 0:3] = 2

    polygons = labels_to_polygons(labels, simplify=0)

    assert list(polygons) == [2, 7]
    assert polygons[7].equals(shapely.box(3, 2, 4, 3))
    assert polygons[2].equals(shapely.box(0, 0, 3, 2))
    assert shapely.get_num_coordinates(polygons[2]) == 5


def test_ring_keeps_its_hole() -> None:
    labels = np.zeros((10, 10), dtype=np.int32)
    labels[2:8, 2:8] = 1
    labels[4:6, 4:6] = 0

    polygon = labels_to_polygons(labels, simplify=0)[1]

    assert polygon.geom_type == "Polygon"
    assert len(polygon.interiors) == 1
    assert shapely.Polygon(polygon.interiors[0]).equals(shapely.box(4, 4, 6, 6))
    assert polygon.area == 32
    np.testing.assert_array_equal(
        polygons_to_labels({1: polygon}, labels.shape), labels
    )


def test_hole_with_another_object_inside_survives_round_trip() -> None:
    labels = np.zeros((10, 10), dtype=np.int32)
    labels[1:9, 1:9] = 1
    labels[4:6, 4:6] = 2

    polygons = labels_to_polygons(labels, simplify=0)

    assert len(polygons[1].interiors) == 1
    np.testing.assert_array_equal(polygons_to_labels(polygons, labels.shape), labels)


def test_disconnected_pieces_become_a_multipolygon() -> None:
    labels = np.zeros((8, 12), dtype=np.int32)
    labels[1:3, 1:4] = 5
    labels[5:7, 8:11] = 5

    geometry = labels_to_polygons(labels, simplify=0)[5]

    assert geometry.geom_type == "MultiPolygon"
    assert sorted(p.area for p in geometry.geoms) == [6, 6]


def test_pieces_touching_at_a_corner_are_valid() -> None:
    labels = np.array([[1, 0], [0, 1]], dtype=np.int32)

    geometry = labels_to_polygons(labels, simplify=0)[1]

    assert geometry.is_valid
    assert geometry.geom_type == "MultiPolygon"
    assert geometry.area == 2


def test_offset_moves_outlines_and_back() -> None:
    labels = np.zeros((6, 6), dtype=np.int32)
    labels[1:3, 2:5] = 1

    polygons = labels_to_polygons(labels, offset=(1000.0, 250.5), simplify=0)

    assert polygons[1].bounds == (1002.0, 251.5, 1005.0, 253.5)
    back = polygons_to_labels(polygons, labels.shape, offset=(1000.0, 250.5))
    np.testing.assert_array_equal(back, labels)


def test_empty_labels_have_no_outlines() -> None:
    assert labels_to_polygons(np.zeros((4, 4), dtype=np.int32)) == {}


def test_polygons_outside_the_image_are_clipped() -> None:
    polygons = {3: shapely.box(-2, -2, 2, 1), 4: shapely.box(50, 50, 60, 60)}

    labels = polygons_to_labels(polygons, (3, 3))

    expected = np.zeros((3, 3), dtype=np.int32)
    expected[0, 0:2] = 3
    np.testing.assert_array_equal(labels, expected)


@pytest.mark.parametrize(
    ("labels", "kwargs", "message"),
    [
        (np.zeros((2, 3, 3), dtype=np.int32), {}, "2D"),
        (np.zeros((3, 3), dtype=np.float32), {}, "integer"),
        (np.full((3, 3), -1, dtype=np.int32), {}, ">= 0"),
        (np.zeros((3, 3), dtype=np.int32), {"simplify": -1}, "simplify"),
    ],
)
def test_bad_labels_for_outlines(labels, kwargs, message) -> None:
    with pytest.raises(OncoAIError, match=message):
        labels_to_polygons(labels, **kwargs)


def test_bad_polygon_label_is_refused() -> None:
    with pytest.raises(OncoAIError, match="positive int32"):
        polygons_to_labels({0: shapely.box(0, 0, 1, 1)}, (2, 2))


@pytest.mark.slow
def test_outlines_of_2000_objects_on_2048_squared_are_fast_and_exact() -> None:
    rng = np.random.default_rng(0)
    labels = np.zeros((2048, 2048), dtype=np.int32)
    for index in range(2000):
        row, col = divmod(index, 45)
        rr, cc = ellipse(
            row * 45 + 22 + rng.normal(),
            col * 45 + 22 + rng.normal(),
            rng.uniform(6, 24),
            rng.uniform(6, 24),
            shape=labels.shape,
            rotation=rng.uniform(0, np.pi),
        )
        labels[rr, cc] = index + 1

    start = time.perf_counter()
    polygons = labels_to_polygons(labels, simplify=0.5)
    elapsed = time.perf_counter() - start

    assert len(polygons) == 2000
    # About 1.5 s on one core; the margin absorbs a busy machine.
    assert elapsed < 8.0
    exact = labels_to_polygons(labels, simplify=0)
    np.testing.assert_array_equal(polygons_to_labels(exact, labels.shape), labels)


# --------------------------------------------------------------------------
# probability_to_labels
# --------------------------------------------------------------------------


def test_touching_discs_split_in_two() -> None:
    mask = _discs((60, 80), [(30, 28), (30, 50)], radius=12)
    assert ndi.label(mask)[1] == 1
    probability = np.where(mask, 0.9, 0.05)

    split = probability_to_labels(probability)
    merged = probability_to_labels(probability, split_touching=False)

    assert split.dtype == np.int32 and split.shape == mask.shape
    assert split.max() == 2
    np.testing.assert_array_equal(split > 0, mask)
    centroids = ndi.center_of_mass(mask, split, [1, 2])
    np.testing.assert_allclose(sorted(centroids), [(30, 28), (30, 50)], atol=1.5)
    assert merged.max() == 1
    np.testing.assert_array_equal(merged > 0, mask)


def test_elongated_object_is_not_cut_along_its_ridge() -> None:
    probability = np.zeros((20, 80))
    probability[8:13, 5:75] = 1.0

    labels = probability_to_labels(probability, min_distance=2)

    assert labels.max() == 1


def test_touching_balls_split_in_3d() -> None:
    zz, yy, xx = np.mgrid[:30, :30, :50]
    mask = ((zz - 15) ** 2 + (yy - 15) ** 2 + (xx - 15) ** 2 <= 100) | (
        (zz - 15) ** 2 + (yy - 15) ** 2 + (xx - 32) ** 2 <= 100
    )

    labels = probability_to_labels(mask.astype(np.float32))

    assert labels.shape == mask.shape
    assert labels.max() == 2


def test_specks_below_min_size_are_dropped() -> None:
    probability = np.zeros((40, 40), dtype=np.float32)
    probability[5:25, 5:25] = 0.8
    probability[30:33, 30:33] = 0.8  # 9 pixels
    probability[35, 2:6] = 0.8  # 4 pixels

    assert probability_to_labels(probability, min_size=10).max() == 1
    nine = probability_to_labels(probability, min_size=9)
    assert nine.max() == 2
    assert np.count_nonzero(nine == 2) == 9
    assert probability_to_labels(probability, min_size=1).max() == 3


def test_threshold_is_strict_and_exact() -> None:
    probability = np.array(
        [
            [0.50, 0.51, 0.00, 0.90],
            [0.49, 0.60, 0.00, 1.00],
            [0.00, 0.00, 0.00, 0.50],
        ]
    )
    expected = np.array([[0, 1, 0, 2], [0, 1, 0, 2], [0, 0, 0, 0]], dtype=np.int32)

    for split in (False, True):
        labels = probability_to_labels(
            probability, threshold=0.5, split_touching=split, min_size=1
        )
        np.testing.assert_array_equal(labels, expected)
    lower = probability_to_labels(
        probability, threshold=0.49, split_touching=False, min_size=1
    )
    assert lower[0, 0] == 1 and lower[2, 3] == 2 and lower[1, 0] == 0


def test_a_boolean_mask_counts_as_certain_foreground() -> None:
    mask = np.zeros((6, 6), dtype=bool)
    mask[1:3, 1:3] = True

    labels = probability_to_labels(mask, min_size=1)

    np.testing.assert_array_equal(labels, mask.astype(np.int32))


def test_empty_foreground_gives_zeros() -> None:
    labels = probability_to_labels(np.full((5, 7), 0.2))

    assert labels.dtype == np.int32
    np.testing.assert_array_equal(labels, np.zeros((5, 7)))


@pytest.mark.parametrize(
    ("probability", "kwargs", "message"),
    [
        (np.full((4, 4), 1.5), {}, r"\[0, 1\].*1.5"),
        (np.full((4, 4), np.nan), {}, r"\[0, 1\]"),
        (np.zeros(4), {}, "2D"),
        (np.zeros((4, 4)), {"threshold": 1.0}, "threshold"),
        (np.zeros((4, 4)), {"min_distance": 0}, "min_distance"),
        (np.zeros((4, 4)), {"min_size": -1}, "min_size"),
    ],
)
def test_bad_probability_inputs(probability, kwargs, message) -> None:
    with pytest.raises(OncoAIError, match=message):
        probability_to_labels(probability, **kwargs)


def test_watershed_counts_real_nuclei(
    real_image: np.ndarray, real_mask: np.ndarray
) -> None:
    low, high = np.percentile(real_image, (1, 99.8))
    smoothed = ndi.gaussian_filter(np.clip((real_image - low) / (high - low), 0, 1), 1)
    # A soft step at the Otsu level stands in for a model's probability map.
    probability = 1 / (1 + np.exp(-(smoothed - threshold_otsu(smoothed)) / 0.05))
    truth = len(np.unique(real_mask)) - 1

    split = probability_to_labels(probability)
    merged = probability_to_labels(probability, split_touching=False)

    assert 0.75 * truth <= split.max() <= 1.25 * truth
    # Touching nuclei stay merged without the watershed: 84 of 125 here.
    assert merged.max() < 0.75 * truth
    found = _best_iou(split, real_mask) > 0.5
    assert found.sum() >= 0.6 * truth
    assert found.sum() > (_best_iou(merged, real_mask) > 0.5).sum()


# --------------------------------------------------------------------------
# measure_instances
# --------------------------------------------------------------------------


@pytest.fixture
def tiny() -> tuple[np.ndarray, np.ndarray]:
    labels = np.zeros((6, 6), dtype=np.int32)
    labels[0:2, 0:2] = 1
    labels[4, 2:5] = 3
    intensity = np.arange(36, dtype=np.float32).reshape(6, 6)
    return labels, intensity


def test_measurements_are_exact_on_a_tiny_image(tiny) -> None:
    labels, intensity = tiny

    table = measure_instances(labels, intensity)

    np.testing.assert_array_equal(table["label"], [1, 3])
    np.testing.assert_array_equal(table["area_px"], [4, 3])
    np.testing.assert_array_equal(table["centroid_y"], [0.5, 4.0])
    np.testing.assert_array_equal(table["centroid_x"], [0.5, 3.0])
    np.testing.assert_allclose(table["mean_intensity"], [(0 + 1 + 6 + 7) / 4, 27.0])
    np.testing.assert_allclose(table["eccentricity"], [0.0, 1.0])
    assert "centroid_z" not in table and "probability" not in table
    assert len({len(v) for v in table.values()}) == 1


def test_several_channels_get_one_column_each(tiny) -> None:
    labels, intensity = tiny
    stack = np.stack([intensity, 100 - intensity])

    table = measure_instances(labels, stack, channel_axis=0)
    single = measure_instances(labels, stack[:1], channel_axis=0)

    np.testing.assert_allclose(table["mean_intensity_c0"], [3.5, 27.0])
    np.testing.assert_allclose(table["mean_intensity_c1"], [96.5, 73.0])
    assert "mean_intensity" not in table
    np.testing.assert_allclose(single["mean_intensity"], [3.5, 27.0])


def test_probability_and_classes_columns(tiny) -> None:
    labels, _ = tiny
    probability = np.zeros((6, 6))
    probability[0:2, 0:2] = [[0.5, 1.0], [1.0, 1.0]]
    probability[4, 2:5] = 0.6
    class_map = np.zeros((6, 6), dtype=np.uint8)
    class_map[0, 0:2] = 2
    class_map[1, 0:2] = 1  # a 2-2 tie: the lower id wins
    class_map[4, 2:5] = [2, 0, 2]

    table = measure_instances(
        labels, probability=probability, classes=class_map, class_names=["a", "b", "c"]
    )
    per_object = measure_instances(labels, classes=np.array([2, 0]))

    np.testing.assert_allclose(table["probability"], [0.875, 0.6])
    np.testing.assert_array_equal(table["class_id"], [1, 2])
    np.testing.assert_array_equal(table["class_name"], ["b", "c"])
    np.testing.assert_array_equal(per_object["class_id"], [2, 0])
    assert "class_name" not in per_object


def test_circularity_of_a_disc_and_a_bar() -> None:
    labels = np.zeros((120, 120), dtype=np.int32)
    rr, cc = disk((50, 50), 40)
    labels[rr, cc] = 1
    labels[110, 10:30] = 2

    table = measure_instances(labels)

    assert abs(table["circularity"][0] - 1.0) <= 0.1
    assert table["circularity"][1] < 0.25
    assert abs(table["perimeter_px"][0] - 2 * np.pi * 40) < 0.05 * 2 * np.pi * 40
    assert np.all((table["circularity"] >= 0) & (table["circularity"] <= 1))


def test_pixel_size_gives_square_micrometres(tiny) -> None:
    labels, _ = tiny

    table = measure_instances(labels, pixel_size=(0.5, 0.25))
    square = measure_instances(labels, pixel_size=(0.5, 0.5))

    np.testing.assert_array_equal(table["area_um2"], table["area_px"] * 0.5 * 0.25)
    np.testing.assert_allclose(
        table["perimeter_um"], table["perimeter_px"] * 0.125**0.5
    )
    np.testing.assert_allclose(square["perimeter_um"], square["perimeter_px"] * 0.5)


def test_3d_measurements() -> None:
    labels = np.zeros((4, 5, 6), dtype=np.int32)
    labels[1:3, 1:3, 1:4] = 2

    table = measure_instances(labels, pixel_size=(2.0, 0.5, 0.5))

    assert set(table) == {
        "label",
        "area_px",
        "centroid_z",
        "centroid_y",
        "centroid_x",
        "volume_um3",
    }
    np.testing.assert_array_equal(table["area_px"], [12])
    np.testing.assert_array_equal(table["centroid_z"], [1.5])
    np.testing.assert_array_equal(table["centroid_x"], [2.0])
    np.testing.assert_array_equal(table["volume_um3"], [6.0])


def test_empty_labels_keep_every_column() -> None:
    labels = np.zeros((8, 8), dtype=np.int32)

    table = measure_instances(
        labels,
        np.zeros((2, 8, 8)),
        channel_axis=0,
        probability=np.zeros((8, 8)),
        pixel_size=(1.0, 1.0),
        classes=np.zeros((8, 8), dtype=np.int32),
        class_names=["tumour"],
    )

    assert list(table) == [
        "label",
        "area_px",
        "perimeter_px",
        "centroid_y",
        "centroid_x",
        "eccentricity",
        "circularity",
        "mean_intensity_c0",
        "mean_intensity_c1",
        "probability",
        "class_id",
        "class_name",
        "area_um2",
        "perimeter_um",
    ]
    assert all(isinstance(v, np.ndarray) and len(v) == 0 for v in table.values())


def test_real_mask_measurements_match_pixel_counts(
    real_mask: np.ndarray, real_image: np.ndarray
) -> None:
    table = measure_instances(real_mask, real_image)

    labels = np.unique(real_mask)[1:]
    np.testing.assert_array_equal(table["label"], labels)
    np.testing.assert_array_equal(
        table["area_px"], np.bincount(real_mask.ravel())[labels]
    )
    np.testing.assert_allclose(
        table["mean_intensity"], ndi.mean(real_image, real_mask, labels)
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"intensity": np.zeros((5, 5))}, "does not match"),
        ({"intensity": np.zeros((6, 6)), "channel_axis": 3}, "channel_axis 3"),
        ({"probability": np.zeros((5, 6))}, "does not match"),
        ({"pixel_size": (1.0, 0.0)}, "positive"),
        ({"pixel_size": (1.0, 1.0, 1.0)}, "2 values"),
        ({"classes": np.array([0, 5]), "class_names": ["a"]}, "class id 5"),
        ({"classes": np.array([0, 1, 2])}, r"one id per object \(2,\)"),
    ],
)
def test_bad_measurement_inputs(tiny, kwargs, message) -> None:
    labels, _ = tiny
    with pytest.raises(OncoAIError, match=message):
        measure_instances(labels, **kwargs)


# --------------------------------------------------------------------------
# stardist_to_labels
# --------------------------------------------------------------------------


def _two_stars(shape=(64, 100), radius=10.0, n_rays=32):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    probability = np.zeros(shape, dtype=np.float32)
    for cy, cx in [(30, 28), (32, 70)]:
        bump = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 6.0**2))
        probability = np.maximum(probability, bump)
    distances = np.full(shape + (n_rays,), radius, dtype=np.float32)
    return probability, distances


def test_stardist_two_stars() -> None:
    pytest.importorskip("stardist.nms", reason="the stardist package is not installed")
    probability, distances = _two_stars()

    labels = stardist_to_labels(
        probability, distances, prob_threshold=0.5, nms_threshold=0.4
    )

    assert labels.dtype == np.int32 and labels.shape == probability.shape
    assert labels.max() == 2
    areas = np.bincount(labels.ravel())[1:]
    np.testing.assert_allclose(areas, np.pi * 10.0**2, rtol=0.05)
    centroids = sorted(ndi.center_of_mass(labels > 0, labels, [1, 2]))
    np.testing.assert_allclose(centroids, [(30, 28), (32, 70)], atol=0.5)


def test_stardist_grid_scales_the_output() -> None:
    pytest.importorskip("stardist.nms", reason="the stardist package is not installed")
    probability, distances = _two_stars()

    labels = stardist_to_labels(
        probability[::2, ::2],
        distances[::2, ::2],
        prob_threshold=0.5,
        nms_threshold=0.4,
        grid=(2, 2),
    )

    assert labels.shape == (64, 100)
    assert labels.max() == 2


def test_stardist_nothing_above_threshold() -> None:
    pytest.importorskip("stardist.nms", reason="the stardist package is not installed")
    probability, distances = _two_stars()

    labels = stardist_to_labels(
        probability * 0.3, distances, prob_threshold=0.5, nms_threshold=0.4
    )

    np.testing.assert_array_equal(labels, np.zeros((64, 100), dtype=np.int32))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"distances": np.zeros((10, 10, 8))}, "matching the probability"),
        ({"prob_threshold": 1.2}, "prob_threshold"),
        ({"nms_threshold": -0.1}, "nms_threshold"),
        ({"grid": (0, 2)}, "grid"),
    ],
)
def test_stardist_bad_inputs(kwargs, message) -> None:
    pytest.importorskip("stardist.nms", reason="the stardist package is not installed")
    probability, distances = _two_stars()
    arguments = {
        "probability": probability,
        "distances": distances,
        "prob_threshold": 0.5,
        "nms_threshold": 0.4,
    }
    arguments.update(kwargs)
    with pytest.raises(OncoAIError, match=message):
        stardist_to_labels(**arguments)


def test_missing_stardist_names_the_extra(monkeypatch) -> None:
    for name in ("stardist", "stardist.nms", "stardist.geometry"):
        monkeypatch.setitem(sys.modules, name, None)
    probability, distances = _two_stars()

    with pytest.raises(OncoAIError, match=r"pip install napari-oncoai\[stardist\]"):
        stardist_to_labels(
            probability, distances, prob_threshold=0.5, nms_threshold=0.4
        )


def test_stardist_works_without_tensorflow() -> None:
    pytest.importorskip("stardist.nms", reason="the stardist package is not installed")
    # A fresh interpreter where importing tensorflow fails, as on a machine
    # without it.
    code = (
        "import sys; sys.modules['tensorflow'] = None\n"
        "import numpy as np\n"
        "from model_zoo.postprocess import stardist_to_labels\n"
        "p = np.zeros((32, 32), np.float32); p[16, 16] = 0.9\n"
        "d = np.full((32, 32, 16), 5, np.float32)\n"
        "print(stardist_to_labels(p, d, prob_threshold=0.5, nms_threshold=0.4).max())\n"
    )
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"},
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"
