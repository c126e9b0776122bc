"""The QuPath bridge's part of the ``oncoai`` command line and output formats.

Registered through the ``oncoai.plugins`` entry point:

- ``oncoai qupath list PROJECT``: the project's images and where they were found;
- ``oncoai qupath run PROJECT --model M``: one GeoJSON per image, and a Groovy
  script that imports them into the project;
- ``oncoai serve``: the local service (see :mod:`qupath_bridge.service`);
- the ``.geojson`` and ``.geojson.gz`` writers for ``oncoai predict``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from model_zoo.errors import OncoAIError
from model_zoo.plugins import Command, Registry

if TYPE_CHECKING:
    from qupath_bridge.project import QuPathProject

log = logging.getLogger(__name__)


def register(registry: Registry) -> None:
    """Add the QuPath commands and the GeoJSON writers to the engine's registry."""
    from qupath_bridge import service
    from qupath_bridge.geojson import write_result_geojson

    registry.add_writer(
        (".geojson", ".geojson.gz"), write_result_geojson, instances=True
    )
    registry.add_command(
        Command(
            name="qupath",
            help="run models on QuPath projects; list a project's images",
            configure=configure_qupath,
            run=run_qupath,
        )
    )
    registry.add_command(
        Command(
            name="serve",
            help="start the local service for QuPath and Fiji (127.0.0.1 only)",
            configure=service.configure,
            run=service.run,
        )
    )


def configure_qupath(parser: argparse.ArgumentParser) -> None:
    """Add ``oncoai qupath``'s subcommands and their options."""
    actions = parser.add_subparsers(dest="qupath_action", metavar="ACTION")
    actions.required = True
    listing = actions.add_parser("list", help="list a project's images")
    listing.add_argument("project", type=Path, help="project folder or .qpproj file")

    run = actions.add_parser(
        "run",
        help="run a model on every image; write GeoJSON and an import script",
        description=(
            "Run a model on every image of a QuPath project.  Writes one GeoJSON "
            "file per image, named after the image, and import_oncoai_results.groovy"
            ", which imports them all into the project when run in QuPath."
        ),
    )
    run.add_argument("project", type=Path, help="project folder or .qpproj file")
    run.add_argument("--model", "-m", required=True, help="model id, folder or zip")
    run.add_argument(
        "-o",
        "--output",
        type=Path,
        help="folder for the results (default: PROJECT/oncoai)",
    )
    run.add_argument(
        "--annotations",
        type=Path,
        help="folder of GeoJSON annotations exported from QuPath, one per image "
        "(<image name>.geojson); the model runs inside them",
    )
    run.add_argument(
        "--channel",
        help="the channel to use, by index or name, for a model with fewer "
        "channels than the images",
    )
    run.add_argument("--tile", type=int, help="tile size in pixels")
    run.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    run.add_argument(
        "--threshold", type=float, default=0.5, help="foreground probability"
    )
    run.add_argument(
        "--no-split",
        action="store_true",
        help="do not split touching objects by watershed",
    )
    run.add_argument(
        "--min-size", type=int, default=10, help="smallest object in pixels"
    )
    run.add_argument(
        "--cell-expansion",
        type=float,
        default=0.0,
        help="grow each nucleus by this many pixels and write cells",
    )
    run.add_argument(
        "--array",
        action="store_true",
        help="write bare arrays of features instead of FeatureCollections",
    )
    run.add_argument(
        "--write-project",
        action="store_true",
        help="also add the objects to the project's data files through paquo "
        "(needs the [qupath] extra and QuPath installed)",
    )


def run_qupath(args: argparse.Namespace) -> int:
    """``oncoai qupath list`` and ``oncoai qupath run``."""
    from qupath_bridge.project import QuPathProject

    project = QuPathProject.open(args.project)
    if args.qupath_action == "list":
        return _list(project)
    return _run(project, args)


def _list(project: QuPathProject) -> int:
    out = sys.stdout
    out.write(
        f"{project.path} (QuPath {project.version}): {len(project.images)} image(s)\n"
    )
    for image in project.images:
        where = str(image.path) if image.path else f"NOT FOUND (URI {image.uri})"
        channels = ", ".join(image.channel_names) or "unknown"
        out.write(f"  {image.entry_id}\t{image.name}\t{where}\tchannels: {channels}\n")
    return 0 if all(i.path for i in project.images) else 1


def _run(project: QuPathProject, args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from model_zoo.config import PredictionConfig
    from qupath_bridge.project import (
        run_project,
        write_import_script,
        write_with_paquo,
    )

    channel = args.channel
    if channel is not None and channel.lstrip("-").isdigit():
        channel = int(channel)
    try:
        config = PredictionConfig(
            model=args.model,
            tile=args.tile,
            device=args.device,
            channel=channel,
            threshold=args.threshold,
            split_touching=not args.no_split,
            min_size=args.min_size,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        raise OncoAIError(
            f"bad option {'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
        ) from exc
    if args.cell_expansion < 0:
        raise OncoAIError(
            f"--cell-expansion must be >= 0 pixels; got {args.cell_expansion}"
        )
    output = args.output or project.folder / "oncoai"

    def report(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    report(f"{project.path}: {len(project.images)} image(s)")
    written = run_project(
        project,
        config,
        output,
        annotations=args.annotations,
        cell_expansion=args.cell_expansion,
        collection=not args.array,
        report=report,
    )
    script = write_import_script(written, output)
    report(f"import script: {script} (run it in QuPath with the project open)")
    if args.write_project:
        updated = write_with_paquo(project, written)
        report(f"added the objects to {updated} image(s) of {project.path}")
    return 0
