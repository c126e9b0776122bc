"""Tiny bioimage.io spec-0.5 model packages, built in a test's temporary folder.

Each builder scripts a small torch module with TorchScript, saves it, writes test
tensors that the module itself produced, and writes an RDF (as a YAML dict) with
the right sha256 of every file.  Every package is validated with bioimageio.spec,
IO checks included, so a broken RDF fails here, loudly, and not in the test that
uses it.

The modules use 3×3(×3) convolutions with reflect padding and no downsampling:
with a halo of at least one pixel, a tiled run then equals a whole-image run
exactly, borders included, so tests can compare with the module run directly.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

PYTORCH_VERSION = torch.__version__.split("+")[0]
# Percentiles of the scale_range model, as the RDF declares them.
SCALE_RANGE_PERCENTILES = (1.0, 99.0)
SCALE_RANGE_EPS = 1e-6


def sha256(path: Path) -> str:
    """The hex sha256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class TinyModel:
    """A tiny model package on disk and the module it holds.

    Attributes
    ----------
    folder : Path
        The package folder.
    rdf : Path
        Its ``rdf.yaml``.
    module : torch.jit.ScriptModule
        The scripted module, to run directly on whole images.
    input_ids, output_ids : list of str
        Tensor ids, in the model's order.
    """

    folder: Path
    rdf: Path
    module: Any
    input_ids: list[str] = field(default_factory=list)
    output_ids: list[str] = field(default_factory=list)

    def forward(self, *arrays: np.ndarray) -> list[np.ndarray]:
        """Run the module on whole arrays in the model's layout, batch included."""
        with torch.inference_mode():
            out = self.module(
                *[torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]
            )
        if isinstance(out, torch.Tensor):
            out = (out,)
        return [o.numpy() for o in out]

    def run_yx(self, image: np.ndarray, channel_axis: int | None = None) -> np.ndarray:
        """Run a single-input 2D (or 3D) module on one image; returns C(Z)YX.

        Parameters
        ----------
        image : array, (C)(Z)YX
            Without batch; a missing channel axis is added.
        channel_axis : int or None
            Where the channels are, when not first.
        """
        data = np.asarray(image, dtype=np.float32)
        if channel_axis is None:
            data = data[np.newaxis]
        elif channel_axis != 0:
            data = np.moveaxis(data, channel_axis, 0)
        return self.forward(data[np.newaxis])[0][0]


# -- modules ---------------------------------------------------------------------


class _Conv2d(nn.Module):
    def __init__(self, cin: int, cout: int, radius: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            cin, cout, 2 * radius + 1, padding=radius, padding_mode="reflect"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.conv(x))


class _Conv3d(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 1, 3, padding=1, padding_mode="reflect")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.conv(x))


class _Upsample2(nn.Module):
    """A 3×3 convolution, then each pixel repeated 2×2."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1, padding_mode="reflect")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return torch.repeat_interleave(torch.repeat_interleave(y, 2, dim=2), 2, dim=3)


class _TwoInTwoOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1, padding_mode="reflect")

    def forward(
        self, a: torch.Tensor, b: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.conv(a) + b, a * b


ARCHITECTURE_SOURCE = '''"""The architecture of the tiny state-dict test model."""

import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, channels: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, padding_mode="reflect")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.conv(x))
'''


# -- RDF pieces ------------------------------------------------------------------


def _file_entry(folder: Path, name: str, **extra: Any) -> dict[str, Any]:
    """An RDF file reference: its source name and the sha256 of its bytes."""
    return {"source": name, "sha256": sha256(folder / name), **extra}


def _channel(names: list[str]) -> dict[str, Any]:
    return {"type": "channel", "channel_names": names}


def _space_in(axis: str, size: Any) -> dict[str, Any]:
    return {"type": "space", "id": axis, "size": size}


def _axes_in(channels: list[str], **sizes: Any) -> list[dict[str, Any]]:
    """A channel axis, then one space axis per keyword, in order."""
    return [_channel(channels), *(_space_in(a, size) for a, size in sizes.items())]


def _axes_out(
    channels: list[str], ref: str, halo: int, *axes: str, scale: float = 1.0
) -> list[dict[str, Any]]:
    """A channel axis, then space axes sized after input ``ref``'s."""
    return [_channel(channels), *(_space_out(a, ref, halo, scale) for a in axes)]


def _space_out(axis: str, ref: str, halo: int, scale: float = 1.0) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "type": "space",
        "id": axis,
        "size": {"tensor_id": ref, "axis_id": axis},
    }
    if halo:
        entry["halo"] = halo
    if scale != 1.0:
        entry["scale"] = scale
    return entry


def _tensor(
    folder: Path,
    tensor_id: str,
    axes: list[dict[str, Any]],
    data: np.ndarray,
    role: str,
    **extra: Any,
) -> dict[str, Any]:
    name = f"test_{role}_{tensor_id}.npy"
    np.save(folder / name, data)
    return {
        "id": tensor_id,
        "axes": [{"type": "batch"}, *axes],
        "test_tensor": _file_entry(folder, name),
        **extra,
    }


def _write_package(
    folder: Path,
    name: str,
    inputs: list[dict[str, Any]],
    outputs: list[dict[str, Any]],
    weights: dict[str, Any],
) -> Path:
    (folder / "README.md").write_text(f"# {name}\n\nA tiny model for OncoAI's tests.\n")
    rdf = {
        "format_version": "0.5.4",
        "type": "model",
        "name": name,
        "description": f"A tiny model for OncoAI's tests: {name}.",
        "authors": [{"name": "OncoAI tests"}],
        "cite": [{"text": "OncoAI test fixture", "url": "https://example.com/"}],
        "license": "MIT",
        "documentation": "README.md",
        "tags": ["test"],
        "inputs": inputs,
        "outputs": outputs,
        "weights": weights,
    }
    path = folder / "rdf.yaml"
    path.write_text(yaml.safe_dump(rdf, sort_keys=False), encoding="utf-8")
    _validate(path)
    return path


def _validate(rdf: Path) -> None:
    from bioimageio.spec import InvalidDescr, load_description

    descr = load_description(rdf, perform_io_checks=True)
    if isinstance(descr, InvalidDescr):
        raise AssertionError(
            f"tiny model RDF {rdf} is invalid:\n{descr.validation_summary.format()}"
        )


def _torchscript(folder: Path, module: nn.Module) -> tuple[Any, dict[str, Any]]:
    scripted = torch.jit.script(module.eval())
    path = folder / "weights.pt"
    scripted.save(str(path))
    entry = _file_entry(folder, path.name, pytorch_version=PYTORCH_VERSION)
    return torch.jit.load(str(path)), {"torchscript": entry}


def _start(folder: Path, seed: int) -> np.random.Generator:
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def _image(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.normal(0.0, 1.0, size=shape).astype(np.float32)


# -- builders --------------------------------------------------------------------


def _one_in_one_out(
    model: TinyModel,
    name: str,
    weights: dict[str, Any],
    x: np.ndarray,
    axes_in: list[dict[str, Any]],
    axes_out: list[dict[str, Any]],
    *,
    module_input: np.ndarray | None = None,
    **input_extra: Any,
) -> TinyModel:
    """Write a one-input, one-output package whose test output the module made.

    ``module_input`` is what the module itself is fed, when the RDF's
    pre-processing turns ``x`` into something else first.
    """
    folder = model.folder
    y = model.forward(x if module_input is None else module_input)[0]
    (in_id,), (out_id,) = model.input_ids, model.output_ids
    inputs = [_tensor(folder, in_id, axes_in, x, "input", **input_extra)]
    outputs = [_tensor(folder, out_id, axes_out, y, "output")]
    model.rdf = _write_package(folder, name, inputs, outputs, weights)
    return model


def plain_2d(
    folder: Path, *, minimum: int = 32, step: int = 16, radius: int = 1
) -> TinyModel:
    """One channel in and out, size ``minimum + n * step`` along y and x.

    The module is one convolution of ``2 * radius + 1`` pixels, and the RDF
    declares ``radius`` as the output halo.  With a radius over 1, a tile that
    ends inside the image's padding differs from the whole image within
    ``radius`` of the image's far border.
    """
    rng = _start(folder, 1)
    module, weights = _torchscript(folder, _Conv2d(1, 1, radius))
    size = {"min": minimum, "step": step}
    x = _image(rng, 1, 1, minimum + step, minimum + step)
    return _one_in_one_out(
        TinyModel(folder, folder, module, ["raw"], ["out"]),
        "tiny plain 2d",
        weights,
        x,
        _axes_in(["c0"], y=size, x=size),
        _axes_out(["p0"], "raw", radius, "y", "x"),
    )


def multichannel(folder: Path) -> TinyModel:
    """Two channels in, three out (2D)."""
    rng = _start(folder, 2)
    module, weights = _torchscript(folder, _Conv2d(2, 3))
    size = {"min": 16, "step": 8}
    return _one_in_one_out(
        TinyModel(folder, folder, module, ["raw"], ["out"]),
        "tiny multichannel",
        weights,
        _image(rng, 1, 2, 32, 32),
        _axes_in(["c0", "c1"], y=size, x=size),
        _axes_out(["o0", "o1", "o2"], "raw", 1, "y", "x"),
    )


def volume_3d(folder: Path) -> TinyModel:
    """A 3D model: axes batch, channel, z, y, x."""
    rng = _start(folder, 3)
    module, weights = _torchscript(folder, _Conv3d())
    size = {"min": 16, "step": 8}
    return _one_in_one_out(
        TinyModel(folder, folder, module, ["raw"], ["out"]),
        "tiny 3d",
        weights,
        _image(rng, 1, 1, 8, 24, 24),
        _axes_in(["c0"], z={"min": 4, "step": 4}, y=size, x=size),
        _axes_out(["p0"], "raw", 1, "z", "y", "x"),
    )


def two_in_two_out(folder: Path) -> TinyModel:
    """Inputs ``a`` and ``b``; outputs ``conv(a) + b`` and ``a * b``."""
    rng = _start(folder, 4)
    module, weights = _torchscript(folder, _TwoInTwoOut())
    size = {"min": 16, "step": 8}
    a, b = _image(rng, 1, 1, 32, 32), _image(rng, 1, 1, 32, 32)
    model = TinyModel(folder, folder, module, ["a", "b"], ["sum", "product"])
    s, p = model.forward(a, b)
    axes_in = _axes_in(["c0"], y=size, x=size)
    inputs = [
        _tensor(folder, "a", axes_in, a, "input"),
        _tensor(folder, "b", axes_in, b, "input"),
    ]
    outputs = [
        _tensor(folder, "sum", _axes_out(["s"], "a", 1, "y", "x"), s, "output"),
        _tensor(folder, "product", _axes_out(["p"], "a", 0, "y", "x"), p, "output"),
    ]
    model.rdf = _write_package(folder, "tiny two in two out", inputs, outputs, weights)
    return model


def upsample_2x(folder: Path) -> TinyModel:
    """A ×2 output: output axes with ``scale: 0.5`` and a size reference."""
    rng = _start(folder, 5)
    module, weights = _torchscript(folder, _Upsample2())
    size = {"min": 16, "step": 8}
    return _one_in_one_out(
        TinyModel(folder, folder, module, ["raw"], ["up"]),
        "tiny upsample x2",
        weights,
        _image(rng, 1, 1, 24, 24),
        _axes_in(["c0"], y=size, x=size),
        _axes_out(["u"], "raw", 2, "y", "x", scale=0.5),
    )


def scale_range(folder: Path) -> TinyModel:
    """Percentile normalisation (``scale_range``, per sample, over y and x)."""
    rng = _start(folder, 6)
    module, weights = _torchscript(folder, _Conv2d(1, 1))
    size = {"min": 16, "step": 8}
    raw = (rng.gamma(2.0, 300.0, size=(1, 1, 32, 32)) + 100).astype(np.float32)
    lo, hi = SCALE_RANGE_PERCENTILES
    pre = [
        {
            "id": "scale_range",
            "kwargs": {
                "axes": ["y", "x"],
                "min_percentile": lo,
                "max_percentile": hi,
                "eps": SCALE_RANGE_EPS,
            },
        }
    ]
    return _one_in_one_out(
        TinyModel(folder, folder, module, ["raw"], ["out"]),
        "tiny scale range",
        weights,
        raw,
        _axes_in(["c0"], y=size, x=size),
        _axes_out(["p0"], "raw", 1, "y", "x"),
        module_input=scale_range_reference(raw),
        preprocessing=pre,
    )


def scale_range_reference(raw: np.ndarray) -> np.ndarray:
    """What the scale_range model's pre-processing makes of a whole (B, C, Y, X)."""
    lo, hi = SCALE_RANGE_PERCENTILES
    data = raw.astype(np.float64)
    p_lo = np.percentile(data, lo, axis=(-2, -1), keepdims=True)
    p_hi = np.percentile(data, hi, axis=(-2, -1), keepdims=True)
    return ((data - p_lo) / (p_hi - p_lo + SCALE_RANGE_EPS)).astype(np.float32)


def fixed_size(folder: Path, size: int = 64) -> TinyModel:
    """A model that takes exactly ``size`` × ``size`` pixels."""
    rng = _start(folder, 7)
    module, weights = _torchscript(folder, _Conv2d(1, 1))
    return _one_in_one_out(
        TinyModel(folder, folder, module, ["raw"], ["out"]),
        "tiny fixed size",
        weights,
        _image(rng, 1, 1, size, size),
        _axes_in(["c0"], y=size, x=size),
        _axes_out(["p0"], "raw", 1, "y", "x"),
    )


def state_dict_model(folder: Path) -> TinyModel:
    """``pytorch_state_dict`` weights with their own architecture file only."""
    rng = _start(folder, 8)
    (folder / "tiny_arch.py").write_text(ARCHITECTURE_SOURCE, encoding="utf-8")
    net = _Conv2d(1, 1).eval()
    torch.save(net.state_dict(), folder / "weights.pth")
    architecture = _file_entry(
        folder, "tiny_arch.py", callable="TinyNet", kwargs={"channels": 1}
    )
    weights = {
        "pytorch_state_dict": _file_entry(
            folder,
            "weights.pth",
            architecture=architecture,
            pytorch_version=PYTORCH_VERSION,
        )
    }
    size = {"min": 16, "step": 8}
    return _one_in_one_out(
        TinyModel(folder, folder, torch.jit.script(net), ["raw"], ["out"]),
        "tiny state dict",
        weights,
        _image(rng, 1, 1, 32, 32),
        _axes_in(["c0"], y=size, x=size),
        _axes_out(["p0"], "raw", 1, "y", "x"),
    )


BUILDERS = {
    "plain_2d": plain_2d,
    "multichannel": multichannel,
    "volume_3d": volume_3d,
    "two_in_two_out": two_in_two_out,
    "upsample_2x": upsample_2x,
    "scale_range": scale_range,
    "fixed_size": fixed_size,
}
