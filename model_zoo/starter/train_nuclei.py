"""Train the OncoAI nucleus starter model and export it as a bioimage.io package.

The model is the small U-Net of :mod:`model_zoo.starter.unet`, trained from
scratch on images from :mod:`model_zoo.starter.synthetic` and nothing else.  It
predicts, per pixel, the probability of lying inside a nucleus, with a thin gap
of background where two nuclei touch, so that a threshold at 0.5 followed by
connected components already separates most touching nuclei.

Run it as::

    python -m model_zoo.starter.train_nuclei \
        --out model_zoo/starter/models/oncoai-nuclei

Everything is seeded and training runs on one CPU thread, so one ``--seed`` and
``--steps`` give the same weights on the same platform.  The export needs the
``train`` extra (``onnx`` and ``onnxscript``).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage as ndi
from torch import nn
from torch.nn import functional as F

from model_zoo.errors import OncoAIError, one_line
from model_zoo.starter import synthetic
from model_zoo.starter.export import (
    UNET_KWARGS,
    export_package,
    normalize,
    predict_probability,
)
from model_zoo.starter.unet import NucleiUNet

log = logging.getLogger(__name__)

DEFAULT_STEPS = 1000
TOUCH_WEIGHT = 5.0
"""BCE weight of the background gap between touching nuclei."""

# Training and validation images are drawn from seeds far from the bundled
# sample's, and from each other's.
_TRAIN_SEED_BASE = 100_000
_VALIDATION_SEED_BASE = 900_000


@dataclass
class TrainingReport:
    """What one training run did, for the log and the package's README."""

    steps: int
    seed: int
    seconds: float
    parameters: int
    pool_size: int
    crop: int
    batch_size: int
    learning_rate: float
    touch_weight: float = TOUCH_WEIGHT
    losses: list[float] = field(default_factory=list)
    validation_dice: float = float("nan")
    real_f1: float | None = None
    real_image: str = ""
    real_nuclei: int = 0


def training_target(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the foreground target and the per-pixel loss weights.

    The target is 1 inside nuclei and 0 elsewhere, except on the pixels where
    two different nuclei touch: those are set to background (a gap about two
    pixels wide) and weighted by :data:`TOUCH_WEIGHT` so that the network
    learns to keep touching nuclei apart.

    Parameters
    ----------
    labels : numpy.ndarray of int, YX
        Instance labels, 0 for background.

    Returns
    -------
    target : numpy.ndarray of float32, YX
        Values 0 or 1.
    weight : numpy.ndarray of float32, YX
        1, or :data:`TOUCH_WEIGHT` on the gaps.
    """
    foreground = labels > 0
    # Background counts as label 0 for the maximum and as "above every label" for
    # the minimum, so neither sees a contact with background.
    highest = ndi.maximum_filter(labels, size=3)
    lowest = ndi.minimum_filter(np.where(foreground, labels, labels.max() + 1), size=3)
    touching = foreground & ((highest > labels) | (lowest < labels))
    target = (foreground & ~touching).astype(np.float32)
    weight = np.where(touching, TOUCH_WEIGHT, 1.0).astype(np.float32)
    return target, weight


class SyntheticNuclei:
    """A fixed pool of synthetic images from which random training crops are cut.

    Parameters
    ----------
    count : int
        Images in the pool.
    shape : tuple of int, (Y, X)
        Size of each image.
    seed : int
        Seeds image ``i`` with ``_TRAIN_SEED_BASE + seed * count + i``.
    """

    def __init__(self, count: int, shape: tuple[int, int], seed: int) -> None:
        self.images: list[np.ndarray] = []
        self.targets: list[np.ndarray] = []
        self.weights: list[np.ndarray] = []
        for i in range(count):
            image, labels = synthetic.make_nuclei_image(
                shape, seed=_TRAIN_SEED_BASE + seed * count + i
            )
            target, weight = training_target(labels)
            self.images.append(image)
            self.targets.append(target)
            self.weights.append(weight)

    def batch(
        self, size: int, crop: int, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Cut ``size`` random crops, each randomly flipped and rotated.

        Each crop is normalised on its own, as the RDF normalises each input.

        Returns
        -------
        x, target, weight : torch.Tensor, (B, 1, crop, crop)
        """
        xs, ts, ws = [], [], []
        for _ in range(size):
            i = int(rng.integers(len(self.images)))
            ny, nx = self.images[i].shape
            y0 = int(rng.integers(ny - crop + 1))
            x0 = int(rng.integers(nx - crop + 1))
            window = (slice(y0, y0 + crop), slice(x0, x0 + crop))
            turns, flip = int(rng.integers(4)), bool(rng.integers(2))
            for out, source in (
                (xs, self.images[i]),
                (ts, self.targets[i]),
                (ws, self.weights[i]),
            ):
                a = np.rot90(source[window], turns)
                out.append(a[:, ::-1] if flip else a)
        x = np.stack([normalize(a) for a in xs])[:, None]
        t = np.stack(ts)[:, None].astype(np.float32)
        w = np.stack(ws)[:, None].astype(np.float32)
        return torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(w)


def segmentation_loss(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """Weighted binary cross-entropy plus soft Dice loss.

    Parameters
    ----------
    logits, target, weight : torch.Tensor, (B, 1, Y, X)

    Returns
    -------
    torch.Tensor
        A scalar.
    """
    bce = F.binary_cross_entropy_with_logits(logits, target, weight=weight)
    probability = torch.sigmoid(logits)
    overlap = (probability * target).sum()
    dice = 1.0 - (2.0 * overlap + 1.0) / (probability.sum() + target.sum() + 1.0)
    return bce + dice


@contextmanager
def deterministic_torch(seed: int) -> Iterator[None]:
    """Seed torch and pin it to one deterministic CPU thread, then restore it.

    Parameters
    ----------
    seed : int
        Seed of torch's generator.
    """
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def train(
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    *,
    crop: int = 96,
    batch_size: int = 8,
    pool_size: int = 128,
    pool_shape: tuple[int, int] = (256, 256),
    learning_rate: float = 3e-3,
) -> tuple[NucleiUNet, TrainingReport]:
    """Train a :class:`NucleiUNet` from scratch on synthetic nuclei.

    Parameters
    ----------
    steps : int
        Optimiser steps.
    seed : int
        Seeds the data pool, the crops and the weights.
    crop : int
        Side of the square training crops, a multiple of 8.
    batch_size : int
        Crops per step.
    pool_size : int
        Synthetic images to cut crops from.
    pool_shape : tuple of int, (Y, X)
        Size of the synthetic images, at least ``crop``.
    learning_rate : float
        Peak learning rate of Adam under a one-cycle schedule.

    Returns
    -------
    model : NucleiUNet
        The trained network, in eval mode.
    report : TrainingReport
        Losses per step, time and parameter count.

    Raises
    ------
    OncoAIError
        If ``steps`` is below 1, ``crop`` is not a multiple of 8, or the
        images are smaller than the crop.
    """
    if steps < 1:
        raise OncoAIError(
            f"Training needs at least one step, got {steps}; use e.g. {DEFAULT_STEPS}."
        )
    if crop % 8 or crop < 8 or min(pool_shape) < crop:
        raise OncoAIError(
            f"The crop must be a multiple of 8 no larger than the images, got crop "
            f"{crop} for images {pool_shape}; use e.g. crop=96 with (256, 256)."
        )
    with deterministic_torch(seed):
        return _train(
            steps, seed, crop, batch_size, pool_size, pool_shape, learning_rate
        )


def _train(
    steps: int,
    seed: int,
    crop: int,
    batch_size: int,
    pool_size: int,
    pool_shape: tuple[int, int],
    learning_rate: float,
) -> tuple[NucleiUNet, TrainingReport]:
    started = time.perf_counter()
    data = SyntheticNuclei(pool_size, pool_shape, seed)
    log.info(
        "made %d synthetic images in %.1f s", pool_size, time.perf_counter() - started
    )

    model = NucleiUNet(**UNET_KWARGS)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=learning_rate, total_steps=steps, pct_start=0.15
    )
    rng = np.random.default_rng(seed)
    report = TrainingReport(
        steps=steps,
        seed=seed,
        seconds=0.0,
        parameters=sum(p.numel() for p in model.parameters()),
        pool_size=pool_size,
        crop=crop,
        batch_size=batch_size,
        learning_rate=learning_rate,
    )
    model.train()
    for step in range(1, steps + 1):
        x, target, weight = data.batch(batch_size, crop, rng)
        loss = segmentation_loss(model(x), target, weight)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        report.losses.append(loss.item())
        if step % 50 == 0 or step == steps:
            recent = float(np.mean(report.losses[-50:]))
            log.info("step %d/%d  loss %.4f", step, steps, recent)

    report.seconds = time.perf_counter() - started
    model.eval()
    log.info("trained %d steps in %.0f s", steps, report.seconds)
    return model, report


def probability_to_labels(probability: np.ndarray, min_area: int = 10) -> np.ndarray:
    """Threshold at 0.5, label connected components and drop specks.

    Parameters
    ----------
    probability : numpy.ndarray, YX
        Probability of nucleus.
    min_area : int
        Components smaller than this many pixels are removed.

    Returns
    -------
    numpy.ndarray of int32, YX
        Instance labels 1..N, 0 for background.
    """
    labels, _ = ndi.label(probability > 0.5)
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_area
    keep[0] = False
    lookup = np.zeros(len(sizes), np.int32)
    lookup[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return lookup[labels]


def f1_at_iou(
    truth: np.ndarray, predicted: np.ndarray, threshold: float = 0.5
) -> float:
    """F1 of instance matching: a pair matches when its IoU exceeds ``threshold``.

    With ``threshold >= 0.5`` an object can match at most one other, so no
    assignment problem needs solving.

    Parameters
    ----------
    truth, predicted : numpy.ndarray of int, YX
        Instance labels, 0 for background.
    threshold : float
        IoU above which two objects match, at least 0.5.

    Returns
    -------
    float
        ``2 TP / (2 TP + FP + FN)``; 1.0 when both are empty.
    """
    _, t = np.unique(truth, return_inverse=True)
    _, p = np.unique(predicted, return_inverse=True)
    # Index 0 is background only where the image has some.
    t = t.ravel() + (0 if (truth == 0).any() else 1)
    p = p.ravel() + (0 if (predicted == 0).any() else 1)
    n_t, n_p = int(t.max()), int(p.max())
    if n_t + n_p == 0:
        return 1.0
    overlap = np.bincount(t * (n_p + 1) + p, minlength=(n_t + 1) * (n_p + 1))
    overlap = overlap.reshape(n_t + 1, n_p + 1)
    intersection = overlap[1:, 1:]
    union = overlap[1:].sum(1)[:, None] + overlap[:, 1:].sum(0)[None] - intersection
    true_positives = int((intersection / np.maximum(union, 1) > threshold).sum())
    return 2 * true_positives / (n_t + n_p)


def validation_dice(network: nn.Module, count: int = 8) -> float:
    """Dice of ``probability > 0.5`` against the target on held-out images.

    Parameters
    ----------
    network : torch.nn.Module
        The trained network, in eval mode.
    count : int
        Held-out synthetic 256×256 images to score.

    Returns
    -------
    float
        Dice over all their pixels together.
    """
    overlap = total = 0.0
    for i in range(count):
        image, labels = synthetic.make_nuclei_image(
            (256, 256), seed=_VALIDATION_SEED_BASE + i
        )
        target, _ = training_target(labels)
        predicted = predict_probability(network, image) > 0.5
        overlap += float((predicted & (target > 0)).sum())
        total += float(predicted.sum() + target.sum())
    return 2 * overlap / max(total, 1.0)


def real_image_f1(
    network: nn.Module, image_path: Path, labels_path: Path
) -> tuple[float, int]:
    """F1 at IoU 0.5 of the network's instances on one real labelled image.

    Parameters
    ----------
    network : torch.nn.Module
        The trained network, in eval mode.
    image_path, labels_path : pathlib.Path
        A 2D fluorescence TIFF (sides multiples of 8) and its label TIFF.

    Returns
    -------
    f1 : float
        F1 of :func:`probability_to_labels` against the labels.
    nuclei : int
        Labelled nuclei in the ground truth.

    Raises
    ------
    OncoAIError
        If the files cannot be read, are not 2D, differ in shape, or have sides
        that are not multiples of 8.
    """
    import tifffile

    try:
        image = tifffile.imread(image_path)
        truth = tifffile.imread(labels_path)
    except (OSError, ValueError) as error:
        raise OncoAIError(
            f"Could not read the check image or labels ({error}); pass two readable "
            "TIFF files with --check-image and --check-labels."
        ) from error
    if image.ndim != 2 or image.shape != truth.shape or any(s % 8 for s in image.shape):
        raise OncoAIError(
            f"The check image and labels must be 2D, of one shape, with sides that "
            f"are multiples of 8; got {image.shape} and {truth.shape}. Crop them."
        )
    predicted = probability_to_labels(predict_probability(network, image))
    return f1_at_iou(truth, predicted), len(np.unique(truth[truth > 0]))


def main(argv: Sequence[str] | None = None) -> int:
    """Train, evaluate and export the starter model; return the exit code.

    Parameters
    ----------
    argv : sequence of str, optional
        Command-line arguments; ``sys.argv[1:]`` when None.

    Returns
    -------
    int
        0 on success, else the :class:`~model_zoo.errors.OncoAIError` exit code.
    """
    parser = argparse.ArgumentParser(
        prog="python -m model_zoo.starter.train_nuclei",
        description="Train the OncoAI nucleus starter model on synthetic images "
        "and export it as a bioimage.io package.",
    )
    parser.add_argument("--out", type=Path, required=True, help="package folder")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--check-image", type=Path, help="a real 2D image to report F1 on"
    )
    parser.add_argument("--check-labels", type=Path, help="its ground-truth labels")
    args = parser.parse_args(argv)
    if (args.check_image is None) != (args.check_labels is None):
        parser.error("--check-image and --check-labels go together")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    # The ONNX exporter's optimiser reports every graph pass at INFO.
    for name in ("onnxscript", "onnx_ir"):
        logging.getLogger(name).setLevel(logging.WARNING)

    try:
        model, report = train(args.steps, args.seed)
        report.validation_dice = validation_dice(model)
        log.info("validation Dice on synthetic images: %.3f", report.validation_dice)
        if args.check_image is not None:
            report.real_f1, report.real_nuclei = real_image_f1(
                model, args.check_image, args.check_labels
            )
            report.real_image = args.check_image.name
            log.info("F1 at IoU 0.5 on %s: %.3f", args.check_image, report.real_f1)
        rdf = export_package(model, report, args.out)
    except OncoAIError as error:
        log.error("%s", one_line(error))
        return error.exit_code
    log.info("done: %s", rdf)
    return 0


if __name__ == "__main__":
    sys.exit(main())
