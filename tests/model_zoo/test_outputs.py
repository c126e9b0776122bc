"""Output writers: TIFF, OME-Zarr and .npy, each with provenance and a sidecar."""

from __future__ import annotations

import contextlib
import json
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from model_zoo import __version__, cli, streaming
from model_zoo.config import PredictionConfig
from model_zoo.outputs import PROVENANCE_TAG, write_result
from model_zoo.prediction import predict

from . import tiny_models
from ._helpers import predict_args


@pytest.fixture()
def model(tmp_path) -> tiny_models.TinyModel:
    """Two channels in, three out: outputs with a real channel axis."""
    return tiny_models.multichannel(tmp_path / "model")


@pytest.fixture()
def image() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(2, 60, 44)).astype(np.float32)


@pytest.fixture()
def result(model, image):
    config = PredictionConfig(model=str(model.folder), device="cpu", axes="CYX")
    return predict(config, image)


def check_provenance(
    provenance: dict, model: tiny_models.TinyModel, axes: str | None = "CYX"
) -> None:
    assert provenance["model_id"] == "model"  # the folder name: the RDF has no id
    assert provenance["model_name"] == "tiny multichannel"
    assert provenance["weights_format"] == "torchscript"
    assert provenance["weights_sha256"] == tiny_models.sha256(
        model.folder / "weights.pt"
    )
    assert provenance["oncoai_version"] == __version__
    assert provenance["parameters"]["model"] == str(model.folder)
    assert provenance["parameters"]["axes"] == axes
    assert provenance["parameters"]["device"] == "cpu"
    assert datetime.fromisoformat(provenance["created"]).tzinfo is not None
    assert provenance["input"]


def check_sidecar(path: Path, model: tiny_models.TinyModel) -> None:
    sidecar = path.with_name(path.name + ".oncoai.json")
    data = json.loads(sidecar.read_text())
    check_provenance(data, model)
    assert data["output"] == path.name


def test_tif_carries_provenance_and_reads_back(tmp_path, model, image, result):
    path = tmp_path / "out.tif"

    write_result(result, path)

    expected = model.run_yx(image, channel_axis=0)
    with tifffile.TiffFile(path) as tif:
        data = tif.asarray()
        tag = tif.pages[0].tags[PROVENANCE_TAG].value
        info = tif.imagej_metadata["Info"]
    assert data.shape == (3, 60, 44)
    np.testing.assert_allclose(data, expected, rtol=0, atol=1e-5)
    check_provenance(json.loads(tag), model)
    check_provenance(json.loads(info), model)
    check_sidecar(path, model)


def test_ome_zarr_has_multiscales_and_provenance(tmp_path, model, image, result):
    path = tmp_path / "out.ome.zarr"

    write_result(result, path)

    # OME-Zarr 0.4 is zarr v2: .zgroup/.zattrs at the root, .zarray per level.
    assert (path / ".zgroup").is_file() and (path / ".zattrs").is_file()
    assert (path / "0" / ".zarray").is_file()
    root = zarr.open_group(str(path), mode="r")
    (multiscale,) = root.attrs["multiscales"]
    assert multiscale["version"] == "0.4"
    assert [a["name"] for a in multiscale["axes"]] == ["c", "y", "x"]
    assert multiscale["datasets"][0]["path"] == "0"
    check_provenance(root.attrs["oncoai"], model)
    np.testing.assert_allclose(
        root["0"][:], model.run_yx(image, channel_axis=0), rtol=0, atol=1e-5
    )
    check_sidecar(path, model)


def test_npy_holds_the_main_output(tmp_path, model, image, result):
    path = tmp_path / "out.npy"

    write_result(result, path)

    data = np.load(path)
    assert data.shape == (3, 60, 44)
    np.testing.assert_allclose(
        data, model.run_yx(image, channel_axis=0), rtol=0, atol=1e-5
    )
    check_sidecar(path, model)


def test_writing_again_replaces_and_leaves_no_temporary_files(tmp_path, result):
    for _ in range(2):
        write_result(result, tmp_path / "out.ome.zarr")
        write_result(result, tmp_path / "out.tif")

    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "model",
        "out.ome.zarr",
        "out.ome.zarr.oncoai.json",
        "out.tif",
        "out.tif.oncoai.json",
    ]


@pytest.mark.parametrize("suffix", [".tif", ".ome.zarr", ".npy"])
def test_large_output_streams_through_an_on_disk_store(
    tmp_path, monkeypatch, capsys, model, image, suffix
):
    work = tmp_path / "work"
    work.mkdir()
    tifffile.imwrite(work / "in.tif", image, imagej=True, metadata={"axes": "CYX"})
    stores: list[object] = []
    original = streaming.disk_outputs

    @contextlib.contextmanager
    def spying(folder, *args, **kwargs):
        with original(folder, *args, **kwargs) as factory:

            def recording(name, shape, dtype):
                store = factory(name, shape, dtype)
                stores.append(store)
                return store

            yield recording

    monkeypatch.setattr(streaming, "disk_outputs", spying)
    monkeypatch.setattr(streaming, "IN_MEMORY_LIMIT", 1000)
    out = work / f"out{suffix}"

    code = cli.main(predict_args(model.folder, work / "in.tif", out, "--tile", 32))

    assert code == 0, capsys.readouterr().err
    assert len(stores) == 1 and isinstance(stores[0], zarr.Array)
    expected = model.run_yx(image, channel_axis=0)
    if suffix == ".tif":
        with tifffile.TiffFile(out) as tif:
            data = tif.asarray()
            provenance = json.loads(tif.pages[0].tags[PROVENANCE_TAG].value)
        check_provenance(provenance, model, axes=None)
    elif suffix == ".ome.zarr":
        data = zarr.open_group(str(out), mode="r")["0"][:]
    else:
        data = np.load(out)
    assert data.shape == (3, 60, 44)
    np.testing.assert_allclose(data, expected, rtol=0, atol=1e-5)
    # The temporary store is gone; only the output and its sidecar remain.
    assert sorted(p.name for p in work.iterdir()) == sorted(
        ["in.tif", out.name, out.name + ".oncoai.json"]
    )


def test_large_tif_of_a_time_series_keeps_its_axes(tmp_path, monkeypatch, capsys):
    model = tiny_models.plain_2d(tmp_path / "model")
    stack = np.random.default_rng(1).normal(size=(2, 40, 50)).astype(np.float32)
    np.save(tmp_path / "in.npy", stack)
    monkeypatch.setattr(streaming, "IN_MEMORY_LIMIT", 1000)
    out = tmp_path / "out.tif"

    code = cli.main(
        predict_args(model.folder, tmp_path / "in.npy", out, "--axes", "TYX")
    )

    assert code == 0, capsys.readouterr().err
    with tifffile.TiffFile(out) as tif:
        series = tif.series[0]
        assert series.axes == "TCYX"
        data = series.asarray()
    expected = np.stack([model.run_yx(frame) for frame in stack])
    assert data.shape == (2, 1, 40, 50)
    np.testing.assert_allclose(data, expected, rtol=0, atol=1e-5)


def test_every_output_of_a_two_output_model_goes_to_the_ome_zarr(tmp_path, capsys):
    model = tiny_models.two_in_two_out(tmp_path / "model")
    rng = np.random.default_rng(2)
    a = rng.normal(size=(40, 36)).astype(np.float32)
    b = rng.normal(size=(40, 36)).astype(np.float32)
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    out = tmp_path / "out.ome.zarr"

    code = cli.main(
        predict_args(model.folder, [tmp_path / "a.npy", tmp_path / "b.npy"], out)
    )

    assert code == 0, capsys.readouterr().err
    root = zarr.open_group(str(out), mode="r")
    expected = dict(zip(model.output_ids, model.forward(a[None, None], b[None, None])))
    for key in ("sum", "product"):
        assert root[key].attrs["multiscales"][0]["datasets"][0]["path"] == "0"
        assert root[key].attrs["oncoai"]["model_name"] == "tiny two in two out"
        np.testing.assert_allclose(
            root[key]["0"][:], expected[key][0], rtol=0, atol=1e-5
        )


def test_integers_take_a_pixel_type_imagej_stores_exactly() -> None:
    from model_zoo.errors import OncoAIError
    from model_zoo.outputs import imagej_integers

    assert imagej_integers(np.array([[0, 65535]], dtype=np.int64)).dtype == np.uint16
    wide = imagej_integers(np.array([[0, 70000]], dtype=np.int32))
    assert wide.dtype == np.float32 and wide[0, 1] == 70000
    assert imagej_integers(np.array([[-1, 3]])).dtype == np.float32
    with pytest.raises(OncoAIError, match="limit 2\\*\\*24"):
        imagej_integers(np.array([[2**24]], dtype=np.int64))
