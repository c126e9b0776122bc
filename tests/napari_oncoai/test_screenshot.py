"""A screenshot of the viewer with a result overlaid, kept as a CI artefact."""

from __future__ import annotations

import numpy as np
from skimage import io

from napari_oncoai._widget import RunModelWidget


def test_screenshot_shows_objects_over_the_image(
    qtbot, make_napari_viewer, nuclei_image, nuclei_model, artifacts
) -> None:
    # A hidden viewer's canvas renders black, so this one is shown (on Xvfb).
    viewer = make_napari_viewer(show=True)
    viewer.add_image(nuclei_image, name="nuclei", colormap="gray")
    widget = RunModelWidget(viewer)
    viewer.window.add_dock_widget(widget, name="OncoAI")
    widget.select_model(nuclei_model)
    with qtbot.waitSignal(widget.finished, timeout=300_000) as blocker:
        widget.run()
    assert blocker.args == ["done"]
    viewer.layers[-1].opacity = 0.5
    viewer.reset_view()

    target = artifacts / "napari_oncoai_result.png"
    viewer.screenshot(str(target), canvas_only=True, flash=False)
    picture = io.imread(target)[..., :3].astype(int)
    assert picture.shape[0] > 100 and picture.shape[1] > 100
    # The image is grey (r = g = b); the objects are coloured on top of it.
    coloured = np.ptp(picture, axis=-1) > 40
    assert 0.05 < coloured.mean() < 0.9, coloured.mean()
    assert picture.std() > 10


def test_sample_data_opens_the_nuclei_sample(make_napari_viewer) -> None:
    viewer = make_napari_viewer()
    viewer.open_sample("napari-oncoai", "nuclei")
    (layer,) = viewer.layers
    assert layer.name == "nuclei (OncoAI sample)"
    assert layer.data.shape == (512, 512)
    assert layer.data.dtype == np.uint16
