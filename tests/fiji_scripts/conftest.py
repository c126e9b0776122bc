"""Fixtures for the Fiji bridge: the real ImageJ, run headless or in-process."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

IJ_JAR = Path(os.environ.get("ONCOAI_IJ_JAR", "/usr/share/java/ij.jar"))
MACRO_DIR = Path(__file__).resolve().parents[2] / "fiji_scripts"
# A macro that hangs is a failure, not a stalled CI job.
MACRO_TIMEOUT_S = 300


@dataclass
class MacroRun:
    """What a headless ImageJ run printed."""

    lines: list[str]
    returncode: int

    @property
    def last(self) -> str:
        return self.lines[-1] if self.lines else ""


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(
            f"{tool} not found; the Fiji tests run the real ImageJ: "
            "`make system-deps` (Debian: apt install imagej xvfb)"
        )
    return path


@pytest.fixture(scope="session")
def ij_jar() -> Path:
    """Debian's ImageJ 1 jar, as CI installs it."""
    if not IJ_JAR.is_file():
        pytest.fail(
            f"ImageJ not found at {IJ_JAR}; `make system-deps` installs Debian's "
            "imagej, or set ONCOAI_IJ_JAR"
        )
    _need("java")
    _need("xvfb-run")
    return IJ_JAR


@pytest.fixture(scope="session")
def oncoai_exe() -> Path:
    """The ``oncoai`` executable of the environment that runs the tests."""
    exe = Path(sys.executable).with_name("oncoai")
    if not exe.is_file():
        pytest.fail(f"{exe} not found; install the project with `pip install -e .`")
    return exe


@pytest.fixture(scope="session")
def imagej(ij_jar: Path) -> Any:
    """ImageJ in this process, through JPype, without windows."""
    from fiji_scripts.imagej import start_imagej

    return start_imagej(ij_jar, headless=True)


def macro_env(oncoai_exe: Path, home: Path, **extra: str) -> dict[str, str]:
    """The environment a macro runs in: our oncoai, our cache, one thread."""
    env = dict(os.environ)
    env.update(
        ONCOAI_EXE=str(oncoai_exe),
        ONCOAI_CACHE_DIR=str(home / "cache"),
        ONCOAI_CONFIG_DIR=str(home / "config"),
        OMP_NUM_THREADS="1",
    )
    env.update(extra)
    return env


def run_batch_macro(
    ij_jar: Path,
    macro: Path,
    argument: str,
    env: dict[str, str],
    temp: Path,
    java_options: tuple[str, ...] = (),
) -> MacroRun:
    """``xvfb-run -a java -jar ij.jar -batch MACRO ARGUMENT``, with a timeout."""
    temp.mkdir(parents=True, exist_ok=True)
    command = [
        "xvfb-run",
        "-a",
        "java",
        f"-Djava.io.tmpdir={temp}",
        *java_options,
        "-jar",
        str(ij_jar),
        "-batch",
        str(macro),
        argument,
    ]
    stdout, returncode = _run_bounded(command, env)
    lines = [line for line in stdout.splitlines() if line.strip()]
    return MacroRun(lines, returncode)


def _run_bounded(command: list[str], env: dict[str, str]) -> tuple[str, int]:
    """Run a command in its own process group; kill the whole group on timeout.

    xvfb-run starts Xvfb and java as children; killing xvfb-run alone would
    leave a hung ImageJ behind.
    """
    process = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, _ = process.communicate(timeout=MACRO_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, _ = process.communicate()
        pytest.fail(f"ImageJ hung for {MACRO_TIMEOUT_S} s: {command}\n{stdout}")
    return stdout, process.returncode


def run_gui_macro(
    ij_jar: Path,
    code: str,
    env: dict[str, str],
    folder: Path,
    imagej_dir: Path | None = None,
) -> dict[str, str]:
    """Run macro code in a full ImageJ window under Xvfb; return what it records.

    The code calls ``record(key, value)``; ImageJ quits afterwards.  Only a
    GUI ImageJ builds its menus and its Results and ROI Manager windows.
    ``imagej_dir`` is the folder whose ``plugins/`` ImageJ scans for its menu.
    """
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "recorded.txt"
    script = folder / "driver.ijm"
    script.write_text(
        f'var recorded = "";\n{code}\n'
        f'File.saveString(recorded, "{out}");\n'
        'close("*");\nrun("Quit");\n'
        "function record(key, value) {\n"
        '    recorded = recorded + key + "=" + value + "\\n";\n'
        "}\n",
        encoding="utf-8",
    )
    plugins = imagej_dir or folder / "imagej"
    (plugins / "plugins").mkdir(parents=True, exist_ok=True)
    command = [
        "xvfb-run",
        "-a",
        "java",
        f"-Djava.io.tmpdir={folder}",
        f"-Dplugins.dir={plugins}",
        "-jar",
        str(ij_jar),
        "-macro",
        str(script),
    ]
    _run_bounded(command, env)
    if not out.is_file():
        pytest.fail(f"the ImageJ macro stopped before recording anything: {script}")
    pairs = [line.split("=", 1) for line in out.read_text().splitlines() if line]
    return {key: value for key, value in pairs}


@dataclass
class Service:
    """A running ``oncoai serve`` for the macros to find."""

    config_dir: Path
    process: subprocess.Popen


@pytest.fixture(scope="module")
def service(
    oncoai_exe: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    """``oncoai serve`` on a free port, its token in a folder of its own."""
    home = tmp_path_factory.mktemp("service")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = macro_env(oncoai_exe, home)
    log = open(home / "serve.log", "w")  # noqa: SIM115 -- closed below
    process = subprocess.Popen(
        [str(oncoai_exe), "serve", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_for(home / "config" / "service.json", process, home / "serve.log")
        yield Service(home / "config", process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def _wait_for(path: Path, process: subprocess.Popen, log: Path) -> None:
    from qupath_bridge.client import ServiceClient

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if path.is_file() and ServiceClient.discover(path.parent) is not None:
            return
        if process.poll() is not None:
            pytest.fail(f"oncoai serve exited: {log.read_text()}")
        time.sleep(0.2)
    pytest.fail(f"oncoai serve did not start within 120 s: {log.read_text()}")
