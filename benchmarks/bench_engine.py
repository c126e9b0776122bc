"""OncoAI's ``oncoai predict`` against bioimageio.core's ``predict``, side by side.

Both run as whole processes on the same 4096² image with the same model (the shared
U-Net) and the same weights format, interleaved in one run, so that machine load
affects both alike.  Reports the speed ratio, checks the results agree, reports
OncoAI's throughput against the model's pure forward rate at 512², and compares
OncoAI's peak RSS at 2048² and 8192².

Run: ``.venv/bin/python benchmarks/bench_engine.py [--repeats N] [--out FILE]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import tifffile

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO.parent / "shared" / "data" / "bioimageio" / "unet2d_nuclei_broad"
SAMPLE = REPO.parent / "shared" / "data" / "images" / "stardist_img2d.tif"
BIN = Path(sys.executable).parent


def make_image(path: Path, size: int) -> None:
    """Mirror-tile the real 512² nuclei image up to ``size``², as a tiled TIFF."""
    tile = tifffile.imread(SAMPLE)
    block = np.block([[tile, tile[:, ::-1]], [tile[::-1], tile[::-1, ::-1]]])
    reps = int(np.ceil(size / block.shape[0]))
    image = np.tile(block, (reps, reps))[:size, :size]
    tifffile.imwrite(path, image, tile=(512, 512))


def timed(cmd: list[str]) -> tuple[float, int]:
    """Run a command; return wall seconds and the peak RSS of that process (KiB)."""
    probe = (
        "import resource, subprocess, sys, time\n"
        "t = time.perf_counter()\n"
        "r = subprocess.run(sys.argv[1:])\n"
        "dt = time.perf_counter() - t\n"
        "rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
        "print(dt, rss, r.returncode)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, *cmd], capture_output=True, text=True, check=True
    )
    dt, rss, rc = out.stdout.split()[-3:]
    if int(rc) != 0:
        raise RuntimeError(f"{cmd} failed: {out.stderr[-2000:]}")
    return float(dt), int(rss)


def forward_rate(weights: str, device: str = "cpu") -> float:
    """The model's pure forward rate at 512², MPix/s, best of 5.

    Measured through OncoAI's own runner with as many 512² tiles as it runs at once
    on this machine, with no reading, normalisation, tiling or writing.
    """
    code = f"""
import time, numpy as np
from model_zoo.model import load_model
m = load_model({str(MODEL)!r}, {weights!r}, {device!r})
from model_zoo.model import cpu_workers
n = cpu_workers()[0]
x = np.random.default_rng(0).normal(size=(n, 1, 512, 512)).astype(np.float32)
m.forward([x]); best = 1e9
for _ in range(5):
    t = time.perf_counter(); m.forward([x]); best = min(best, time.perf_counter() - t)
print(n * 512 * 512 / best / 1e6)
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    return float(out.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument(
        "--formats", default="torchscript,onnx", help="weights formats to compare"
    )
    parser.add_argument("--device", default="cpu", help="cpu, or cuda on a GPU machine")
    parser.add_argument(
        "--skip-speed", action="store_true", help="measure only the peak RSS"
    )
    parser.add_argument(
        "--out", default=str(REPO / "benchmarks" / "results" / "engine.json")
    )
    args = parser.parse_args()
    report: dict = {"size": args.size, "repeats": args.repeats, "formats": {}}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        image = tmp / "image.tif"
        make_image(image, args.size)
        for weights in () if args.skip_speed else args.formats.split(","):
            ours_t, peer_t = [], []
            for _ in range(args.repeats):
                ours_out = tmp / f"ours_{weights}.npy"
                peer_out = tmp / f"peer_{weights}.npy"
                dt, _ = timed(
                    [
                        str(BIN / "oncoai"),
                        "predict",
                        "-q",
                        "--model",
                        str(MODEL),
                        "--weights",
                        weights,
                        "--device",
                        args.device,
                        str(image),
                        "-o",
                        str(ours_out),
                    ]
                )
                ours_t.append(dt)
                dt, _ = timed(
                    [
                        sys.executable,
                        str(REPO / "benchmarks" / "peer_bioimageio.py"),
                        str(MODEL),
                        weights,
                        str(image),
                        str(peer_out),
                        args.device,
                    ]
                )
                peer_t.append(dt)
            ours = np.load(ours_out)[0]
            peer = np.load(peer_out)
            diff = np.abs(ours - peer)[64:-64, 64:-64]
            rate = args.size**2 / min(ours_t) / 1e6
            pure = forward_rate(weights, args.device)
            report["formats"][weights] = {
                "oncoai_s": ours_t,
                "peer_s": peer_t,
                "speedup": min(peer_t) / min(ours_t),
                "max_abs_diff_vs_peer": float(diff.max()),
                "frac_off_1e-3": float((diff > 1e-3).mean()),
                "oncoai_mpix_s": rate,
                "pure_forward_mpix_s_512": pure,
                "share_of_forward_rate": rate / pure,
            }
            print(
                json.dumps({weights: report["formats"][weights]}, indent=1), flush=True
            )
        formats = report["formats"]
        if "torchscript" in formats and "onnx" in formats:
            # OncoAI's default on the CPU is ONNX; the peer's TorchScript run is
            # what a user of bioimageio.core gets with those weights.
            report["oncoai_default_vs_peer_torchscript"] = min(
                formats["torchscript"]["peer_s"]
            ) / min(formats["onnx"]["oncoai_s"])
            print(
                json.dumps(
                    {
                        "oncoai_default_vs_peer_torchscript": report[
                            "oncoai_default_vs_peer_torchscript"
                        ]
                    }
                )
            )
        rss = {}
        for size in (2048, 8192):
            image = tmp / f"rss_{size}.tif"
            make_image(image, size)
            _, kib = timed(
                [
                    str(BIN / "oncoai"),
                    "predict",
                    "-q",
                    "--model",
                    str(MODEL),
                    str(image),
                    "-o",
                    str(tmp / f"rss_{size}.tif.out.tif"),
                ]
            )
            rss[size] = kib / 1024
            (tmp / f"rss_{size}.tif.out.tif").unlink(missing_ok=True)
        report["peak_rss_mib"] = rss
        report["rss_ratio_8192_over_2048"] = rss[8192] / rss[2048]
    print(
        json.dumps({"peak_rss_mib": rss, "ratio": report["rss_ratio_8192_over_2048"]})
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
