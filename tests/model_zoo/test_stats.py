"""Streamed whole-image statistics against bioimageio.core's own calculators."""

from __future__ import annotations

import numpy as np
import pytest
from bioimageio.core import Sample, Tensor
from bioimageio.core.stat_calculators import compute_measures
from bioimageio.core.stat_measures import SampleMean, SampleQuantile, SampleStd
from bioimageio.spec.model.v0_5 import AxisId, TensorId

from model_zoo import stats
from model_zoo.errors import OncoAIError
from model_zoo.stats import compute_stats

DIMS = ("batch", "channel", "y", "x")
RAW = TensorId("raw")
QUANTILES = (0.0, 0.01, 0.25, 0.5, 0.998, 1.0)


def measures(axes: tuple[str, ...] | None) -> list:
    ax = None if axes is None else tuple(AxisId(a) for a in axes)
    found = [SampleMean(member_id=RAW, axes=ax), SampleStd(member_id=RAW, axes=ax)]
    found += [SampleQuantile(q=q, member_id=RAW, axes=ax) for q in QUANTILES]
    return found


def chunked(array: np.ndarray, rows: int):
    """A chunk source as the engine gives it: slabs of rows, dims with batch."""

    def chunks():
        for lo in range(0, array.shape[2], rows):
            yield {"raw": (array[:, :, lo : lo + rows], DIMS)}

    return chunks


def reference(array: np.ndarray, wanted: list) -> dict:
    sample = Sample(
        members={RAW: Tensor.from_numpy(array, dims=DIMS)}, stat={}, id=None
    )
    return compute_measures(wanted, [sample])


def as_array(value) -> np.ndarray:
    if isinstance(value, Tensor):
        return value.data.to_numpy()
    return np.asarray(float(value))


def values_only(value) -> np.ndarray:
    """A per-channel value without its singleton dims, or a scalar."""
    return np.asarray(as_array(value), dtype=np.float64).reshape(-1)


@pytest.mark.parametrize("axes", [("y", "x"), None, ("channel", "y", "x")])
@pytest.mark.parametrize("dtype", [np.float32, np.uint16])
def test_streamed_stats_equal_bioimageio_core(axes, dtype):
    rng = np.random.default_rng(0)
    array = rng.gamma(2.0, 400.0, size=(1, 3, 37, 29))
    array[:, 1] += 1000.0  # channels differ, so per-channel values matter
    array = array.astype(dtype)
    wanted = measures(axes)

    got = compute_stats(wanted, chunked(array, rows=5), array.size)

    expected = reference(array, wanted)
    assert set(got) == set(wanted)
    for m in wanted:
        np.testing.assert_allclose(
            values_only(got[m]),
            values_only(expected[m]),
            rtol=1e-6,
            atol=1e-6,
            err_msg=str(m),
        )
    if axes == ("y", "x"):
        # Per channel: the result keeps the channel dimension.
        assert isinstance(got[wanted[0]], Tensor)
        assert values_only(got[wanted[0]]).shape == (3,)
    if axes is None:
        assert isinstance(got[wanted[0]], float)


def test_histogram_path_is_exact_for_uint16(monkeypatch):
    rng = np.random.default_rng(1)
    array = rng.integers(0, 65535, size=(1, 2, 64, 50), dtype=np.uint16)
    array[:, 0] //= 7  # a narrower range in one channel
    wanted = [
        SampleQuantile(q=q, member_id=RAW, axes=(AxisId("y"), AxisId("x")))
        for q in QUANTILES + (0.123, 0.75)
    ]
    monkeypatch.setattr(stats, "_EXACT_LIMIT", 100)
    passes = []
    source = chunked(array, rows=9)

    def counting():
        passes.append(1)
        return source()

    got = compute_stats(wanted, counting, array.size)

    assert len(passes) == 2  # moments, then the histogram
    expected = reference(array, wanted)
    for m in wanted:
        np.testing.assert_allclose(
            values_only(got[m]),
            values_only(expected[m]),
            rtol=0,
            atol=1e-9,
            err_msg=str(m),
        )


def test_histogram_path_is_within_a_bin_for_float(monkeypatch):
    rng = np.random.default_rng(2)
    array = rng.lognormal(0.0, 1.5, size=(1, 1, 80, 70)).astype(np.float32)
    wanted = [SampleQuantile(q=q, member_id=RAW, axes=None) for q in QUANTILES]
    monkeypatch.setattr(stats, "_EXACT_LIMIT", 100)

    got = compute_stats(wanted, chunked(array, rows=11), array.size)

    expected = reference(array, wanted)
    bin_width = (float(array.max()) - float(array.min())) / stats._HIST_BINS
    for m in wanted:
        diff = abs(float(got[m]) - float(values_only(expected[m])[0]))
        assert diff <= bin_width, (m, diff, bin_width)
    # A real approximation: not every quantile hits the exact value.
    assert any(
        float(got[m]) != float(values_only(expected[m])[0]) for m in wanted[1:-1]
    )


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_refused(bad):
    array = np.ones((1, 1, 20, 20), dtype=np.float32)
    array[0, 0, 13, 4] = bad
    wanted = [SampleMean(member_id=RAW, axes=None)]

    with pytest.raises(OncoAIError, match="NaN or infinite"):
        compute_stats(wanted, chunked(array, rows=4), array.size)
