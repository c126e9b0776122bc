"""Reading QuPath projects (``project.qpproj``) without QuPath.

A QuPath project is a folder with ``project.qpproj`` (JSON), one ``data/<id>/``
folder per image and, usually, the images themselves or links to them.  Each
image entry names its image by URI inside a *server builder*.  Projects move
between machines, so QuPath, like this module, looks for an image relative to
the project when its absolute URI no longer exists.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any
from urllib.parse import unquote, urlparse

from model_zoo.errors import OncoAIError

log = logging.getLogger(__name__)

PROJECT_FILE = "project.qpproj"


@dataclass
class ProjectImage:
    """One image entry of a QuPath project.

    Attributes
    ----------
    entry_id : str
        QuPath's entry id; the entry's data lives in ``data/<entry_id>/``.
    name : str
        The name shown in QuPath's project list.
    uri : str or None
        The image URI as the project stores it (often an absolute path on
        another machine).
    path : Path or None
        Where the image was found on this machine, or None.
    channel_names : list of str
        Channel names from the entry's metadata, when stored.
    pixel_size : tuple of float or None
        ``(y, x)`` micrometres per pixel, when stored in µm.
    width, height : int or None
        Full-resolution size in pixels, when stored.
    metadata : dict
        The entry's key-value metadata.
    """

    entry_id: str
    name: str
    uri: str | None
    path: Path | None
    channel_names: list[str] = field(default_factory=list)
    pixel_size: tuple[float, float] | None = None
    width: int | None = None
    height: int | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def stem(self) -> str:
        """The image name without its extension, safe as a file name."""
        name = self.name
        for suffix in (".ome.tiff", ".ome.tif", ".ome.zarr"):
            if name.lower().endswith(suffix):
                name = name[: -len(suffix)]
                break
        else:
            name = os.path.splitext(name)[0] or name
        return "".join("_" if c in '<>:"/\\|?*' or ord(c) < 32 else c for c in name)


@dataclass
class QuPathProject:
    """A QuPath project read from its ``project.qpproj``.

    Attributes
    ----------
    path : Path
        The ``project.qpproj`` file.
    version : str
        The QuPath version that wrote it.
    images : list of ProjectImage
        The image entries, in project order.
    """

    path: Path
    version: str
    images: list[ProjectImage]

    @property
    def folder(self) -> Path:
        """The project folder."""
        return self.path.parent

    @classmethod
    def open(cls, path: str | Path) -> QuPathProject:
        """Read a project from its folder or its ``project.qpproj``.

        Parameters
        ----------
        path : str or Path
            The project folder, or the ``.qpproj`` file.

        Returns
        -------
        QuPathProject

        Raises
        ------
        OncoAIError
            When there is no project there or the file is not a QuPath project.

        Examples
        --------
        >>> project = QuPathProject.open("qupath_example_project")  # doctest: +SKIP
        >>> [image.name for image in project.images]  # doctest: +SKIP
        ['Edu+_RFP+_(3).tif', 'Edu+_RFP+_(4).tif']
        """
        file = _project_file(Path(path).expanduser())
        try:
            raw = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise OncoAIError(
                f"{str(file)!r} is not a readable QuPath project file ({exc}); "
                "open and save the project in QuPath, or give another project"
            ) from exc
        if not isinstance(raw, dict) or not isinstance(raw.get("images", []), list):
            raise OncoAIError(
                f"{str(file)!r} is not a QuPath project: it has no list of images"
            )
        old_folder = _previous_folder(raw.get("uri"))
        images = [
            _read_entry(entry, i, file.parent, old_folder)
            for i, entry in enumerate(raw.get("images") or [])
        ]
        return cls(path=file, version=str(raw.get("version", "")), images=images)

    def image(self, key: str | int) -> ProjectImage:
        """Find an image by entry id or by name."""
        for image in self.images:
            if str(key) in (image.entry_id, image.name, image.stem):
                return image
        names = ", ".join(f"{i.entry_id}: {i.name}" for i in self.images)
        raise OncoAIError(
            f"no image {key!r} in project {str(self.path)!r}; it has {names or 'none'}"
        )


def _project_file(path: Path) -> Path:
    if path.is_dir():
        file = path / PROJECT_FILE
        if not file.is_file():
            found = sorted(path.glob("*.qpproj"))
            if not found:
                raise OncoAIError(
                    f"no {PROJECT_FILE} in {str(path)!r}; give a QuPath project "
                    "folder or its .qpproj file"
                )
            file = found[0]
        return file
    if path.is_file():
        return path
    raise OncoAIError(
        f"QuPath project not found: {str(path)!r}; give a project folder or its "
        f"{PROJECT_FILE}"
    )


def uri_to_path(uri: str) -> PurePosixPath | PureWindowsPath | None:
    """The local file path a ``file:`` URI names, or None for other URIs.

    Handles ``file:/x``, ``file:///x`` and Windows drives (``file:/C:/x``);
    percent escapes are decoded, ``+`` is kept as it is.
    """
    parsed = urlparse(uri)
    if parsed.scheme.lower() != "file":
        if len(parsed.scheme) == 1:  # "C:\\..." parsed as a scheme
            return PureWindowsPath(uri)
        return None
    text = unquote(parsed.path)
    if parsed.netloc and parsed.netloc not in ("", "localhost"):
        return PureWindowsPath(f"//{parsed.netloc}{text}")
    if len(text) > 2 and text[0] == "/" and text[2] == ":":
        return PureWindowsPath(text[1:])
    return PurePosixPath(text)


def _previous_folder(uri: Any) -> PurePosixPath | PureWindowsPath | None:
    if not isinstance(uri, str):
        return None
    path = uri_to_path(uri)
    return path.parent if path is not None else None


def _find_uri(builder: Any) -> str | None:
    """The image URI inside a server builder, however deeply wrapped."""
    if not isinstance(builder, dict):
        return None
    if isinstance(builder.get("uri"), str):
        return builder["uri"]
    for key in ("builder", "serverBuilder"):
        found = _find_uri(builder.get(key))
        if found:
            return found
    for item in builder.get("builders") or []:
        found = _find_uri(item)
        if found:
            return found
    return None


def _read_entry(
    entry: Any, index: int, folder: Path, old_folder: PurePosixPath | None
) -> ProjectImage:
    if not isinstance(entry, dict):
        raise OncoAIError(
            f"image entry {index} of the project is not an object: {str(entry)[:60]!r}"
        )
    builder = entry.get("serverBuilder") or {}
    uri = _find_uri(builder)
    meta = builder.get("metadata") or {}
    name = entry.get("imageName") or meta.get("name") or f"image {index + 1}"
    return ProjectImage(
        entry_id=str(entry.get("entryID", index + 1)),
        name=str(name),
        uri=uri,
        path=locate_image(uri, folder, old_folder) if uri else None,
        channel_names=[str(c.get("name", "")) for c in meta.get("channels") or []],
        pixel_size=_pixel_size(meta.get("pixelCalibration")),
        width=meta.get("width"),
        height=meta.get("height"),
        metadata={str(k): str(v) for k, v in (entry.get("metadata") or {}).items()},
    )


def _pixel_size(calibration: Any) -> tuple[float, float] | None:
    if not isinstance(calibration, dict):
        return None
    width = calibration.get("pixelWidth") or {}
    height = calibration.get("pixelHeight") or {}
    units = {"µm", "um", "micron", "microns", "\u03bcm"}
    if width.get("unit") in units and height.get("unit") in units:
        try:
            return float(height["value"]), float(width["value"])
        except (KeyError, TypeError, ValueError):
            return None
    return None


def locate_image(
    uri: str, folder: Path, old_folder: PurePosixPath | PureWindowsPath | None = None
) -> Path | None:
    """Find an entry's image on this machine, as QuPath does after a move.

    Tried in order: the URI's own path; the same path relative to the project
    folder as it was relative to the project's previous folder (QuPath stores
    that folder in the project's ``uri``); the file name in the project folder,
    its ``images/`` folder, or the folder above the project.

    Parameters
    ----------
    uri : str
        The entry's image URI.
    folder : Path
        The project folder on this machine.
    old_folder : PurePath, optional
        The project folder when the project was saved.

    Returns
    -------
    Path or None
        An existing file or folder, or None when the image cannot be found.
    """
    path = uri_to_path(uri)
    if path is None:
        return None
    candidates: list[Path] = []
    if isinstance(path, PurePosixPath) == (os.name != "nt"):
        candidates.append(Path(str(path)))
    if old_folder is not None:
        try:
            relative = path.relative_to(old_folder)
        except ValueError:
            relative = None
        if relative is not None:
            candidates.append(folder.joinpath(*relative.parts))
    name = path.name
    candidates += [folder / name, folder / "images" / name, folder.parent / name]
    for candidate in candidates:
        if candidate.exists():
            if candidate != candidates[0]:
                log.info("image %s found at %s", uri, candidate)
            return candidate.resolve()
    return None


# --------------------------------------------------------------------------
# Running a model over a project
# --------------------------------------------------------------------------

IMPORT_SCRIPT = "import_oncoai_results.groovy"


def image_for_entry(entry: ProjectImage) -> Any:
    """Open an entry's image, with the channel names and pixel size QuPath knows.

    Raises
    ------
    OncoAIError
        When the image cannot be found on this machine.
    """
    from model_zoo.images import read_image

    if entry.path is None:
        raise OncoAIError(
            f"image {entry.name!r} (entry {entry.entry_id}) not found: its URI is "
            f"{entry.uri!r} and no file of that name is in or beside the project; "
            "copy the image there or fix the URI in QuPath"
        )
    image = read_image(entry.path)
    if entry.channel_names and len(entry.channel_names) == image.n_channels:
        image.channel_names = list(entry.channel_names)
    if image.pixel_size is None and entry.pixel_size is not None:
        image.pixel_size = entry.pixel_size
    return image


def annotations_for(entry: ProjectImage, folder: Path | None) -> list[Any] | None:
    """The regions exported from QuPath for one image, or None to run on all of it.

    Looks in ``folder`` for ``<image stem>.geojson``, ``<image name>.geojson``
    or ``<entry id>.geojson`` (also ``.json``, ``.geojson.gz`` and ``.zip``).
    """
    from qupath_bridge.geojson import read_geojson, regions_from_objects

    if folder is None:
        return None
    if not folder.is_dir():
        raise OncoAIError(
            f"--annotations must be a folder of GeoJSON files; got {str(folder)!r}"
        )
    for stem in (entry.stem, entry.name, entry.entry_id):
        for suffix in (".geojson", ".json", ".geojson.gz", ".zip"):
            candidate = folder / f"{stem}{suffix}"
            if candidate.is_file():
                regions = regions_from_objects(read_geojson(candidate))
                log.info("%s: %d region(s) in %s", entry.name, len(regions), candidate)
                return regions
    return None


def output_name(entry: ProjectImage, taken: set[str], suffix: str = ".geojson") -> str:
    """A file name after the image; the entry id is added if two images share it."""
    name = f"{entry.stem}{suffix}"
    if name.lower() in taken:
        name = f"{entry.stem}_{entry.entry_id}{suffix}"
    taken.add(name.lower())
    return name


def run_project(
    project: QuPathProject,
    config: Any,
    output: Path,
    *,
    annotations: Path | None = None,
    cell_expansion: float = 0.0,
    collection: bool = True,
    report: Any = None,
) -> list[tuple[ProjectImage, Path]]:
    """Run a model on every image of a project and write one GeoJSON per image.

    Parameters
    ----------
    project : QuPathProject
        The project.
    config : PredictionConfig
        What to run.
    output : Path
        The folder for the GeoJSON files; created when missing.
    annotations : Path, optional
        A folder of GeoJSON annotations exported from QuPath, one file per image
        (see :func:`annotations_for`); images without one run whole.
    cell_expansion : float
        Grow nuclei by this many pixels into cells.
    collection : bool
        Write FeatureCollections (True) or bare arrays of features.
    report : callable, optional
        Called with one line of text per step.

    Returns
    -------
    list of (ProjectImage, Path)
        Each image and the GeoJSON written for it.

    Raises
    ------
    OncoAIError
        For the first image that cannot be found or run; files already written
        for earlier images are complete and stay.
    """
    from qupath_bridge.geojson import write_geojson
    from qupath_bridge.runner import RegionPrediction

    say = report or log.info
    if not project.images:
        raise OncoAIError(f"project {str(project.path)!r} has no images")
    output.mkdir(parents=True, exist_ok=True)
    written: list[tuple[ProjectImage, Path]] = []
    taken: set[str] = set()
    suffix = ".geojson"
    for number, entry in enumerate(project.images, start=1):
        image = image_for_entry(entry)
        regions = annotations_for(entry, annotations)
        features: list[dict[str, Any]] = []
        for region in regions if regions is not None else [None]:
            prediction = RegionPrediction(
                config, image, annotation=region, cell_expansion=cell_expansion
            )
            for _ in prediction.run():
                pass
            features += prediction.features or []
        count = sum(len(f["properties"].get("childObjects", [])) for f in features)
        target = write_geojson(
            features, output / output_name(entry, taken, suffix), collection=collection
        )
        say(f"[{number}/{len(project.images)}] {entry.name}: {count} objects: {target}")
        written.append((entry, target))
    return written


def write_import_script(written: list[tuple[ProjectImage, Path]], output: Path) -> Path:
    """Write the Groovy script that imports the GeoJSON files into the project.

    The script is ``scripts/oncoai_import_results.groovy`` with its ``RESULTS``
    map filled in with each entry id and the absolute path of its file.
    """
    from importlib.resources import files

    template = (
        files("qupath_bridge") / "scripts" / "oncoai_import_results.groovy"
    ).read_text(encoding="utf-8")
    marker = "def RESULTS = [:]"
    if marker not in template:
        raise OncoAIError("the packaged import script lacks its RESULTS line")
    entries = ",\n    ".join(
        f"{_groovy_string(entry.entry_id)}: {_groovy_string(str(path.resolve()))}"
        for entry, path in written
    )
    script = template.replace(marker, f"def RESULTS = [\n    {entries}\n]", 1)
    target = output / IMPORT_SCRIPT
    _write_text(target, script)
    return target


def _groovy_string(text: str) -> str:
    # Single quotes: no $ interpolation in Groovy; escape backslash and quote.
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _write_text(path: Path, text: str) -> None:
    from model_zoo.outputs import atomic_path

    with atomic_path(path) as temp:
        temp.write_text(text, encoding="utf-8")


def qupath_installation() -> str | None:
    """Where paquo finds QuPath, or None when paquo or QuPath is missing."""
    try:
        from paquo._config import settings, to_kwargs
        from paquo.jpype_backend import find_qupath
    except ImportError:
        return None
    try:
        return str(find_qupath(**to_kwargs(settings))[0])
    except (ValueError, OSError, RuntimeError):
        return None


def write_with_paquo(
    project: QuPathProject, written: list[tuple[ProjectImage, Path]]
) -> int:
    """Add the objects straight into the project's data files, through paquo.

    Needs the ``[qupath]`` extra and a QuPath installation that paquo finds.

    Returns
    -------
    int
        The number of images updated.
    """
    from qupath_bridge.geojson import load_geojson

    if qupath_installation() is None:
        raise OncoAIError(
            "--write-project needs paquo and a QuPath installation: install "
            "OncoAI's [qupath] extra and QuPath, or import the GeoJSON files with "
            f"the {IMPORT_SCRIPT} script instead"
        )
    from paquo.projects import QuPathProject as PaquoProject

    files = {entry.entry_id: path for entry, path in written}
    updated = 0
    with PaquoProject(str(project.path), mode="r+") as paquo_project:
        for image in paquo_project.images:
            path = files.get(str(image.entry_id))
            if path is None:
                continue
            document = load_geojson(path)
            if isinstance(document, dict):
                document = document.get("features", [document])
            image.hierarchy.load_geojson(list(document), raise_on_skip=True)
            updated += 1
    return updated
