"""The QuPath Groovy scripts, compiled by a real Groovy and run against the service.

QuPath itself cannot run here.  The scripts run under Debian's Groovy with a
STAND-IN for the few QuPath calls they make (``tests/qupath_bridge/qupath_standin``);
their HTTP calls go to a real ``oncoai serve`` that runs a real model.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from shapely.geometry import Polygon, box

from model_zoo.result import PredictionResult
from qupath_bridge.geojson import result_to_features, write_geojson
from qupath_bridge.project import ProjectImage, write_import_script

from .conftest import SCRIPTS, STANDIN

SCRIPT_NAMES = [
    "oncoai_detect_selected.groovy",
    "oncoai_import_results.groovy",
    "oncoai_run_project.groovy",
]


def test_every_packaged_script_is_listed_here():
    assert sorted(p.name for p in SCRIPTS.glob("*.groovy")) == SCRIPT_NAMES


def service_client(name: str) -> str:
    """The service client block of a packaged script, its marker lines included."""
    text = (SCRIPTS / name).read_text(encoding="utf-8")
    start = text.index("// ---- OncoAI service client:")
    end_marker = "// ---- end of the OncoAI service client ----\n"
    return text[start : text.index(end_marker, start) + len(end_marker)]


def test_the_two_service_clients_stay_byte_identical():
    # Each script is pasted into QuPath alone, so the client is copied, not shared.
    detect = service_client("oncoai_detect_selected.groovy")
    assert "class OncoAIService {" in detect
    assert "String imagePath(def server) {" in detect
    assert service_client("oncoai_run_project.groovy") == detect


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_scripts_compile_and_state_their_qupath_versions(
    name, groovy_env, standin_classes, tmp_path
):
    script = SCRIPTS / name
    assert "Targets QuPath 0.5 and 0.6" in script.read_text(encoding="utf-8")
    done = compile_script(script, groovy_env, standin_classes, tmp_path)
    assert done.returncode == 0, done.stderr


def test_a_syntax_error_fails_the_compile_check(groovy_env, standin_classes, tmp_path):
    # with_setting checks the line is there, so the copy really is broken.
    broken = with_setting(
        SCRIPT_NAMES[0],
        "if (annotations.isEmpty())",
        "if (annotations.isEmpty(",
        tmp_path,
    )
    done = compile_script(broken, groovy_env, standin_classes, tmp_path)
    assert done.returncode != 0


def compile_script(
    script: Path, groovy_env: dict[str, str], standin_classes: Path, folder: Path
) -> subprocess.CompletedProcess:
    """Compile a script against the QuPath stand-in, classes written to ``folder``."""
    return subprocess.run(
        ["groovyc", "-cp", str(standin_classes), "-d", str(folder), str(script)],
        env=groovy_env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def with_setting(name: str, line: str, new_line: str, folder: Path) -> Path:
    """A copy of a packaged script with one setting changed, as a user would."""
    text = (SCRIPTS / name).read_text(encoding="utf-8")
    assert line in text
    copy = folder / name
    copy.write_text(text.replace(line, new_line))
    return copy


def run_in_standin(
    script: Path,
    scene: dict,
    folder: Path,
    groovy_env: dict[str, str],
    standin_classes: Path,
    config_dir: Path,
) -> tuple[subprocess.CompletedProcess, dict]:
    """Run a script in the QuPath stand-in; return the process and the hierarchy."""
    scene_file, out_file = folder / "scene.json", folder / "out.json"
    scene_file.write_text(json.dumps(scene))
    done = subprocess.run(
        [
            "groovy",
            "-cp",
            str(standin_classes),
            str(STANDIN / "RunWithStandIn.groovy"),
            str(scene_file),
            str(out_file),
            str(script),
        ],
        env={**groovy_env, "ONCOAI_CONFIG_DIR": str(config_dir)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    return done, json.loads(out_file.read_text(encoding="utf-8"))


def square(x0, y0, x1, y1) -> dict:
    return box(x0, y0, x1, y1).__geo_interface__


def one_square_scene(shared_data: Path, *, selected: bool) -> dict:
    """The nuclei image open, with one 50-pixel square annotation."""
    return {
        "images": [
            {
                "id": "1",
                "name": "x",
                "path": str(shared_data / "images" / "stardist_img2d.tif"),
                "annotations": [
                    {"selected": selected, "geometry": square(0, 0, 50, 50)}
                ],
            }
        ],
        "open": 0,
    }


def centroid_inside(obj: dict, region: Polygon) -> bool:
    x0, y0, x1, y1 = obj["bounds"]
    return region.buffer(1).contains(box(x0, y0, x1, y1).centroid)


def test_detect_selected_adds_objects_to_the_selected_annotation(
    service, shared_data, groovy_env, standin_classes, tmp_path
):
    selected = Polygon([(20, 20), (300, 30), (280, 280), (30, 260)])
    scene = {
        "images": [
            {
                "id": "1",
                "name": "stardist_img2d.tif",
                "path": str(shared_data / "images" / "stardist_img2d.tif"),
                "annotations": [
                    {
                        "name": "A",
                        "selected": True,
                        "geometry": selected.__geo_interface__,
                    },
                    {
                        "name": "B",
                        "selected": False,
                        "geometry": square(320, 320, 500, 500),
                    },
                ],
            }
        ],
        "open": 0,
    }
    # The packaged script as it ships, with its default model oncoai-nuclei.
    script = SCRIPTS / "oncoai_detect_selected.groovy"

    done, hierarchy = run_in_standin(
        script, scene, tmp_path, groovy_env, standin_classes, service.folder
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert "OncoAI annotation 1/1: running" in done.stdout  # progress in the log
    a, b = hierarchy["images"][0]["objects"]
    assert a["name"] == "A" and a["locked"]
    assert b["children"] == [], "an unselected annotation must be left alone"
    found = a["children"]
    assert len(found) >= 10
    assert {o["type"] for o in found} == {"detection"}
    assert {o["class"] for o in found} == {"Nucleus"}
    assert all("Area px^2" in o["measurements"] for o in found)
    assert all(centroid_inside(o, selected) for o in found)

    # Running again replaces the detections instead of adding a second set.
    again, hierarchy = run_in_standin(
        script, scene, tmp_path, groovy_env, standin_classes, service.folder
    )
    assert again.returncode == 0, again.stderr
    assert len(hierarchy["images"][0]["objects"][0]["children"]) == len(found)


def test_detect_selected_without_a_service_says_how_to_start_it(
    groovy_env, standin_classes, shared_data, tmp_path
):
    done, out = run_in_standin(
        SCRIPTS / "oncoai_detect_selected.groovy",
        one_square_scene(shared_data, selected=True),
        tmp_path,
        groovy_env,
        standin_classes,
        tmp_path / "no-service",
    )
    assert done.returncode == 1
    assert "OncoAI service not running" in out["error"]
    assert "oncoai serve" in out["error"]


def test_detect_selected_needs_a_selection(
    service, groovy_env, standin_classes, shared_data, tmp_path
):
    done, out = run_in_standin(
        SCRIPTS / "oncoai_detect_selected.groovy",
        one_square_scene(shared_data, selected=False),
        tmp_path,
        groovy_env,
        standin_classes,
        service.folder,
    )
    assert done.returncode == 1
    assert "select one or more area annotations" in out["error"]


def test_run_project_processes_and_saves_every_image(
    service, example_project, groovy_env, standin_classes, tmp_path
):
    images = example_project / "images"
    region = square(40, 40, 200, 220)
    scene = {
        "images": [
            {
                "id": "1",
                "name": "Edu+_RFP+_(3).tif",
                "path": str(images / "Edu+_RFP+_(3).tif"),
                "annotations": [{"name": "R", "geometry": region}],
            },
            {
                "id": "2",
                "name": "Edu+_RFP+_(4).tif",
                "path": str(images / "Edu+_RFP+_(4).tif"),
            },
        ],
        "open": -1,
        "project": True,
    }
    # The project's images have 3 channels; the nucleus model takes channel 0.
    script = with_setting(
        "oncoai_run_project.groovy", "def CHANNEL = null", "def CHANNEL = 0", tmp_path
    )

    done, hierarchy = run_in_standin(
        script, scene, tmp_path, groovy_env, standin_classes, service.folder
    )

    assert done.returncode == 0, done.stdout + done.stderr
    first, second = hierarchy["images"]
    assert first["saved"] == 1
    assert len(first["objects"][0]["children"]) >= 3
    assert "no area annotations, skipped" in done.stdout
    assert second["saved"] == 0 and second["objects"] == []
    assert "project done: 1 image(s) processed, 0 failed" in done.stdout


def test_generated_import_script_imports_every_image(
    example_project, groovy_env, standin_classes, tmp_path
):
    # Results written without a model run: the import path is what is tested.
    written = []
    for entry_id, name in (("1", "Edu+_RFP+_(3)"), ("2", "Edu+_RFP+_(4)")):
        labels = np.zeros((64, 64), np.int32)
        labels[10:20, 10:20] = 1
        labels[30:50, 30:40] = 2
        features = result_to_features(PredictionResult.from_labels(labels))
        path = write_geojson(features, tmp_path / f"{name}.geojson")
        written.append((ProjectImage(entry_id, f"{name}.tif", None, None), path))
    script = write_import_script(written, tmp_path)

    images = example_project / "images"
    scene = {
        "images": [
            {
                "id": "1",
                "name": "Edu+_RFP+_(3).tif",
                "path": str(images / "Edu+_RFP+_(3).tif"),
            },
            {
                "id": "2",
                "name": "Edu+_RFP+_(4).tif",
                "path": str(images / "Edu+_RFP+_(4).tif"),
            },
            {"id": "3", "name": "other.tif", "path": str(images / "Edu+_RFP+_(4).tif")},
        ],
        "open": -1,
        "project": True,
    }
    done, hierarchy = run_in_standin(
        script, scene, tmp_path, groovy_env, standin_classes, tmp_path
    )

    assert done.returncode == 0, done.stdout + done.stderr
    for image in hierarchy["images"][:2]:
        assert image["saved"] == 1
        (region,) = image["objects"]
        assert region["type"] == "annotation" and region["name"] == "OncoAI: labels"
        assert [c["type"] for c in region["children"]] == ["detection", "detection"]
    assert hierarchy["images"][2]["saved"] == 0
    assert "no results for other.tif" in done.stdout
    assert "imported results for 2 image(s); 0 file(s) missing" in done.stdout
