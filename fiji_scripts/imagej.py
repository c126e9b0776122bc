"""Open OncoAI results in an ImageJ that runs inside Python.

Two ways to get an ImageJ in the Python process:

- **JPype with a plain ImageJ jar** (the default): starts a JVM with ``ij.jar``,
  e.g. Debian's ``/usr/share/java/ij.jar``, and talks to ImageJ 1 directly
  (``ij.IJ``, ``ImagePlus``, ``RoiDecoder``, ``ResultsTable``).  Works offline.
- **pyimagej with a local Fiji** (``start_imagej(fiji_dir=...)``): when an
  ImageJ2/Fiji installation exists and ``pyimagej`` is installed.  pyimagej
  needs the ImageJ2 and imglib2 jars, which it fetches from Maven unless a Fiji
  folder provides them, so it cannot start offline without a Fiji; this path is
  not exercised by OncoAI's tests, which run on machines without Fiji.

Either way the JVM starts once per Python process and cannot be restarted, and
only one JVM can live in a process: a JVM started earlier without ImageJ on its
class path cannot be given it later.

Examples
--------
>>> from fiji_scripts import imagej  # doctest: +SKIP
>>> opened = imagej.open_result("out/cells_labels.tif")  # doctest: +SKIP
>>> opened.image.getWidth(), len(opened.rois)  # doctest: +SKIP
(512, 125)
"""

from __future__ import annotations

import logging
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from model_zoo.errors import OncoAIError

log = logging.getLogger(__name__)

IJ_JAR_ENV = "ONCOAI_IJ_JAR"
"""Environment variable naming the ``ij.jar`` to use."""

_JAR_CANDIDATES = (
    Path("/usr/share/java/ij.jar"),
    Path("/usr/share/imagej/ij.jar"),
    Path("/opt/ImageJ/ij.jar"),
    Path.home() / "ImageJ" / "ij.jar",
)


@dataclass
class OpenedResult:
    """An OncoAI result opened in ImageJ.

    Attributes
    ----------
    image : ij.ImagePlus
        The label or result image, with its calibration.
    rois : list of ij.gui.Roi
        The objects from the RoiSet beside the image, when there is one.
    table : ij.measure.ResultsTable or None
        The measurements from the CSV beside the image, when there is one.
    """

    image: Any
    rois: list[Any] = field(default_factory=list)
    table: Any = None


def find_ij_jar(imagej_dir: str | Path | None = None) -> Path:
    """Find an ImageJ 1 jar.

    Parameters
    ----------
    imagej_dir : str or Path, optional
        An ImageJ or Fiji folder to look in first (``ij.jar``, ``jars/ij-*.jar``).

    Returns
    -------
    Path
        From ``imagej_dir``, else ``$ONCOAI_IJ_JAR``, else the usual places.

    Raises
    ------
    OncoAIError
        When no jar is found.
    """
    candidates: list[Path] = []
    if imagej_dir is not None:
        folder = Path(imagej_dir)
        candidates += [folder / "ij.jar", *sorted(folder.glob("jars/ij-*.jar"))]
    if os.environ.get(IJ_JAR_ENV):
        candidates.append(Path(os.environ[IJ_JAR_ENV]))
    candidates += list(_JAR_CANDIDATES)
    for jar in candidates:
        if jar.is_file():
            return jar
    raise OncoAIError(
        f"no ImageJ jar found (looked in {', '.join(map(str, candidates))}); "
        f"install ImageJ (Debian: apt install imagej) or set {IJ_JAR_ENV}."
    )


def start_imagej(
    ij_jar: str | Path | None = None,
    *,
    fiji_dir: str | Path | None = None,
    headless: bool | None = None,
) -> Any:
    """Start ImageJ in this process, once; later calls return the same one.

    Parameters
    ----------
    ij_jar : str or Path, optional
        The ImageJ 1 jar for the JPype route; found by :func:`find_ij_jar`
        when omitted.
    fiji_dir : str or Path, optional
        A local Fiji (ImageJ2) folder: start through pyimagej instead.
    headless : bool, optional
        Run without windows.  Default: headless when there is no ``DISPLAY``.

    Returns
    -------
    ij.IJ
        ImageJ 1's static entry class.

    Raises
    ------
    OncoAIError
        When JPype or pyimagej is missing, or a JVM without ImageJ is already
        running in this process.
    """
    try:
        import jpype
    except ImportError as err:
        raise OncoAIError(
            "the Python-to-ImageJ bridge needs JPype; install it with "
            "`pip install 'napari-oncoai[fiji]'`."
        ) from err

    if headless is None:
        headless = not os.environ.get("DISPLAY")
    if not jpype.isJVMStarted():
        if fiji_dir is not None:
            _start_pyimagej(Path(fiji_dir), headless)
        else:
            jar = Path(ij_jar) if ij_jar is not None else find_ij_jar()
            options = ["-Djava.awt.headless=true"] if headless else []
            jpype.startJVM(*options, classpath=[str(jar)], convertStrings=True)
            log.info("started ImageJ from %s (headless=%s)", jar, headless)
    return _ij_class("ij.IJ")


def open_image(path: str | Path) -> Any:
    """Open an image file in ImageJ and return its ``ImagePlus``.

    Raises
    ------
    OncoAIError
        When the file is missing or ImageJ cannot read it.
    """
    path = Path(path)
    if not path.is_file():
        raise OncoAIError(f"image not found: {path}; check the path.")
    image = start_imagej().openImage(str(path))
    if image is None:
        raise OncoAIError(
            f"ImageJ could not open {path}; write it as TIFF or open it in ImageJ "
            "to see why."
        )
    return image


def open_rois(path: str | Path) -> list[Any]:
    """Decode a ``.roi`` file or a RoiSet ``.zip`` with ImageJ's own decoder.

    Returns
    -------
    list of ij.gui.Roi
        In the zip's order; non-ROI entries (like OncoAI's provenance) are
        skipped, as ImageJ's ROI Manager skips them.
    """
    path = Path(path)
    if not path.is_file():
        raise OncoAIError(f"ImageJ ROI file not found: {path}; check the path.")
    start_imagej()
    decoder = _ij_class("ij.io.RoiDecoder")
    if path.suffix.lower() != ".zip":
        return [decoder.open(str(path))]
    rois = []
    with zipfile.ZipFile(path) as zf:
        for name in zf.namelist():
            if name.lower().endswith(".roi"):
                rois.append(decoder(zf.read(name), name).getRoi())
    return rois


def open_result(
    path: str | Path,
    *,
    rois: str | Path | None = None,
    table: str | Path | None = None,
    show: bool = False,
) -> OpenedResult:
    """Open an OncoAI result in ImageJ: the image, its ROIs and its measurements.

    Parameters
    ----------
    path : str or Path
        The result image, e.g. ``cells_labels.tif``.
    rois, table : str or Path, optional
        The RoiSet zip and results CSV.  By default the files that OncoAI
        writes beside ``<name>_labels.tif``: ``<name>_RoiSet.zip`` and
        ``<name>_results.csv``, when they exist.
    show : bool
        Show the image, fill the ROI Manager and the Results window.  Needs a
        display; ignored in a headless ImageJ.

    Returns
    -------
    OpenedResult
    """
    path = Path(path)
    stem = (
        path.name[: -len("_labels.tif")] if path.name.endswith("_labels.tif") else None
    )
    if rois is None and stem is not None:
        candidate = path.with_name(f"{stem}_RoiSet.zip")
        rois = candidate if candidate.is_file() else None
    if table is None and stem is not None:
        candidate = path.with_name(f"{stem}_results.csv")
        table = candidate if candidate.is_file() else None

    opened = OpenedResult(image=open_image(path))
    if rois is not None:
        opened.rois = open_rois(rois)
    if table is not None:
        opened.table = _ij_class("ij.measure.ResultsTable").open(str(table))
    if show and not _is_headless():
        _show(opened)
    return opened


def to_imageplus(
    array: np.ndarray,
    title: str = "image",
    pixel_size: tuple[float, float] | None = None,
) -> Any:
    """Wrap a 2D or 3D array as an ImageJ ``ImagePlus``.

    Parameters
    ----------
    array : array, YX or ZYX
        uint8, uint16 or float32 keep their type; other types become 32-bit
        float, ImageJ's only other pixel type (labels stay exact below 2**24).
    title : str
        The window title.
    pixel_size : tuple of float, optional
        ``(y, x)`` micrometres per pixel, set as the calibration.

    Returns
    -------
    ij.ImagePlus
    """
    start_imagej()
    array = np.asarray(array)
    if array.ndim not in (2, 3):
        raise OncoAIError(
            f"ImageJ takes a YX or ZYX array here; got shape {array.shape}."
        )
    planes = array[None] if array.ndim == 2 else array
    height, width = planes.shape[1:]
    stack = _ij_class("ij.ImageStack")(width, height)
    for plane in planes:
        stack.addSlice(_processor(plane))
    image = _ij_class("ij.ImagePlus")(title, stack)
    if pixel_size is not None:
        calibration = image.getCalibration()
        calibration.pixelHeight, calibration.pixelWidth = map(float, pixel_size)
        calibration.setUnit("micron")
    return image


def from_imageplus(image: Any) -> np.ndarray:
    """Return an ``ImagePlus``'s pixels as an array, YX or ZYX for a stack."""
    stack = image.getStack()
    width, height = image.getWidth(), image.getHeight()
    planes = [
        np.array(stack.getProcessor(i + 1).getPixels()).reshape(height, width)
        for i in range(stack.getSize())
    ]
    unsigned = {8: np.uint8, 16: np.uint16}.get(image.getBitDepth())
    if unsigned is not None:
        # Java has no unsigned bytes or shorts; reinterpret the bits.
        planes = [p.view(unsigned) for p in planes]
    return planes[0] if len(planes) == 1 else np.stack(planes)


def run_macro(code: str, argument: str = "") -> str:
    """Run ImageJ macro code in the in-process ImageJ; return what it returns.

    Macro functions that go through ``run("...")`` need a display, as in any
    ImageJ.
    """
    value = start_imagej().runMacro(code, argument)
    return "" if value is None else str(value)


def _processor(plane: np.ndarray) -> Any:
    import jpype

    height, width = plane.shape
    if plane.dtype == np.uint8:
        pixels = jpype.JArray(jpype.JByte)(plane.view(np.int8).ravel())
        return _ij_class("ij.process.ByteProcessor")(width, height, pixels)
    if plane.dtype == np.uint16:
        pixels = jpype.JArray(jpype.JShort)(plane.view(np.int16).ravel())
        return _ij_class("ij.process.ShortProcessor")(width, height, pixels, None)
    pixels = jpype.JArray(jpype.JFloat)(plane.astype(np.float32).ravel())
    return _ij_class("ij.process.FloatProcessor")(width, height, pixels)


def _show(opened: OpenedResult) -> None:
    opened.image.show()
    if opened.rois:
        manager = _ij_class("ij.plugin.frame.RoiManager").getRoiManager()
        for roi in opened.rois:
            manager.addRoi(roi)
    if opened.table is not None:
        opened.table.show("Results")


def _is_headless() -> bool:
    return bool(_ij_class("java.awt.GraphicsEnvironment").isHeadless())


def _ij_class(name: str) -> Any:
    import jpype

    try:
        return jpype.JClass(name)
    except TypeError as err:
        raise OncoAIError(
            f"ImageJ class {name} not found: a JVM without ImageJ is already "
            "running in this process; start ImageJ before anything else uses Java."
        ) from err


def _start_pyimagej(fiji_dir: Path, headless: bool) -> None:
    try:
        import imagej
    except ImportError as err:
        raise OncoAIError(
            f"opening results in the Fiji at {fiji_dir} needs pyimagej; install it "
            "with `pip install pyimagej`, or leave fiji_dir out to use ij.jar."
        ) from err
    if not fiji_dir.is_dir():
        raise OncoAIError(f"Fiji folder not found: {fiji_dir}; check the path.")
    imagej.init(str(fiji_dir), mode="headless" if headless else "interactive")
    log.info("started Fiji from %s through pyimagej", fiji_dir)
