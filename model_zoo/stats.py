"""Whole-image statistics for normalisation, computed in a streamed pass.

Normalisation statistics (mean, standard deviation, percentiles) are computed once
over the whole image, or over each frame as the model's spec says, and then applied
to every tile; never per tile, which is what makes seams in peers' outputs.

The image is read in chunks, so memory depends on the chunk, not the image.
Means and variances are exact (float64, combined chunk by chunk).  Percentiles are
exact for integer-valued data with a range under 2**22 (all 8- and 16-bit images),
and for images under 16 million values; otherwise they come from a 65,536-bin
histogram between the image's minimum and maximum, so they are exact to within
1/65,536 of the image's range.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from model_zoo.errors import OncoAIError

log = logging.getLogger(__name__)

_EXACT_LIMIT = 1 << 24
_HIST_BINS = 1 << 16
_INT_RANGE = 1 << 22


@dataclass
class _Accumulator:
    """Running statistics for one measure group (one tensor, one set of axes)."""

    n: int = 0
    mean: np.ndarray | None = None
    m2: np.ndarray | None = None
    lo: np.ndarray | None = None
    hi: np.ndarray | None = None
    integral: bool = True
    values: list[np.ndarray] = field(default_factory=list)
    hist: np.ndarray | None = None

    def update_moments(self, flat: np.ndarray, track_range: bool = True) -> None:
        """Combine a chunk, shaped (K, n), into the running moments (Chan et al.).

        ``track_range`` also keeps the minimum, maximum and whether all values
        are integers, which only percentiles need.
        """
        n_b = flat.shape[1]
        if n_b == 0:
            return
        mean_b = flat.mean(axis=1, dtype=np.float64)
        centred = flat - mean_b[:, None]
        m2_b = np.einsum("ij,ij->i", centred, centred)
        del centred
        if self.mean is None:
            self.n, self.mean, self.m2 = n_b, mean_b, m2_b
        else:
            n_a = self.n
            delta = mean_b - self.mean
            total = n_a + n_b
            self.mean = self.mean + delta * n_b / total
            self.m2 = self.m2 + m2_b + delta**2 * n_a * n_b / total
            self.n = total
        if not track_range:
            return
        lo_b, hi_b = flat.min(axis=1), flat.max(axis=1)
        self.lo = lo_b if self.lo is None else np.minimum(self.lo, lo_b)
        self.hi = hi_b if self.hi is None else np.maximum(self.hi, hi_b)
        if self.integral and not np.array_equal(flat, np.round(flat)):
            self.integral = False


def _kept_dims(dims: Sequence[str], axes: Sequence[str] | None) -> list[str]:
    if axes is None:
        return []
    return [d for d in dims if d not in axes and d != "batch"]


def _flatten(array: np.ndarray, dims: Sequence[str], kept: Sequence[str]) -> np.ndarray:
    order = [dims.index(d) for d in kept] + [
        i for i, d in enumerate(dims) if d not in kept
    ]
    moved = np.transpose(array, order)
    k = int(np.prod([array.shape[dims.index(d)] for d in kept])) if kept else 1
    return moved.reshape(k, -1)


def compute_stats(
    measures: Iterable[Any],
    chunks: Callable[[], Iterable[dict[str, tuple[np.ndarray, Sequence[str]]]]],
    total_values: int,
) -> dict[Any, Any]:
    """Compute bioimageio.core measures over a whole image, chunk by chunk.

    Parameters
    ----------
    measures : iterable of bioimageio.core measures
        ``SampleMean``, ``SampleStd``, ``SampleVar``, ``SampleQuantile`` or their
        dataset counterparts; dataset measures are taken over this image.
    chunks : callable
        Returns a fresh iterator of chunks; each chunk maps a tensor id to an
        array and its dims (bioimageio axis ids, batch included).  Called once,
        or twice when approximate percentiles need a histogram pass.
    total_values : int
        Values per tensor in the whole image, to choose exact percentiles.

    Returns
    -------
    dict
        Each measure mapped to a float or a ``bioimageio.core.Tensor``.
    """
    from bioimageio.core import Tensor

    measures = list(measures)
    groups: dict[tuple[str, tuple[str, ...] | None], list[Any]] = {}
    for m in measures:
        axes = None if m.axes is None else tuple(str(a) for a in m.axes)
        groups.setdefault((str(m.member_id), axes), []).append(m)
    needs_quantiles = any(m.name == "quantile" for m in measures)
    keep_values = needs_quantiles and total_values <= _EXACT_LIMIT

    accs: dict[tuple[str, tuple[str, ...] | None], _Accumulator] = {}
    dims_of: dict[tuple[str, tuple[str, ...] | None], list[str]] = {}
    sizes_of: dict[tuple[str, tuple[str, ...] | None], dict[str, int]] = {}
    for chunk in chunks():
        for key in groups:
            member, axes = key
            array, dims = chunk[member]
            _check_finite(array)
            kept = _kept_dims(dims, axes)
            flat = _flatten(array, list(dims), kept)
            acc = accs.setdefault(key, _Accumulator())
            dims_of[key] = kept
            sizes_of[key] = {d: array.shape[list(dims).index(d)] for d in kept}
            acc.update_moments(flat, track_range=needs_quantiles)
            if keep_values:
                acc.values.append(flat.astype(np.float32, copy=True))

    if needs_quantiles and not keep_values:
        _histogram_pass(groups, accs, dims_of, chunks)

    out: dict[Any, Any] = {}
    for key, group in groups.items():
        acc = accs[key]
        kept = dims_of[key]
        shape = tuple(sizes_of[key][d] for d in kept)
        for m in group:
            value = _measure_value(m, acc)
            if kept:
                out[m] = Tensor.from_numpy(value.reshape(shape), dims=tuple(kept))
            else:
                out[m] = float(value.reshape(-1)[0])
    return out


def _check_finite(array: np.ndarray) -> None:
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        raise OncoAIError(
            f"the image contains NaN or infinite values ({bad} in one chunk); "
            "replace them (e.g. with 0) before running a model"
        )


def _measure_value(measure: Any, acc: _Accumulator) -> np.ndarray:
    name = measure.name
    if name == "mean":
        return acc.mean
    var = acc.m2 / max(acc.n, 1)
    if name == "var":
        return var
    if name == "std":
        return np.sqrt(var)
    if name == "quantile":
        return _quantile(acc, float(measure.q))
    raise OncoAIError(f"OncoAI cannot compute the statistic {name!r} of this model")


def _quantile(acc: _Accumulator, q: float) -> np.ndarray:
    if acc.values:
        data = np.concatenate(acc.values, axis=1)
        return np.quantile(data, q, axis=1, method="linear")
    result = np.empty(acc.hist.shape[0])
    for k in range(acc.hist.shape[0]):
        result[k] = _hist_quantile(acc, k, q)
    return result


def _histogram_pass(groups, accs, dims_of, chunks) -> None:
    for acc in accs.values():
        span = acc.hi - acc.lo
        exact = acc.integral and float(np.max(span)) < _INT_RANGE
        bins = int(np.max(span)) + 1 if exact else _HIST_BINS
        acc.hist = np.zeros((len(acc.lo), bins), dtype=np.int64)
        acc.integral = exact
    for chunk in chunks():
        for key in groups:
            member, _ = key
            array, dims = chunk[member]
            acc = accs[key]
            flat = _flatten(array, list(dims), dims_of[key])
            for k in range(flat.shape[0]):
                acc.hist[k] += _bin_counts(acc, k, flat[k])


def _bin_counts(acc: _Accumulator, k: int, values: np.ndarray) -> np.ndarray:
    bins = acc.hist.shape[1]
    if acc.integral:
        idx = (values - acc.lo[k]).astype(np.int64)
    else:
        width = (acc.hi[k] - acc.lo[k]) / bins or 1.0
        idx = np.clip(((values - acc.lo[k]) / width).astype(np.int64), 0, bins - 1)
    return np.bincount(idx, minlength=bins)


def _hist_quantile(acc: _Accumulator, k: int, q: float) -> float:
    """Linear-interpolated quantile, as numpy's default, from a histogram."""
    counts = acc.hist[k]
    cum = np.cumsum(counts)
    n = int(cum[-1])
    h = (n - 1) * q
    lo_i, frac = int(np.floor(h)), h - np.floor(h)

    def order_stat(i: int) -> float:
        b = int(np.searchsorted(cum, i + 1))
        if acc.integral:
            return float(acc.lo[k] + b)
        width = (acc.hi[k] - acc.lo[k]) / counts.size
        return float(acc.lo[k] + (b + 0.5) * width)

    a = order_stat(lo_i)
    if frac == 0:
        return a
    return a + frac * (order_stat(min(lo_i + 1, n - 1)) - a)
