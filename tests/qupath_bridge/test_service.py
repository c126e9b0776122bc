"""The local service, exercised over real HTTP against a real ``oncoai serve``."""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import tifffile
from shapely.geometry import Polygon, shape

from qupath_bridge.client import ServiceClient, ServiceError
from qupath_bridge.geojson import detections_of, read_geojson
from qupath_bridge.service import MAX_BODY_BYTES, check_host

from .conftest import start_service, stop_service, wait_for_service

REGION = [0, 0, 96, 96]


@pytest.fixture(scope="module")
def image_path(shared_data: Path) -> str:
    return str(shared_data / "images" / "stardist_img2d.tif")


@pytest.fixture(scope="module")
def large_image(shared_data: Path, tmp_path_factory) -> str:
    """A 2048² mosaic of the StarDist image: a job that takes many tiles."""
    tile = tifffile.imread(shared_data / "images" / "stardist_img2d.tif")
    path = tmp_path_factory.mktemp("large") / "mosaic.tif"
    tifffile.imwrite(path, np.tile(tile, (4, 4)))
    return str(path)


@pytest.fixture(scope="module")
def model() -> str:
    """OncoAI's bundled nucleus model: real, and fast enough for 20 jobs."""
    return "oncoai-nuclei"


@pytest.fixture()
def http(service):
    with httpx.Client(base_url=service.url, timeout=60) as client:
        yield client


def wait(http, headers, job_id, timeout=300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = http.get(f"/jobs/{job_id}", headers=headers).json()
        if status["state"] in ("done", "failed", "cancelled"):
            return status
        time.sleep(0.2)
    pytest.fail(f"job {job_id} did not finish in {timeout} s")


def wait_until_running(http, headers, job_id, timeout=120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = http.get(f"/jobs/{job_id}", headers=headers).json()["state"]
        if state == "running":
            return
        assert state == "queued", f"job {job_id} is {state}"
        time.sleep(0.05)
    pytest.fail(f"job {job_id} did not start in {timeout} s")


def test_token_is_enforced_and_kept_private(service, http):
    assert http.get("/health").json()["status"] == "ok"
    for path in ("/models", "/jobs", "/jobs/abc", "/jobs/abc/result"):
        assert http.get(path).status_code == 401
        wrong = http.get(path, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert "token" in wrong.json()["error"]
    assert http.post("/jobs", json={}).status_code == 401
    assert http.delete("/jobs/abc").status_code == 401

    models = http.get("/models", headers=service.headers)
    assert models.status_code == 200
    assert "oncoai-nuclei" in [m["id"] for m in models.json()]
    mode = stat.S_IMODE((service.folder / "token").stat().st_mode)
    assert mode == 0o600
    info = json.loads((service.folder / "service.json").read_text())
    assert info["url"] == service.url and info["url"].startswith("http://127.0.0.1:")
    assert info["pid"] == service.process.pid and info["version"]


def test_foreign_host_header_is_refused(service, http):
    response = http.get("/health", headers={"Host": "attacker.example"})
    assert response.status_code == 400


def test_a_job_runs_to_a_result_and_writes_outputs(
    service, http, image_path, model, tmp_path, check_geojson
):
    outputs = [str(tmp_path / "cells.geojson"), str(tmp_path / "cells_labels.tif")]
    body = {
        "image": image_path,
        "model": model,
        "params": {"device": "cpu"},
        "region": [0, 0, 256, 256],
        "outputs": outputs,
    }
    submitted = http.post("/jobs", json=body, headers=service.headers)
    assert submitted.status_code == 202, submitted.text
    job = submitted.json()
    assert job["state"] == "queued"
    early = http.get(f"/jobs/{job['id']}/result", headers=service.headers)
    if early.status_code != 200:  # unless it already finished
        assert early.status_code == 409 and "no result yet" in early.json()["error"]

    status = wait(http, service.headers, job["id"])
    assert status["state"] == "done", status
    assert status["progress"] == 1.0 and status["objects"] >= 5

    result = http.get(f"/jobs/{job['id']}/result", headers=service.headers)
    assert result.status_code == 200
    path = tmp_path / "result.geojson"
    path.write_bytes(result.content)
    check_geojson(path, "detection", min_features=5, size=(256, 256))
    region = read_geojson(path)[0].geometry
    assert region.bounds == (0.0, 0.0, 256.0, 256.0)
    assert json.loads(Path(outputs[0]).read_text()) == result.json()
    assert tifffile.imread(outputs[1]).shape == (256, 256)


def test_an_annotation_limits_the_objects(service, image_path, model):
    client = service.client()
    triangle = Polygon([(100, 100), (400, 130), (250, 420)])
    feature = {
        "type": "Feature",
        "geometry": triangle.__geo_interface__,
        "properties": {"objectType": "annotation"},
    }
    job = client.submit(image_path, model, params={"device": "cpu"}, annotation=feature)
    status = client.wait(job, timeout=300)
    assert status["state"] == "done", status

    objects = read_geojson(client.result(job))
    assert shape(objects[0].geometry.__geo_interface__).equals(triangle)
    found = detections_of(objects)
    assert len(found) >= 5
    assert all(triangle.contains(d.geometry.centroid) for d in found)


def test_cells_through_the_service(service, image_path, model):
    client = service.client()
    job = client.submit(
        image_path, model, params={"device": "cpu"}, region=REGION, cell_expansion=3
    )
    assert client.wait(job, timeout=300)["state"] == "done"
    kinds = {d.object_type for d in detections_of(read_geojson(client.result(job)))}
    assert kinds == {"cell"}


@pytest.mark.parametrize(
    ("change", "status", "message"),
    [
        ({"image": "/nonexistent/slide.tif"}, 400, "image not found"),
        ({"image": "relative/slide.tif"}, 400, "must be absolute"),
        ({"model": "no-such-model"}, 404, "unknown model 'no-such-model'"),
        ({"params": {"threshold": 2}}, 400, "bad parameter threshold"),
        ({"params": {"colour": "red"}}, 400, "bad parameter colour"),
        ({"region": [600, 600, 10, 10]}, 400, "lies outside the 512x512 image"),
        ({"region": [0, 0, 10]}, 400, "must be \\[x, y, width, height\\]"),
        ({"outputs": ["/tmp/x.docx"]}, 400, "no writer for 'x.docx'"),
        ({"outputs": ["/nonexistent/dir/x.geojson"]}, 400, "folder does not exist"),
        (
            {"annotation": {"type": "Point", "coordinates": [1, 2]}},
            400,
            "exactly one area",
        ),
        ({"cell_expansion": -1}, 400, "cell_expansion"),
        ({"colour": "red"}, 400, "unknown field"),
    ],
)
def test_bad_requests_get_a_clear_4xx(
    service, http, image_path, model, change, status, message
):
    body = {"image": image_path, "model": model, **change}
    response = http.post("/jobs", json=body, headers=service.headers)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert "\n" not in error
    assert re.search(message, error), error


def test_not_json_and_unknown_jobs(service, http):
    bad = http.post("/jobs", content=b"{oops", headers=service.headers)
    assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]
    assert http.get("/jobs/unknown", headers=service.headers).status_code == 404
    assert http.delete("/jobs/unknown", headers=service.headers).status_code == 404


def test_body_size_limit(service, http):
    big = b'{"image": "' + b"x" * (MAX_BODY_BYTES + 10) + b'"}'
    declared = http.post("/jobs", content=big, headers=service.headers)
    assert declared.status_code == 413

    def chunks():
        for start in range(0, len(big), 1 << 20):
            yield big[start : start + (1 << 20)]

    streamed = http.post("/jobs", content=chunks(), headers=service.headers)
    assert streamed.status_code == 413
    assert "limit" in streamed.json()["error"]


def test_cancel_running_and_queued_jobs(service, http, large_image, model):
    body = {
        "image": large_image,
        "model": model,
        "params": {"device": "cpu", "tile": 128},
    }
    running = http.post("/jobs", json=body, headers=service.headers).json()["id"]
    queued = http.post("/jobs", json=body, headers=service.headers).json()["id"]
    wait_until_running(http, service.headers, running)

    early = http.get(f"/jobs/{running}/result", headers=service.headers)
    assert early.status_code == 409
    answer = http.delete(f"/jobs/{queued}", headers=service.headers)
    assert answer.status_code == 200 and answer.json()["state"] == "cancelled"

    started = time.monotonic()
    http.delete(f"/jobs/{running}", headers=service.headers)
    status = wait(http, service.headers, running, timeout=120)
    assert status["state"] == "cancelled", status
    assert status["progress"] < 0.9
    assert time.monotonic() - started < 60
    late = http.get(f"/jobs/{running}/result", headers=service.headers)
    assert late.status_code == 409 and "cancelled" in late.json()["error"]


def test_twenty_concurrent_submissions_all_finish(service, image_path, model):
    body = {
        "image": image_path,
        "model": model,
        "params": {"device": "cpu"},
        "region": REGION,
    }

    def submit(_):
        with httpx.Client(base_url=service.url, timeout=120) as client:
            return client.post("/jobs", json=body, headers=service.headers)

    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(submit, range(20)))
    assert [a.status_code for a in answers] == [202] * 20
    ids = [a.json()["id"] for a in answers]
    assert len(set(ids)) == 20

    client = service.client()
    finals = [client.wait(i, timeout=600) for i in ids]
    assert [f["state"] for f in finals] == ["done"] * 20
    counts = {f["objects"] for f in finals}
    assert len(counts) == 1, "the same request must give the same objects"
    assert client.health()["status"] == "ok"


def test_client_reports_errors_and_missing_service(service, image_path, tmp_path):
    client = service.client()
    with pytest.raises(ServiceError, match="image not found") as caught:
        client.submit("/nonexistent.tif", "oncoai-nuclei")
    assert caught.value.status == 400
    assert ServiceClient.discover(tmp_path) is None
    gone = ServiceClient("http://127.0.0.1:9", "token", timeout=2)
    with pytest.raises(ServiceError, match="did not answer"):
        gone.health()


def test_non_loopback_hosts_are_refused_without_allow_remote(tmp_path, caplog):
    done = subprocess.run(
        [sys.executable, "-m", "model_zoo.cli", "serve", "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "ONCOAI_CONFIG_DIR": str(tmp_path)},
    )
    assert done.returncode == 2
    assert "refusing to listen on '0.0.0.0'" in done.stderr
    assert "--allow-remote" in done.stderr
    assert not (tmp_path / "token").exists()

    check_host("127.0.0.1", allow_remote=False)
    with caplog.at_level("WARNING"):
        check_host("0.0.0.0", allow_remote=True)
    assert "other machines can reach this service" in caplog.text


def test_allow_remote_warns_and_shutdown_removes_the_files(tmp_path):
    process = start_service(tmp_path, "--host", "0.0.0.0", "--allow-remote")
    running = wait_for_service(tmp_path, process)
    # Local clients reach an all-interfaces service through the loopback.
    assert running.url.startswith("http://127.0.0.1:")
    assert stop_service(process) == 0
    log = process.stdout.read()
    assert "other machines can reach this service" in log
    assert not (tmp_path / "token").exists()
    assert not (tmp_path / "service.json").exists()


def test_a_taken_port_gives_a_clear_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "model_zoo.cli", "serve", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "ONCOAI_CONFIG_DIR": str(tmp_path)},
        )
    assert done.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr


def test_queue_runs_jobs_one_at_a_time_in_order_and_expires_old_results(tmp_path):
    # The queue's bookkeeping, with a recording executor in place of a model.
    import threading

    from qupath_bridge import service as svc

    running, order, overlap = [], [], []
    lock = threading.Lock()

    def execute(job):
        with lock:
            running.append(job.id)
            if len(running) > 1:
                overlap.append(tuple(running))
        order.append(job.request.model)
        time.sleep(0.01)
        job.result = {"type": "FeatureCollection", "features": []}
        job.objects = 0
        with lock:
            running.remove(job.id)
        yield 1.0, "done"

    queue = svc.JobQueue(execute)
    try:
        jobs = [
            queue.submit(svc.JobRequest(image=tmp_path, model=str(i), device="cpu"))
            for i in range(svc.KEEP_RESULTS + 4)
        ]
        deadline = time.monotonic() + 30
        while any(j.state != "done" for j in jobs) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        queue.close()
    assert order == [str(i) for i in range(len(jobs))]
    assert overlap == []
    assert [j.expired for j in jobs] == [True] * 4 + [False] * svc.KEEP_RESULTS
    assert all(j.message == "done: 0 objects" for j in jobs)


def test_client_imports_only_the_standard_library():
    code = (
        "import sys, qupath_bridge.client; "
        "heavy = [m for m in ('torch', 'numpy', 'model_zoo', 'pydantic', 'starlette') "
        "if m in sys.modules]; print(heavy)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
