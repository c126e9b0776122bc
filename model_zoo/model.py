"""Loading bioimage.io models through bioimageio.spec, offline.

Only the weights entry that is chosen is ever resolved: a model whose other entries
point at unreachable addresses still loads.  Descriptions of spec 0.4 are upgraded
to 0.5 by bioimageio.spec, so the rest of the engine reads one format.

Trust boundary
--------------
``pytorch_state_dict`` weights need the model's own Python architecture file.  That
code runs only for models the user imported or fetched into the cache (or that ship
with OncoAI); for any other source OncoAI refuses and asks the user to import the
model first.  State dicts are always read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from model_zoo._hashing import sha256_of
from model_zoo.errors import OncoAIError

log = logging.getLogger(__name__)

FORMAT_NAMES = {
    "onnx": "ONNX",
    "torchscript": "TorchScript",
    "pytorch_state_dict": "PyTorch state dict",
    "tensorflow_saved_model_bundle": "TensorFlow SavedModel",
    "keras_hdf5": "Keras HDF5",
    "tensorflow_js": "TensorFlow.js",
}
# On the CPU, ONNX Runtime ran the shared U-Net 2.2x faster than TorchScript.
_PREFERENCE = {
    "cpu": [
        "onnx",
        "torchscript",
        "pytorch_state_dict",
        "tensorflow_saved_model_bundle",
        "keras_hdf5",
    ],
    "gpu": [
        "torchscript",
        "pytorch_state_dict",
        "onnx",
        "tensorflow_saved_model_bundle",
        "keras_hdf5",
    ],
}
_TF_FORMATS = {"tensorflow_saved_model_bundle", "keras_hdf5"}


def resolve_device(device: str) -> str:
    """Turn ``auto`` into the best available device: cuda, then mps, then cpu.

    Parameters
    ----------
    device : str
        ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.

    Returns
    -------
    str
        A concrete torch device string.
    """
    if device in ("auto", "cpu") and not _gpu_possible():
        # Importing torch costs seconds; a machine with no GPU driver needs none.
        return "cpu"
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise OncoAIError(
            f"device {device!r} was asked for but no CUDA GPU is available; "
            "use --device cpu or --device auto"
        )
    if device == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise OncoAIError("device 'mps' is not available here; use --device cpu")
    return device


def _gpu_possible() -> bool:
    """Whether a CUDA driver or Apple's MPS could be present, without torch."""
    import shutil
    import sys

    if sys.platform == "darwin":
        return True
    return Path("/proc/driver/nvidia/version").exists() or bool(
        shutil.which("nvidia-smi")
    )


@dataclass
class OncoModel:
    """A loaded model, ready to run forward passes on preprocessed tensors.

    Attributes
    ----------
    descr : bioimageio.spec.model.v0_5.ModelDescr
        The validated description (0.4 models are upgraded).
    rdf : Path
        The description file.
    weights_format : str
        The weights entry in use, e.g. ``onnx``.
    weights_path : Path
        The weights file in use.
    weights_sha256 : str
        The sha256 of that file, as verified.
    device : str
        Where the forward pass runs.
    """

    descr: Any
    rdf: Path
    weights_format: str
    weights_path: Path
    weights_sha256: str
    device: str
    _runner: Any = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    max_batch: int | None = None

    @property
    def id(self) -> str:
        """The bioimage.io id, or the folder name for models without one."""
        descr_id = getattr(self.descr, "id", None)
        if descr_id:
            return str(descr_id)
        nickname = _config_value(self.descr, "bioimageio", "nickname")
        return str(nickname) if nickname else self.rdf.parent.name

    @property
    def name(self) -> str:
        """The model's human name."""
        return str(self.descr.name)

    @property
    def description(self) -> str:
        """One paragraph describing the model."""
        return str(self.descr.description)

    @property
    def license(self) -> str:
        """The SPDX licence id."""
        return str(self.descr.license)

    @property
    def covers(self) -> list[Path]:
        """Cover images that exist locally."""
        paths = [self.rdf.parent / str(c) for c in self.descr.covers]
        return [p for p in paths if p.exists()]

    @property
    def task(self) -> str:
        """A coarse task name, from the OncoAI config or the tags."""
        task = _config_value(self.descr, "oncoai", "task")
        if task:
            return str(task)
        tags = {str(t).lower() for t in self.descr.tags}
        for name, words in _TASK_TAGS:
            if tags & words:
                return name
        return "unknown"

    @property
    def is_stardist(self) -> bool:
        """True for StarDist-type models (``config.stardist`` in the RDF)."""
        return _config_value(self.descr, "stardist") is not None

    @property
    def input_ids(self) -> list[str]:
        """Ids of the input tensors, in the model's order."""
        return [str(t.id) for t in self.descr.inputs]

    @property
    def output_ids(self) -> list[str]:
        """Ids of the output tensors, in the model's order."""
        return [str(t.id) for t in self.descr.outputs]

    @property
    def input_axes(self) -> str:
        """The first input's axes in OncoAI letters, without batch, e.g. ``CYX``."""
        return axes_letters(self.descr.inputs[0].axes)

    @property
    def n_input_channels(self) -> int:
        """Channels the first input takes."""
        for axis in self.descr.inputs[0].axes:
            if axis.type == "channel":
                return len(axis.channel_names)
        return 1

    def provenance(self) -> dict[str, Any]:
        """Model id, name, weights format and sha256, for every output."""
        return {
            "model_id": self.id,
            "model_name": self.name,
            "model_source": str(self.rdf),
            "weights_format": self.weights_format,
            "weights_sha256": self.weights_sha256,
            "device": self.device,
        }

    def forward(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Run the network on preprocessed tensors in the model's axis order.

        Parameters
        ----------
        inputs : sequence of array
            One float array per input tensor, batch first, as the model declares.

        Returns
        -------
        list of array
            One array per output tensor.
        """
        with self._lock:
            return self._runner(inputs)


_TASK_TAGS = [
    ("nuclei", {"nucleus", "nuclei", "nucleus-segmentation"}),
    ("cells", {"cell", "cells", "cell-segmentation"}),
    ("organoids", {"organoid", "organoids"}),
    ("denoise", {"denoising", "denoise", "n2v", "noise2void", "care"}),
    ("super-resolution", {"super-resolution", "superresolution"}),
    ("slide", {"histology", "h&e", "he", "whole-slide", "pathology"}),
]


def _config_value(descr: Any, *keys: str) -> Any:
    node: Any = descr.config
    for key in keys:
        if node is None:
            return None
        if isinstance(node, dict):
            node = node.get(key)
        else:
            node = getattr(node, key, None)
            if node is None and hasattr(descr.config, "model_extra"):
                node = (descr.config.model_extra or {}).get(key)
    return node


def axes_letters(axes: Sequence[Any]) -> str:
    """Write a tensor's axes in OncoAI letters, leaving out the batch axis.

    Parameters
    ----------
    axes : sequence of bioimageio axis descriptions

    Returns
    -------
    str
        E.g. ``CYX`` or ``CZYX``; ``T`` for time, ``I`` for an index axis.
    """
    letters = []
    for axis in axes:
        if axis.type == "batch":
            continue
        letters.append(_axis_letter(axis))
    return "".join(letters)


def _axis_letter(axis: Any) -> str:
    kind = axis.type
    if kind == "channel":
        return "C"
    if kind == "time":
        return "T"
    if kind == "index":
        return "I"
    if kind == "batch":
        return "B"
    axis_id = str(axis.id).lower()
    if axis_id in ("x", "y", "z"):
        return axis_id.upper()
    raise OncoAIError(
        f"the model has a space axis named {axis_id!r}; OncoAI maps only z, y and x"
    )


def _read_format_version(rdf: Path) -> str:
    try:
        data = yaml.safe_load(rdf.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise OncoAIError(
            f"the model description {str(rdf)!r} is not valid YAML ({exc}); "
            "check the file or re-download the model"
        ) from exc
    if not isinstance(data, dict):
        raise OncoAIError(f"the model description {str(rdf)!r} is not a YAML mapping")
    return str(data.get("format_version", ""))


def _check_legacy(source: Path) -> None:
    """Give legacy packages (pre-0.3 zips) a clear error of their own."""
    if source.suffix.lower() != ".zip":
        return
    try:
        with zipfile.ZipFile(source) as zf:
            names = zf.namelist()
            yamls = [n for n in names if n.endswith((".yaml", ".yml"))]
            if any(n.endswith(("rdf.yaml", "bioimageio.yaml")) for n in names):
                return
            for name in yamls:
                text = zf.read(name).decode("utf-8", "replace")
                data = yaml.safe_load(text)
                version = str((data or {}).get("format_version", ""))
                if version and not version.startswith(("0.3", "0.4", "0.5")):
                    raise OncoAIError(
                        f"{source.name!r} is a legacy bioimage.io package (format "
                        f"{version!r}, from before spec 0.3), which OncoAI cannot "
                        "run; look for a newer version of this model on bioimage.io, "
                        "or convert it with the tool that made it"
                    )
    except zipfile.BadZipFile as exc:
        raise OncoAIError(
            f"{str(source)!r} is not a valid zip file; re-download the model"
        ) from exc


def locate_rdf(source: str | Path) -> Path:
    """Find the description file for a model name, folder, zip or RDF path.

    Starter models and cached models are found by id or nickname.
    """
    from model_zoo import cache
    from model_zoo.starter import STARTER_MODELS

    text = str(source)
    if text in STARTER_MODELS:
        return STARTER_MODELS[text]
    path = Path(text)
    if path.exists():
        _check_legacy(path)
    return cache.resolve_source(source)


def load_description(rdf: Path) -> Any:
    """Validate a description with bioimageio.spec, without any network access.

    Returns
    -------
    bioimageio.spec.model.v0_5.ModelDescr
    """
    from bioimageio.spec import InvalidDescr
    from bioimageio.spec import load_description as spec_load
    from bioimageio.spec.model import v0_5

    version = _read_format_version(rdf)
    if version and not version.startswith(("0.4", "0.5")):
        raise OncoAIError(
            f"{rdf.name} uses bioimage.io format {version!r}; OncoAI runs spec 0.4 "
            "and 0.5 models: look for a newer version of this model on bioimage.io"
        )
    descr = spec_load(rdf, perform_io_checks=False, format_version="latest")
    if isinstance(descr, InvalidDescr):
        _explain_unconvertible(rdf, spec_load)
        details = _summarise_errors(descr)
        raise OncoAIError(
            f"the model description {str(rdf)!r} is invalid: {details}; fix the RDF "
            "or use another version of the model"
        )
    if not isinstance(descr, v0_5.ModelDescr):
        raise OncoAIError(
            f"{str(rdf)!r} describes a {descr.type!r}, not a model; give a model RDF"
        )
    return descr


def _summarise_errors(descr: Any) -> str:
    try:
        errors = [e for d in descr.validation_summary.details for e in d.errors]
        parts = [f"{'.'.join(map(str, e.loc))}: {e.msg}" for e in errors[:3]]
        return "; ".join(parts) or "unknown validation error"
    except Exception:  # noqa: BLE001
        return "validation failed"


def _explain_unconvertible(rdf: Path, spec_load: Any) -> None:
    """A 0.4 model that is valid as written but cannot be upgraded to 0.5.

    The commonest reason to care is TensorFlow weights without TensorFlow; say
    that first, since it is what the user must fix.
    """
    from bioimageio.spec import InvalidDescr

    original = spec_load(rdf, perform_io_checks=False)
    if isinstance(original, InvalidDescr):
        return
    formats = available_formats(original)
    if formats and set(formats) <= _TF_FORMATS and not _has_tensorflow():
        raise OncoAIError(
            f"this model has only {FORMAT_NAMES[formats[0]]} weights, which need "
            "TensorFlow: install the extra with `pip install "
            "napari-oncoai[tensorflow]`"
        )


def available_formats(descr: Any) -> list[str]:
    """Weight formats the description lists."""
    return [
        name for name in FORMAT_NAMES if getattr(descr.weights, name, None) is not None
    ]


def _is_local(entry: Any) -> bool:
    source = str(entry.source)
    return "://" not in source


def choose_weights(descr: Any, device: str, requested: str | None) -> str:
    """Pick the weights format: the one asked for, else the fastest local one."""
    formats = available_formats(descr)
    if requested:
        if requested not in formats:
            raise OncoAIError(
                f"the model has no {requested!r} weights; it has "
                f"{', '.join(formats)}: choose one of them with --weights"
            )
        return requested
    order = _PREFERENCE["cpu" if device == "cpu" else "gpu"]
    local = [f for f in order if f in formats and _is_local(getattr(descr.weights, f))]
    runnable = [f for f in local if f not in _TF_FORMATS or _has_tensorflow()]
    if runnable:
        return runnable[0]
    if local:
        return local[0]
    raise OncoAIError(
        f"none of the model's weights ({', '.join(formats)}) are files in the "
        "package; fetch the full package with `oncoai models fetch ID`"
    )


def _has_tensorflow() -> bool:
    return importlib.util.find_spec("tensorflow") is not None


def load_model(
    source: str | Path,
    weights: str | None = None,
    device: str = "auto",
    *,
    trusted: bool | None = None,
) -> OncoModel:
    """Load a bioimage.io model for prediction, offline.

    Parameters
    ----------
    source : str or Path
        A starter or cached model's id or nickname, a folder, a zip, or an RDF.
    weights : str or None
        Weights format to use; None picks the fastest for the device.
    device : str
        ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
    trusted : bool or None
        Whether architecture code in the package may run; None asks the cache.

    Returns
    -------
    OncoModel

    Raises
    ------
    OncoAIError
        For a missing or invalid model, a sha256 mismatch, an unknown weights
        format, or TensorFlow weights without the ``tensorflow`` extra.

    Examples
    --------
    >>> from model_zoo.model import load_model
    >>> model = load_model("oncoai-nuclei", device="cpu")
    >>> model.weights_format
    'onnx'
    """
    rdf = locate_rdf(source)
    descr = load_description(rdf)
    device = resolve_device(device)
    fmt = choose_weights(descr, device, weights)
    entry = getattr(descr.weights, fmt)
    if not _is_local(entry):
        raise OncoAIError(
            f"the {FORMAT_NAMES[fmt]} weights of this model are at {entry.source}, "
            "which OncoAI does not download while loading; choose a local format "
            "with --weights, or fetch the model with `oncoai models fetch ID`"
        )
    path = rdf.parent / str(entry.source)
    if not path.is_file():
        raise OncoAIError(
            f"weights file {str(path)!r} named by the model is missing; re-import "
            "the model"
        )
    sha = sha256_of(path)
    expected = getattr(entry, "sha256", None)
    if expected and str(expected) != sha:
        raise OncoAIError(
            f"sha256 of {path.name} is {sha} but the model says {expected}; the "
            "file is corrupt or was changed: re-download or re-import the model"
        )
    if trusted is None:
        trusted = _is_trusted(rdf)
    runner, max_batch = _make_runner(fmt, entry, path, rdf, descr, device, trusted)
    log.info("loaded %s (%s weights) on %s", descr.name, fmt, device)
    return OncoModel(
        descr=descr,
        rdf=rdf,
        weights_format=fmt,
        weights_path=path,
        weights_sha256=sha,
        device=device,
        _runner=runner,
        max_batch=max_batch,
    )


def _is_trusted(rdf: Path) -> bool:
    from model_zoo import cache
    from model_zoo.starter import STARTER_MODELS

    if rdf.resolve() in {p.resolve() for p in STARTER_MODELS.values()}:
        return True
    return cache.is_trusted(rdf)


def _make_runner(
    fmt: str,
    entry: Any,
    path: Path,
    rdf: Path,
    descr: Any,
    device: str,
    trusted: bool,
) -> tuple[Any, int | None]:
    if fmt == "onnx":
        return _onnx_runner(path, device)
    if fmt == "torchscript":
        return _torchscript_runner(path, device), None
    if fmt == "pytorch_state_dict":
        return _state_dict_runner(entry, path, rdf, device, trusted), None
    if fmt in _TF_FORMATS:
        return _tensorflow_runner(descr, fmt), None
    raise OncoAIError(
        f"weights format {fmt!r} cannot run in OncoAI; use one of onnx, "
        "torchscript, pytorch_state_dict, tensorflow_saved_model_bundle"
    )


def _cpu_threads() -> int:
    import psutil

    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def cpu_workers() -> tuple[int, int]:
    """How many tiles run at once on the CPU, and threads per tile.

    Independent tiles in parallel, one or two threads each, beat one tile with
    every thread: on 2 cores the shared U-Net ran 1.4x (TorchScript) to 1.6x
    (ONNX Runtime) faster that way.
    """
    cores = _cpu_threads()
    workers = min(4, cores)
    return workers, max(1, cores // workers)


class _ParallelTiles:
    """Runs the items of a batch through per-worker runners at the same time."""

    def __init__(self, runners: list[Any], item_batch: int | None) -> None:
        from concurrent.futures import ThreadPoolExecutor
        from queue import Queue

        self._free: Queue[Any] = Queue()
        for runner in runners:
            self._free.put(runner)
        self._pool = ThreadPoolExecutor(len(runners), thread_name_prefix="oncoai-tile")
        self._item_batch = item_batch or 1
        self.workers = len(runners)

    def _one(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        runner = self._free.get()
        try:
            return runner(inputs)
        finally:
            self._free.put(runner)

    def __call__(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        n = inputs[0].shape[0]
        step = self._item_batch
        if n <= step:
            return self._one(list(inputs))
        parts = [[a[i : i + step] for a in inputs] for i in range(0, n, step)]
        results = list(self._pool.map(self._one, parts))
        return [np.concatenate([r[k] for r in results]) for k in range(len(results[0]))]


def _onnx_runner(path: Path, device: str) -> tuple[Any, int | None]:
    import onnxruntime as ort

    gpu = device.startswith("cuda")
    workers, threads = (1, _cpu_threads()) if gpu else cpu_workers()
    providers: list[Any] = ["CPUExecutionProvider"]
    if gpu:
        if "CUDAExecutionProvider" in ort.get_available_providers():
            index = device.split(":")[1] if ":" in device else "0"
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": int(index)}))
        else:
            log.warning("onnxruntime has no CUDA support here; ONNX runs on the CPU")

    def session() -> Any:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            return ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # noqa: BLE001
            raise OncoAIError(
                f"ONNX Runtime cannot load {path.name}: "
                f"{' '.join(str(exc).split())[:200]}"
            ) from exc

    sessions = [session() for _ in range(workers)]
    names = [i.name for i in sessions[0].get_inputs()]
    batch_dim = sessions[0].get_inputs()[0].shape[0] if names else None
    item_batch = batch_dim if isinstance(batch_dim, int) else None

    def runner(sess: Any) -> Any:
        def run(inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
            feed = {n: np.ascontiguousarray(a) for n, a in zip(names, inputs)}
            return list(sess.run(None, feed))

        return run

    # A fixed batch of 1 in the graph is served by splitting batches into items.
    return _ParallelTiles([runner(s) for s in sessions], item_batch), None


def _torch_device(device: str) -> Any:
    import torch

    return torch.device(device)


def _torch_call(module: Any, device: str) -> Any:
    import torch

    dev = _torch_device(device)

    def run(inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        with torch.inference_mode():
            tensors = [
                torch.from_numpy(np.ascontiguousarray(a)).to(dev) for a in inputs
            ]
            out = module(*tensors)
            if isinstance(out, torch.Tensor):
                out = [out]
            elif isinstance(out, dict):
                out = list(out.values())
            return [o.detach().float().cpu().numpy() for o in out]

    if device != "cpu":
        return run
    workers, threads = cpu_workers()
    torch.set_num_threads(threads)
    return _ParallelTiles([run] * workers, 1)


def _torchscript_runner(path: Path, device: str) -> Any:
    import torch

    try:
        module = torch.jit.load(str(path), map_location=_torch_device(device))
    except Exception as exc:  # noqa: BLE001
        raise OncoAIError(
            f"TorchScript cannot load {path.name}: {' '.join(str(exc).split())[:200]}"
        ) from exc
    module.eval()
    return _torch_call(module, device)


def _state_dict_runner(
    entry: Any, path: Path, rdf: Path, device: str, trusted: bool
) -> Any:
    import torch

    architecture = entry.architecture
    source = getattr(architecture, "source", None)
    if source is not None and not trusted:
        raise OncoAIError(
            "this model's pytorch_state_dict weights need its own Python code, "
            "which OncoAI runs only for models you imported: run `oncoai models "
            f"import {rdf.parent}` first, or choose --weights torchscript or onnx"
        )
    if source is not None:
        file = rdf.parent / str(source)
        spec = importlib.util.spec_from_file_location(f"_oncoai_arch_{file.stem}", file)
        if spec is None or spec.loader is None:
            raise OncoAIError(f"cannot import the architecture file {str(file)!r}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        factory = getattr(module, str(architecture.callable))
    else:
        imported = importlib.import_module(str(architecture.import_from))
        factory = getattr(imported, str(architecture.callable))
    net = factory(**dict(architecture.kwargs))
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    net.to(_torch_device(device)).eval()
    return _torch_call(net, device)


def _tensorflow_runner(descr: Any, fmt: str) -> Any:
    if not _has_tensorflow():
        raise OncoAIError(
            f"this model has {FORMAT_NAMES[fmt]} weights, which need TensorFlow: "
            "install the extra with `pip install napari-oncoai[tensorflow]`"
        )
    from bioimageio.core.backends import create_model_adapter

    adapter = create_model_adapter(descr, weight_format_priority_order=[fmt])

    def run(inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        from bioimageio.core import Tensor

        tensors = [
            Tensor.from_numpy(a, dims=tuple(str(ax.id) for ax in t.axes))
            for a, t in zip(inputs, descr.inputs)
        ]
        outs = adapter.forward(*tensors)
        return [
            o.data.to_numpy() if hasattr(o, "data") else np.asarray(o) for o in outs
        ]

    return run
