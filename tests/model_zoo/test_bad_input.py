"""Every bad input: exit code 2, one ``error:`` line, no traceback, no output left."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from model_zoo import cli
from model_zoo.cache import cache_dir, list_models

from . import tiny_models
from ._helpers import predict_args

ONE_CHANNEL = np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tiny_models.TinyModel:
    """A one-channel 2D model that needs at least 32 px along y and x."""
    return tiny_models.plain_2d(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture()
def work(tmp_path) -> Path:
    folder = tmp_path / "work"
    folder.mkdir()
    return folder


def oncoai(capsys, *args: object) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _noise(line: str) -> bool:
    """A plugin-loading warning or a progress line, not part of the error."""
    return line.startswith("WARNING model_zoo.plugins") or bool(
        re.match(r"^\s*\d+% ", line)
    )


def error_line(code: int, err: str) -> str:
    """The one error line of a refused command; fails on anything else."""
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if not _noise(line)]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    return lines[0]


def save(work: Path, name: str, array: np.ndarray) -> Path:
    np.save(work / name, array)
    return work / name


# -- bad images --------------------------------------------------------------------


def _missing(work: Path, shared: Path) -> Path:
    return work / "absent.tif"


def _empty(work: Path, shared: Path) -> Path:
    (work / "empty.tif").write_bytes(b"")
    return work / "empty.tif"


def _truncated(work: Path, shared: Path) -> Path:
    data = (shared / "images" / "stardist_img2d.tif").read_bytes()
    (work / "truncated.tif").write_bytes(data[: len(data) // 2])
    return work / "truncated.tif"


def _text_as_tif(work: Path, shared: Path) -> Path:
    (work / "notes.tif").write_text("these are notes, not pixels\n")
    return work / "notes.tif"


def _text_as_png(work: Path, shared: Path) -> Path:
    (work / "notes.png").write_text("these are notes, not pixels\n")
    return work / "notes.png"


def _nan(work: Path, shared: Path) -> Path:
    array = ONE_CHANNEL.copy()
    array[10, 20] = np.nan
    return save(work, "nan.npy", array)


def _inf(work: Path, shared: Path) -> Path:
    array = ONE_CHANNEL.copy()
    array[40, 3] = -np.inf
    return save(work, "inf.npy", array)


def _too_small(work: Path, shared: Path) -> Path:
    return save(work, "small.npy", ONE_CHANNEL[:20, :40])


BAD_IMAGES: dict[str, tuple[Callable[[Path, Path], Path], list[str], str]] = {
    "missing file": (_missing, [], "image not found"),
    "empty file": (_empty, [], "image file is empty (0 bytes)"),
    "truncated tiff": (_truncated, [], "is it a complete TIFF"),
    "text named .tif": (_text_as_tif, [], "not a TIFF file"),
    "text named .png": (_text_as_png, [], "as an image"),
    "nan values": (_nan, [], "NaN or infinite values"),
    "inf values": (_inf, [], "NaN or infinite values"),
    "smaller than the minimum": (_too_small, [], "the model needs at least 32"),
}


@pytest.mark.parametrize("case", sorted(BAD_IMAGES))
def test_bad_image_is_refused_and_nothing_written(
    capsys, tiny, work, shared_data, case
):
    make, extra, phrase = BAD_IMAGES[case]
    image = make(work, shared_data)
    before = sorted(p.name for p in work.iterdir())

    code, _, err = oncoai(
        capsys, *predict_args(tiny.folder, image, work / "out.tif", *extra)
    )

    line = error_line(code, err)
    assert phrase in line
    assert sorted(p.name for p in work.iterdir()) == before


@pytest.mark.parametrize(
    ("axes", "phrase"),
    [
        ("CZYX", "axes 'CZYX' have 4 letters but the image has 2 dimensions"),
        ("QYX", "invalid --axes"),
        ("YXY", "invalid --axes"),
        ("ZX", "invalid --axes"),
    ],
)
def test_wrong_axes(capsys, tiny, work, axes, phrase):
    image = save(work, "image.npy", ONE_CHANNEL)

    code, _, err = oncoai(
        capsys, *predict_args(tiny.folder, image, work / "out.tif", "--axes", axes)
    )

    assert phrase in error_line(code, err)
    assert sorted(p.name for p in work.iterdir()) == ["image.npy"]


def test_2d_image_for_a_3d_model(capsys, tmp_path, work):
    model = tiny_models.volume_3d(tmp_path / "m3d")
    image = save(work, "image.npy", ONE_CHANNEL)

    code, _, err = oncoai(capsys, *predict_args(model.folder, image, work / "o.tif"))

    assert "the model needs a Z axis" in error_line(code, err)
    assert sorted(p.name for p in work.iterdir()) == ["image.npy"]


def test_rgb_into_a_one_channel_model_needs_channel(
    capsys, unet_dir, work, shared_data
):
    jpg = shared_data / "images" / "stardist_histo.jpg"
    out = work / "out.npy"

    code, _, err = oncoai(capsys, *predict_args(unet_dir, jpg, out))

    line = error_line(code, err)
    assert "the model takes 1 channel(s) but the image has 3" in line
    assert "--channel" in line
    assert list(work.iterdir()) == []

    code, _, err = oncoai(capsys, *predict_args(unet_dir, jpg, out, "--channel", "5"))
    assert "channel 5 is out of range" in error_line(code, err)

    code, _, err = oncoai(capsys, *predict_args(unet_dir, jpg, out, "--channel", "1"))
    assert code == 0, err
    probability = np.load(out)
    assert probability.shape == (1, 300, 500)
    assert 0.0 <= probability.min() and probability.max() <= 1.0


def test_unknown_output_extension(capsys, tiny, work):
    image = save(work, "image.npy", ONE_CHANNEL)

    code, _, err = oncoai(capsys, *predict_args(tiny.folder, image, work / "out.xyz"))

    line = error_line(code, err)
    assert "cannot tell the output format of 'out.xyz'" in line
    assert ".tif" in line and ".ome.zarr" in line and ".npy" in line
    assert sorted(p.name for p in work.iterdir()) == ["image.npy"]


def test_missing_output_folder(capsys, tiny, work):
    image = save(work, "image.npy", ONE_CHANNEL)

    code, _, err = oncoai(
        capsys, *predict_args(tiny.folder, image, work / "absent" / "out.tif")
    )

    assert "does not exist; create it first" in error_line(code, err)


def test_tile_0_on_a_fixed_size_model_larger_image(capsys, tmp_path, work):
    model = tiny_models.fixed_size(tmp_path / "fixed", size=64)
    image = save(work, "image.npy", np.zeros((100, 100), np.float32))

    code, _, err = oncoai(
        capsys, *predict_args(model.folder, image, work / "o.tif", "--tile", "0")
    )

    assert "takes exactly 64 px along Y" in error_line(code, err)


def test_unavailable_cuda_device(capsys, tiny, work):
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present here")
    image = save(work, "image.npy", ONE_CHANNEL)

    code, _, err = oncoai(
        capsys, *predict_args(tiny.folder, image, work / "o.tif", "--device", "cuda")
    )

    assert "no CUDA GPU is available" in error_line(code, err)
    assert sorted(p.name for p in work.iterdir()) == ["image.npy"]


# -- bad models --------------------------------------------------------------------


def copy_model(model: tiny_models.TinyModel, dest: Path) -> Path:
    shutil.copytree(model.folder, dest)
    return dest


@pytest.mark.parametrize(
    ("weights", "phrase"),
    [
        ("caffe", "invalid --weights"),
        ("onnx", "the model has no 'onnx' weights; it has torchscript"),
    ],
)
def test_unknown_weights_format(capsys, tiny, work, weights, phrase):
    image = save(work, "image.npy", ONE_CHANNEL)

    code, _, err = oncoai(
        capsys,
        *predict_args(tiny.folder, image, work / "o.tif", "--weights", weights),
    )

    assert phrase in error_line(code, err)
    assert sorted(p.name for p in work.iterdir()) == ["image.npy"]


def test_remote_weights_are_not_downloaded(capsys, unet_dir, work):
    image = save(work, "image.npy", ONE_CHANNEL)

    code, _, err = oncoai(
        capsys,
        *predict_args(
            unet_dir, image, work / "o.tif", "--weights", "pytorch_state_dict"
        ),
    )

    line = error_line(code, err)
    assert "which OncoAI does not download while loading" in line
    assert "http://files.ilastik.org/" in line


def test_invalid_rdf(capsys, tiny, tmp_path, work):
    folder = copy_model(tiny, tmp_path / "broken")
    rdf = folder / "rdf.yaml"
    rdf.write_text(rdf.read_text().replace("inputs:", "inputz:"))
    image = save(work, "image.npy", ONE_CHANNEL)

    code, _, err = oncoai(capsys, *predict_args(folder, image, work / "o.tif"))
    line = error_line(code, err)
    assert "is invalid" in line and "inputs: Field required" in line

    code, _, err = oncoai(capsys, "models", "test", folder)
    assert "is invalid" in error_line(code, err)
    assert sorted(p.name for p in work.iterdir()) == ["image.npy"]


def test_rdf_that_is_not_yaml(capsys, tmp_path, work):
    folder = tmp_path / "garbage"
    folder.mkdir()
    (folder / "rdf.yaml").write_text("inputs: [unclosed\n  - : :\n")
    image = save(work, "image.npy", ONE_CHANNEL)

    code, _, err = oncoai(capsys, *predict_args(folder, image, work / "o.tif"))

    assert "is not valid YAML" in error_line(code, err)


def test_weights_sha256_mismatch(capsys, tiny, tmp_path, work):
    folder = copy_model(tiny, tmp_path / "tampered")
    with open(folder / "weights.pt", "ab") as f:
        f.write(b"\0")  # the file changed after the RDF was written
    actual = tiny_models.sha256(folder / "weights.pt")
    image = save(work, "image.npy", ONE_CHANNEL)

    code, _, err = oncoai(capsys, *predict_args(folder, image, work / "o.tif"))

    line = error_line(code, err)
    assert f"sha256 of weights.pt is {actual} but the model says" in line
    assert sorted(p.name for p in work.iterdir()) == ["image.npy"]


def test_legacy_csbdeep_zip(capsys, shared_data, work):
    legacy = (
        shared_data
        / "bioimageio"
        / "n2v_fiji_legacy_csbdeep"
        / "format-0.2.0-csbdeep.bioimage.io.zip"
    )
    image = save(work, "image.npy", ONE_CHANNEL)

    code, _, err = oncoai(capsys, *predict_args(legacy, image, work / "o.tif"))
    line = error_line(code, err)
    assert "is a legacy bioimage.io package (format '0.2.0-csbdeep'" in line
    assert "look for a newer version of this model on bioimage.io" in line

    code, _, err = oncoai(capsys, "models", "test", legacy)
    assert "legacy bioimage.io package" in error_line(code, err)
    assert sorted(p.name for p in work.iterdir()) == ["image.npy"]


def test_tensorflow_only_model_names_the_extra(capsys, shared_data, work):
    if importlib.util.find_spec("tensorflow") is not None:
        pytest.skip("TensorFlow is installed here")
    model = shared_data / "bioimageio" / "dummy_tf_v0_4"
    image = save(work, "image.npy", ONE_CHANNEL)

    code, _, err = oncoai(capsys, *predict_args(model, image, work / "o.tif"))
    line = error_line(code, err)
    assert "TensorFlow" in line and "napari-oncoai[tensorflow]" in line

    code, _, err = oncoai(capsys, "models", "test", model)
    assert "napari-oncoai[tensorflow]" in error_line(code, err)
    assert sorted(p.name for p in work.iterdir()) == ["image.npy"]


def test_zip_slip_is_refused_by_models_import(capsys, tmp_path):
    archive = tmp_path / "inside" / "evil.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("rdf.yaml", "format_version: 0.5.4\ntype: model\nname: evil\n")
        zf.writestr("../escaped.txt", "written outside the package")

    code, _, err = oncoai(capsys, "models", "import", archive)

    line = error_line(code, err)
    assert "unsafe entry '../escaped.txt'" in line
    assert list(tmp_path.rglob("escaped.txt")) == []
    assert list(cache_dir().rglob("escaped.txt")) == []
    assert list_models() == []


# -- the trust boundary ------------------------------------------------------------


def test_state_dict_code_runs_only_after_import(capsys, tmp_path, work, monkeypatch):
    model = tiny_models.state_dict_model(tmp_path / "sd")
    image = save(work, "image.npy", ONE_CHANNEL)
    out = work / "out.npy"

    code, _, err = oncoai(capsys, *predict_args(model.folder, image, out))
    line = error_line(code, err)
    assert "runs only for models you imported" in line
    assert f"oncoai models import {model.folder}" in line
    assert sorted(p.name for p in work.iterdir()) == ["image.npy"]

    code, out_text, err = oncoai(capsys, "models", "import", model.folder)
    assert code == 0, err
    (cached,) = list_models()
    assert cached.trusted

    calls: list[dict] = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        assert kwargs.get("weights_only") is True
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    code, _, err = oncoai(capsys, *predict_args(cached.id, image, out))

    assert code == 0, err
    assert len(calls) == 1
    np.testing.assert_allclose(
        np.load(out), model.run_yx(ONE_CHANNEL), rtol=0, atol=1e-5
    )


# -- the real console script -------------------------------------------------------


def test_console_script_prints_one_line_and_exits_2(tmp_path):
    script = Path(sys.executable).with_name("oncoai")
    assert script.exists(), "the package is not pip-installed; run make install"
    out = tmp_path / "out.tif"
    env = {**os.environ, "ONCOAI_CACHE_DIR": str(tmp_path / "cache")}

    proc = subprocess.run(
        [
            str(script),
            "predict",
            "--model",
            str(tmp_path / "no-such-model"),
            str(tmp_path / "image.tif"),
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )

    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [x for x in proc.stderr.splitlines() if not _noise(x)]
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "neither an existing file or folder nor a cached model" in lines[0]
    assert not out.exists()
