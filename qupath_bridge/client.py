"""A small client for the local OncoAI service, on the standard library only.

Hosts that run their own Python (Fiji through PyImageJ, notebooks, other tools)
use it to send work to ``oncoai serve`` without importing torch or the engine.

Examples
--------
>>> from qupath_bridge.client import ServiceClient
>>> client = ServiceClient.discover()  # doctest: +SKIP
>>> job = client.submit("/data/slide.tif", "oncoai-nuclei")  # doctest: +SKIP
>>> client.wait(job)["state"]  # doctest: +SKIP
'done'
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

APP_NAME = "oncoai"
TOKEN_FILE = "token"
SERVICE_FILE = "service.json"
FINAL_STATES = ("done", "failed", "cancelled")


def config_dir() -> Path:
    """Where the service writes its token and ``service.json``.

    ``$ONCOAI_CONFIG_DIR`` when set, else the user's configuration folder for
    ``oncoai`` as ``platformdirs.user_config_dir`` gives it (``~/.config/oncoai``
    on Linux, ``~/Library/Application Support/oncoai`` on macOS,
    ``%LOCALAPPDATA%\\oncoai\\oncoai`` on Windows).
    """
    override = os.environ.get("ONCOAI_CONFIG_DIR")
    if override:
        return Path(override).expanduser()
    try:
        import platformdirs
    except ImportError:
        return _fallback_config_dir()
    return Path(platformdirs.user_config_dir(APP_NAME))


def _fallback_config_dir() -> Path:
    # The same folders as platformdirs, for Pythons that lack it.
    home = Path.home()
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(home / "AppData" / "Local")
        return Path(base) / APP_NAME / APP_NAME
    if sys.platform == "darwin":
        return home / "Library" / "Application Support" / APP_NAME
    base = os.environ.get("XDG_CONFIG_HOME") or str(home / ".config")
    return Path(base) / APP_NAME


class ServiceError(RuntimeError):
    """The service refused a request or could not be reached.

    Attributes
    ----------
    status : int or None
        The HTTP status, or None when the service did not answer.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ServiceClient:
    """Talk to a running ``oncoai serve``.

    Parameters
    ----------
    url : str
        E.g. ``http://127.0.0.1:8765``.
    token : str
        The bearer token from the service's token file.
    timeout : float
        Seconds to wait for each HTTP answer.
    """

    def __init__(self, url: str, token: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    @classmethod
    def discover(cls, folder: str | Path | None = None) -> ServiceClient | None:
        """Find the running service from its ``service.json`` and token file.

        Parameters
        ----------
        folder : str or Path, optional
            The configuration folder; :func:`config_dir` by default.

        Returns
        -------
        ServiceClient or None
            None when no service has written its files or it does not answer.
        """
        folder = Path(folder) if folder is not None else config_dir()
        try:
            info = json.loads((folder / SERVICE_FILE).read_text(encoding="utf-8"))
            token = (folder / TOKEN_FILE).read_text(encoding="utf-8").strip()
            client = cls(str(info["url"]), token, timeout=5.0)
            client.health()
        except (OSError, ValueError, KeyError, TypeError, ServiceError) as exc:
            log.info("no OncoAI service found in %s: %s", folder, exc)
            return None
        client.timeout = 30.0
        return client

    def _request(
        self, method: str, path: str, body: Any = None, auth: bool = True
    ) -> Any:
        data = None
        headers = {"Accept": "application/json"}
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        if auth:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers=headers
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read().decode("utf-8") or "null")
        except urllib.error.HTTPError as exc:
            raise ServiceError(_error_text(exc), exc.code) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ServiceError(
                f"the OncoAI service at {self.url} did not answer ({reason}); start "
                "it with `oncoai serve`"
            ) from None

    def health(self) -> dict[str, Any]:
        """``GET /health``: the service's status and version."""
        return self._request("GET", "/health", auth=False)

    def models(self) -> list[dict[str, Any]]:
        """``GET /models``: the starter and cached models."""
        return self._request("GET", "/models")

    def submit(
        self,
        image: str | Path,
        model: str,
        params: Mapping[str, Any] | None = None,
        outputs: Sequence[str | Path] | None = None,
        region: Sequence[float] | None = None,
        annotation: Any = None,
        cell_expansion: float | None = None,
    ) -> str:
        """Queue a prediction and return its job id.

        Parameters
        ----------
        image : str or Path
            The image file on the machine the service runs on.
        model : str
            A model id, nickname, folder or zip.
        params : mapping, optional
            Further :class:`~model_zoo.config.PredictionConfig` fields, e.g.
            ``{"channel": 0, "threshold": 0.5}``.
        outputs : sequence of path, optional
            Files the service writes when the job is done (by suffix).
        region : sequence of float, optional
            ``[x, y, width, height]`` in level-0 pixels.
        annotation : dict, optional
            A GeoJSON Feature or geometry to run inside.
        cell_expansion : float, optional
            Grow nuclei by this many pixels into cells.

        Returns
        -------
        str
            The job id.
        """
        body: dict[str, Any] = {"image": str(image), "model": model}
        if params:
            body["params"] = dict(params)
        if outputs:
            body["outputs"] = [str(p) for p in outputs]
        if region is not None:
            body["region"] = [float(v) for v in region]
        if annotation is not None:
            body["annotation"] = annotation
        if cell_expansion:
            body["cell_expansion"] = float(cell_expansion)
        return str(self._request("POST", "/jobs", body)["id"])

    def status(self, job_id: str) -> dict[str, Any]:
        """``GET /jobs/{id}``: state, progress (0..1), message, error."""
        return self._request("GET", f"/jobs/{job_id}")

    def cancel(self, job_id: str) -> dict[str, Any]:
        """``DELETE /jobs/{id}``: cancel a queued or running job."""
        return self._request("DELETE", f"/jobs/{job_id}")

    def result(self, job_id: str) -> dict[str, Any]:
        """``GET /jobs/{id}/result``: the objects as a QuPath FeatureCollection."""
        return self._request("GET", f"/jobs/{job_id}/result")

    def wait(
        self,
        job_id: str,
        timeout: float | None = None,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        poll: float = 0.25,
    ) -> dict[str, Any]:
        """Poll a job until it is done, failed or cancelled.

        Parameters
        ----------
        job_id : str
        timeout : float, optional
            Give up after this many seconds (the job keeps running).
        on_progress : callable, optional
            Called with each status.
        poll : float
            Seconds between polls.

        Returns
        -------
        dict
            The final status.

        Raises
        ------
        TimeoutError
            When ``timeout`` passes first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.status(job_id)
            if on_progress is not None:
                on_progress(status)
            if status.get("state") in FINAL_STATES:
                return status
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(
                    f"OncoAI job {job_id} still {status.get('state')} after {timeout} s"
                )
            time.sleep(poll)


def _error_text(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read().decode("utf-8"))
        return str(body.get("error") or body)
    except (ValueError, AttributeError, OSError):
        return f"HTTP {exc.code} {exc.reason}"
