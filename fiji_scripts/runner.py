"""What the macros call: run a model on one image and write the ImageJ outputs.

The warm service (``oncoai serve``) runs the job when it is up, so that a macro
does not pay for importing torch and loading the model each time; otherwise the
model runs in this process.  Nothing here imports torch or the engine's
prediction code until a job runs in-process.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model_zoo.errors import OncoAIError, one_line

log = logging.getLogger(__name__)

OBJECT_SUFFIXES = ("_labels.tif", "_RoiSet.zip", "_results.csv")
"""What a segmentation writes, after the image's name."""

KINDS = ("objects", "image")


@dataclass
class RunRequest:
    """One image through one model, as a macro asks for it.

    Attributes
    ----------
    image : Path
        The input image file.
    model : str
        A model id, nickname, folder or zip.
    outdir : Path
        The folder for the outputs; created when missing.
    name : str or None
        The outputs' name stem; the image's file name without its extension
        by default.
    kind : str
        ``objects`` writes ``<name>_labels.tif``, ``<name>_RoiSet.zip`` and
        ``<name>_results.csv``; ``image`` writes ``<name>_<suffix>.tif``, the
        model's output image (denoised, super-resolved ...).
    suffix : str
        For ``kind == "image"``.
    params : dict
        Further :class:`~model_zoo.config.PredictionConfig` fields.
    region : tuple of int or None
        ``(x, y, width, height)`` in pixels: run only there.
    """

    image: Path
    model: str
    outdir: Path
    name: str | None = None
    kind: str = "objects"
    suffix: str = "prediction"
    params: dict[str, Any] = field(default_factory=dict)
    region: tuple[int, int, int, int] | None = None

    def outputs(self) -> list[Path]:
        """The absolute output paths this request writes."""
        if self.kind not in KINDS:
            raise OncoAIError(
                f"unknown output kind {self.kind!r}; use one of {', '.join(KINDS)}."
            )
        stem = self.name or _stem(self.image)
        folder = self.outdir.expanduser().resolve()
        if self.kind == "objects":
            return [folder / f"{stem}{suffix}" for suffix in OBJECT_SUFFIXES]
        return [folder / f"{stem}_{self.suffix}.tif"]


@dataclass
class RunOutcome:
    """What a run wrote and how.

    Attributes
    ----------
    outputs : list of Path
    via : str
        ``service`` or ``local``.
    """

    outputs: list[Path]
    via: str


def parse_params(text: str | None) -> dict[str, Any]:
    """Read ``key=value`` pairs, separated by spaces, into typed values.

    Parameters
    ----------
    text : str or None
        E.g. ``"threshold=0.4 tile=256 split_touching=false channel=1"``.

    Returns
    -------
    dict
        Numbers and ``true``/``false``/``none`` are converted; the rest stay
        text.  Validation is left to :class:`~model_zoo.config.PredictionConfig`.
    """
    params: dict[str, Any] = {}
    for item in (text or "").split():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise OncoAIError(
                f"parameters are key=value pairs separated by spaces; got {item!r}."
            )
        params[key.strip().replace("-", "_")] = _typed(value.strip())
    return params


def run(
    request: RunRequest,
    *,
    use_service: bool = True,
    timeout: float | None = None,
    on_progress: Callable[[float, str], None] | None = None,
) -> RunOutcome:
    """Run the request through the service when it is up, else in this process.

    Parameters
    ----------
    request : RunRequest
    use_service : bool
        False runs in this process even when a service is up.
    timeout : float, optional
        Seconds to wait for a service job before cancelling it.
    on_progress : callable, optional
        ``on_progress(fraction, message)``.

    Returns
    -------
    RunOutcome

    Raises
    ------
    OncoAIError
        With the one-line reason when the image, the model or a parameter is
        wrong, or the job failed.
    """
    outputs = request.outputs()
    image = Path(request.image).expanduser()
    if not image.exists():
        raise OncoAIError(f"image not found: {image}; check the path.")
    folder = outputs[0].parent
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        return _run_somewhere(request, outputs, use_service, timeout, on_progress)
    except BaseException:
        # Leave no trace of a failed run, not even an empty folder.
        if created and not any(folder.iterdir()):
            folder.rmdir()
        raise


def _run_somewhere(
    request: RunRequest,
    outputs: list[Path],
    use_service: bool,
    timeout: float | None,
    on_progress: Callable[[float, str], None] | None,
) -> RunOutcome:
    client = _discover() if use_service else None
    if client is not None:
        try:
            _run_on_service(client, request, outputs, timeout, on_progress)
            return RunOutcome(outputs, "service")
        except _ServiceGone as gone:
            log.warning("the OncoAI service went away (%s); running here", gone)
    _run_locally(request, outputs, on_progress)
    return RunOutcome(outputs, "local")


class _ServiceGone(Exception):
    """The service stopped answering; the job can run locally instead."""


def _discover() -> Any:
    try:
        from qupath_bridge.client import ServiceClient
    except ImportError:
        log.info("the service client is not installed; running locally")
        return None
    return ServiceClient.discover()


def _run_on_service(
    client: Any,
    request: RunRequest,
    outputs: list[Path],
    timeout: float | None,
    on_progress: Callable[[float, str], None] | None,
) -> None:
    from qupath_bridge.client import ServiceError

    try:
        job = client.submit(
            str(Path(request.image).expanduser().resolve()),
            request.model,
            params=request.params or None,
            outputs=[str(p) for p in outputs],
            region=list(request.region) if request.region else None,
        )
        log.info("service job %s for %s", job, request.image)

        def report(status: Mapping[str, Any]) -> None:
            if on_progress is not None:
                on_progress(
                    float(status.get("progress") or 0.0), status.get("message", "")
                )

        try:
            status = client.wait(job, timeout=timeout, on_progress=report, poll=0.05)
        except TimeoutError as err:
            client.cancel(job)
            raise OncoAIError(
                f"the OncoAI job did not finish within {timeout:g} s and was "
                "cancelled; use a longer timeout or a smaller image."
            ) from err
    except ServiceError as err:
        if err.status is None:
            raise _ServiceGone(str(err)) from err
        raise OncoAIError(one_line(err)) from err

    if status.get("state") != "done":
        raise OncoAIError(
            status.get("error") or f"the OncoAI job ended {status.get('state')}"
        )
    missing = [str(p) for p in outputs if not p.exists()]
    if missing:
        raise OncoAIError(
            f"the OncoAI service finished but did not write {', '.join(missing)}; "
            "is it running with the Fiji bridge installed (`pip install -e .`)?"
        )


def _run_locally(
    request: RunRequest,
    outputs: list[Path],
    on_progress: Callable[[float, str], None] | None,
) -> None:
    from model_zoo.outputs import write_result
    from model_zoo.prediction import PredictionJob

    config = _config(request)
    image, offset = _input(request)
    job = PredictionJob(config, image, offset=offset)
    for step in job.run():
        if on_progress is not None and step.total:
            on_progress(step.done / step.total, step.message)
    assert job.result is not None
    written: list[Path] = []
    try:
        for path in outputs:
            written.append(write_result(job.result, path))
    except BaseException:
        # All the outputs or none: a RoiSet without its label image would
        # mislead whoever opens the folder next.
        for path in written:
            path.unlink(missing_ok=True)
            path.with_name(path.name + ".oncoai.json").unlink(missing_ok=True)
        raise


def _config(request: RunRequest) -> Any:
    from pydantic import ValidationError

    from model_zoo.config import PredictionConfig

    try:
        return PredictionConfig(model=request.model, **request.params)
    except ValidationError as err:
        first = err.errors()[0]
        name = ".".join(str(p) for p in first["loc"])
        raise OncoAIError(
            f"invalid parameter {name}={first.get('input')!r}: {first['msg']}; see "
            "`oncoai predict --help` for the parameters."
        ) from err


def _input(request: RunRequest) -> tuple[Any, tuple[float, float]]:
    if request.region is None:
        return request.image, (0.0, 0.0)
    from model_zoo.images import ImageData, read_image

    image = read_image(request.image, request.params.get("axes"))
    x, y, width, height = request.region
    full_h, full_w = image.size("Y"), image.size("X")
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + width, full_w), min(y + height, full_h)
    if x1 <= x0 or y1 <= y0:
        raise OncoAIError(
            f"the region {list(request.region)} lies outside the {full_w}x{full_h} "
            "image; draw the ROI on the image itself."
        )
    index = tuple(
        slice(y0, y1) if a == "Y" else slice(x0, x1) if a == "X" else slice(None)
        for a in image.axes
    )
    cut = ImageData(
        image.array[index],
        image.axes,
        image.pixel_size,
        image.channel_names,
        image.path,
        image.name,
        dict(image.metadata),
    )
    return cut, (float(x0), float(y0))


def _typed(value: str) -> Any:
    lowered = value.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null", ""):
        return None
    try:
        return json.loads(value) if value[0] in "-0123456789" else value
    except ValueError:
        return value


def _stem(path: Path) -> str:
    name = Path(path).name
    for ending in (".ome.tiff", ".ome.tif", ".ome.zarr"):
        if name.lower().endswith(ending):
            return name[: -len(ending)]
    return Path(name).stem
