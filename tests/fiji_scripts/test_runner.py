"""``oncoai fiji run`` and ``models``: the line protocol the macros parse."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import tifffile

from fiji_scripts.plugin import _fail, list_macro_models
from fiji_scripts.runner import RunRequest, parse_params
from model_zoo.errors import OncoAIError

from .conftest import macro_env


def _oncoai(exe: Path, home: Path, *args: str) -> tuple[list[str], int, str]:
    done = subprocess.run(
        [str(exe), *args],
        env=macro_env(exe, home),
        capture_output=True,
        text=True,
        timeout=300,
    )
    return done.stdout.splitlines(), done.returncode, done.stderr


def _fiji_run(
    exe: Path, home: Path, image: Path, model: str, *options: str
) -> tuple[list[str], int, str]:
    """``oncoai fiji run`` into ``home/out``, logging to ``home/fiji.log``."""
    return _oncoai(
        exe,
        home,
        "fiji",
        "run",
        "--input",
        str(image),
        "--model",
        model,
        "--outdir",
        str(home / "out"),
        "--log",
        str(home / "fiji.log"),
        *options,
    )


def test_params_are_typed() -> None:
    params = parse_params("threshold=0.4 tile=256 split-touching=false channel=DAPI")
    assert params == {
        "threshold": 0.4,
        "tile": 256,
        "split_touching": False,
        "channel": "DAPI",
    }
    assert parse_params("") == {}
    assert parse_params("axes=none") == {"axes": None}


def test_params_without_equals_are_refused() -> None:
    with pytest.raises(OncoAIError, match="key=value pairs separated by spaces; got"):
        parse_params("threshold 0.4")


def test_output_names_follow_the_image(tmp_path: Path) -> None:
    objects = RunRequest(Path("/data/a.ome.tif"), "m", tmp_path)
    image = RunRequest(Path("/data/b.png"), "m", tmp_path, kind="image", suffix="dn")

    assert [p.name for p in objects.outputs()] == [
        "a_labels.tif",
        "a_RoiSet.zip",
        "a_results.csv",
    ]
    assert [p.name for p in image.outputs()] == ["b_dn.tif"]
    with pytest.raises(OncoAIError, match="unknown output kind 'mesh'"):
        RunRequest(Path("a.tif"), "m", tmp_path, kind="mesh").outputs()


def test_run_answers_error_for_a_missing_image(
    tmp_path: Path, oncoai_exe: Path
) -> None:
    lines, code, stderr = _fiji_run(
        oncoai_exe, tmp_path, tmp_path / "missing.tif", "oncoai-nuclei"
    )

    assert code == 2
    assert lines == [
        f"ERROR: image not found: {tmp_path / 'missing.tif'}; check the path."
    ]
    # Nothing on the error stream that ImageJ's exec() would have to drain.
    assert stderr == ""
    assert "image not found" in (tmp_path / "fiji.log").read_text()
    assert not (tmp_path / "out").exists()


def test_run_answers_error_for_bad_parameters(
    tmp_path: Path, oncoai_exe: Path, shared_data: Path
) -> None:
    lines, code, _ = _fiji_run(
        oncoai_exe,
        tmp_path,
        shared_data / "images" / "stardist_img2d.tif",
        "oncoai-nuclei",
        "--params",
        "threshold=2",
        "--service",
        "never",
    )

    assert code == 2
    assert len(lines) == 1
    assert lines[0].startswith("ERROR: invalid parameter threshold=2: Input should be")


def test_models_lists_the_starter_and_the_cache(
    tmp_path: Path,
    oncoai_exe: Path,
    shared_data: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from model_zoo.cache import import_model
    from model_zoo.starter import STARTER_MODELS

    # The cache that macro_env gives the subprocess, shared with this process.
    monkeypatch.setenv("ONCOAI_CACHE_DIR", str(tmp_path / "cache"))
    cached = import_model(shared_data / "bioimageio" / "dummy_tf_v0_4")

    lines, code, _ = _oncoai(
        oncoai_exe, tmp_path, "fiji", "models", "--log", str(tmp_path / "l.log")
    )

    assert code == 0
    assert lines[-1] == "OK"
    starters = [n for n, rdf in STARTER_MODELS.items() if rdf.is_file()]
    assert starters == ["oncoai-nuclei"]
    assert lines[:-1] == [f"MODEL {n}\t{n}" for n in starters] + [
        f"MODEL {cached.id}\t{cached.name}"
    ]
    assert list_macro_models() == [(n, n) for n in starters] + [
        (cached.id, cached.name)
    ]


def test_an_unexpected_error_points_to_the_chosen_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "mine.log"

    code = _fail(RuntimeError("boom"), str(log))

    assert code == 3
    assert capsys.readouterr().out == (
        f"ERROR: unexpected RuntimeError: boom (details in {log})\n"
    )


def test_a_roi_limits_the_run_and_objects_keep_image_coordinates(
    tmp_path: Path, oncoai_exe: Path, shared_data: Path, nuclei_model: str
) -> None:
    from fiji_scripts.ijroi import read_roi, read_roi_set

    roi_file = shared_data / "imagej_rois" / "polygon.roi"
    x, y, width, height = read_roi(roi_file).region()
    lines, code, _ = _fiji_run(
        oncoai_exe,
        tmp_path,
        shared_data / "images" / "stardist_img2d.tif",
        nuclei_model,
        "--roi",
        str(roi_file),
        "--service",
        "never",
    )

    assert code == 0 and lines[-2:] == ["VIA local", "OK"], lines
    labels = tifffile.imread(tmp_path / "out" / "stardist_img2d_labels.tif")
    assert labels.shape == (height, width)
    rois = read_roi_set(tmp_path / "out" / "stardist_img2d_RoiSet.zip")
    assert len(rois) == len(np.unique(labels[labels > 0])) > 0
    for roi in rois:
        rx, ry, rw, rh = roi.region()
        assert x <= rx and y <= ry and rx + rw <= x + width and ry + rh <= y + height
