"""QuPath projects read without QuPath, and ``oncoai qupath run`` on the shared one."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath, PureWindowsPath

import pytest
from shapely.geometry import Polygon, shape

from model_zoo.errors import OncoAIError
from qupath_bridge.geojson import detections_of, read_geojson, write_geojson
from qupath_bridge.project import (
    IMPORT_SCRIPT,
    QuPathProject,
    qupath_installation,
    uri_to_path,
)

NAMES = ["Edu+_RFP+_(3).tif", "Edu+_RFP+_(4).tif"]


def oncoai(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "model_zoo.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def qupath_run_on_cpu(
    project: Path, model: Path, out: Path, *options: str | Path
) -> subprocess.CompletedProcess:
    """``oncoai qupath run`` on the CPU, writing into ``out``."""
    return oncoai(
        "qupath",
        "run",
        str(project),
        "--model",
        str(model),
        "--device",
        "cpu",
        "-o",
        str(out),
        *map(str, options),
    )


def test_reads_entries_ids_uris_and_finds_moved_images(example_project):
    project = QuPathProject.open(example_project)

    assert project.version == "0.2.0-m12"
    assert [i.name for i in project.images] == NAMES
    assert [i.entry_id for i in project.images] == ["1", "2"]
    first = project.images[0]
    # The stored URI is the author's machine; the image is found in the project.
    assert first.uri.startswith("file:///Users/mweigert/")
    assert not Path(uri_to_path(first.uri)).exists()
    assert first.path == (example_project / "images" / NAMES[0]).resolve()
    assert first.channel_names == [f"c:{i}/3 - #157+edu24hOnly #3" for i in (1, 2, 3)]
    assert first.pixel_size == pytest.approx((0.41513292348643577,) * 2)
    assert (first.width, first.height) == (512, 512)
    assert project.image("2").name == NAMES[1]
    assert project.image(NAMES[1]).entry_id == "2"


def test_opens_the_qpproj_file_and_reports_missing_images(example_project, tmp_path):
    moved = tmp_path / "copy"
    shutil.copytree(example_project, moved)
    (moved / "images" / NAMES[1]).unlink()

    project = QuPathProject.open(moved / "project.qpproj")
    assert project.images[0].path is not None
    assert project.images[1].path is None
    listing = oncoai("qupath", "list", str(moved), timeout=120)
    assert listing.returncode == 1
    assert "NOT FOUND" in listing.stdout and NAMES[0] in listing.stdout


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("file:/data/a%20b/x+y.tif", PurePosixPath("/data/a b/x+y.tif")),
        ("file:///data/slide.svs", PurePosixPath("/data/slide.svs")),
        ("file:/C:/Users/me/slide.svs", PureWindowsPath("C:/Users/me/slide.svs")),
        ("file://server/share/slide.svs", PureWindowsPath("//server/share/slide.svs")),
        ("https://example.org/slide.svs", None),
    ],
)
def test_uri_to_path(uri, expected):
    assert uri_to_path(uri) == expected


def test_not_a_project(tmp_path):
    with pytest.raises(OncoAIError, match="no project.qpproj"):
        QuPathProject.open(tmp_path)
    bad = tmp_path / "project.qpproj"
    bad.write_text("{broken")
    with pytest.raises(OncoAIError, match="not a readable QuPath project"):
        QuPathProject.open(bad)
    with pytest.raises(OncoAIError, match="QuPath project not found"):
        QuPathProject.open(tmp_path / "elsewhere")


def test_run_without_channel_names_the_channels(example_project, unet_dir, tmp_path):
    out = tmp_path / "out"
    done = qupath_run_on_cpu(example_project, unet_dir, out)
    assert done.returncode == 2
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith("error: the model takes 1 channel(s) but the image has 3")
    assert "c:1/3 - #157+edu24hOnly #3" in error and "--channel" in error
    assert not list(out.glob("*.geojson")), "nothing may be written after an error"


def test_run_writes_one_geojson_per_image_and_an_import_script(
    example_project, unet_dir, tmp_path, check_geojson
):
    # The second image runs inside an annotation exported from QuPath; the
    # first runs whole.
    region = Polygon([(60, 60), (400, 80), (380, 420), (90, 380)])
    annotations = tmp_path / "annotations"
    annotations.mkdir()
    write_geojson(
        [
            {
                "type": "Feature",
                "geometry": region.__geo_interface__,
                "properties": {"objectType": "annotation"},
            }
        ],
        annotations / "Edu+_RFP+_(4).geojson",
    )
    out = tmp_path / "results"

    done = qupath_run_on_cpu(
        example_project, unet_dir, out, "--channel", "0", "--annotations", annotations
    )

    assert done.returncode == 0, done.stderr
    assert "2 image(s)" in done.stdout
    files = sorted(p.name for p in out.glob("*.geojson"))
    assert files == ["Edu+_RFP+_(3).geojson", "Edu+_RFP+_(4).geojson"]
    for name in files:
        check_geojson(out / name, "detection", min_features=5, size=(512, 512))

    whole = read_geojson(out / files[0])
    assert shape(whole[0].geometry).bounds == (0.0, 0.0, 512.0, 512.0)
    measurement_names = set(detections_of(whole)[0].measurements)
    assert {"c:1/3 - #157+edu24hOnly #3: Mean", "Area µm^2"} <= measurement_names

    inside = read_geojson(out / files[1])
    assert inside[0].geometry.equals(region)
    assert all(region.contains(d.geometry.centroid) for d in detections_of(inside))

    script = (out / IMPORT_SCRIPT).read_text(encoding="utf-8")
    for entry_id, name in (("1", files[0]), ("2", files[1])):
        assert f"'{entry_id}': '{(out / name).resolve()}'" in script
    assert "QuPath 0.5 and 0.6" in script


def test_bad_options_and_paths(example_project, unet_dir, tmp_path):
    bad = oncoai(
        "qupath",
        "run",
        str(example_project),
        "--model",
        str(unet_dir),
        "--threshold",
        "2",
        timeout=120,
    )
    assert bad.returncode == 2 and "threshold" in bad.stderr
    missing = oncoai(
        "qupath", "run", str(tmp_path / "nowhere"), "--model", "x", timeout=120
    )
    assert missing.returncode == 2 and "QuPath project not found" in missing.stderr


@pytest.mark.skipif(
    qupath_installation() is None,
    reason="no QuPath installation that paquo can find (QuPath cannot be installed "
    "on CI machines, and paquo is the optional [qupath] extra); --write-project "
    "needs both",
)
def test_write_project_through_paquo(example_project, unet_dir, tmp_path):
    project = tmp_path / "project"
    shutil.copytree(example_project, project)
    done = oncoai(
        "qupath",
        "run",
        str(project),
        "--model",
        str(unet_dir),
        "--channel",
        "0",
        "--write-project",
    )
    assert done.returncode == 0, done.stderr
    from paquo.projects import QuPathProject as PaquoProject

    with PaquoProject(str(project), mode="r") as qp:
        assert all(len(image.hierarchy.detections) >= 5 for image in qp.images)


def test_write_project_without_qupath_says_what_is_missing(example_project, tmp_path):
    if qupath_installation() is not None:
        pytest.skip("QuPath is installed here; the error path cannot be reached")
    from qupath_bridge.project import write_with_paquo

    project = QuPathProject.open(example_project)
    with pytest.raises(OncoAIError, match=r"needs paquo and a QuPath installation"):
        write_with_paquo(project, [])


def test_import_script_paths_are_quoted_for_groovy(tmp_path):
    from qupath_bridge.project import ProjectImage, write_import_script

    odd = tmp_path / "it's $HOME\\x.geojson"
    odd.write_text("[]")
    entry = ProjectImage("7", "x.tif", None, None)
    script = write_import_script([(entry, odd)], tmp_path).read_text()
    quoted = str(odd.resolve()).replace("\\", "\\\\").replace("'", "\\'")
    assert f"'7': '{quoted}'" in script
