"""The reader takes model packages and OncoAI outputs, and nothing else."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from model_zoo.cache import list_models
from model_zoo.outputs import write_result
from napari_oncoai._reader import napari_get_reader, read_model, read_output


@pytest.fixture(scope="module")
def model_zip(tmp_path_factory, unet_dir: Path) -> Path:
    """The shared U-Net packed as a bioimage.io zip, inside one folder."""
    target = tmp_path_factory.mktemp("zips") / "unet2d_nuclei_broad.zip"
    with zipfile.ZipFile(target, "w") as archive:
        for file in sorted(unet_dir.iterdir()):
            archive.write(file, f"unet2d_nuclei_broad/{file.name}")
    return target


@pytest.mark.parametrize(
    "relative",
    [
        "images/stardist_img2d.tif",  # a plain TIFF: napari's own reader opens it
        "he_tiles/histolab/tissue-level0-4302-10273-4814-10785.png",
        "imagej_rois",  # a folder without a model description
        "wsi/broken.svs",
        "does/not/exist.zip",
    ],
)
def test_returns_none_for_what_it_does_not_read(shared_data, relative) -> None:
    assert napari_get_reader(str(shared_data / relative)) is None


def test_returns_none_for_other_zips_lists_and_bad_yaml(tmp_path, shared_data) -> None:
    rois = tmp_path / "RoiSet.zip"
    with zipfile.ZipFile(rois, "w") as archive:
        archive.writestr("0001-0002.roi", b"Iout")
    not_zip = tmp_path / "fake.zip"
    not_zip.write_bytes(b"not a zip at all")
    image = str(shared_data / "images" / "stardist_img2d.tif")
    assert napari_get_reader(str(rois)) is None
    assert napari_get_reader(str(not_zip)) is None
    assert napari_get_reader([image, image]) is None
    assert napari_get_reader(str(tmp_path / "environment.yaml")) is None


def test_opens_a_model_zip_into_the_cache_and_shows_its_sample(model_zip) -> None:
    reader = napari_get_reader(str(model_zip))
    assert reader is read_model
    ((data, meta, kind),) = reader(str(model_zip))
    assert kind == "image"
    assert data.shape == (512, 512)
    assert meta["name"] == "UNet 2D Nuclei Broad · sample"
    assert [m.name for m in list_models()] == ["UNet 2D Nuclei Broad"]


def test_opens_a_model_folder_and_its_rdf(tmp_path, unet_dir) -> None:
    folder = tmp_path / "my model"
    shutil.copytree(unet_dir, folder)
    assert napari_get_reader(str(folder)) is read_model
    assert napari_get_reader(str(folder / "bioimageio.yaml")) is read_model
    ((data, _, _),) = read_model([str(folder)])
    expected = np.load(unet_dir / "test_input.npy")[0, 0]
    assert data.shape == expected.shape


def test_a_broken_package_is_a_notification_not_a_traceback(tmp_path, unet_dir):
    from napari.utils.notifications import notification_manager

    folder = tmp_path / "broken"
    shutil.copytree(unet_dir, folder)
    (folder / "weights.onnx").write_bytes(b"tampered")
    before = len(notification_manager.records)
    assert read_model(str(folder)) == [(None,)]
    (note,) = notification_manager.records[before:]
    assert "weights.onnx" in str(note.message)
    assert "\n" not in str(note.message)
    assert list_models() == []


@pytest.fixture(scope="module")
def written_outputs(tmp_path_factory, nuclei_result) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("outputs")
    paths = {
        "probability": folder / "nuclei_probability.tif",
        "labels": folder / "nuclei_labels.tif",
        "zarr": folder / "nuclei.ome.zarr",
    }
    for path in paths.values():
        write_result(nuclei_result, path)
    return paths


def test_opens_oncoai_tiffs_as_the_right_layer_types(
    written_outputs, nuclei_result
) -> None:
    model_id = nuclei_result.provenance["model_id"]
    probability = written_outputs["probability"]
    assert napari_get_reader(str(probability)) is read_output
    ((data, meta, kind),) = read_output(str(probability))
    assert kind == "image"
    assert data.shape == (512, 512)
    assert meta["metadata"]["oncoai"]["model_id"] == model_id
    np.testing.assert_allclose(
        np.asarray(data), nuclei_result.outputs["probability"][0], atol=1e-6
    )

    labels = written_outputs["labels"]
    assert napari_get_reader(str(labels)) is read_output
    ((data, meta, kind),) = read_output(str(labels))
    assert kind == "labels"
    np.testing.assert_array_equal(np.asarray(data), nuclei_result.instances.labels)
    assert meta["metadata"]["oncoai"]["model_id"] == model_id


def test_opens_oncoai_zarr(written_outputs, nuclei_result) -> None:
    path = written_outputs["zarr"]
    assert napari_get_reader(str(path)) is read_output
    ((data, meta, kind),) = read_output(str(path))
    assert kind == "image"
    assert data.shape == (512, 512)
    assert (
        meta["metadata"]["oncoai"]["model_id"] == nuclei_result.provenance["model_id"]
    )


def test_napari_opens_models_and_outputs_through_the_manifest(
    make_napari_viewer, model_zip, written_outputs
) -> None:
    viewer = make_napari_viewer()
    viewer.open(str(model_zip), plugin="napari-oncoai")
    viewer.open(str(written_outputs["labels"]), plugin="napari-oncoai")
    assert [type(layer).__name__ for layer in viewer.layers] == ["Image", "Labels"]
    assert viewer.layers[0].name == "UNet 2D Nuclei Broad · sample"
