"""The ``oncoai`` command line.

Exit codes: 0 success; 1 a model ran but did not reproduce its test outputs; 2 bad
input, with one line saying what was wrong and how to fix it; 130 cancelled.  A
traceback is shown only with ``--debug``.

This module imports nothing heavy at start-up, so that ``oncoai --help`` and the
bridges' light subcommands answer at once.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from model_zoo.errors import NotReproducedError, OncoAIError, one_line

log = logging.getLogger("oncoai")

DEFAULT_TOLERANCE = (1e-4, 1e-3)  # absolute, relative


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


class _ProgressLine:
    """A one-line progress report on stderr."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.last = -1

    def __call__(self, progress: Any) -> None:
        if self.quiet or not progress.total:
            return
        pct = int(100 * progress.done / progress.total)
        if self.tty:
            sys.stderr.write(f"\r{pct:3d}% {progress.message:<40}")
            if progress.done >= progress.total:
                sys.stderr.write("\n")
        elif pct // 25 != self.last // 25 or progress.done >= progress.total:
            sys.stderr.write(f"{pct:3d}% {progress.message}\n")
        self.last = pct
        sys.stderr.flush()


# -- predict -------------------------------------------------------------------


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", "-m", required=True, help="model id, nickname, folder, zip or RDF"
    )
    parser.add_argument("--weights", help="weights format (default: fastest)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda[:N] or mps")
    parser.add_argument(
        "--tile",
        type=int,
        help="tile edge in pixels; 0 runs the whole image in one pass",
    )
    parser.add_argument("--halo", type=int, help="overlap kept on each tile side")
    parser.add_argument("--batch-size", type=int, help="tiles per forward pass")
    parser.add_argument("--axes", help="image axes, e.g. YX, CYX, YXS, ZYX, TCZYX")
    parser.add_argument("--channel", help="channel to use, by index or name")
    parser.add_argument(
        "--threshold",
        type=float,
        default=0.5,
        help="foreground probability threshold for objects",
    )
    parser.add_argument(
        "--no-split", action="store_true", help="do not split touching objects"
    )
    parser.add_argument(
        "--min-size",
        type=int,
        default=10,
        help="drop objects smaller than this many pixels",
    )


def config_from_args(args: argparse.Namespace) -> Any:
    """Build the validated :class:`PredictionConfig` from parsed arguments."""
    from pydantic import ValidationError

    from model_zoo.config import PredictionConfig

    values = {
        "model": args.model,
        "weights": args.weights,
        "device": args.device,
        "tile": args.tile,
        "halo": args.halo,
        "batch_size": args.batch_size,
        "axes": args.axes,
        "channel": args.channel,
        "threshold": args.threshold,
        "split_touching": not args.no_split,
        "min_size": args.min_size,
    }
    try:
        return PredictionConfig(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise OncoAIError(
            f"invalid --{field.replace('_', '-')}: {first['msg']} "
            f"(got {first.get('input')!r})"
        ) from exc


def _configure_predict(parser: argparse.ArgumentParser) -> None:
    _add_run_options(parser)
    parser.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="input image(s); one per model input"
    )
    parser.add_argument(
        "-o",
        "--output",
        action="append",
        required=True,
        help="output file; the format follows the extension "
        "(.tif, .ome.zarr, .npy, .geojson, _RoiSet.zip, .csv); "
        "repeat for several",
    )
    parser.add_argument("--quiet", "-q", action="store_true")


def run_predict(args: argparse.Namespace) -> int:
    """``oncoai predict``: run a model and write each output."""
    from model_zoo.outputs import write_result
    from model_zoo.prediction import PredictionJob
    from model_zoo.streaming import disk_outputs

    config = config_from_args(args)
    outputs = [Path(o) for o in args.output]
    _check_outputs(outputs)
    inputs = args.inputs if len(args.inputs) > 1 else args.inputs[0]
    with disk_outputs(outputs[0].parent) as factory:
        job = PredictionJob(config, inputs, output_factory=factory)
        show = _ProgressLine(args.quiet)
        for step in job.run():
            show(step)
        assert job.result is not None
        for out in outputs:
            write_result(job.result, out)
            _say(f"wrote {out}")
    return 0


def _check_outputs(outputs: Sequence[Path]) -> None:
    """Refuse unknown formats and missing folders before any work is done."""
    from model_zoo.outputs import writer_for

    for out in outputs:
        writer_for(out)
        if not out.parent.exists():
            raise OncoAIError(
                f"output folder {str(out.parent)!r} does not exist; create it first"
            )


# -- models ----------------------------------------------------------------------


def _configure_models(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="models_command", required=True)
    test = sub.add_parser("test", help="reproduce a model's own test outputs")
    test.add_argument("source")
    test.add_argument("--weights", help="test only this weights format")
    test.add_argument("--device", default="auto")
    info = sub.add_parser("info", help="describe a model")
    info.add_argument("source")
    sub.add_parser("list", help="list the starter and cached models")
    imp = sub.add_parser("import", help="install a model zip or folder in the cache")
    imp.add_argument("path")
    fetch = sub.add_parser("fetch", help="download a model from bioimage.io")
    fetch.add_argument("id", help="bioimage.io id or DOI")
    fetch.add_argument("--url", help="bioimage.io base address (for mirrors)")


def run_models(args: argparse.Namespace) -> int:
    """``oncoai models``: test, info, list, import, fetch."""
    command = args.models_command
    if command == "test":
        return models_test(args.source, args.weights, args.device)
    if command == "info":
        return models_info(args.source)
    if command == "list":
        return models_list()
    if command == "import":
        from model_zoo.cache import import_model

        model = import_model(args.path)
        _say(f"imported {model.id} ({model.name}) into {model.path}")
        return 0
    if command == "fetch":
        from model_zoo.cache import fetch_model

        model = fetch_model(args.id, base_url=args.url)
        _say(f"fetched {model.id} ({model.name}) into {model.path}")
        return 0
    raise OncoAIError(f"unknown models command {command!r}")


def _tolerances(descr: Any, fmt: str, output_id: str) -> tuple[float, float]:
    config = getattr(descr.config, "bioimageio", None)
    for tol in getattr(config, "reproducibility_tolerance", ()) or ():
        formats = list(getattr(tol, "weights_formats", []) or [])
        outputs = [str(o) for o in getattr(tol, "output_ids", []) or []]
        if (not formats or fmt in formats) and (not outputs or output_id in outputs):
            return float(tol.absolute_tolerance), float(tol.relative_tolerance)
    return DEFAULT_TOLERANCE


def models_test(source: str, weights: str | None = None, device: str = "auto") -> int:
    """Run a model on its own test inputs, per weights format, and compare.

    Returns
    -------
    int
        0 when every format tested reproduces the test outputs.
    """
    from model_zoo.model import (
        _is_local,
        available_formats,
        load_description,
        locate_rdf,
    )

    rdf = locate_rdf(source)
    descr = load_description(rdf)
    formats = [weights] if weights else available_formats(descr)
    tested, failed = 0, 0
    for fmt in formats:
        entry = getattr(descr.weights, fmt, None)
        if entry is None:
            raise OncoAIError(
                f"the model has no {fmt!r} weights; it has "
                f"{', '.join(available_formats(descr))}"
            )
        if not _is_local(entry):
            _say(f"{fmt}: skipped, its weights are not in the package ({entry.source})")
            continue
        ok = _test_format(rdf, descr, fmt, device)
        tested += 1
        failed += not ok
    if not tested:
        raise OncoAIError(
            "no weights format of this model could be tested here; fetch the full "
            "package or install the extra its weights need"
        )
    if failed:
        raise NotReproducedError(
            f"{failed} of {tested} weights format(s) did not reproduce the test outputs"
        )
    _say(f"all {tested} weights format(s) reproduce the test outputs")
    return 0


def _test_format(rdf: Path, descr: Any, fmt: str, device: str) -> bool:
    import numpy as np

    from model_zoo.config import PredictionConfig
    from model_zoo.model import load_model
    from model_zoo.prediction import predict

    model = load_model(rdf, fmt, device)
    images = {}
    for tensor in descr.inputs:
        data = np.load(rdf.parent / str(tensor.test_tensor.source))
        images[str(tensor.id)] = _test_image(data, tensor)
    config = PredictionConfig(model=str(rdf), weights=fmt, device=device, tile=0)
    result = predict(config, images, model=model)
    ok = True
    for tensor in descr.outputs:
        key = str(tensor.id)
        expected = np.load(rdf.parent / str(tensor.test_tensor.source))
        expected = _to_output_axes(expected, tensor, result.output_axes[key])
        got = np.asarray(result.outputs[key])
        if got.shape != expected.shape:
            _say(
                f"{fmt}: output {key} has shape {got.shape}, expected {expected.shape}"
            )
            ok = False
            continue
        atol, rtol = _tolerances(descr, fmt, key)
        diff = np.abs(got.astype(np.float64) - expected.astype(np.float64))
        max_diff = float(diff.max()) if diff.size else 0.0
        good = bool(np.all(diff <= atol + rtol * np.abs(expected)))
        _say(
            f"{fmt}: output {key}: max abs difference {max_diff:.3g} "
            f"(tolerance abs {atol:g}, rel {rtol:g}) -> "
            + ("reproduced" if good else "NOT reproduced")
        )
        ok &= good
    return ok


def _test_image(data: Any, tensor: Any) -> Any:
    from model_zoo.images import ImageData
    from model_zoo.model import _axis_letter

    letters = [_axis_letter(a) for a in tensor.axes]
    if "B" in letters:
        b = letters.index("B")
        if data.shape[b] != 1:
            raise OncoAIError(
                "test tensors with a batch of more than 1 are not supported"
            )
        data = data.take(0, axis=b)
        letters.pop(b)
    return ImageData(data, "".join(letters), name="test_input")


def _to_output_axes(expected: Any, tensor: Any, axes: str) -> Any:
    import numpy as np

    from model_zoo.model import _axis_letter

    letters = [_axis_letter(a) for a in tensor.axes]
    if "B" in letters:
        expected = expected.take(0, axis=letters.index("B"))
        letters.remove("B")
    return np.transpose(expected, [letters.index(a) for a in axes])


def models_info(source: str) -> int:
    """Print what a model is, what it takes and what it gives."""
    from model_zoo.model import (
        FORMAT_NAMES,
        _is_local,
        available_formats,
        axes_letters,
        load_description,
        locate_rdf,
    )

    rdf = locate_rdf(source)
    descr = load_description(rdf)
    _say(f"name:        {descr.name}")
    _say(f"id:          {getattr(descr, 'id', None) or rdf.parent.name}")
    _say(f"description: {descr.description}")
    _say(f"license:     {descr.license}")
    _say(f"spec:        {descr.format_version}")
    _say(f"rdf:         {rdf}")
    for tensor in descr.inputs:
        sizes = ", ".join(f"{a.id}={getattr(a, 'size', '')}" for a in tensor.axes)
        _say(f"input  {tensor.id}: {axes_letters(tensor.axes)} ({sizes})")
    for tensor in descr.outputs:
        _say(f"output {tensor.id}: {axes_letters(tensor.axes)}")
    for fmt in available_formats(descr):
        entry = getattr(descr.weights, fmt)
        where = "local" if _is_local(entry) else f"remote: {entry.source}"
        _say(f"weights {FORMAT_NAMES[fmt]}: {where}, sha256 {entry.sha256}")
    return 0


def models_list() -> int:
    """Print the starter models and every model in the cache."""
    from model_zoo.cache import list_models
    from model_zoo.starter import STARTER_MODELS

    for nickname, rdf in STARTER_MODELS.items():
        _say(f"{nickname:<28} starter  {rdf.parent}")
    for model in list_models():
        _say(f"{model.id:<28} cached   {model.name} ({model.path})")
    return 0


# -- demo ----------------------------------------------------------------------


def _configure_demo(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--outdir",
        default="demo_output",
        help="where to write the outputs (default: ./demo_output)",
    )
    parser.add_argument("--model", default="oncoai-nuclei")


def run_demo(args: argparse.Namespace) -> int:
    """Segment the bundled sample with the bundled starter model, every format."""
    import tifffile

    from model_zoo.config import PredictionConfig
    from model_zoo.outputs import write_result
    from model_zoo.plugins import get_registry
    from model_zoo.prediction import predict
    from model_zoo.starter import nuclei_sample

    outdir = Path(args.outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    sample = outdir / "nuclei_sample.tif"
    tifffile.imwrite(sample, nuclei_sample())
    _say(f"sample image: {sample.resolve()}")
    config = PredictionConfig(model=args.model)
    result = predict(config, sample, progress=_ProgressLine())
    _say(
        f"model {result.provenance['model_name']} "
        f"({result.provenance['weights_format']}): "
        f"{len(result.instances.table['label'])} nuclei found"
    )
    names = {
        ".tif": "nuclei_probability.tif",
        ".ome.zarr": "nuclei_probability.ome.zarr",
        ".npy": "nuclei_probability.npy",
        ".zip": "nuclei_RoiSet.zip",
        ".csv": "nuclei_measurements.csv",
    }
    registry = get_registry()
    for suffix in sorted(registry.writers):
        if suffix in (".tiff", ".ome.tif", ".ome.tiff", ".zarr", ".geojson.gz"):
            continue
        names.setdefault(
            suffix, "nuclei" + (suffix if suffix[0] in "._" else "_" + suffix)
        )
    for suffix, name in sorted(names.items()):
        path = write_result(result, outdir / name)
        _say(f"{suffix:<12} {path.resolve()}")
    return 0


# -- entry point -----------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The ``oncoai`` parser with the engine's and every plugin's subcommands."""
    from model_zoo import __version__
    from model_zoo.plugins import get_registry

    parser = argparse.ArgumentParser(
        prog="oncoai",
        description="Run bioimage.io models offline on images and slides.",
    )
    parser.add_argument("--version", action="version", version=f"oncoai {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--verbose", "-v", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True)
    predict = sub.add_parser("predict", help="run a model on an image")
    _configure_predict(predict)
    predict.set_defaults(handler=run_predict)
    models = sub.add_parser("models", help="test, inspect, list, import, fetch models")
    _configure_models(models)
    models.set_defaults(handler=run_models)
    demo = sub.add_parser("demo", help="segment the bundled sample, every format")
    _configure_demo(demo)
    demo.set_defaults(handler=run_demo)
    for command in get_registry().commands.values():
        p = sub.add_parser(command.name, help=command.help)
        command.configure(p)
        p.set_defaults(handler=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``oncoai``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    verbose = "-v" in argv or "--verbose" in argv
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    # Libraries' Python warnings (e.g. bioimageio.spec's notes on converting an
    # old RDF) are nothing the user can act on: into the log, shown with -v, so
    # that a refused command prints its one error line and nothing else.
    logging.captureWarnings(True)
    if not (verbose or debug):
        logging.getLogger("py.warnings").setLevel(logging.ERROR)
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        return int(args.handler(args) or 0)
    except OncoAIError as exc:
        if debug:
            raise
        sys.stderr.write(f"error: {one_line(exc)}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted; nothing was written\n")
        return 130
    except Exception as exc:  # noqa: BLE001
        if debug:
            raise
        log.debug("unexpected error", exc_info=True)
        sys.stderr.write(
            f"error: unexpected {type(exc).__name__}: {one_line(exc)} "
            "(run again with --debug for the traceback)\n"
        )
        return 3


if __name__ == "__main__":
    sys.exit(main())
