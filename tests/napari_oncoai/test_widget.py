"""The Run model widget, driven the way a user drives it, under Xvfb."""

from __future__ import annotations

import time

import numpy as np
import pytest
from napari.layers import Image, Labels
from napari.utils.notifications import notification_manager
from qtpy.QtCore import QTimer

from napari_oncoai._widget import RunModelWidget

RUN_TIMEOUT_MS = 300_000


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


@pytest.fixture
def widget(viewer, nuclei_image) -> RunModelWidget:
    viewer.add_image(nuclei_image, name="nuclei", scale=(0.5, 0.5), translate=(5, 7))
    widget = RunModelWidget(viewer)
    viewer.window.add_dock_widget(widget, name="OncoAI")
    return widget


def _run(qtbot, widget: RunModelWidget) -> str:
    with qtbot.waitSignal(widget.finished, timeout=RUN_TIMEOUT_MS) as blocker:
        assert widget.run() is not None
    return blocker.args[0]


def _notes_since(count: int) -> list[str]:
    return [str(n.message) for n in notification_manager.records[count:]]


def test_picker_groups_models_by_task_and_describes_them(widget, unet_dir) -> None:
    from model_zoo.cache import import_model

    cached = import_model(unet_dir)
    widget.refresh_models()
    items = [widget.model_combo.itemText(i) for i in range(widget.model_combo.count())]
    assert items[0] == "Nuclei / cells"
    assert "  UNet 2D Nuclei Broad" in items
    assert items[-3:] == [
        "More",
        "  Choose a local model (zip or rdf.yaml)…",
        "  Fetch by bioimage.io id…",
    ]
    info = widget.select_model(cached.id)
    assert (info.origin, info.task, info.input_axes) == ("cache", "nuclei", "CYX")
    text = widget.model_info.text()
    assert "UNet 2D Nuclei Broad" in text
    assert "Licence: MIT" in text
    assert "Input axes: CYX" in text
    assert not widget.cover.pixmap().isNull()
    assert widget.threshold_spin.isEnabled()
    assert not widget.overlap_spin.isEnabled()  # not a StarDist model


def test_overlap_spin_is_the_nms_threshold_of_stardist_models_only(
    widget, nuclei_model, monkeypatch
) -> None:
    import dataclasses

    info = widget.select_model(nuclei_model)
    widget.overlap_spin.setValue(0.55)
    assert widget.config().nms_threshold is None  # not a StarDist model
    stardist = dataclasses.replace(info, stardist=True)
    monkeypatch.setattr(widget, "model", lambda: stardist)
    assert widget.config().nms_threshold == pytest.approx(0.55)


def test_layer_choices_follow_the_viewer(viewer, widget) -> None:
    names = lambda: [  # noqa: E731
        widget.layer_combo.itemText(i) for i in range(widget.layer_combo.count())
    ]
    assert names() == ["nuclei"]
    viewer.add_image(np.zeros((3, 64, 64)), name="stack")
    viewer.add_labels(np.zeros((64, 64), np.int32), name="masks")
    assert names() == ["nuclei", "stack"]
    viewer.layers["stack"].name = "z-stack"
    assert names() == ["nuclei", "z-stack"]
    widget.select_layer("z-stack")
    assert widget.axes_edit.placeholderText() == "ZYX"
    viewer.layers.remove("z-stack")
    assert names() == ["nuclei"]


def test_run_adds_probability_and_objects_over_the_input(
    qtbot, viewer, widget, nuclei_model
) -> None:
    info = widget.select_model(nuclei_model)
    widget.select_layer("nuclei")
    widget.device_combo.setCurrentText("cpu")
    widget.threshold_spin.setValue(0.5)
    widget.min_size_spin.setValue(10)
    assert _run(qtbot, widget) == "done"

    base = f"nuclei · {info.name}"
    assert [layer.name for layer in viewer.layers] == [
        "nuclei",
        base,
        f"{base} · objects",
    ]
    probability, objects = viewer.layers[base], viewer.layers[f"{base} · objects"]
    assert isinstance(probability, Image) and isinstance(objects, Labels)
    for layer in (probability, objects):
        assert layer.data.shape == (512, 512)
        np.testing.assert_allclose(layer.scale, (0.5, 0.5))
        np.testing.assert_allclose(layer.translate, (5, 7))
        provenance = layer.metadata["oncoai"]
        assert provenance["model_name"] == info.name
        assert provenance["parameters"]["device"] == "cpu"
        assert len(provenance["weights_sha256"]) == 64
    assert (
        0.0 <= float(np.min(probability.data)) <= float(np.max(probability.data)) <= 1
    )

    n = int(objects.data.max())
    assert n > 50
    features = objects.features
    assert len(features) == n
    assert list(features["index"]) == list(range(1, n + 1))
    for column in ("area_px", "mean_intensity", "centroid_y", "centroid_x"):
        assert column in features
    assert {"eccentricity", "probability"} <= set(features.columns)
    assert features["area_px"].iloc[0] == np.count_nonzero(objects.data == 1)
    assert widget.status.text().startswith("Done in")


def test_multiscale_input_runs_on_a_level_and_lands_on_level_0(
    qtbot, viewer, widget, nuclei_model, nuclei_image
) -> None:
    pyramid = [nuclei_image, nuclei_image[::2, ::2]]
    viewer.add_image(pyramid, name="pyramid", multiscale=True, scale=(0.5, 0.5))
    widget.select_model(nuclei_model)
    widget.select_layer("pyramid")
    assert widget.level_spin.isVisibleTo(widget)
    assert widget.level_spin.maximum() == 1
    widget.level_spin.setValue(1)
    assert _run(qtbot, widget) == "done"

    objects = viewer.layers[-1]
    assert isinstance(objects, Labels)
    assert objects.data.shape == (256, 256)
    # A level-1 pixel is 2 level-0 pixels; its centre sits half a level-0 pixel
    # past the level-0 pixel centre: 0.5 (scale) * 0.5.
    np.testing.assert_allclose(objects.scale, (1.0, 1.0))
    np.testing.assert_allclose(objects.translate, (0.25, 0.25))
    provenance = objects.metadata["oncoai"]
    assert provenance["level"] == 1
    assert provenance["level0"] == {"pixel": [2.0, 2.0], "origin": [0.0, 0.0]}


def test_bad_input_is_a_one_line_notification(widget, viewer, nuclei_model) -> None:
    before = len(notification_manager.records)
    widget.model_combo.clear()
    assert widget.run() is None
    widget.select_model(nuclei_model)
    widget.axes_edit.setText("CYX")
    assert widget.run() is None
    assert _notes_since(before) == [
        "no model is chosen; pick one, or add one with 'Choose a local model' or "
        "'Fetch by bioimage.io id'",
        "axes 'CYX' have 3 letters but layer 'nuclei' has 2 dimensions (shape "
        "(512, 512)); give one letter per dimension, e.g. YX, ZYX or YXS",
    ]
    assert len(viewer.layers) == 1
    assert widget.run_button.isEnabled()


def test_a_model_that_fails_while_running_is_reported_not_raised(
    qtbot, widget, viewer, shared_data
) -> None:
    # TensorFlow is not installed, so this model fails when it loads.
    widget.select_model(str(shared_data / "bioimageio" / "dummy_tf_v0_4"))
    before = len(notification_manager.records)
    assert _run(qtbot, widget) == "failed"
    (message,) = _notes_since(before)
    assert "tensorflow" in message.lower()
    assert "\n" not in message and "Traceback" not in message
    assert len(viewer.layers) == 1
    assert widget.run_button.isEnabled() and not widget.cancel_button.isEnabled()


def test_fetch_without_network_is_a_notification(qtbot, widget, monkeypatch) -> None:
    monkeypatch.setenv("ONCOAI_BIOIMAGEIO_URL", "http://127.0.0.1:9/collection")
    before = len(notification_manager.records)
    worker = widget.fetch_model("affable-shark")
    with qtbot.waitSignal(worker.finished, timeout=120_000):
        pass
    (message,) = _notes_since(before)
    assert "\n" not in message
    assert widget.status.text() == "Fetching failed."


@pytest.fixture
def big_layer(viewer, nuclei_image) -> str:
    """A 2048² image: the nuclei image tiled 4 × 4."""
    viewer.add_image(np.tile(nuclei_image, (4, 4)), name="big")
    return "big"


def test_cancel_stops_within_a_second_and_adds_nothing(
    qtbot, viewer, widget, big_layer, nuclei_model, record_property
) -> None:
    widget.select_model(nuclei_model)
    widget.select_layer(big_layer)
    widget.warmed_up.wait(120)
    n_layers = len(viewer.layers)
    steps: list[str] = []
    with qtbot.waitSignal(widget.finished, timeout=RUN_TIMEOUT_MS) as blocker:
        worker = widget.run()
        worker.yielded.connect(lambda step: steps.append(step.message))
        qtbot.waitUntil(lambda: any("tile" in s for s in steps), timeout=RUN_TIMEOUT_MS)
        cancelled_at = time.perf_counter()
        widget.cancel()
    stopped_after = time.perf_counter() - cancelled_at
    record_property("cancel_s", round(stopped_after, 3))
    assert blocker.args == ["cancelled"]
    assert stopped_after < 1.0, f"cancel took {stopped_after:.2f} s"
    assert len(viewer.layers) == n_layers
    assert widget.status.text() == "Cancelled; nothing was added."
    assert widget.run_button.isEnabled()


def test_viewer_keeps_responding_while_a_2048_image_is_predicted(
    qtbot, viewer, widget, big_layer, nuclei_model, record_property
) -> None:
    widget.select_model(nuclei_model)
    widget.select_layer(big_layer)
    # The one-off import of torch holds the GIL ~0.3 s; the widget does it in
    # the background when it opens, before any run.
    assert widget.warmed_up.wait(120)
    beats: list[float] = []
    heartbeat = QTimer()
    heartbeat.setInterval(10)
    heartbeat.timeout.connect(lambda: beats.append(time.perf_counter()))
    steps: list[tuple[float, str]] = []
    heartbeat.start()
    with qtbot.waitSignal(widget.finished, timeout=RUN_TIMEOUT_MS) as blocker:
        worker = widget.run()
        worker.yielded.connect(lambda s: steps.append((time.perf_counter(), s.message)))
        started = time.perf_counter()
    finished = time.perf_counter()
    qtbot.wait(50)
    heartbeat.stop()
    assert blocker.args == ["done"]
    # The prediction: from Run until the model's last tile is written. Finding
    # and measuring objects afterwards runs whole-image scipy/skimage calls that
    # hold the GIL for up to a few hundred ms (a known limitation in the README),
    # and adding layers is napari's own work; both are recorded, not asserted.
    (predicted,) = [t for t, message in steps if message == "done"]
    (ready,) = [t for t, message in steps if message == "adding layers"]
    during = np.array([b for b in beats if started <= b <= predicted])
    gaps = np.diff(during)
    after = np.diff(np.array([b for b in beats if predicted <= b <= ready]))
    record_property("longest_stall_s", round(float(gaps.max()), 3))
    record_property("objects_stall_s", round(float(after.max(initial=0)), 3))
    record_property("layer_adding_s", round(finished - ready, 3))
    assert len(during) > 100
    assert gaps.max() < 0.1, f"the event loop stalled for {gaps.max():.3f} s"
    assert viewer.layers[-1].data.shape == (2048, 2048)


def test_choose_a_local_model_from_the_picker(widget, unet_dir, monkeypatch) -> None:
    from qtpy.QtWidgets import QFileDialog

    chosen = str(unet_dir / "bioimageio.yaml")
    monkeypatch.setattr(
        QFileDialog, "getOpenFileName", staticmethod(lambda *a, **k: (chosen, ""))
    )
    combo = widget.model_combo
    combo.setCurrentIndex(combo.findText("  Choose a local model (zip or rdf.yaml)…"))
    info = widget.model()
    assert info is not None
    assert (info.name, info.origin, info.source) == (
        "UNet 2D Nuclei Broad",
        "local",
        str(unet_dir),
    )
    assert combo.currentText() == "  UNet 2D Nuclei Broad"
