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
