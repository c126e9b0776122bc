"""The Fiji bridge's ``oncoai fiji`` command and its ImageJ output formats.

Subcommands:

- ``oncoai fiji install [--imagej-dir DIR] [--exe PATH]``: put the macros under
  *Plugins › OncoAI*;
- ``oncoai fiji uninstall [--imagej-dir DIR]``: remove them;
- ``oncoai fiji run --input IN --model M --outdir D``: what the macros call;
  uses the warm service when it is up;
- ``oncoai fiji models``: the models the macros' dialogs list.

``run`` and ``models`` answer in lines a macro can parse: ``OUTPUT <path>`` or
``MODEL <id>\\t<name>``, then a last line ``OK`` or ``ERROR: <one line>``.
Their log goes to a file (``--log``), never to the terminal's error stream,
because ImageJ's ``exec()`` does not drain it and would stall on a long one.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from model_zoo.errors import OncoAIError, one_line
from model_zoo.plugins import Command, Registry

if TYPE_CHECKING:
    from model_zoo.result import PredictionResult

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 3600.0
LOG_NAME = "oncoai-fiji.log"


def register(registry: Registry) -> None:
    """Add ``oncoai fiji`` and the ``.zip``, ``.csv`` and ``_labels.tif`` writers.

    The writers' modules are imported when a writer first runs, so that
    ``oncoai`` starts fast for the macros' light subcommands.
    """
    registry.add_command(
        Command(
            name="fiji",
            help="install the Fiji/ImageJ macros; run a model for a macro",
            configure=_configure,
            run=_dispatch,
        )
    )

    def roi_set(result: PredictionResult, path: Path) -> None:
        from fiji_scripts.writers import write_roi_set

        write_roi_set(result, path)

    def results_csv(result: PredictionResult, path: Path) -> None:
        from fiji_scripts.writers import write_results_csv

        write_results_csv(result, path)

    def labels_tif(result: PredictionResult, path: Path) -> None:
        from fiji_scripts.writers import make_labels_tif_writer

        # The engine's .tif writer, looked up at write time: the engine
        # registers it before plugins load, and a plugin may replace it.
        make_labels_tif_writer(registry.writers[".tif"])(result, path)

    registry.add_writer((".zip",), roi_set, instances=True)
    registry.add_writer((".csv",), results_csv, instances=True)
    registry.add_writer(("_labels.tif",), labels_tif, instances=True)


def _configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="fiji_command", required=True)

    install = sub.add_parser("install", help="add the macros to Plugins › OncoAI")
    _add_imagej_dir(install)
    install.add_argument("--exe", help="the oncoai executable the macros call")
    install.set_defaults(fiji_handler=_install)

    uninstall = sub.add_parser("uninstall", help="remove the macros")
    _add_imagej_dir(uninstall)
    uninstall.set_defaults(fiji_handler=_uninstall)

    run = sub.add_parser("run", help="run a model on an image for a macro")
    run.add_argument("--input", required=True, help="the image file")
    run.add_argument("--model", required=True, help="model id, nickname, folder, zip")
    run.add_argument("--outdir", required=True, help="folder for the outputs")
    run.add_argument("--name", help="outputs' name (default: the image's)")
    run.add_argument(
        "--kind",
        default="objects",
        choices=["objects", "image"],
        help="objects: labels, RoiSet, results; image: an output image",
    )
    run.add_argument(
        "--suffix", default="prediction", help="for --kind image: <name>_<suffix>.tif"
    )
    run.add_argument(
        "--params", default="", help='e.g. "threshold=0.4 tile=256 channel=0"'
    )
    run.add_argument("--roi", help="a .roi or RoiSet .zip: run inside its box")
    run.add_argument(
        "--service",
        default="auto",
        choices=["auto", "never"],
        help="auto: use `oncoai serve` when it is up; never: run in this process",
    )
    run.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help="seconds before giving up (default: %(default)s)",
    )
    _add_log(run)
    run.set_defaults(fiji_handler=_run)

    models = sub.add_parser("models", help="list the models a macro can run")
    _add_log(models)
    models.set_defaults(fiji_handler=_models)


def _add_imagej_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--imagej-dir", help="the ImageJ or Fiji folder")


def _add_log(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log", help=f"log file (default: <temp>/{LOG_NAME})")


def _dispatch(args: argparse.Namespace) -> int:
    return int(args.fiji_handler(args))


def _install(args: argparse.Namespace) -> int:
    from fiji_scripts.install import install

    done = install(args.imagej_dir, args.exe)
    _say(f"installed {len(done.files)} files into {done.folder}")
    _say(f"the macros call {done.exe}")
    _say("restart ImageJ (or Help › Refresh Menus) to see Plugins › OncoAI")
    return 0


def _uninstall(args: argparse.Namespace) -> int:
    from fiji_scripts.install import uninstall

    removed = uninstall(args.imagej_dir)
    _say(f"removed {len(removed)} files")
    return 0


def _run(args: argparse.Namespace) -> int:
    _log_to_file(args.log)
    watchdog = _start_watchdog(args.timeout)
    try:
        from fiji_scripts.runner import RunRequest, parse_params, run

        request = RunRequest(
            image=Path(args.input),
            model=args.model,
            outdir=Path(args.outdir),
            name=args.name,
            kind=args.kind,
            suffix=args.suffix,
            params=parse_params(args.params),
            region=_roi_region(args.roi) if args.roi else None,
        )
        outcome = run(request, use_service=args.service == "auto", timeout=args.timeout)
    except Exception as err:  # noqa: BLE001 -- the macro needs one line, always
        return _fail(err, args.log)
    finally:
        watchdog.cancel()
    for path in outcome.outputs:
        _say(f"OUTPUT {path}")
    _say(f"VIA {outcome.via}")
    _say("OK")
    return 0


def _models(args: argparse.Namespace) -> int:
    _log_to_file(args.log)
    try:
        entries = list_macro_models()
    except Exception as err:  # noqa: BLE001
        return _fail(err, args.log)
    for model_id, name in entries:
        _say(f"MODEL {model_id}\t{name}")
    _say("OK")
    return 0


def list_macro_models() -> list[tuple[str, str]]:
    """The models a macro can offer: the starter models, then the cache.

    Returns
    -------
    list of (str, str)
        ``(id, name)`` pairs, without duplicates.
    """
    from model_zoo.cache import list_models
    from model_zoo.starter import STARTER_MODELS

    entries = [(name, name) for name, rdf in STARTER_MODELS.items() if rdf.is_file()]
    seen = {model_id for model_id, _ in entries}
    for model in list_models():
        if model.id not in seen:
            entries.append((model.id, model.name))
            seen.add(model.id)
    return entries


def _roi_region(path: str) -> tuple[int, int, int, int]:
    from fiji_scripts.ijroi import read_rois

    rois = read_rois(path)
    boxes = [roi.region() for roi in rois]
    x0 = min(b[0] for b in boxes)
    y0 = min(b[1] for b in boxes)
    x1 = max(b[0] + b[2] for b in boxes)
    y1 = max(b[1] + b[3] for b in boxes)
    return x0, y0, x1 - x0, y1 - y0


def _fail(err: BaseException, log_file: str | None) -> int:
    if isinstance(err, OncoAIError):
        log.info("failed: %s", one_line(err))
        _say(f"ERROR: {one_line(err)}")
        return err.exit_code
    log.exception("unexpected error")
    _say(
        f"ERROR: unexpected {type(err).__name__}: {one_line(err)} (details in "
        f"{_log_path(log_file)})"
    )
    return 3


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _log_path(path: str | None) -> Path:
    return Path(path) if path else Path(tempfile.gettempdir()) / LOG_NAME


def _log_to_file(path: str | None) -> None:
    """Send logging and the process's error stream to a file."""
    target = _log_path(path)
    try:
        handle = open(target, "a", encoding="utf-8")  # noqa: SIM115 -- lives on
    except OSError:
        handle = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115
    sys.stderr.flush()
    # fd 2 itself, not just sys.stderr, so that native libraries (torch, onnx)
    # cannot fill a pipe nobody reads.
    os.dup2(handle.fileno(), 2)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    file_handler = logging.StreamHandler(handle)
    file_handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root.addHandler(file_handler)
    root.setLevel(logging.INFO)


def _start_watchdog(seconds: float) -> threading.Timer:
    """End the process with an ERROR line if the run outlives ``seconds``.

    The service path cancels its job at the timeout; this also covers a model
    running in this process, which cannot be interrupted from outside a tile.
    """

    def expire() -> None:
        _say(f"ERROR: OncoAI did not finish within {seconds:g} s; use --timeout.")
        os._exit(3)

    # A little later than the service wait, so that path reports its own error.
    timer = threading.Timer(seconds + 30.0, expire)
    timer.daemon = True
    timer.start()
    return timer
