"""The manifest is valid and importing the plugin stays cheap."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "bioimageio", "onnxruntime")
BIN = Path(sys.executable).parent


def _python(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_npe2_validate_passes_with_imports() -> None:
    done = subprocess.run(
        [str(BIN / "npe2"), "validate", "napari-oncoai", "--imports"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "valid" in done.stdout


def test_manifest_lists_every_contribution() -> None:
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-oncoai")
    contributions = manifest.contributions
    assert [w.display_name for w in contributions.widgets] == ["Run model"]
    assert [s.key for s in contributions.sample_data] == ["nuclei"]
    written = {(w.command, tuple(w.layer_types)) for w in contributions.writers}
    for command in ("write_geojson", "write_roiset", "write_csv"):
        for kind in ("labels", "shapes", "points"):
            assert (f"napari-oncoai.{command}", (kind,)) in written


def test_import_adds_under_100_ms_and_loads_no_deep_learning() -> None:
    # napari is imported first: the plugin's cost is what comes on top of it.
    out = _python(
        "import json, sys, time\n"
        "import napari\n"
        "t = time.perf_counter()\n"
        "import napari_oncoai\n"
        "cost = time.perf_counter() - t\n"
        f"heavy = [m for m in sys.modules if m.split('.')[0] in {HEAVY!r}]\n"
        "print(json.dumps({'cost': cost, 'heavy': heavy}))\n"
    )
    report = json.loads(out.strip().splitlines()[-1])
    assert report["heavy"] == []
    assert report["cost"] < 0.1, f"import napari_oncoai took {report['cost']:.3f} s"


@pytest.mark.parametrize("module", ["_widget", "_reader", "_writer", "_sample_data"])
def test_contribution_modules_load_no_deep_learning(module: str) -> None:
    out = _python(
        f"import sys, napari_oncoai.{module}\n"
        f"print([m for m in sys.modules if m.split('.')[0] in {HEAVY!r}])\n"
    )
    assert out.strip() == "[]"
