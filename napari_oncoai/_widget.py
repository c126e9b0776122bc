"""The *Run model* widget: pick a model and an image layer, press Run.

The widget only gathers choices. It builds a
:class:`~model_zoo.config.PredictionConfig`, runs
:meth:`model_zoo.prediction.PredictionJob.run` in a napari ``thread_worker``
(so the viewer keeps responding), follows its progress in napari's activity
bar, and adds the layers :func:`napari_oncoai._layers.result_layers` makes from
the result. Cancel stops the job within one batch of tiles and adds nothing.

The *Train denoiser* widget the plugin issue describes is not here yet: it
needs the Noise2Void training code of the starter models, which OncoAI does not
have yet.
"""

from __future__ import annotations

import contextlib
import gc
import html
import importlib
import logging
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import Qt, Signal
from qtpy.QtGui import QPixmap
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_oncoai._models import ModelInfo

if TYPE_CHECKING:
    import napari

    from model_zoo.config import PredictionConfig

log = logging.getLogger(__name__)

_CHOOSE_LOCAL = "choose-local"
_FETCH = "fetch"
_COVER_WIDTH = 160
_DEVICES = ("auto", "cpu", "cuda", "mps")


class RunModelWidget(QWidget):
    """Run a bioimage.io model on an image layer.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        The viewer whose image layers are offered and where results go.

    Attributes
    ----------
    finished : Signal
        Emitted with ``"done"``, ``"cancelled"`` or ``"failed"`` after each run,
        once the layers (if any) are in the viewer.

    Examples
    --------
    >>> widget = RunModelWidget(viewer)  # doctest: +SKIP
    >>> widget.select_model("oncoai-nuclei")  # doctest: +SKIP
    >>> widget.run()  # doctest: +SKIP
    """

    finished = Signal(str)

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self._job: Any = None
        self._worker: Any = None
        self._pbar: Any = None
        self._cancel_requested = False
        self._outcome = ""
        self._last_index = 0

        layout = QVBoxLayout(self)
        layout.addWidget(self._model_box())
        layout.addWidget(self._input_box())
        layout.addWidget(self._parameter_box())
        layout.addLayout(self._buttons())
        self.status = QLabel("")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        layout.addStretch(1)

        self.refresh_models()
        self._refresh_layers()
        self._connect_viewer()
        self.warmed_up = _warm_up()

    # -- building the form ------------------------------------------------------

    def _model_box(self) -> QGroupBox:
        box = QGroupBox("Model")
        form = QVBoxLayout(box)
        self.model_combo = QComboBox()
        self.model_combo.setMinimumContentsLength(24)
        self.model_combo.currentIndexChanged.connect(self._on_model_chosen)
        form.addWidget(self.model_combo)

        row = QHBoxLayout()
        self.cover = QLabel()
        self.cover.setFixedWidth(_COVER_WIDTH)
        self.cover.setAlignment(Qt.AlignmentFlag.AlignTop)
        row.addWidget(self.cover)
        self.model_info = QLabel("")
        self.model_info.setWordWrap(True)
        self.model_info.setTextFormat(Qt.TextFormat.RichText)
        self.model_info.setAlignment(Qt.AlignmentFlag.AlignTop)
        row.addWidget(self.model_info, 1)
        form.addLayout(row)
        return box

    def _input_box(self) -> QGroupBox:
        box = QGroupBox("Input")
        form = QFormLayout(box)
        self.layer_combo = QComboBox()
        self.layer_combo.currentIndexChanged.connect(self._on_layer_chosen)
        form.addRow("Image layer", self.layer_combo)
        self.axes_edit = QLineEdit()
        self.axes_edit.setToolTip(
            "One letter per dimension from T, C, Z, Y, X and S (RGB); leave empty "
            "to use the axes read from the layer"
        )
        form.addRow("Axes", self.axes_edit)
        self.level_spin = QSpinBox()
        self.level_spin.setToolTip(
            "Pyramid level to predict on; 0 is full resolution. The result is "
            "placed over full resolution."
        )
        self.level_label = QLabel("Level")
        form.addRow(self.level_label, self.level_spin)
        return box

    def _parameter_box(self) -> QGroupBox:
        box = QGroupBox("Parameters")
        form = QFormLayout(box)
        self.tile_spin = QSpinBox()
        self.tile_spin.setRange(0, 8192)
        self.tile_spin.setSingleStep(64)
        self.tile_spin.setSpecialValueText("auto")
        self.tile_spin.setToolTip("Tile edge in pixels; auto picks one")
        form.addRow("Tile size", self.tile_spin)
        self.device_combo = QComboBox()
        self.device_combo.addItems(_DEVICES)
        form.addRow("Device", self.device_combo)

        self.threshold_spin = _fraction_spin(0.5, "Foreground probability threshold")
        form.addRow("Probability threshold", self.threshold_spin)
        self.overlap_spin = _fraction_spin(
            0.3, "Objects overlapping more than this are merged (StarDist NMS)"
        )
        form.addRow("Overlap threshold", self.overlap_spin)
        self.split_check = QCheckBox("Split touching objects")
        self.split_check.setChecked(True)
        form.addRow("", self.split_check)
        self.min_size_spin = QSpinBox()
        self.min_size_spin.setRange(0, 1_000_000)
        self.min_size_spin.setValue(10)
        self.min_size_spin.setSuffix(" px")
        form.addRow("Smallest object", self.min_size_spin)
        self._instance_widgets = [
            self.threshold_spin,
            self.split_check,
            self.min_size_spin,
        ]
        return box

    def _buttons(self) -> QHBoxLayout:
        row = QHBoxLayout()
        self.run_button = QPushButton("Run")
        self.run_button.clicked.connect(self.run)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        row.addWidget(self.run_button)
        row.addWidget(self.cancel_button)
        return row

    # -- models -----------------------------------------------------------------

    def refresh_models(self) -> None:
        """List the starter and cached models again, keeping the selection."""
        from napari_oncoai._models import available_models

        chosen = self.model()
        try:
            models = available_models()
        except Exception as err:  # noqa: BLE001 - the user sees one line
            _report(err, "could not list the models")
            models = []
        local = [m for m in self._models() if m.origin == "local"]
        self._fill_models(models + local)
        index = self._find_model(chosen.source) if chosen is not None else -1
        if index >= 0:
            self.model_combo.setCurrentIndex(index)

    def _models(self) -> list[ModelInfo]:
        combo = self.model_combo
        items = [combo.itemData(i) for i in range(combo.count())]
        return [m for m in items if isinstance(m, ModelInfo)]

    def _fill_models(self, models: list[ModelInfo]) -> None:
        from napari_oncoai._models import TASK_GROUPS

        combo = self.model_combo
        combo.blockSignals(True)
        combo.clear()
        for group in dict.fromkeys(TASK_GROUPS.values()):
            members = [m for m in models if m.group == group]
            if not members:
                continue
            _add_header(combo, group)
            for model in members:
                combo.addItem(f"  {model.name}", model)
                combo.setItemData(
                    combo.count() - 1,
                    f"{model.source} ({model.origin})",
                    Qt.ItemDataRole.ToolTipRole,
                )
        _add_header(combo, "More")
        combo.addItem("  Choose a local model (zip or rdf.yaml)…", _CHOOSE_LOCAL)
        combo.addItem("  Fetch by bioimage.io id…", _FETCH)
        first = next(
            (
                i
                for i in range(combo.count())
                if isinstance(combo.itemData(i), ModelInfo)
            ),
            -1,
        )
        combo.setCurrentIndex(first)
        combo.blockSignals(False)
        self._last_index = first
        self._show_model(self.model())

    def model(self) -> ModelInfo | None:
        """The model now chosen, or None."""
        data = self.model_combo.currentData()
        return data if isinstance(data, ModelInfo) else None

    def select_model(self, source: str | Path) -> ModelInfo:
        """Choose a model by its id or path; a path not listed yet is added.

        Parameters
        ----------
        source : str or Path
            A starter or cached model's id, or a local zip, folder or RDF.

        Returns
        -------
        ModelInfo

        Raises
        ------
        OncoAIError
            When ``source`` is neither listed nor a model package on disk.
        """
        from napari_oncoai._models import local_model

        key = str(source)
        index = self._find_model(key)
        if index < 0 and not Path(key).exists():
            self.refresh_models()  # a model cached since the list was made
            index = self._find_model(key)
        if index >= 0:
            self.model_combo.setCurrentIndex(index)
            return self.model_combo.itemData(index)
        info = local_model(source)
        self._fill_models([*self._models(), info])
        return self.select_model(info.source)

    def _find_model(self, key: str) -> int:
        for i in range(self.model_combo.count()):
            data = self.model_combo.itemData(i)
            if isinstance(data, ModelInfo) and key in (data.source, data.name):
                return i
        return -1

    def _on_model_chosen(self, index: int) -> None:
        data = self.model_combo.itemData(index)
        if data == _CHOOSE_LOCAL:
            self._restore_model_index()
            self._ask_local_model()
        elif data == _FETCH:
            self._restore_model_index()
            self._ask_fetch()
        elif isinstance(data, ModelInfo):
            self._last_index = index
            self._show_model(data)
        else:
            self._restore_model_index()

    def _restore_model_index(self) -> None:
        self.model_combo.blockSignals(True)
        self.model_combo.setCurrentIndex(self._last_index)
        self.model_combo.blockSignals(False)

    def _ask_local_model(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self,
            "Choose a bioimage.io model",
            "",
            "bioimage.io model (*.zip *.yaml);;All files (*)",
        )
        if not path:
            return
        if Path(path).suffix.lower() == ".yaml":
            path = str(Path(path).parent)  # the folder is the model
        try:
            self.select_model(path)
        except Exception as err:  # noqa: BLE001 - the user sees one line
            _report(err, "could not open the model")

    def _ask_fetch(self) -> None:
        model_id, ok = QInputDialog.getText(
            self,
            "Fetch a model from bioimage.io",
            "bioimage.io id or nickname (e.g. affable-shark):",
        )
        if ok and model_id.strip():
            self.fetch_model(model_id)

    def fetch_model(self, model_id: str) -> Any:
        """Download a model by its bioimage.io id in the background, then pick it.

        Returns
        -------
        napari.qt.threading.FunctionWorker
            The running download; errors become notifications.
        """
        from napari.qt.threading import create_worker

        from napari_oncoai._models import fetch

        self.status.setText(f"Fetching {model_id.strip()} from bioimage.io…")
        worker = create_worker(
            fetch,
            model_id,
            _connect={"returned": self._on_fetched, "errored": self._on_fetch_error},
            _progress={"desc": f"Fetching {model_id.strip()}"},
        )
        return worker

    def _on_fetched(self, info: ModelInfo) -> None:
        self.status.setText(f"Fetched {info.name}.")
        self.refresh_models()
        self.select_model(info.source)

    def _on_fetch_error(self, err: BaseException) -> None:
        self.status.setText("Fetching failed.")
        _report(err, "could not fetch the model")

    def _show_model(self, info: ModelInfo | None) -> None:
        if info is None:
            self.model_info.setText("No model available.")
            self.cover.clear()
            return
        description = html.escape(info.description[:400])
        self.model_info.setText(
            f"<b>{html.escape(info.name)}</b><br>{description}<br>"
            f"<small>Licence: {html.escape(info.license)} · Input axes: "
            f"{html.escape(info.input_axes or '?')} · Task: {html.escape(info.task)}"
            f"</small>"
        )
        pixmap = QPixmap(str(info.cover)) if info.cover else QPixmap()
        if pixmap.isNull():
            self.cover.clear()
        else:
            self.cover.setPixmap(
                pixmap.scaledToWidth(
                    _COVER_WIDTH, Qt.TransformationMode.SmoothTransformation
                )
            )
        instance = _makes_instances(info)
        for widget in self._instance_widgets:
            widget.setEnabled(instance)
        self.overlap_spin.setEnabled(info.stardist)

    # -- layers -----------------------------------------------------------------

    def _connect_viewer(self) -> None:
        events = self.viewer.layers.events
        events.inserted.connect(self._on_layers_changed)
        events.removed.connect(self._on_layers_changed)
        events.moved.connect(self._on_layers_changed)
        for layer in self.viewer.layers:
            layer.events.name.connect(self._refresh_layers)
        from napari_oncoai._models import events as model_events

        model_events.models_changed.connect(self.refresh_models)
        self.destroyed.connect(self._disconnect_all)

    def _disconnect_all(self, *_: Any) -> None:
        from napari_oncoai._models import events as model_events

        model_events.models_changed.disconnect(self.refresh_models)

    def _on_layers_changed(self, event: Any = None) -> None:
        layer = getattr(event, "value", None)
        if layer is not None and hasattr(layer, "events"):
            layer.events.name.connect(self._refresh_layers)
        self._refresh_layers()

    def _refresh_layers(self, *_: Any) -> None:
        from napari.layers import Image

        combo = self.layer_combo
        chosen = combo.currentData()
        combo.blockSignals(True)
        combo.clear()
        for layer in self.viewer.layers:
            if isinstance(layer, Image):
                combo.addItem(layer.name, layer)
        index = combo.findData(chosen) if chosen is not None else -1
        combo.setCurrentIndex(index if index >= 0 else combo.count() - 1)
        combo.blockSignals(False)
        self._on_layer_chosen()

    def input_layer(self) -> Any:
        """The image layer now chosen, or None."""
        return self.layer_combo.currentData()

    def select_layer(self, name: str) -> None:
        """Choose the input layer by name."""
        index = self.layer_combo.findText(name)
        if index < 0:
            from model_zoo.errors import OncoAIError

            names = ", ".join(
                self.layer_combo.itemText(i) for i in range(self.layer_combo.count())
            )
            raise OncoAIError(
                f"no image layer named {name!r}; choose one of: {names or 'none'}"
            )
        self.layer_combo.setCurrentIndex(index)

    def _on_layer_chosen(self, *_: Any) -> None:
        from napari_oncoai._layers import layer_axes, level_count

        layer = self.input_layer()
        levels = level_count(layer) if layer is not None else 1
        self.level_spin.setRange(0, levels - 1)
        self.level_spin.setVisible(levels > 1)
        self.level_label.setVisible(levels > 1)
        guessed = layer_axes(layer) if layer is not None else ""
        self.axes_edit.setPlaceholderText(guessed or "give the axes, e.g. TCZYX")

    # -- running ----------------------------------------------------------------

    def config(self) -> PredictionConfig:
        """Build the engine's configuration from the form.

        Raises
        ------
        OncoAIError
            When no model is chosen or a value is out of range.
        """
        from pydantic import ValidationError

        from model_zoo.config import PredictionConfig
        from model_zoo.errors import OncoAIError

        info = self.model()
        if info is None:
            raise OncoAIError(
                "no model is chosen; pick one, or add one with 'Choose a local "
                "model' or 'Fetch by bioimage.io id'"
            )
        device = self.device_combo.currentText()
        try:
            return PredictionConfig(
                model=info.source,
                tile=self.tile_spin.value() or None,
                device=device,
                batch_size=None if _on_gpu(device) else 1,
                threshold=self.threshold_spin.value(),
                split_touching=self.split_check.isChecked(),
                min_size=self.min_size_spin.value(),
                # Only StarDist models run NMS; the spin is disabled for others.
                nms_threshold=self.overlap_spin.value() if info.stardist else None,
            )
        except ValidationError as err:
            first = err.errors()[0]
            field = ".".join(str(p) for p in first.get("loc", ()))
            raise OncoAIError(
                f"{field}: {first.get('msg')}; got {first.get('input')!r}"
            ) from err

    @property
    def running(self) -> bool:
        """Whether a prediction is in progress."""
        return self._worker is not None

    def run(self) -> Any:
        """Start the prediction in the background.

        Returns
        -------
        napari.qt.threading.GeneratorWorker or None
            The running worker; None when the form was invalid (the reason is
            shown as a notification).
        """
        from napari.qt.threading import create_worker
        from napari.utils import progress

        from napari_oncoai._layers import layer_to_image

        if self.running:
            return self._worker
        try:
            config = self.config()
            layer = self.input_layer()
            if layer is None:
                from model_zoo.errors import OncoAIError

                raise OncoAIError("no image layer to run on; open an image first")
            level = self.level_spin.value()
            image, grid = layer_to_image(
                layer, self.axes_edit.text().strip() or None, level
            )
            job = _new_job(config, image)
        except Exception as err:  # noqa: BLE001 - the user sees one line
            _report(err, "could not start")
            return None

        info = self.model()
        assert info is not None
        self._job = job
        self._cancel_requested = False
        self._started = time.perf_counter()
        self._pbar = progress(total=0, desc=f"OncoAI: {info.name}")
        self._set_running(True)
        self.status.setText(f"Running {info.name} on {layer.name}…")
        self._worker = create_worker(
            _prediction_steps,
            job,
            grid,
            input_name=layer.name,
            level=level,
            _start_thread=False,
            _connect={
                "yielded": self._on_progress,
                "returned": self._on_returned,
                "errored": self._on_errored,
                "aborted": self._on_aborted,
                "finished": self._on_finished,
            },
        )
        self._worker.start()
        return self._worker

    def cancel(self) -> None:
        """Stop the running prediction; no layer is added."""
        if not self.running:
            return
        self._cancel_requested = True
        self.status.setText("Cancelling…")
        self.cancel_button.setEnabled(False)
        # The job raises CancelledError at its next batch of tiles, which ends
        # the worker cleanly (GeneratorWorker.quit would leave it suspended).
        self._job.cancel()

    def _set_running(self, running: bool) -> None:
        self.run_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)

    def _on_progress(self, step: Any) -> None:
        if not self._cancel_requested:
            self.status.setText(f"{step.message} ({step.done}/{step.total})")
        pbar = self._pbar
        total = max(int(step.total), 1)
        # napari's progress bar processes Qt events whenever it changes, so the
        # run may finish, and close the bar, between any two of these calls.
        if pbar is not None and pbar.total != total:
            pbar.total = total
        if self._pbar is pbar and pbar is not None:
            pbar.set_description(f"OncoAI: {step.message}")
        if self._pbar is pbar and pbar is not None:
            pbar.update(min(int(step.done), total) - pbar.n)

    def _on_returned(self, layers: list[Any]) -> None:
        if self._cancel_requested:
            return
        self.cancel_button.setEnabled(False)
        for layer in layers:
            self.viewer.add_layer(layer)
        seconds = time.perf_counter() - self._started
        self.status.setText(f"Done in {seconds:.1f} s: {len(layers)} layer(s) added.")
        self._outcome = "done"

    def _on_errored(self, err: BaseException) -> None:
        from model_zoo.errors import CancelledError

        if isinstance(err, CancelledError) or self._cancel_requested:
            self._on_aborted()
            return
        self.status.setText("Failed: see the notification.")
        self._outcome = "failed"
        _report(err, "the prediction failed")

    def _on_aborted(self) -> None:
        self.status.setText("Cancelled; nothing was added.")
        self._outcome = "cancelled"

    def _on_finished(self) -> None:
        if self._pbar is not None:
            self._pbar.close()
        self._pbar = None
        self._worker = None
        self._job = None
        self._set_running(False)
        outcome = self._outcome or "cancelled"
        if self._cancel_requested:
            outcome = "cancelled"
            self.status.setText("Cancelled; nothing was added.")
        self._outcome = ""
        self.finished.emit(outcome)


# Modules whose first import holds the GIL for a long time (torch's C++
# start-up takes ~0.3 s); they are imported once, in the background, when the
# widget opens, so that a run never freezes the viewer while importing them.
_HEAVY_MODULES = (
    "torch",
    "onnxruntime",
    "bioimageio.core",
    "bioimageio.core.proc_ops",
    "model_zoo.model",
    "model_zoo.prediction",
    "model_zoo.stats",
    "model_zoo.postprocess",
)
_warm = threading.Event()
_warm_lock = threading.Lock()


def _warm_up() -> threading.Event:
    """Import the engine's heavy modules in a background thread, once.

    Returns
    -------
    threading.Event
        Set when the imports are done (or failed; a failure shows up again, as
        a proper error, when a model runs).
    """

    def work() -> None:
        for name in _HEAVY_MODULES:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - reported when a model runs
                log.debug("warm-up import of %s failed", name, exc_info=True)
        _warm.set()

    with _warm_lock:
        if not _warm.is_set() and not any(
            t.name == "oncoai-warm-up" for t in threading.enumerate()
        ):
            threading.Thread(target=work, name="oncoai-warm-up", daemon=True).start()
    return _warm


def _on_gpu(device: str) -> bool:
    """Whether ``device`` runs on a GPU, without importing torch to find out.

    On the CPU the widget runs one tile per batch: batches barely speed a CPU
    up, and one tile is the longest a Cancel has to wait. For ``auto`` a GPU is
    assumed only once torch is imported (by the warm-up) and sees one.
    """
    if device != "auto":
        return device != "cpu"
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    try:
        mps = getattr(torch.backends, "mps", None)
        return bool(torch.cuda.is_available() or (mps and mps.is_available()))
    except Exception:  # noqa: BLE001 - a broken torch is reported when it runs
        return False


def _new_job(config: PredictionConfig, image: Any) -> Any:
    from model_zoo.prediction import PredictionJob

    return PredictionJob(config, image)


def _prediction_steps(job: Any, grid: Any, *, input_name: str, level: int) -> Any:
    """Run the job and build the layers, off the main thread.

    Yields the engine's progress; returns the napari layers, not yet added.
    """
    from napari.layers import Layer

    from model_zoo.errors import CancelledError
    from model_zoo.prediction import Progress
    from napari_oncoai._layers import INSTANCE_TASKS, result_layers

    with _old_objects_out_of_gc():
        last = Progress(0, 1, "starting")
        for last in job.run():
            yield last
        result = job.result
        instances = result.task in INSTANCE_TASKS or result.stardist is not None
        if instances:
            yield Progress(last.done, last.total, "finding and measuring objects")
        data = result_layers(
            result, grid, input_name=input_name, instances=instances, level=level
        )
        # Building the layers here (contrast limits, the features table) leaves
        # the main thread only the unavoidable work of showing them.
        layers = [Layer.create(*layer) for layer in data]
        if job.cancelled:
            raise CancelledError("prediction cancelled; nothing was added")
        yield Progress(last.total, last.total, "adding layers")
        return layers


_gc_lock = threading.Lock()
_gc_users = 0


@contextlib.contextmanager
def _old_objects_out_of_gc() -> Any:
    """Keep objects that exist now out of full garbage collections meanwhile.

    With napari and torch loaded a process holds over half a million objects,
    and a full collection of them holds the interpreter lock for 0.3-0.6 s. A
    run allocates enough to trigger such collections in the worker thread,
    which then freezes the viewer. While a run lasts, :func:`gc.freeze` moves
    the objects that existed before it out of the collector's sight, so the
    collections it triggers only scan what the run itself made; afterwards
    :func:`gc.unfreeze` hands them back and nothing is leaked. Both are O(1).
    """
    global _gc_users
    with _gc_lock:
        if _gc_users == 0:
            gc.freeze()
        _gc_users += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_users -= 1
            if _gc_users == 0:
                gc.unfreeze()


def _makes_instances(info: ModelInfo) -> bool:
    from napari_oncoai._layers import INSTANCE_TASKS

    return info.task in INSTANCE_TASKS or info.stardist


def _fraction_spin(value: float, tip: str) -> QDoubleSpinBox:
    spin = QDoubleSpinBox()
    spin.setRange(0.01, 0.99)
    spin.setSingleStep(0.05)
    spin.setDecimals(2)
    spin.setValue(value)
    spin.setToolTip(tip)
    return spin


def _add_header(combo: QComboBox, text: str) -> None:
    combo.addItem(text)
    item = combo.model().item(combo.count() - 1)
    item.setEnabled(False)
    font = item.font()
    font.setBold(True)
    item.setFont(font)


def _report(err: BaseException, what: str) -> None:
    """Show one line to the user; keep the traceback in the log."""
    from napari.utils.notifications import show_error

    from model_zoo.errors import OncoAIError, one_line

    log.error("OncoAI %s", what, exc_info=(type(err), err, err.__traceback__))
    if isinstance(err, OncoAIError):
        show_error(one_line(err))
    else:
        show_error(f"OncoAI {what}: {one_line(err)} (details are in the log)")
