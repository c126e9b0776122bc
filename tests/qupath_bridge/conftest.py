"""Fixtures for the QuPath bridge: the GeoJSON checker, the real service, Groovy."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from qupath_bridge.client import SERVICE_FILE, ServiceClient

HERE = Path(__file__).resolve().parent
STANDIN = HERE / "qupath_standin"
SCRIPTS = HERE.parents[1] / "qupath_bridge" / "scripts"


@pytest.fixture(scope="session")
def check_geojson(shared_data: Path) -> Callable[..., str]:
    """Run the shared QuPath GeoJSON checker on a file; fail the test if it fails.

    Returns the checker's output.  ``expect_type`` is required: every file
    OncoAI writes must say which QuPath objects it holds.
    """
    checker = shared_data.parent / "tools" / "qupath_geojson_check.py"
    assert checker.is_file(), f"QuPath GeoJSON checker missing at {checker}"

    def run(
        path: Path,
        expect_type: str,
        min_features: int = 1,
        size: tuple[float, float] | None = None,
    ) -> str:
        command = [
            sys.executable,
            str(checker),
            str(path),
            "--expect-type",
            expect_type,
            "--min-features",
            str(min_features),
        ]
        if size is not None:
            command += ["--width", str(size[0]), "--height", str(size[1])]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"QuPath checker rejected {path}:\n{done.stdout}"
        return done.stdout

    return run


@pytest.fixture(scope="session")
def example_project(
    shared_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The shared QuPath project, unzipped into a fresh folder."""
    target = tmp_path_factory.mktemp("qupath-project")
    with zipfile.ZipFile(shared_data / "qupath" / "qupath_example_project.zip") as z:
        z.extractall(target)
    return target / "qupath_example_project"


# --------------------------------------------------------------------------
# The real service, in its own process
# --------------------------------------------------------------------------


class RunningService:
    """An ``oncoai serve`` subprocess and the folder holding its token."""

    def __init__(self, folder: Path, process: subprocess.Popen) -> None:
        self.folder = folder
        self.process = process
        info = json.loads((folder / SERVICE_FILE).read_text())
        self.url = info["url"]
        self.token = (folder / "token").read_text().strip()

    def client(self) -> ServiceClient:
        client = ServiceClient.discover(self.folder)
        assert client is not None, "the running service was not discovered"
        return client

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def start_service(folder: Path, *extra: str) -> subprocess.Popen:
    """Start ``oncoai serve --port 0`` with its files in ``folder``."""
    env = dict(os.environ, ONCOAI_CONFIG_DIR=str(folder), OMP_NUM_THREADS="1")
    return subprocess.Popen(
        [sys.executable, "-m", "model_zoo.cli", "serve", "--port", "0", *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for_service(folder: Path, process: subprocess.Popen) -> RunningService:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"oncoai serve exited early:\n{process.stdout.read()}")
        if (folder / SERVICE_FILE).is_file() and (folder / "token").is_file():
            service = RunningService(folder, process)
            if ServiceClient.discover(folder) is not None:
                return service
        time.sleep(0.2)
    process.kill()
    pytest.fail("oncoai serve did not answer within 90 s")


def stop_service(process: subprocess.Popen) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            pytest.fail("oncoai serve did not stop within 30 s of SIGTERM")
    return process.returncode


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    """A real ``oncoai serve`` on a free 127.0.0.1 port, shared by the tests."""
    folder = tmp_path_factory.mktemp("service-config")
    process = start_service(folder)
    running = wait_for_service(folder, process)
    yield running
    stop_service(process)


# --------------------------------------------------------------------------
# Groovy
# --------------------------------------------------------------------------


def _java_home() -> str | None:
    current = os.environ.get("JAVA_HOME")
    if current and (Path(current) / "bin" / "java").exists():
        return current
    java = shutil.which("java")
    return str(Path(java).resolve().parents[1]) if java else None


@pytest.fixture(scope="session")
def groovy_env() -> dict[str, str]:
    """Environment for Debian's ``groovy``/``groovyc``, which need JAVA_HOME."""
    if shutil.which("groovyc") is None or shutil.which("groovy") is None:
        pytest.fail(
            "groovy is not installed; the QuPath scripts must be compiled in CI "
            "(run `make system-deps`)"
        )
    java_home = _java_home()
    if java_home is None:
        pytest.fail("no java found for groovy; install a JDK (make system-deps)")
    return dict(os.environ, JAVA_HOME=java_home)


@pytest.fixture(scope="session")
def standin_classes(
    groovy_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The QuPath stand-in, compiled by groovyc."""
    out = tmp_path_factory.mktemp("qupath-standin-classes")
    sources = [
        str(p) for p in STANDIN.rglob("*.groovy") if p.name != "RunWithStandIn.groovy"
    ]
    done = subprocess.run(
        ["groovyc", "-d", str(out), *sources],
        env=groovy_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"stand-in did not compile:\n{done.stderr}"
    return out
