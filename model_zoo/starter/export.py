"""Write a trained nucleus U-Net as a bioimage.io model package (spec 0.5).

The package holds TorchScript, ONNX and state-dict weights (with the architecture
file), test and sample tensors made by the TorchScript weights with the declared
pre- and post-processing, a cover, a README and ``rdf.yaml``.  It is built in a
temporary folder beside the target, validated with ``bioimageio.spec``, and only
then moved into place, so a failed export never leaves a half-written package.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import shutil
import tempfile
import textwrap
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import tifffile
import torch
import yaml
from torch import nn

from model_zoo._hashing import file_sha256 as sha256_of
from model_zoo.errors import OncoAIError
from model_zoo.starter import synthetic, unet

if TYPE_CHECKING:
    from bioimageio.spec.model.v0_5 import ModelDescr

    from model_zoo.starter.train_nuclei import TrainingReport

log = logging.getLogger(__name__)

MODEL_ID = "oncoai-nuclei"
MODEL_NAME = "OncoAI nuclei starter"
EPS = 1e-6
"""The ``eps`` of zero_mean_unit_variance, in the RDF and in training alike."""

HALO = 24
"""Output pixels per border to discard when tiling.

The receptive field is 85 pixels wide.  On ``stardist_img2d.tif``, tiles of 128
and 256 pixels cropped by 24 pixels agree with the whole-image prediction on all
but 0.02 % of pixels after a threshold at 0.5 (the probability itself differs by
up to 0.3 at a few pixels); the RDF's minimum input of 64 pixels allows no halo
above 31."""

MIN_SIZE = 64
SIZE_STEP = 16
UNET_KWARGS: dict[str, int] = {"in_channels": 1, "out_channels": 1, "base_channels": 8}
ONNX_OPSET = 18
TEST_TENSOR_SIZE = 256

_WEIGHT_FILES = {
    "torchscript": "weights.pt",
    "onnx": "weights.onnx",
    "pytorch_state_dict": "weights.pth",
}


def normalize(image: np.ndarray) -> np.ndarray:
    """Apply the RDF's preprocessing to one image.

    ``ensure_dtype float32``, then ``zero_mean_unit_variance`` over x and y with
    ``eps=1e-6``; training applies exactly this to every crop.

    Parameters
    ----------
    image : numpy.ndarray, YX
        Raw intensities of any real dtype.

    Returns
    -------
    numpy.ndarray of float32, YX
        ``(image - mean) / (std + 1e-6)``.
    """
    x = image.astype(np.float32)
    return (x - x.mean()) / (x.std() + np.float32(EPS))


def predict_probability(network: nn.Module, image: np.ndarray) -> np.ndarray:
    """Run the network whole-image with the RDF's pre- and post-processing.

    Parameters
    ----------
    network : torch.nn.Module
        The U-Net or its TorchScript export; it returns logits.
    image : numpy.ndarray, YX
        Raw intensities; both sides multiples of 8.

    Returns
    -------
    numpy.ndarray of float32, YX
        Probability of nucleus, the sigmoid of the logits.
    """
    x = torch.from_numpy(normalize(image))[None, None]
    with torch.inference_mode():
        return torch.sigmoid(network(x))[0, 0].numpy()


def export_package(network: nn.Module, report: TrainingReport, out: Path | str) -> Path:
    """Write, validate and move a bioimage.io package into ``out``.

    Parameters
    ----------
    network : torch.nn.Module
        A trained :class:`~model_zoo.starter.unet.NucleiUNet` built with
        :data:`UNET_KWARGS`.
    report : TrainingReport
        How it was trained; goes into the README.
    out : pathlib.Path or str
        The package folder.  An existing one is replaced only after the new
        package validated.

    Returns
    -------
    pathlib.Path
        The path of ``rdf.yaml`` in ``out``.

    Raises
    ------
    OncoAIError
        If the ONNX or state-dict weights do not reproduce the TorchScript test
        output, or the package does not validate; ``out`` is then left
        untouched.
    """
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        # mkdtemp makes the folder private; a package is meant to be shared.
        umask = os.umask(0)
        os.umask(umask)
        staging.chmod(0o777 & ~umask)
        _write_package(network.eval(), report, staging)
        validate_package(staging / "rdf.yaml")
        _replace_folder(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("wrote the model package to %s", out)
    return out / "rdf.yaml"


def validate_package(rdf: Path | str) -> ModelDescr:
    """Load a package with ``bioimageio.spec``, checking every file's hash.

    Parameters
    ----------
    rdf : pathlib.Path or str
        Its ``rdf.yaml``.

    Returns
    -------
    bioimageio.spec.model.v0_5.ModelDescr
        The validated description.

    Raises
    ------
    OncoAIError
        If it is not a valid spec-0.5 model; the message holds the summary.
    """
    from bioimageio.spec import load_description
    from bioimageio.spec.model.v0_5 import ModelDescr

    descr = load_description(Path(rdf), perform_io_checks=True)
    if not isinstance(descr, ModelDescr):
        summary = descr.validation_summary.format()
        log.error("validation of %s failed:\n%s", rdf, summary)
        raise OncoAIError(
            f"The model package {rdf} is not a valid bioimage.io spec-0.5 model "
            f"(status {descr.validation_summary.status}); see the log for the "
            "summary, fix the export and run it again."
        )
    return descr


def _write_package(network: nn.Module, report: TrainingReport, folder: Path) -> None:
    scripted = torch.jit.script(network)
    scripted.save(str(folder / _WEIGHT_FILES["torchscript"]))
    torch.save(network.state_dict(), folder / _WEIGHT_FILES["pytorch_state_dict"])
    _export_onnx(network, folder / _WEIGHT_FILES["onnx"])
    shutil.copyfile(unet.__file__, folder / "unet.py")

    sample = synthetic.nuclei_sample()
    image = sample[:TEST_TENSOR_SIZE, :TEST_TENSOR_SIZE]
    probability = predict_probability(scripted, image)
    np.save(folder / "test_input.npy", image.astype(np.float32)[None, None])
    np.save(folder / "test_output.npy", probability[None, None])
    tifffile.imwrite(folder / "sample_input.tif", image)
    tifffile.imwrite(folder / "sample_output.tif", probability)
    _check_reproduction(folder, image, probability)
    _render_cover(image, probability, folder / "cover.png")
    disagreement = tiling_disagreement(scripted, sample)
    readme = _reflow(_readme(report, disagreement))
    (folder / "README.md").write_text(readme, encoding="utf-8")

    rdf = _rdf(report, folder)
    with open(folder / "rdf.yaml", "w", encoding="utf-8") as f:
        yaml.safe_dump(rdf, f, sort_keys=False, allow_unicode=True)


def tiling_disagreement(
    network: nn.Module, image: np.ndarray, tile: int = 128, halo: int = HALO
) -> float:
    """Share of pixels whose thresholded probability changes under tiling.

    The image is normalised once, as a whole, then cut into overlapping tiles
    whose outputs are cropped by ``halo`` on every side; pixels within ``halo``
    of the image border are left out.

    Parameters
    ----------
    network : torch.nn.Module
        Returns logits.
    image : numpy.ndarray, YX
        Raw intensities; sides multiples of 8 and at least ``tile``.
    tile : int
        Tile side, a multiple of 8.
    halo : int
        Pixels cropped from each side of each tile's output.

    Returns
    -------
    float
        Fraction in [0, 1] of pixels where ``probability > 0.5`` differs between
        the tiled and the whole-image prediction.
    """
    x = torch.from_numpy(normalize(image))[None, None]
    with torch.inference_mode():
        whole = network(x)[0, 0].numpy() > 0
    tiled = np.zeros_like(whole)
    ny, nx = image.shape
    step = tile - 2 * halo
    starts_y = sorted({*range(0, ny - tile, step), ny - tile})
    starts_x = sorted({*range(0, nx - tile, step), nx - tile})
    with torch.inference_mode():
        for y0 in starts_y:
            for x0 in starts_x:
                logits = network(x[..., y0 : y0 + tile, x0 : x0 + tile])[0, 0]
                core = (slice(halo, tile - halo),) * 2
                tiled[y0 + halo : y0 + tile - halo, x0 + halo : x0 + tile - halo] = (
                    logits.numpy()[core] > 0
                )
    inner = (slice(halo, ny - halo), slice(halo, nx - halo))
    return float((tiled[inner] != whole[inner]).mean())


def _check_reproduction(folder: Path, image: np.ndarray, expected: np.ndarray) -> None:
    """Check that the ONNX and state-dict weights reproduce the test output."""
    import importlib.util

    import onnxruntime

    x = normalize(image)[None, None]
    session = onnxruntime.InferenceSession(
        str(folder / _WEIGHT_FILES["onnx"]), providers=["CPUExecutionProvider"]
    )
    (logits,) = session.run(None, {session.get_inputs()[0].name: x})
    outputs = {"onnx": 1 / (1 + np.exp(-logits[0, 0]))}

    spec = importlib.util.spec_from_file_location("_packaged_unet", folder / "unet.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    network = module.NucleiUNet(**UNET_KWARGS)
    state = torch.load(folder / _WEIGHT_FILES["pytorch_state_dict"], weights_only=True)
    network.load_state_dict(state)
    outputs["pytorch_state_dict"] = predict_probability(network.eval(), image)

    for weights, output in outputs.items():
        difference = float(np.abs(output - expected).max())
        if difference > 1e-4:
            raise OncoAIError(
                f"The exported {weights} weights differ from TorchScript by "
                f"{difference:.2g} on the test input; expected at most 1e-4. "
                "Check the export of that format."
            )


def _export_onnx(network: nn.Module, path: Path) -> None:
    """Export with a dynamic batch and sides that are any multiple of 8."""
    from torch.export import Dim

    batch = Dim("batch", min=1, max=1024)
    height = 8 * Dim("y8", min=2, max=4096)
    width = 8 * Dim("x8", min=2, max=4096)
    example = torch.zeros(1, 1, TEST_TENSOR_SIZE, TEST_TENSOR_SIZE)
    with warnings.catch_warnings():
        # torch.onnx warns about torchvision operators this model does not use.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            network,
            (example,),
            str(path),
            input_names=["raw"],
            output_names=["logits"],
            opset_version=ONNX_OPSET,
            dynamo=True,
            external_data=False,
            dynamic_shapes={"x": {0: batch, 2: height, 3: width}},
            verbose=False,
        )


def _render_cover(image: np.ndarray, probability: np.ndarray, path: Path) -> None:
    """Save input and probability side by side, 2:1, as bioimage.io prefers."""
    from PIL import Image

    low, high = np.percentile(image, [0.5, 99.8])
    grey = np.clip((image - low) / max(high - low, 1e-9), 0, 1)
    left = np.repeat(grey[..., None], 3, axis=2)
    # Probability in green over a dimmed input.
    right = 0.5 * left
    right[..., 1] = np.clip(right[..., 1] + probability, 0, 1)
    panel = (np.concatenate([left, right], axis=1) * 255).astype(np.uint8)
    Image.fromarray(panel).resize((1024, 512), Image.NEAREST).save(path)


def _rdf(report: TrainingReport, folder: Path) -> dict[str, Any]:
    def file(name: str) -> dict[str, str]:
        return {"source": name, "sha256": sha256_of(folder / name)}

    def space(axis: str) -> dict[str, Any]:
        return {
            "type": "space",
            "id": axis,
            "size": {"min": MIN_SIZE, "step": SIZE_STEP},
        }

    def space_like_raw(axis: str) -> dict[str, Any]:
        return {
            "type": "space",
            "id": axis,
            "size": {"tensor_id": "raw", "axis_id": axis},
            "halo": HALO,
        }

    torch_version = torch.__version__.split("+")[0]
    return {
        "type": "model",
        "format_version": "0.5.4",
        "id": MODEL_ID,
        "name": MODEL_NAME,
        "description": (
            "A small 2D U-Net that predicts the probability of nucleus in "
            "fluorescence images of stained nuclei, trained only on synthetic "
            "images made by OncoAI. A starter model for demos, not for research."
        ),
        "authors": [{"name": "OncoAI developers"}],
        "cite": [
            {
                "text": (
                    "Ronneberger, Fischer and Brox. U-Net: Convolutional Networks "
                    "for Biomedical Image Segmentation. MICCAI 2015."
                ),
                "doi": "10.1007/978-3-319-24574-4_28",
            }
        ],
        "license": "BSD-3-Clause",
        "documentation": "README.md",
        "covers": ["cover.png"],
        "tags": [
            "nucleus",
            "segmentation",
            "fluorescence-light-microscopy",
            "2d",
            "unet",
            "pytorch",
            "oncoai-starter",
        ],
        "timestamp": dt.datetime.now(dt.timezone.utc)
        .replace(microsecond=0)
        .isoformat(),
        "inputs": [
            {
                "id": "raw",
                "description": "One fluorescence channel of stained nuclei.",
                "axes": [
                    {"type": "batch"},
                    {"type": "channel", "channel_names": ["fluorescence"]},
                    space("y"),
                    space("x"),
                ],
                "test_tensor": file("test_input.npy"),
                "sample_tensor": file("sample_input.tif"),
                "preprocessing": [
                    {"id": "ensure_dtype", "kwargs": {"dtype": "float32"}},
                    {
                        "id": "zero_mean_unit_variance",
                        "kwargs": {"axes": ["x", "y"], "eps": EPS},
                    },
                ],
            }
        ],
        "outputs": [
            {
                "id": "probability",
                "description": (
                    "Probability of nucleus; touching nuclei are kept apart by a "
                    "thin gap of low probability."
                ),
                "axes": [
                    {"type": "batch"},
                    {"type": "channel", "channel_names": ["nucleus"]},
                    space_like_raw("y"),
                    space_like_raw("x"),
                ],
                "test_tensor": file("test_output.npy"),
                "sample_tensor": file("sample_output.tif"),
                "data": {"type": "float32", "range": [0.0, 1.0]},
                "postprocessing": [{"id": "sigmoid"}],
            }
        ],
        "weights": {
            "pytorch_state_dict": {
                **file(_WEIGHT_FILES["pytorch_state_dict"]),
                "architecture": {
                    **file("unet.py"),
                    "callable": "NucleiUNet",
                    "kwargs": dict(UNET_KWARGS),
                },
                "pytorch_version": torch_version,
            },
            "torchscript": {
                **file(_WEIGHT_FILES["torchscript"]),
                "parent": "pytorch_state_dict",
                "pytorch_version": torch_version,
            },
            "onnx": {
                **file(_WEIGHT_FILES["onnx"]),
                "parent": "pytorch_state_dict",
                "opset_version": ONNX_OPSET,
            },
        },
        "config": {
            "bioimageio": {
                "nickname": MODEL_ID,
                "architecture_type": "2D U-Net",
                "modality": "fluorescence microscopy",
                "target_structure": ["nuclei"],
                "task": "semantic segmentation",
            },
            "oncoai": {
                "task": "nuclei",
                "starter": True,
                "training": {
                    "script": "model_zoo/starter/train_nuclei.py",
                    "steps": report.steps,
                    "seed": report.seed,
                },
            },
        },
    }


def _readme(report: TrainingReport, disagreement: float) -> str:
    real = (
        f"- On the real fluorescence image `{report.real_image}` "
        f"({report.real_nuclei} labelled nuclei, never used for training), the "
        f"probability thresholded at 0.5 and split into connected components of "
        f"at least 10 pixels reached **F1 = {report.real_f1:.3f}** at IoU 0.5.\n"
        if report.real_f1 is not None
        else ""
    )
    return f"""# {MODEL_NAME}

A small 2D U-Net ({report.parameters:,} parameters; 8, 16, 32 and 64 channels at
four resolutions) that predicts, for every pixel of a fluorescence image of
stained nuclei, the probability that it lies inside a nucleus. Where two nuclei
touch, the model predicts a thin gap of low probability, so thresholding at 0.5
and labelling connected components separates most of them.

OncoAI bundles it so that its demo and its plugins work offline on first use.

## Training data

No real images. The model saw only synthetic images made by
`model_zoo/starter/synthetic.py` in the OncoAI repository: elliptical nuclei with
radii of about 4 to 14 pixels, some touching or overlapping, a few small and very
bright, with smooth texture, a Gaussian point spread function, an uneven
background, photon and read noise, and brightness, contrast and noise drawn anew
for each image. {report.pool_size} such images of 256×256 pixels were cut into
random {report.crop}×{report.crop} crops with random flips and rotations.

## Training

`python -m model_zoo.starter.train_nuclei --out DIR --steps {report.steps} \
--seed {report.seed}` on one CPU thread: {report.steps} Adam steps of
{report.batch_size} crops with a one-cycle learning rate (peak
{report.learning_rate:g}); loss = weighted binary cross-entropy (the gaps
between touching nuclei weighted {report.touch_weight:g}×) + soft Dice. Every crop
was normalised exactly as the declared preprocessing does. Training, data
generation included, took {report.seconds:.0f} s. The run is seeded and
deterministic: the same command on the same platform gives the same weights.

## Validation

- Dice of `probability > 0.5` against the training target on 8 held-out
  synthetic images: {report.validation_dice:.3f}.
{real}- The test tensors were made by the TorchScript weights with the declared
  pre- and post-processing; the ONNX and state-dict weights reproduce them to
  within 1e-4.
- Predicted in 128-pixel tiles cropped by the declared halo of {HALO} pixels,
  the bundled 512×512 sample differs from its whole-image prediction on
  {100 * disagreement:.3f} % of pixels after thresholding at 0.5.

## Use

Input: one channel, any height and width that are multiples of 16 and at least
64. Preprocessing: float32, then zero mean and unit variance over the image.
The network outputs logits; the declared postprocessing is a sigmoid. When
tiling, discard {HALO} pixels at each inner tile border.

## Limitations

- Trained on synthetic ellipses only: irregular, lobed, very large (radius over
  about 15 pixels) or very small nuclei, dense clumps and nuclei much dimmer than
  their neighbours are segmented less well. Rescale images so that nuclei have
  radii of about 5 to 14 pixels.
- One fluorescence channel only; it is not meant for brightfield or H&E.
- 2D only; apply it plane by plane to a stack.
- Touching nuclei are split only where the model predicts a gap; strongly
  overlapping nuclei are often merged.
- Very bright nuclei with inner structure (mitotic figures) sometimes come out
  as rings or fragments.
- A starter model for demonstrations and first tries, not validated for
  research or clinical use.
"""


def _reflow(markdown: str, width: int = 80) -> str:
    """Rewrap each paragraph and bullet of simple Markdown to ``width``."""
    blocks = []
    for block in markdown.strip().split("\n\n"):
        if block.startswith("#"):
            blocks.append(block)
            continue
        items = re.split(r"\n(?=- )", block)
        wrapped = [
            textwrap.fill(
                " ".join(item.split()),
                width,
                subsequent_indent="  " if item.startswith("- ") else "",
                break_on_hyphens=False,
                break_long_words=False,
            )
            for item in items
        ]
        blocks.append("\n".join(wrapped))
    return "\n\n".join(blocks) + "\n"


def _replace_folder(staging: Path, out: Path) -> None:
    """Move ``staging`` to ``out``, replacing an old package only at the end."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}-old-{os.getpid()}")
        os.replace(out, old)
    try:
        os.replace(staging, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
