"""The macros in the real ImageJ: the headless contract, errors, the warm service."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from .conftest import (
    MACRO_DIR,
    MacroRun,
    Service,
    macro_env,
    run_batch_macro,
    run_gui_macro,
)

pytestmark = pytest.mark.slow

BATCH = MACRO_DIR / "oncoai_batch.ijm"
SUFFIXES = ("_labels.tif", "_RoiSet.zip", "_results.csv")


def _batch(
    ij_jar: Path, home: Path, argument: str, env: dict[str, str], macro: Path = BATCH
) -> MacroRun:
    """A headless macro run with ImageJ's temp folder in ``home/temp``."""
    return run_batch_macro(ij_jar, macro, argument, env, home / "temp")


@dataclass
class Contract:
    run: MacroRun
    outdir: Path
    home: Path


@pytest.fixture(scope="module")
def contract(
    ij_jar: Path,
    oncoai_exe: Path,
    nuclei_model: str,
    shared_data: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Contract:
    """The headless contract, run once cold: no service, the model loads in oncoai."""
    home = tmp_path_factory.mktemp("contract")
    outdir = home / "out"
    image = shared_data / "images" / "stardist_img2d.tif"
    run = _batch(
        ij_jar,
        home,
        f"input={image} model={nuclei_model} output={outdir}",
        macro_env(oncoai_exe, home),
    )
    return Contract(run, outdir, home)


def _label_count(path: Path) -> int:
    labels = tifffile.imread(path)
    return len(np.unique(labels[labels > 0]))


def test_the_contract_writes_all_three_outputs(contract: Contract) -> None:
    assert contract.run.last == "OK", contract.run.lines
    assert contract.run.returncode == 0
    for suffix in SUFFIXES:
        assert (contract.outdir / f"stardist_img2d{suffix}").is_file()
    assert "VIA" not in "".join(contract.run.lines)
    log = (contract.home / "temp" / "oncoai-fiji.log").read_text()
    assert "service job" not in log


def test_imagej_reopens_the_roiset_with_one_roi_per_label(
    contract: Contract, ij_jar: Path, oncoai_exe: Path
) -> None:
    labels = contract.outdir / "stardist_img2d_labels.tif"
    code = contract.home / "count.ijm"
    code.write_text(
        'roiManager("Open", getArgument());\n'
        'print("count=" + roiManager("count"));\n'
        'print("OK");\n'
    )

    run = _batch(
        ij_jar,
        contract.home,
        str(contract.outdir / "stardist_img2d_RoiSet.zip"),
        macro_env(oncoai_exe, contract.home),
        macro=code,
    )

    expected = _label_count(labels)
    assert run.last == "OK"
    assert f"count={expected}" in run.lines
    assert expected > 50
    with open(contract.outdir / "stardist_img2d_results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == expected
    assert [int(r["label"]) for r in rows] == list(range(1, expected + 1))


def test_the_jpype_bridge_opens_the_result(contract: Contract, imagej: Any) -> None:
    from fiji_scripts.imagej import from_imageplus, open_result

    path = contract.outdir / "stardist_img2d_labels.tif"
    opened = open_result(path)

    assert (opened.image.getWidth(), opened.image.getHeight()) == (512, 512)
    assert opened.image.getNSlices() == 1
    np.testing.assert_array_equal(from_imageplus(opened.image), tifffile.imread(path))
    assert len(opened.rois) == _label_count(path) == opened.table.size()


def _error_run(
    ij_jar: Path, oncoai_exe: Path, home: Path, argument: str, **env: str
) -> MacroRun:
    run = _batch(ij_jar, home, argument, macro_env(oncoai_exe, home, **env))
    assert run.returncode == 0
    return run


def test_a_missing_image_gives_oncoai_s_message(
    tmp_path: Path, ij_jar: Path, oncoai_exe: Path, nuclei_model: str
) -> None:
    missing = tmp_path / "nope.tif"

    run = _error_run(
        ij_jar,
        oncoai_exe,
        tmp_path,
        f"input={missing} model={nuclei_model} output={tmp_path / 'out'}",
    )

    assert run.last == f"ERROR: image not found: {missing}; check the path."
    assert not (tmp_path / "out").exists()


def test_a_missing_model_gives_oncoai_s_message(
    tmp_path: Path, ij_jar: Path, oncoai_exe: Path, shared_data: Path
) -> None:
    image = shared_data / "images" / "stardist_img2d.tif"

    run = _error_run(
        ij_jar,
        oncoai_exe,
        tmp_path,
        f"input={image} model=no-such-model output={tmp_path / 'out'}",
    )

    assert run.last.startswith(
        "ERROR: 'no-such-model' is neither an existing file or folder nor a cached "
        "model; run `oncoai models list`"
    )
    assert not (tmp_path / "out").exists()


def test_a_missing_oncoai_is_reported(tmp_path: Path, ij_jar: Path) -> None:
    run = _batch(
        ij_jar,
        tmp_path,
        f"input={tmp_path / 'a.tif'} model=m output={tmp_path}",
        macro_env(tmp_path / "no-oncoai", tmp_path, PATH="/usr/bin:/bin"),
    )

    assert run.last.startswith("ERROR: oncoai gave no answer (Cannot run program")


def test_no_input_is_an_error(tmp_path: Path, ij_jar: Path, oncoai_exe: Path) -> None:
    run = _error_run(ij_jar, oncoai_exe, tmp_path, "model=m")
    assert run.last == "ERROR: no input given; pass input=FILE or input=FOLDER"


@pytest.fixture(scope="module")
def three_channels(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The nuclei image three times over, as an ImageJ CYX hyperstack."""
    image = tifffile.imread(shared_data / "images" / "stardist_img2d.tif")
    path = tmp_path_factory.mktemp("rgbish") / "three.tif"
    tifffile.imwrite(path, np.stack([image] * 3), imagej=True, metadata={"axes": "CYX"})
    return path


def test_three_channels_to_a_one_channel_model_cold(
    tmp_path: Path,
    ij_jar: Path,
    oncoai_exe: Path,
    nuclei_model: str,
    three_channels: Path,
) -> None:
    run = _error_run(
        ij_jar,
        oncoai_exe,
        tmp_path,
        f"input={three_channels} model={nuclei_model} output={tmp_path / 'out'}",
    )

    assert run.last.startswith(
        "ERROR: the model takes 1 channel(s) but the image has 3"
    ), run.lines
    assert "pick one with --channel" in run.last
    assert not (tmp_path / "out").exists()


# -- through the warm service ------------------------------------------------------


def _service_env(oncoai_exe: Path, home: Path, service: Service) -> dict[str, str]:
    return macro_env(oncoai_exe, home, ONCOAI_CONFIG_DIR=str(service.config_dir))


def test_a_folder_runs_through_the_warm_service(
    tmp_path: Path,
    ij_jar: Path,
    oncoai_exe: Path,
    nuclei_model: str,
    shared_data: Path,
    service: Service,
    imagej: Any,
) -> None:
    from fiji_scripts.imagej import open_image

    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "plain.tif").symlink_to(shared_data / "images" / "stardist_img2d.tif")
    image = tifffile.imread(shared_data / "images" / "stardist_img2d.tif")
    tifffile.imwrite(
        folder / "calibrated.tif",
        image,
        imagej=True,
        resolution=(1 / 0.25, 1 / 0.25),
        metadata={"unit": "um"},
    )
    (folder / "notes.txt").write_text("not an image")
    outdir = tmp_path / "out"

    run = _batch(
        ij_jar,
        tmp_path,
        f"input={folder} model={nuclei_model} output={outdir}",
        _service_env(oncoai_exe, tmp_path, service),
    )

    assert run.last == "OK", run.lines
    assert sorted(line for line in run.lines[:-1]) == [
        "done calibrated.tif",
        "done plain.tif",
    ]
    for name in ("plain", "calibrated"):
        for suffix in SUFFIXES:
            assert (outdir / f"{name}{suffix}").is_file()
    log = (tmp_path / "temp" / "oncoai-fiji.log").read_text()
    assert log.count("service job") == 2
    calibration = open_image(outdir / "calibrated_labels.tif").getCalibration()
    assert calibration.pixelWidth == pytest.approx(0.25)
    assert calibration.getUnit() in ("micron", "µm", "um")


def test_errors_come_back_through_the_service(
    tmp_path: Path,
    ij_jar: Path,
    oncoai_exe: Path,
    nuclei_model: str,
    three_channels: Path,
    service: Service,
) -> None:
    env = _service_env(oncoai_exe, tmp_path, service)
    bad_model = _batch(
        ij_jar,
        tmp_path,
        f"input={three_channels} model=no-such-model output={tmp_path / 'a'}",
        env,
    )
    bad_channels = _batch(
        ij_jar,
        tmp_path,
        f"input={three_channels} model={nuclei_model} output={tmp_path / 'b'}",
        env,
    )

    assert bad_model.last.startswith("ERROR: ") and "no-such-model" in bad_model.last
    assert bad_channels.last.startswith(
        "ERROR: the model takes 1 channel(s) but the image has 3"
    ), bad_channels.lines
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert "service job" in (tmp_path / "temp" / "oncoai-fiji.log").read_text()


def test_segment_nuclei_on_the_open_image_fills_imagej(
    tmp_path: Path,
    ij_jar: Path,
    oncoai_exe: Path,
    nuclei_model: str,
    shared_data: Path,
    service: Service,
) -> None:
    """The menu macro in a full ImageJ: current image, selection, results shown."""
    image = shared_data / "images" / "stardist_img2d.tif"
    outdir = tmp_path / "out"
    code = f"""
open("{image}");
makeRectangle(100, 120, 200, 150);
runMacro("{MACRO_DIR / "Segment_Nuclei.ijm"}",
    "model=[{nuclei_model}] output=[{outdir}] show=true");
lines = split(getInfo("log"), "\\n");
record("last", lines[lines.length - 1]);
record("images", nImages);
record("rois", roiManager("count"));
record("results", nResults);
selectImage("stardist_img2d.tif");
getSelectionBounds(x, y, w, h);
record("selection", "" + x + "," + y + "," + w + "," + h);
left = 1e9; top = 1e9; right = 0; bottom = 0;
for (i = 0; i < roiManager("count"); i++) {{
    roiManager("select", i);
    getSelectionBounds(x, y, w, h);
    left = minOf(left, x); top = minOf(top, y);
    right = maxOf(right, x + w); bottom = maxOf(bottom, y + h);
}}
record("roi_box", "" + left + "," + top + "," + right + "," + bottom);
"""
    recorded = run_gui_macro(
        ij_jar, code, _service_env(oncoai_exe, tmp_path, service), tmp_path / "gui"
    )

    labels = outdir / "stardist_img2d_labels.tif"
    n = _label_count(labels)
    assert recorded["last"] == "OK"
    assert recorded["images"] == "2"  # the image and its labels
    assert int(recorded["rois"]) == int(recorded["results"]) == n > 5
    # The selection survives, and the objects lie inside it on the whole image.
    assert recorded["selection"] == "100,120,200,150"
    left, top, right, bottom = map(float, recorded["roi_box"].split(","))
    assert left >= 100 and top >= 120 and right <= 300 and bottom <= 270
    assert tifffile.imread(labels).shape == (150, 200)


def test_denoise_writes_the_output_image_with_calibration(
    tmp_path: Path,
    ij_jar: Path,
    oncoai_exe: Path,
    nuclei_model: str,
    shared_data: Path,
    service: Service,
    imagej: Any,
) -> None:
    """kind=image: the model's output as <name>_<suffix>.tif, calibration kept."""
    from fiji_scripts.imagej import open_image

    image = tifffile.imread(shared_data / "images" / "stardist_img2d.tif")
    source = tmp_path / "noisy.tif"
    tifffile.imwrite(
        source, image, imagej=True, resolution=(2.0, 2.0), metadata={"unit": "um"}
    )
    outdir = tmp_path / "out"

    run = _batch(
        ij_jar,
        tmp_path,
        f"input=[{source}] model=[{nuclei_model}] output=[{outdir}]",
        _service_env(oncoai_exe, tmp_path, service),
        macro=MACRO_DIR / "Denoise_Image.ijm",
    )

    assert run.last == "OK", run.lines
    assert sorted(p.name for p in outdir.glob("*.tif")) == ["noisy_denoised.tif"]
    opened = open_image(outdir / "noisy_denoised.tif")
    assert (opened.getWidth(), opened.getHeight()) == (512, 512)
    assert opened.getCalibration().pixelWidth == pytest.approx(0.5)


def test_a_menu_macro_without_a_model_asks_for_one_headless(
    tmp_path: Path, ij_jar: Path, oncoai_exe: Path, shared_data: Path
) -> None:
    image = shared_data / "images" / "stardist_img2d.tif"
    run = _batch(
        ij_jar,
        tmp_path,
        f"input=[{image}] output=[{tmp_path / 'out'}]",
        macro_env(oncoai_exe, tmp_path),
        macro=MACRO_DIR / "Segment_Cells.ijm",
    )

    assert run.last == (
        "ERROR: no model given; pass model=ID (oncoai fiji models lists them)"
    )
