"""Install the OncoAI macros into an ImageJ or Fiji, so they show in its menu.

ImageJ lists every ``.ijm`` macro under ``plugins/`` and its subfolders in the
*Plugins* menu, with underscores read as spaces, so ``plugins/OncoAI/
Segment_Nuclei.ijm`` becomes *Plugins › OncoAI › Segment Nuclei* after a
restart (or *Help › Refresh Menus*).  The shared macro code,
``oncoai-core.txt``, has no underscore and a ``.txt`` ending, which ImageJ does
not list.  ``oncoai_path.txt`` beside the macros holds the ``oncoai``
executable they call; ``oncoai-installed.txt`` records what was installed, so
that uninstalling removes exactly that.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from model_zoo.errors import OncoAIError

log = logging.getLogger(__name__)

IMAGEJ_DIR_ENV = "ONCOAI_IMAGEJ_DIR"
"""Environment variable naming the ImageJ or Fiji folder to install into."""

EXE_ENV = "ONCOAI_EXE"
"""Environment variable the macros read first for the ``oncoai`` executable."""

SUBFOLDER = "OncoAI"
EXE_FILE = "oncoai_path.txt"
CORE_FILE = "oncoai-core.txt"
MANIFEST_FILE = "oncoai-installed.txt"

MACROS = (
    "Segment_Nuclei.ijm",
    "Segment_Cells.ijm",
    "Segment_Organoids.ijm",
    "Denoise_Image.ijm",
    "Super_Resolve.ijm",
    "Run_Model.ijm",
    "oncoai_batch.ijm",
)
"""The macros shown in the menu, as named in this package and once installed."""

MACRO_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Installation:
    """Where the macros went.

    Attributes
    ----------
    imagej_dir : Path
        The ImageJ or Fiji folder.
    folder : Path
        ``<imagej_dir>/plugins/OncoAI``.
    files : tuple of Path
        Every file written.
    exe : Path
        The ``oncoai`` executable written into ``oncoai_path.txt``.
    """

    imagej_dir: Path
    folder: Path
    files: tuple[Path, ...]
    exe: Path


def imagej_candidates() -> list[Path]:
    """Folders where an ImageJ or Fiji is usually installed, in search order."""
    home = Path.home()
    return [
        home / "Fiji.app",
        home / "Applications" / "Fiji.app",
        home / "fiji" / "Fiji.app",
        home / "fiji",
        Path("/Applications/Fiji.app"),
        Path("/opt/Fiji.app"),
        Path("/opt/fiji/Fiji.app"),
        home / "ImageJ",
        Path("/Applications/ImageJ"),
        # Debian's `imagej` package runs with -ijpath ~/.imagej.
        home / ".imagej",
    ]


def find_imagej_dir(imagej_dir: str | Path | None = None) -> Path:
    """Return the ImageJ or Fiji folder to install into.

    Parameters
    ----------
    imagej_dir : str or Path, optional
        Given by the user; must exist.  Otherwise ``$ONCOAI_IMAGEJ_DIR``, then
        the first of :func:`imagej_candidates` that looks like an ImageJ.

    Raises
    ------
    OncoAIError
        When the given folder does not exist, or none is found.
    """
    if imagej_dir is None and os.environ.get(IMAGEJ_DIR_ENV):
        imagej_dir = os.environ[IMAGEJ_DIR_ENV]
    if imagej_dir is not None:
        folder = Path(imagej_dir).expanduser()
        if not folder.is_dir():
            raise OncoAIError(
                f"ImageJ folder not found: {folder}; pass the folder that holds "
                "ImageJ's plugins/ (for Fiji, Fiji.app)."
            )
        return folder.resolve()
    for folder in imagej_candidates():
        if _looks_like_imagej(folder):
            return folder.resolve()
    looked = ", ".join(str(p) for p in imagej_candidates())
    raise OncoAIError(
        f"no ImageJ or Fiji folder found (looked in {looked}); pass it with "
        "`oncoai fiji install --imagej-dir DIR`."
    )


def find_oncoai_exe() -> Path:
    """Return the ``oncoai`` executable of this Python environment.

    Raises
    ------
    OncoAIError
        When neither this environment nor ``PATH`` has one.
    """
    scripts = Path(sys.executable).parent
    for name in ("oncoai", "oncoai.exe"):
        if (scripts / name).is_file():
            return scripts / name
    found = shutil.which("oncoai")
    if found:
        return Path(found)
    raise OncoAIError(
        f"the oncoai executable was not found beside {sys.executable} nor on PATH; "
        "install OncoAI with pip, or pass --exe PATH."
    )


def install(
    imagej_dir: str | Path | None = None, exe: str | Path | None = None
) -> Installation:
    """Copy the macros into ``plugins/OncoAI`` and record the executable.

    Installing again replaces the earlier installation.

    Parameters
    ----------
    imagej_dir : str or Path, optional
        See :func:`find_imagej_dir`.
    exe : str or Path, optional
        The ``oncoai`` executable the macros call; by default this
        environment's, see :func:`find_oncoai_exe`.

    Returns
    -------
    Installation

    Examples
    --------
    >>> install("~/Fiji.app")  # doctest: +SKIP
    Installation(imagej_dir=PosixPath('/home/me/Fiji.app'), ...)
    """
    root = find_imagej_dir(imagej_dir)
    exe_path = Path(exe).expanduser().resolve() if exe else find_oncoai_exe()
    if not exe_path.is_file():
        raise OncoAIError(f"oncoai executable not found: {exe_path}; check --exe.")

    folder = root / "plugins" / SUBFOLDER
    try:
        folder.mkdir(parents=True, exist_ok=True)
        written = [_copy(MACRO_DIR / name, folder / name) for name in MACROS]
        written.append(_copy(MACRO_DIR / CORE_FILE, folder / CORE_FILE))
        written.append(_write_text(folder / EXE_FILE, f"{exe_path}\n"))
        names = "\n".join(p.name for p in [*written, folder / MANIFEST_FILE])
        written.append(_write_text(folder / MANIFEST_FILE, names + "\n"))
    except OSError as err:
        raise OncoAIError(
            f"cannot write the macros into {folder}: {err.strerror}; pass an ImageJ "
            "folder you can write to with --imagej-dir."
        ) from err
    log.info("installed %d OncoAI macros into %s", len(MACROS), folder)
    return Installation(root, folder, tuple(written), exe_path)


def uninstall(imagej_dir: str | Path | None = None) -> list[Path]:
    """Remove what :func:`install` wrote, and the folder if it is then empty.

    Files the user added to ``plugins/OncoAI`` are left in place.

    Returns
    -------
    list of Path
        The files removed.

    Raises
    ------
    OncoAIError
        When the folder holds no OncoAI installation.
    """
    root = find_imagej_dir(imagej_dir)
    folder = root / "plugins" / SUBFOLDER
    manifest = folder / MANIFEST_FILE
    if not manifest.is_file():
        raise OncoAIError(
            f"no OncoAI macros installed in {folder}; pass the folder you installed "
            "into with --imagej-dir."
        )
    removed = []
    for name in manifest.read_text(encoding="utf-8").split():
        target = folder / Path(name).name
        if target.is_file():
            target.unlink()
            removed.append(target)
    if not any(folder.iterdir()):
        folder.rmdir()
    log.info("removed %d OncoAI files from %s", len(removed), folder)
    return removed


def _looks_like_imagej(folder: Path) -> bool:
    if not folder.is_dir():
        return False
    markers = ["plugins", "ij.jar", "jars", "ImageJ-linux64", "ImageJ-win64.exe"]
    return any((folder / marker).exists() for marker in markers)


def _copy(source: Path, target: Path) -> Path:
    _write_text(target, source.read_text(encoding="utf-8"))
    return target


def _write_text(target: Path, text: str) -> Path:
    temp = target.with_name(f".{target.name}.part")
    temp.write_text(text, encoding="utf-8")
    os.replace(temp, target)
    return target
