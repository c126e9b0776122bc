"""What a Fiji macro call costs on top of the model: warm service against cold exec.

The macro is ``fiji_scripts/oncoai_batch.ijm`` on the real 512² nuclei image,
writing the label image, the RoiSet and the results table.  Measured:

- ``model_s``: the engine's own work in a warm Python (model loaded): predict,
  post-process and write the three outputs.  This is the floor.
- ``warm_running_imagej_s``: the macro in an ImageJ that is already running (an
  in-process ImageJ through JPype, as in a user's open Fiji), with
  ``oncoai serve`` up.  Its excess over ``model_s`` is the round trip overhead;
  the goal is under 1 s.
- ``cold_running_imagej_s``: the same macro with ``service=never``: every call
  starts Python, imports torch and loads the model.
- ``cli_warm_s``: ``oncoai fiji run`` alone against the warm service, no ImageJ.
- ``new_imagej_warm_s``: ``xvfb-run java -jar ij.jar -batch`` per call, warm
  service: what a shell loop over images pays, JVM start included.

Medians over ``--repeats`` runs after one warm-up.  Run:
``.venv/bin/python benchmarks/bench_fiji_roundtrip.py [--repeats N] [--out FILE]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared" / "data" / "images" / "stardist_img2d.tif"
BATCH = REPO / "fiji_scripts" / "oncoai_batch.ijm"
IJ_JAR = Path(os.environ.get("ONCOAI_IJ_JAR", "/usr/share/java/ij.jar"))
EXE = Path(sys.executable).with_name("oncoai")
SUFFIXES = ("_labels.tif", "_RoiSet.zip", "_results.csv")


def median_time(run: Callable[[], None], repeats: int) -> tuple[float, list[float]]:
    """Run once to warm up, then ``repeats`` times; the median and every time."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def check_outputs(outdir: Path) -> None:
    """Every output there, then removed so that the next run writes afresh."""
    for suffix in SUFFIXES:
        path = outdir / f"{SAMPLE.stem}{suffix}"
        if not path.is_file():
            raise RuntimeError(f"the macro did not write {path}")
    shutil.rmtree(outdir)


def model_time(model: str, outdir: Path, repeats: int) -> tuple[float, list[float]]:
    """The engine's work in this process with the model already loaded."""
    from model_zoo.config import PredictionConfig
    from model_zoo.outputs import write_result
    from model_zoo.prediction import get_model, predict

    config = PredictionConfig(model=model)
    loaded = get_model(config)

    def run() -> None:
        outdir.mkdir(parents=True, exist_ok=True)
        result = predict(config, SAMPLE, model=loaded)
        for suffix in SUFFIXES:
            write_result(result, outdir / f"{SAMPLE.stem}{suffix}")
        check_outputs(outdir)

    return median_time(run, repeats)


def start_service(env: dict[str, str], home: Path) -> subprocess.Popen:
    """``oncoai serve`` on a free port; returns once it answers."""
    from qupath_bridge.client import ServiceClient

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = open(home / "serve.log", "w")  # noqa: SIM115 -- lives with the process
    process = subprocess.Popen(
        [str(EXE), "serve", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if ServiceClient.discover(Path(env["ONCOAI_CONFIG_DIR"])) is not None:
            return process
        if process.poll() is not None:
            break
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(
        f"oncoai serve did not start: {(home / 'serve.log').read_text()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", default="oncoai-nuclei")
    parser.add_argument(
        "--out", default=str(REPO / "benchmarks" / "results" / "fiji_roundtrip.json")
    )
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="oncoai-fiji-bench-"))
    env = dict(os.environ)
    env.update(
        ONCOAI_EXE=str(EXE),
        ONCOAI_CACHE_DIR=str(home / "cache"),
        ONCOAI_CONFIG_DIR=str(home / "config"),
    )
    # The in-process ImageJ hands its environment to the oncoai it runs; Java
    # reads it once, when the JVM starts.
    os.environ.update(env)
    outdir = home / "out"
    report: dict[str, Any] = {"model": args.model, "image": SAMPLE.name}

    report["model_s"], report["model_runs"] = model_time(
        args.model, outdir, args.repeats
    )
    print(f"model (warm, in-process): {report['model_s']:.2f} s", flush=True)

    from fiji_scripts.imagej import start_imagej

    ij = start_imagej(IJ_JAR, headless=True)
    macro_args = f"input={SAMPLE} model={args.model} output={outdir}"

    def in_imagej(extra: str = "") -> Callable[[], None]:
        def run() -> None:
            ij.runMacroFile(str(BATCH), f"{macro_args} {extra}")
            check_outputs(outdir)

        return run

    service = start_service(env, home)
    try:
        report["warm_running_imagej_s"], report["warm_runs"] = median_time(
            in_imagej(), args.repeats
        )
        warm = report["warm_running_imagej_s"]
        print(f"macro, running ImageJ, warm service: {warm:.2f} s")

        def cli() -> None:
            subprocess.run(
                [
                    str(EXE),
                    "fiji",
                    "run",
                    "--input",
                    str(SAMPLE),
                    "--model",
                    args.model,
                    "--outdir",
                    str(outdir),
                    "--log",
                    str(home / "cli.log"),
                ],
                env=env,
                check=True,
                capture_output=True,
            )
            check_outputs(outdir)

        report["cli_warm_s"], report["cli_runs"] = median_time(cli, args.repeats)
        print(f"oncoai fiji run alone, warm service: {report['cli_warm_s']:.2f} s")

        def new_imagej() -> None:
            subprocess.run(
                [
                    "xvfb-run",
                    "-a",
                    "java",
                    f"-Djava.io.tmpdir={home}",
                    "-jar",
                    str(IJ_JAR),
                    "-batch",
                    str(BATCH),
                    macro_args,
                ],
                env=env,
                check=True,
                capture_output=True,
                timeout=600,
            )
            check_outputs(outdir)

        report["new_imagej_warm_s"], report["new_imagej_runs"] = median_time(
            new_imagej, args.repeats
        )
        print(
            f"xvfb-run ImageJ -batch per call, warm service: "
            f"{report['new_imagej_warm_s']:.2f} s"
        )
    finally:
        service.terminate()
        service.wait(timeout=60)

    report["cold_running_imagej_s"], report["cold_runs"] = median_time(
        in_imagej("service=never"), args.repeats
    )
    print(f"macro, running ImageJ, no service: {report['cold_running_imagej_s']:.2f} s")

    report["overhead_warm_s"] = report["warm_running_imagej_s"] - report["model_s"]
    report["overhead_cold_s"] = report["cold_running_imagej_s"] - report["model_s"]
    report["goal_overhead_s"] = 1.0
    report["goal_met"] = report["overhead_warm_s"] < 1.0
    report["cpus"] = os.cpu_count()
    print(
        json.dumps(
            {k: v for k, v in report.items() if not k.endswith("runs")}, indent=1
        )
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
