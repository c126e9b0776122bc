"""Synthetic fluorescence images of nuclei, with their ground-truth labels.

The starter model is trained only on these images, so they are made to look like
widefield fluorescence of stained nuclei: elliptical nuclei of varied size,
brightness and texture, some in clumps where they touch or overlap a little (the
upper one hides the lower), a few small and very bright (as mitotic nuclei are),
blurred by a Gaussian point spread function, on an uneven background offset, with
photon (Poisson) and read (Gaussian) noise, and sometimes a saturated camera.
Brightness, contrast and noise vary from image to image so that a model trained
on them does not depend on one camera's range.

Known limitations: nuclei are filled ellipses with smooth texture; there are no
irregular shapes, no nucleoli, no out-of-focus debris and no cytoplasmic stain.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
from scipy import ndimage as ndi

from model_zoo.errors import OncoAIError

log = logging.getLogger(__name__)

SAMPLE_SHAPE = (512, 512)
SAMPLE_SEED = 2030
"""The seed of the bundled sample image; changing it changes the sample."""

_MIN_SIDE = 32


@dataclass(frozen=True)
class _Nucleus:
    """One ellipse: centre, semi-axes, orientation and relative brightness."""

    cy: float
    cx: float
    ry: float
    rx: float
    angle: float
    brightness: float


def make_nuclei_image(
    shape: tuple[int, int] = (256, 256), seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Make one synthetic fluorescence image of nuclei and its labels.

    Every random choice comes from ``numpy.random.default_rng(seed)``, so the
    same ``shape`` and ``seed`` give identical arrays.

    Parameters
    ----------
    shape : tuple of int, (Y, X)
        Size of the image; each side at least 32 pixels.
    seed : int
        Seed of the random generator (non-negative).

    Returns
    -------
    image : numpy.ndarray of uint16, YX
        The noisy, blurred image.
    labels : numpy.ndarray of int32, YX
        0 for background and 1..N for the nuclei.  Where two nuclei overlap,
        the one drawn last (the upper one) owns the pixels.

    Raises
    ------
    OncoAIError
        If ``shape`` is not two sides of at least 32 pixels, or ``seed`` is
        negative.

    Examples
    --------
    >>> image, labels = make_nuclei_image((64, 64), seed=1)
    >>> image.dtype, labels.dtype, image.shape
    (dtype('uint16'), dtype('int32'), (64, 64))
    """
    shape = _checked_shape(shape)
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise OncoAIError(
            f"The seed of a synthetic image must be a non-negative integer, got "
            f"{seed!r}; pass e.g. seed=0."
        )
    rng = np.random.default_rng(int(seed))

    nuclei = _place_nuclei(shape, rng)
    labels, signal = _render(shape, nuclei, rng)
    image = _acquire(signal, rng)
    return image, labels


def nuclei_sample() -> np.ndarray:
    """Return the bundled 512×512 sample image of fluorescent nuclei.

    It is :func:`make_nuclei_image` with a fixed seed, so it is the same on every
    machine and needs no file.

    Returns
    -------
    numpy.ndarray of uint16, YX
        A fresh copy of the sample, 512×512.

    Examples
    --------
    >>> nuclei_sample().shape
    (512, 512)
    """
    return _sample().copy()


@lru_cache(maxsize=1)
def _sample() -> np.ndarray:
    image, _ = make_nuclei_image(SAMPLE_SHAPE, seed=SAMPLE_SEED)
    image.setflags(write=False)
    return image


def _checked_shape(shape: tuple[int, int]) -> tuple[int, int]:
    try:
        ny, nx = (int(side) for side in shape)
    except (TypeError, ValueError):
        ny = nx = -1
    if ny < _MIN_SIDE or nx < _MIN_SIDE:
        raise OncoAIError(
            f"A synthetic image needs a shape of two sides of at least {_MIN_SIDE} "
            f"pixels, got {shape!r}; pass e.g. shape=(256, 256)."
        )
    return ny, nx


def _place_nuclei(shape: tuple[int, int], rng: np.random.Generator) -> list[_Nucleus]:
    """Scatter ellipses, some in clumps, letting them touch or overlap a little."""
    ny, nx = shape
    coverage = rng.uniform(0.08, 0.35)
    mean_radius = rng.uniform(6.0, 11.0)
    target_area = coverage * ny * nx
    max_overlap = rng.uniform(0.02, 0.15)
    # Share of nuclei put right beside another, so that clumps form.
    clustering = rng.uniform(0.1, 0.6)

    nuclei: list[_Nucleus] = []
    owner = np.zeros(shape, np.int32)
    areas = [0]
    # Rejection sampling; the attempt cap keeps dense requests bounded in time.
    for _ in range(int(target_area / 20) + 50):
        if sum(areas) >= target_area:
            break
        nucleus = _random_nucleus(shape, mean_radius, rng)
        if nuclei and rng.random() < clustering:
            nucleus = _beside(nuclei[int(rng.integers(len(nuclei)))], nucleus, rng)
        mask, window = _ellipse_mask(nucleus, shape)
        if not mask.any():
            continue
        # Neither the new nucleus nor any it covers may lose more than
        # `max_overlap` of its area, so every label stays visible.
        covered = np.bincount(owner[window][mask], minlength=len(areas))
        if covered[1:].sum() > max_overlap * mask.sum() or any(
            covered[i] > max_overlap * areas[i] for i in np.flatnonzero(covered[1:]) + 1
        ):
            continue
        nuclei.append(nucleus)
        areas.append(int(mask.sum()))
        owner[window][mask] = len(nuclei)
    area = float((owner > 0).sum())
    log.debug(
        "placed %d nuclei covering %.2f of the image", len(nuclei), area / ny / nx
    )
    return nuclei


def _random_nucleus(
    shape: tuple[int, int], mean_radius: float, rng: np.random.Generator
) -> _Nucleus:
    ny, nx = shape
    mitotic = rng.random() < 0.06
    if mitotic:
        radius = rng.uniform(3.5, 7.0)
        brightness = rng.uniform(2.5, 8.0)
    else:
        radius = float(np.clip(rng.normal(mean_radius, 2.2), 4.0, 14.0))
        # Log-normal: most nuclei near 1, a few dim and a few bright.
        brightness = float(np.exp(rng.normal(0.0, 0.45)))
    elongation = rng.uniform(0.55, 1.0)
    # Equal area to a circle of `radius`, stretched along one semi-axis.
    ry = radius / np.sqrt(elongation)
    rx = radius * np.sqrt(elongation)
    return _Nucleus(
        cy=rng.uniform(-4, ny + 4),
        cx=rng.uniform(-4, nx + 4),
        ry=float(ry),
        rx=float(rx),
        angle=rng.uniform(0, np.pi),
        brightness=brightness,
    )


def _beside(anchor: _Nucleus, nucleus: _Nucleus, rng: np.random.Generator) -> _Nucleus:
    """Move ``nucleus`` so that it touches ``anchor`` or overlaps it slightly."""
    direction = rng.uniform(0, 2 * np.pi)
    reach = np.sqrt(anchor.ry * anchor.rx) + np.sqrt(nucleus.ry * nucleus.rx)
    distance = reach * rng.uniform(0.8, 1.05)
    return replace(
        nucleus,
        cy=anchor.cy + distance * np.sin(direction),
        cx=anchor.cx + distance * np.cos(direction),
    )


def _ellipse_mask(
    nucleus: _Nucleus, shape: tuple[int, int]
) -> tuple[np.ndarray, tuple[slice, slice]]:
    """Return the ellipse's pixels inside its bounding window of the image."""
    radius2, window = _ellipse_radius2(nucleus, shape)
    return radius2 <= 1.0, window


def _ellipse_radius2(
    nucleus: _Nucleus, shape: tuple[int, int]
) -> tuple[np.ndarray, tuple[slice, slice]]:
    """Return the squared elliptic radius (1 on the rim) over the ellipse's window."""
    reach = int(np.ceil(max(nucleus.ry, nucleus.rx))) + 1
    y0 = max(int(nucleus.cy) - reach, 0)
    y1 = min(int(nucleus.cy) + reach + 1, shape[0])
    x0 = max(int(nucleus.cx) - reach, 0)
    x1 = min(int(nucleus.cx) + reach + 1, shape[1])
    window = (slice(y0, max(y1, y0)), slice(x0, max(x1, x0)))
    yy, xx = np.mgrid[window]
    dy, dx = yy - nucleus.cy, xx - nucleus.cx
    cos, sin = np.cos(nucleus.angle), np.sin(nucleus.angle)
    u = (dy * cos + dx * sin) / nucleus.ry
    v = (-dy * sin + dx * cos) / nucleus.rx
    return u * u + v * v, window


def _render(
    shape: tuple[int, int], nuclei: list[_Nucleus], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Draw labels and the noise-free, blurred relative signal."""
    labels = np.zeros(shape, np.int32)
    signal = np.zeros(shape, np.float64)
    texture = _smooth_noise(shape, rng.uniform(1.5, 3.5), rng)
    texture_strength = rng.uniform(0.05, 0.3)
    rim_dimming = rng.uniform(0.0, 0.5)
    for index, nucleus in enumerate(nuclei, start=1):
        radius2, window = _ellipse_radius2(nucleus, shape)
        mask = radius2 <= 1.0
        labels[window][mask] = index
        # The upper nucleus hides the lower one, as labels do; a dimmer rim keeps
        # a faint seam between touching nuclei, as chromatin density does.
        profile = 1.0 - rim_dimming * radius2[mask] ** 2
        signal[window][mask] = nucleus.brightness * profile

    signal *= np.clip(1.0 + texture_strength * texture, 0.2, None)
    signal = ndi.gaussian_filter(signal, rng.uniform(0.8, 2.2))
    return labels, signal


def _acquire(signal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Turn relative signal into camera counts: background, photons, read noise."""
    shape = signal.shape
    # Photons per unit brightness sets the signal-to-noise ratio.
    photons = np.exp(rng.uniform(np.log(15.0), np.log(1500.0)))
    # Nuclei-to-background contrast, as stray light and autofluorescence.
    haze = rng.uniform(0.03, 0.4) * photons
    gradient = 1.0 + rng.uniform(0.0, 0.5) * _smooth_noise(shape, 40.0, rng)
    expected = photons * signal + haze * np.clip(gradient, 0.3, None)
    counts = rng.poisson(expected).astype(np.float64)

    gain = np.exp(rng.uniform(np.log(0.5), np.log(4.0)))
    offset = rng.choice([0.0, rng.uniform(0, 120), rng.uniform(90, 1100)])
    read_noise = rng.uniform(0.5, 6.0)
    image = gain * counts + offset + rng.normal(0.0, read_noise, shape)
    ceiling = float(np.iinfo(np.uint16).max)
    if rng.random() < 0.3:
        # A saturated camera: the brightest nuclei come out flat.
        ceiling = min(ceiling, float(np.quantile(image, rng.uniform(0.99, 0.999))))
    return np.clip(np.rint(image), 0, ceiling).astype(np.uint16)


def _smooth_noise(
    shape: tuple[int, int], sigma: float, rng: np.random.Generator
) -> np.ndarray:
    """White noise smoothed to correlation length ``sigma``, rescaled to std 1."""
    field = ndi.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    std = field.std()
    return field / std if std > 0 else field
