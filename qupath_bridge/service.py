"""The local OncoAI service: QuPath, Fiji and scripts send it work over HTTP.

``oncoai serve`` starts a Starlette application under uvicorn, bound to
127.0.0.1.  Jobs run one at a time per device, first in first out, in a worker
thread that keeps the model loaded between jobs.

Security: the service binds to the loopback interface only, unless
``--allow-remote`` is given; every request except ``GET /health`` must carry
``Authorization: Bearer <token>``, where the token is a random string written to
a file only the user can read.  Request bodies are limited in size, image and
output paths are checked before a job is queued, and only Host headers naming the
loopback interface are accepted (against DNS rebinding from a web page).

Endpoints
---------
``GET /health``
    ``{"status": "ok", "version": ...}``, without a token.
``GET /models``
    The starter models and the models in the cache.
``POST /jobs``
    ``{"image", "model", "params", "region", "annotation", "outputs",
    "cell_expansion"}``; answers 202 with the job id.
``GET /jobs`` and ``GET /jobs/{id}``
    State, progress (0 to 1), message, outputs and error.
``DELETE /jobs/{id}``
    Cancels a queued or running job.
``GET /jobs/{id}/result``
    The objects as a QuPath GeoJSON FeatureCollection (409 until done).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import secrets
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model_zoo.errors import CancelledError, OncoAIError, one_line
from qupath_bridge.client import SERVICE_FILE, TOKEN_FILE, config_dir

log = logging.getLogger(__name__)

DEFAULT_PORT = 8765
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
MAX_BODY_BYTES = 8 * 1024 * 1024
"""Largest request body; a detailed annotation outline is well under 1 MiB."""
MAX_WAITING = 256
"""Jobs that may wait in the queues at once; more get 503."""
KEEP_FINISHED = 256
"""Finished jobs kept for ``GET /jobs/{id}``; the oldest are forgotten."""
KEEP_RESULTS = 16
"""Finished jobs whose GeoJSON is kept in memory; older results expire."""


# --------------------------------------------------------------------------
# Jobs
# --------------------------------------------------------------------------


@dataclass
class JobRequest:
    """A validated ``POST /jobs`` body.

    Attributes
    ----------
    image : Path
        An existing, readable image.
    model : str
        The model as the user named it.
    params : dict
        Further ``PredictionConfig`` fields.
    region : tuple of int or None
        ``(x, y, width, height)`` in level-0 pixels, clipped to the image.
    annotation : QuPathObject or None
        The annotation to run inside.
    outputs : list of Path
        Files to write when the job is done.
    cell_expansion : float
        Pixels to grow nuclei into cells; 0 for nuclei only.
    """

    image: Path
    model: str
    params: dict[str, Any] = field(default_factory=dict)
    region: tuple[int, int, int, int] | None = None
    annotation: Any = None
    outputs: list[Path] = field(default_factory=list)
    cell_expansion: float = 0.0
    device: str = "cpu"
    """The concrete device (``auto`` resolved); one job at a time runs on each."""


@dataclass
class Job:
    """One queued, running or finished job."""

    request: JobRequest
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    state: str = "queued"
    progress: float = 0.0
    message: str = "waiting in the queue"
    error: str | None = None
    created: float = field(default_factory=time.time)
    finished: float | None = None
    result: dict[str, Any] | None = None
    cancel_event: threading.Event = field(default_factory=threading.Event)
    objects: int | None = None
    expired: bool = False
    _cancel_hooks: list[Callable[[], None]] = field(default_factory=list)

    def on_cancel(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` when the job is cancelled (at once if it already is)."""
        self._cancel_hooks.append(hook)
        if self.cancel_event.is_set():
            hook()

    def as_json(self) -> dict[str, Any]:
        """The job's status as the API returns it."""
        return {
            "id": self.id,
            "state": self.state,
            "progress": round(self.progress, 4),
            "message": self.message,
            "image": str(self.request.image),
            "model": self.request.model,
            "outputs": [str(p) for p in self.request.outputs],
            "objects": self.objects,
            "error": self.error,
        }


Execute = Callable[[Job], Iterator[tuple[float, str]]]
"""Runs a job: yields ``(fraction done, message)``, sets ``job.result``."""


class JobQueue:
    """First-in-first-out queues of jobs, one worker thread per device.

    Parameters
    ----------
    execute : callable
        Runs one job; :func:`run_prediction` by default.
    """

    def __init__(self, execute: Execute | None = None) -> None:
        self._execute = execute or run_prediction
        self._lock = threading.Lock()
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._queues: dict[str, queue.Queue[Job | None]] = {}
        self._threads: list[threading.Thread] = []
        self._closed = False

    def submit(self, request: JobRequest) -> Job:
        """Queue a job; raises OncoAIError when too many are waiting."""
        job = Job(request)
        with self._lock:
            if self._closed:
                raise OncoAIError("the service is shutting down; try again later")
            waiting = sum(1 for j in self._jobs.values() if j.state == "queued")
            if waiting >= MAX_WAITING:
                raise QueueFullError(
                    f"{waiting} jobs are already waiting; wait for some to finish "
                    "or cancel them"
                )
            self._jobs[job.id] = job
            self._forget_old()
            self._queue_for(request.device).put(job)
        log.info("job %s queued: %s on %s", job.id, request.model, request.image)
        return job

    def _queue_for(self, device: str) -> queue.Queue[Job | None]:
        if device not in self._queues:
            jobs: queue.Queue[Job | None] = queue.Queue()
            thread = threading.Thread(
                target=self._work,
                args=(device, jobs),
                name=f"oncoai-{device}",
                daemon=True,
            )
            self._queues[device] = jobs
            self._threads.append(thread)
            thread.start()
        return self._queues[device]

    def _forget_old(self) -> None:
        finished = [j for j in self._jobs.values() if j.finished is not None]
        for job in finished[: max(0, len(finished) - KEEP_FINISHED)]:
            del self._jobs[job.id]
        # Whole-slide results can be large: only the newest stay in memory.
        kept = [j for j in finished if j.result is not None]
        for job in kept[: max(0, len(kept) - KEEP_RESULTS)]:
            job.result = None
            job.expired = True

    def get(self, job_id: str) -> Job | None:
        """The job with this id, or None."""
        with self._lock:
            return self._jobs.get(job_id)

    def jobs(self) -> list[Job]:
        """All known jobs, oldest first."""
        with self._lock:
            return list(self._jobs.values())

    def cancel(self, job_id: str) -> Job | None:
        """Cancel a job: at once when queued, before its next tile when running."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.state in ("done", "failed", "cancelled"):
                return job
            job.cancel_event.set()
            hooks = list(job._cancel_hooks)
            if job.state == "queued":
                self._finish(job, "cancelled", "cancelled before it started")
            else:
                job.message = "cancelling"
        for hook in hooks:
            hook()
        return job

    def _finish(self, job: Job, state: str, message: str) -> None:
        job.state = state
        job.message = message
        job.finished = time.time()
        self._forget_old()

    def _work(self, device: str, jobs: queue.Queue[Job | None]) -> None:
        while True:
            job = jobs.get()
            if job is None:
                return
            with self._lock:
                if job.state != "queued":
                    continue
                job.state = "running"
                job.message = "starting"
            self._run(job)

    def _run(self, job: Job) -> None:
        try:
            for fraction, message in self._execute(job):
                with self._lock:
                    job.progress = max(job.progress, min(1.0, float(fraction)))
                    if not job.cancel_event.is_set():
                        job.message = message
                if job.cancel_event.is_set():
                    raise CancelledError("cancelled")
        except CancelledError:
            with self._lock:
                self._finish(job, "cancelled", "cancelled while running")
            log.info("job %s cancelled", job.id)
            return
        except OncoAIError as exc:
            with self._lock:
                job.error = one_line(exc)
                self._finish(job, "failed", "failed")
            log.warning("job %s failed: %s", job.id, job.error)
            return
        except Exception as exc:  # noqa: BLE001
            # The worker must survive any failure so that later jobs still run.
            log.exception("job %s crashed", job.id)
            with self._lock:
                job.error = f"internal error: {type(exc).__name__}: {one_line(exc)}"
                self._finish(job, "failed", "failed")
            return
        with self._lock:
            job.progress = 1.0
            found = f": {job.objects} objects" if job.objects is not None else ""
            self._finish(job, "done", "done" + found)
        log.info("job %s done", job.id)

    def close(self) -> None:
        """Cancel every job and stop the workers."""
        with self._lock:
            self._closed = True
            pending = [j for j in self._jobs.values() if j.finished is None]
        for job in pending:
            self.cancel(job.id)
        for jobs in self._queues.values():
            jobs.put(None)
        for thread in self._threads:
            thread.join(timeout=10)


class QueueFullError(OncoAIError):
    """Too many jobs are waiting."""


# --------------------------------------------------------------------------
# Validating requests
# --------------------------------------------------------------------------


class RequestError(OncoAIError):
    """A request the service refuses, with the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


_BODY_KEYS = {
    "image",
    "model",
    "params",
    "region",
    "annotation",
    "outputs",
    "cell_expansion",
}


def parse_job_request(body: Any) -> JobRequest:
    """Check a ``POST /jobs`` body and turn it into a :class:`JobRequest`.

    Raises
    ------
    RequestError
        400 for a bad body, path or parameter; 404 for an unknown model.
    """
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    unknown = sorted(set(body) - _BODY_KEYS)
    if unknown:
        raise RequestError(
            f"unknown field(s) {', '.join(unknown)}; known fields are "
            f"{', '.join(sorted(_BODY_KEYS))}"
        )
    image = _check_image(body.get("image"))
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise RequestError('"model" must name a model, e.g. "oncoai-nuclei"')
    params = body.get("params") or {}
    _check_params(model, params)
    _check_model(model)
    width, height = _image_size(image)
    annotation = _check_annotation(body.get("annotation"))
    region = _check_region(body.get("region"), width, height)
    if annotation is not None:
        x0, y0, x1, y1 = annotation.geometry.bounds
        _check_region([x0, y0, x1 - x0, y1 - y0], width, height)
    return JobRequest(
        image=image,
        model=model,
        params=dict(params),
        region=region,
        annotation=annotation,
        outputs=_check_outputs(body.get("outputs")),
        cell_expansion=_check_expansion(body.get("cell_expansion")),
        device=_check_device(params.get("device", "auto")),
    )


def _check_image(value: Any) -> Path:
    from qupath_bridge.project import uri_to_path

    if not isinstance(value, str) or not value:
        raise RequestError('"image" must be the path of an image file')
    text = value
    if value.lower().startswith("file:"):
        local = uri_to_path(value)
        if local is None:
            raise RequestError(f"cannot read the image URI {value!r} as a local path")
        text = str(local)
    path = Path(text).expanduser()
    if not path.is_absolute():
        raise RequestError(
            f"image path must be absolute; got {value!r}. The service does not "
            "know the caller's working folder"
        )
    if not path.exists():
        raise RequestError(f"image not found: {value!r}; check the path")
    if not os.access(path, os.R_OK):
        raise RequestError(f"image is not readable: {value!r}; check its permissions")
    return path


def _image_size(path: Path) -> tuple[int, int]:
    from model_zoo.images import read_image

    try:
        image = read_image(path)
    except OncoAIError as exc:
        raise RequestError(one_line(exc)) from exc
    return image.size("X"), image.size("Y")


def _check_params(model: str, params: Any) -> None:
    from pydantic import ValidationError

    from model_zoo.config import PredictionConfig

    if not isinstance(params, dict):
        raise RequestError('"params" must be an object of PredictionConfig fields')
    if "model" in params:
        raise RequestError('give the model as "model", not inside "params"')
    try:
        PredictionConfig(model=model, **params)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise RequestError(
            f"bad parameter {where or 'params'}: {first.get('msg')} (got "
            f"{first.get('input')!r})"
        ) from exc


def _check_model(model: str) -> None:
    from model_zoo.model import locate_rdf

    try:
        locate_rdf(model)
    except OncoAIError as exc:
        raise RequestError(f"unknown model {model!r}: {one_line(exc)}", 404) from exc


def _check_annotation(value: Any) -> Any:
    from qupath_bridge.geojson import read_geojson, regions_from_objects

    if value is None:
        return None
    try:
        regions = regions_from_objects(read_geojson(value))
    except OncoAIError as exc:
        raise RequestError(f'bad "annotation": {one_line(exc)}') from exc
    if len(regions) != 1:
        raise RequestError(
            f'"annotation" must hold exactly one area (Polygon or MultiPolygon); got '
            f"{len(regions)}. Send one job per annotation"
        )
    return regions[0]


def _check_region(
    value: Any, width: int, height: int
) -> tuple[int, int, int, int] | None:
    from qupath_bridge.runner import clip_box

    if value is None:
        return None
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 4
        or not all(isinstance(v, (int, float)) for v in value)
    ):
        raise RequestError(f'"region" must be [x, y, width, height]; got {value!r}')
    try:
        return clip_box(*(float(v) for v in value), (width, height))
    except OncoAIError as exc:
        raise RequestError(one_line(exc)) from exc


def _check_outputs(value: Any) -> list[Path]:
    from model_zoo.plugins import get_registry

    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RequestError('"outputs" must be a list of file paths')
    registry = get_registry()
    outputs = []
    for text in value:
        path = Path(text).expanduser()
        if not path.is_absolute():
            raise RequestError(f"output path must be absolute; got {text!r}")
        if not path.parent.is_dir() or not os.access(path.parent, os.W_OK):
            raise RequestError(
                f"cannot write {text!r}: its folder does not exist or is not writable"
            )
        if path.name.lower().endswith((".geojson", ".geojson.gz")):
            outputs.append(path)
            continue
        if registry.writer_for(path) is None:
            known = ", ".join(sorted(registry.writers))
            raise RequestError(
                f"no writer for {path.name!r}; output names must end in one of {known}"
            )
        outputs.append(path)
    return outputs


def _check_device(device: str) -> str:
    from model_zoo.model import resolve_device

    try:
        resolved = resolve_device(device)
    except OncoAIError as exc:
        raise RequestError(one_line(exc)) from exc
    return "cuda:0" if resolved == "cuda" else resolved


def _check_expansion(value: Any) -> float:
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise RequestError(
            f'"cell_expansion" must be a distance >= 0 in pixels; got {value!r}'
        )
    return float(value)


# --------------------------------------------------------------------------
# Running a job
# --------------------------------------------------------------------------


def run_prediction(job: Job) -> Iterator[tuple[float, str]]:
    """Run one job for real: read, crop, predict, outline, write.

    Yields
    ------
    tuple of float and str
        Fraction done and a message, for the job's progress.
    """
    from model_zoo.config import PredictionConfig
    from model_zoo.images import read_image
    from qupath_bridge.geojson import feature_collection
    from qupath_bridge.runner import RegionPrediction

    request = job.request
    config = PredictionConfig(model=request.model, **request.params)
    prediction = RegionPrediction(
        config,
        read_image(request.image),
        annotation=request.annotation,
        box=request.region if request.annotation is None else None,
        cell_expansion=request.cell_expansion,
    )
    job.on_cancel(prediction.cancel)
    share = 0.95 if request.outputs else 1.0
    for fraction, message in prediction.run():
        yield share * fraction, message
    features = prediction.features or []
    job.objects = len(features[0]["properties"].get("childObjects", []))
    job.result = feature_collection(features)
    if request.outputs:
        yield 0.97, "writing outputs"
        write_outputs(prediction.result, job.result, request.outputs)
    yield 1.0, f"{job.objects} objects"


def write_outputs(result: Any, collection: dict[str, Any], outputs: list[Path]) -> None:
    """Write a finished job's outputs; GeoJSON as the service returns it."""
    from qupath_bridge.geojson import write_geojson

    for path in outputs:
        if path.name.lower().endswith((".geojson", ".geojson.gz")):
            write_geojson(collection, path)
        else:
            from model_zoo.outputs import write_result

            write_result(result, path)


# --------------------------------------------------------------------------
# The web application
# --------------------------------------------------------------------------


def _error(status: int, message: str) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status)


class TokenMiddleware:
    """Answer 401 to every request but ``GET /health`` without the right token."""

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self._expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or (
            scope["path"] == "/health" and scope["method"] in ("GET", "HEAD")
        ):
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"authorization", b"")
        if not secrets.compare_digest(given, self._expected):
            from starlette.responses import JSONResponse

            response = JSONResponse(
                {
                    "error": "missing or wrong token; send 'Authorization: Bearer "
                    "<token>' with the token from the service's token file"
                },
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


async def _read_json(request: Any, limit: int) -> Any:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise RequestError(
            f"request body of {int(length)} bytes is over the {limit}-byte limit; "
            "send a simpler annotation",
            413,
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(
                f"request body is over the {limit}-byte limit; send a simpler "
                "annotation",
                413,
            )
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise RequestError(f"the request body is not valid JSON ({exc})") from exc


def create_app(
    token: str,
    jobs: JobQueue | None = None,
    *,
    max_body: int = MAX_BODY_BYTES,
    allow_remote: bool = False,
) -> Any:
    """Build the service's ASGI application.

    Parameters
    ----------
    token : str
        The bearer token every request but ``GET /health`` must carry.
    jobs : JobQueue, optional
        Runs the jobs; a new one running real predictions by default.
    max_body : int
        Largest request body in bytes; larger ones get 413.
    allow_remote : bool
        Accept any Host header; otherwise only loopback names.

    Returns
    -------
    starlette.applications.Starlette
        The application; ``app.state.jobs`` is the job queue.
    """
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from model_zoo import __version__

    jobs = jobs or JobQueue()

    async def health(request: Any) -> Any:
        return JSONResponse({"status": "ok", "version": __version__})

    async def models(request: Any) -> Any:
        return JSONResponse(await run_in_threadpool(list_available_models))

    async def submit(request: Any) -> Any:
        try:
            body = await _read_json(request, max_body)
            parsed = await run_in_threadpool(parse_job_request, body)
            job = jobs.submit(parsed)
        except QueueFullError as exc:
            return _error(503, one_line(exc))
        except RequestError as exc:
            return _error(exc.status, one_line(exc))
        except OncoAIError as exc:
            return _error(400, one_line(exc))
        return JSONResponse(job.as_json(), status_code=202)

    async def list_jobs(request: Any) -> Any:
        return JSONResponse([job.as_json() for job in jobs.jobs()])

    def _job_or_404(request: Any) -> Any:
        job_id = request.path_params["job_id"]
        job = jobs.get(job_id)
        if job is None:
            return None, _error(404, f"no job {job_id!r}; it never existed or expired")
        return job, None

    async def status(request: Any) -> Any:
        job, missing = _job_or_404(request)
        return missing or JSONResponse(job.as_json())

    async def cancel(request: Any) -> Any:
        job, missing = _job_or_404(request)
        if missing:
            return missing
        jobs.cancel(job.id)
        return JSONResponse(job.as_json())

    async def result(request: Any) -> Any:
        job, missing = _job_or_404(request)
        if missing:
            return missing
        if job.expired:
            return _error(
                410,
                f"the result of job {job.id} expired; only the newest "
                f"{KEEP_RESULTS} results are kept. Run the job again",
            )
        if job.state != "done" or job.result is None:
            reason = f": {job.error}" if job.error else ""
            return _error(409, f"job {job.id} is {job.state}{reason}; no result yet")
        return JSONResponse(job.result)

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/models", models, methods=["GET"]),
        Route("/jobs", submit, methods=["POST"]),
        Route("/jobs", list_jobs, methods=["GET"]),
        Route("/jobs/{job_id}", status, methods=["GET"]),
        Route("/jobs/{job_id}", cancel, methods=["DELETE"]),
        Route("/jobs/{job_id}/result", result, methods=["GET"]),
    ]
    hosts = ["*"] if allow_remote else ["127.0.0.1", "localhost", "::1", "[::1]"]
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(TrustedHostMiddleware, allowed_hosts=hosts),
            Middleware(TokenMiddleware, token=token),
        ],
    )
    app.state.jobs = jobs
    return app


def list_available_models() -> list[dict[str, Any]]:
    """The starter models and the models installed in the cache."""
    from model_zoo.cache import list_models
    from model_zoo.starter import STARTER_MODELS

    found = [{"id": name, "name": name, "source": "starter"} for name in STARTER_MODELS]
    for model in list_models():
        found.append(
            {
                "id": model.id,
                "nickname": model.nickname,
                "name": model.name,
                "source": "cache",
            }
        )
    return found


# --------------------------------------------------------------------------
# Starting and stopping
# --------------------------------------------------------------------------


def check_host(host: str, allow_remote: bool) -> None:
    """Refuse a non-loopback address unless remote access is explicitly allowed."""
    if host in LOOPBACK_HOSTS:
        return
    if not allow_remote:
        raise OncoAIError(
            f"refusing to listen on {host!r}: the service binds to 127.0.0.1 only, "
            "so that no other machine can reach it. Add --allow-remote to listen "
            "on other addresses (anyone who gets the token can then run models)"
        )
    log.warning(
        "listening on %s: other machines can reach this service; keep the token "
        "secret and use a firewall",
        host,
    )


def bind(host: str, port: int) -> socket.socket:
    """Open the listening socket, with a clear error when the port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    if os.name != "nt":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OncoAIError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}); is OncoAI "
            "already serving? Stop it, or pick another port with --port"
        ) from exc
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def write_private(path: Path, text: str) -> None:
    """Write a file only the user can read or write (mode 0600), atomically."""
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.chmod(temp, 0o600)
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def write_service_files(url: str, folder: Path | None = None) -> tuple[str, Path]:
    """Create a new token and ``service.json``; return the token and the folder."""
    from model_zoo import __version__

    folder = folder or config_dir()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    token = secrets.token_urlsafe(32)
    write_private(folder / TOKEN_FILE, token + "\n")
    info = {"url": url, "pid": os.getpid(), "version": __version__}
    write_private(folder / SERVICE_FILE, json.dumps(info, indent=2) + "\n")
    return token, folder


def remove_service_files(folder: Path) -> None:
    """Remove the token and ``service.json`` if this process wrote them."""
    info_path = folder / SERVICE_FILE
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if info.get("pid") != os.getpid():
        return
    info_path.unlink(missing_ok=True)
    (folder / TOKEN_FILE).unlink(missing_ok=True)


def serve(
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    *,
    allow_remote: bool = False,
    announce: Callable[[str], None] | None = None,
) -> int:
    """Run the service until interrupted (Ctrl+C or SIGTERM).

    Parameters
    ----------
    host : str
        The address to listen on; only loopback unless ``allow_remote``.
    port : int
        The TCP port; 0 picks a free one.
    allow_remote : bool
        Allow a non-loopback ``host``.
    announce : callable, optional
        Shows the user where the service listens and when it stops; logs by
        default.

    Returns
    -------
    int
        The exit code, 0 after a clean shutdown.
    """
    import uvicorn

    check_host(host, allow_remote)
    sock = bind(host, port)
    bound_port = sock.getsockname()[1]
    # Clients on this machine reach an all-interfaces bind through loopback.
    local = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
    shown = f"[{local}]" if ":" in local else local
    url = f"http://{shown}:{bound_port}"
    token, folder = write_service_files(url)
    jobs = JobQueue()
    app = create_app(token, jobs, allow_remote=allow_remote)
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    )
    say = announce or log.warning
    say(f"OncoAI service listening on {url}; token in {folder / TOKEN_FILE}")
    stop_on_sigterm()
    try:
        server.run(sockets=[sock])
    except (KeyboardInterrupt, ServiceStopped):
        # uvicorn shut down cleanly, then re-raised the signal that stopped it.
        pass
    finally:
        jobs.close()
        remove_service_files(folder)
        sock.close()
    say("OncoAI service stopped")
    return 0


class ServiceStopped(BaseException):
    """Raised by SIGTERM once uvicorn has shut down, so that clean-up runs."""


def stop_on_sigterm() -> None:
    """Turn SIGTERM into :class:`ServiceStopped` (main thread only)."""
    import signal

    if threading.current_thread() is not threading.main_thread():
        return

    def stop(signum: int, frame: Any) -> None:
        raise ServiceStopped()

    signal.signal(signal.SIGTERM, stop)


def configure(parser: argparse.ArgumentParser) -> None:
    """Add ``oncoai serve``'s options."""
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"TCP port (default {DEFAULT_PORT}; 0 picks a free one)",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1; others need --allow-remote)",
    )
    parser.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow listening on a non-loopback address (not recommended)",
    )


def run(args: argparse.Namespace) -> int:
    """``oncoai serve``."""
    if not 0 <= args.port <= 65535:
        raise OncoAIError(f"--port must be 0-65535; got {args.port}")

    def announce(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    return serve(
        args.host, args.port, allow_remote=args.allow_remote, announce=announce
    )
