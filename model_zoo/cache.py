"""The local model cache: bioimage.io packages imported or fetched by the user.

Layout of :func:`cache_dir`::

    models/<id-dirname>/        one installed package per model id
        rdf.yaml                the RDF (or bioimageio.yaml, or *.bioimageio.yaml)
        oncoai_cache.json       what OncoAI recorded when it installed the package
        ...                     weights, test tensors, covers, documentation
    unpacked/<sha256-of-zip>/   zips opened in place by :func:`resolve_source`
    downloads/<key>/            transfers of :func:`fetch_model` kept for resuming

Installing is atomic: a package is extracted, copied or downloaded into a
temporary folder inside the cache, every sha256 its RDF gives for a local file is
checked, and only then is the folder renamed into ``models/``. On any failure
nothing is left in ``models/``. Replacing an installed model of the same id takes
two renames (old out, new in); a reader in between may briefly find no model.

The RDF is read with PyYAML only to find its id, name and files.
:func:`model_zoo.model.load_model` validates it against the bioimage.io
specification.

Trust boundary
--------------
A ``pytorch_state_dict`` weights entry names Python source (its architecture)
that runs when the model is loaded. OncoAI runs such code only for a *trusted*
model, see :func:`is_trusted`: a package installed in ``models/`` by
:func:`import_model` or :func:`fetch_model`. Importing or fetching is the explicit
act by which the user vouches for a package, and the architecture file's sha256 is
recorded at that moment. A model stops being trusted when its RDF or an
architecture file is edited after installation, or when an architecture file that
was absent at installation appears later. A package opened straight from a folder
or a zip (:func:`resolve_source`) is never trusted: its TorchScript, ONNX or
TensorFlow weights can run, its Python code cannot. Trust says who vouched for
the code, not that the code is safe.

Known limitations: weights hosted at a URL (not inside the package) are neither
downloaded nor verified, only recorded as remote; the cache takes no lock, so two
processes installing the same id at once may both succeed, and the later one
wins; the legacy ``model.yaml`` packages (spec before 0.3) are not recognised.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import posixpath
import re
import shutil
import stat
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path, PurePosixPath
from typing import Any

import platformdirs
import yaml

from model_zoo._hashing import file_sha256
from model_zoo.errors import CancelledError, OncoAIError

logger = logging.getLogger(__name__)

CACHE_DIR_ENV = "ONCOAI_CACHE_DIR"
BIOIMAGEIO_URL_ENV = "ONCOAI_BIOIMAGEIO_URL"
#: The public S3 root of the bioimage.io collection: ``collection.json`` lists
#: every published model and the address of its RDF,
#: ``<id>/<version>/files/rdf.yaml``.
DEFAULT_BIOIMAGEIO_URL = "https://uk1s3.embassy.ebi.ac.uk/public-datasets/bioimage.io"
METADATA_NAME = "oncoai_cache.json"
RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
RDF_SUFFIXES = (".rdf.yaml", ".bioimageio.yaml")

ProgressCallback = Callable[[int, int | None, str], None]
"""``progress(done_bytes, total_bytes, name)``; ``total_bytes`` is None if unknown."""

_TMP_PREFIX = ".tmp-"
_STALE_AFTER_S = 24 * 3600
_CHUNK_BYTES = 1 << 16
_TIMEOUT_S = 30.0
# Waits before each attempt of one transfer; a dropped connection is retried at
# once with a Range request, later failures back off.
_RETRY_DELAYS_S = (0.0, 0.0, 1.0, 3.0)
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_DRIVE = re.compile(r"^[A-Za-z]:")
_SAFE_DIRNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")
_DEPENDENCY_MANAGER = re.compile(r"^(conda|pip):")
_HOW_TO_ADD = (
    "run `oncoai models list` to see the cached models, "
    "`oncoai models import PATH` to add a zip or folder, "
    "or `oncoai models fetch ID` to download one from bioimage.io"
)


@dataclass(frozen=True)
class CachedModel:
    """A model installed in the cache.

    Attributes
    ----------
    id : str
        The RDF's ``id``, or a slug of its name and a short hash of the RDF.
    nickname : str or None
        The bioimage.io nickname (``config.bioimageio.nickname``), if any.
    name : str
        The RDF's ``name``.
    path : Path
        The installed package folder.
    rdf : Path
        The RDF file inside ``path``.
    source : str
        Where the package came from: a local path or the RDF's URL.
    trusted : bool
        Whether the package may run its own Python code, see :func:`is_trusted`.
    imported_at : str
        When it was installed, ISO 8601 in UTC.
    """

    id: str
    nickname: str | None
    name: str
    path: Path
    rdf: Path
    source: str
    trusted: bool = True
    imported_at: str = ""


@dataclass(frozen=True)
class _FileRef:
    """One file named by an RDF field."""

    source: str
    sha256: str | None
    field: str
    weights_format: str | None = None

    @property
    def is_remote(self) -> bool:
        return bool(_URL.match(self.source))


@dataclass(frozen=True)
class _RemoteEntry:
    """Where the RDF of a model to fetch lives."""

    rdf_url: str
    rdf_sha256: str | None = None
    nickname: str | None = None


class _DownloadInterrupted(OncoAIError):
    """The network failed; partial files are kept so that a retry resumes."""


class _Retry(Exception):
    """A transient failure of one transfer attempt."""


# --------------------------------------------------------------------------- paths


def cache_dir() -> Path:
    """Return the folder that holds the model cache.

    Returns
    -------
    Path
        ``$ONCOAI_CACHE_DIR`` if set, else the user cache folder of the operating
        system (``~/.cache/oncoai`` on Linux). It may not exist yet.

    Examples
    --------
    >>> cache_dir().name  # doctest: +SKIP
    'oncoai'
    """
    override = os.environ.get(CACHE_DIR_ENV, "").strip()
    if override:
        return Path(override).expanduser()
    return Path(platformdirs.user_cache_dir("oncoai"))


def _models_dir() -> Path:
    return cache_dir() / "models"


def _downloads_dir() -> Path:
    return cache_dir() / "downloads"


def _unpacked_dir() -> Path:
    return cache_dir() / "unpacked"


@contextmanager
def _work_dir(parent: Path) -> Iterator[Path]:
    """Yield a fresh folder inside ``parent``, removed on exit if still there."""
    parent.mkdir(parents=True, exist_ok=True)
    _sweep_stale(parent)
    work = parent / f"{_TMP_PREFIX}{uuid.uuid4().hex}"
    work.mkdir()
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _sweep_stale(parent: Path) -> None:
    """Remove temporary folders that a killed process left over a day ago."""
    limit = time.time() - _STALE_AFTER_S
    for folder in parent.glob(f"{_TMP_PREFIX}*"):
        try:
            if folder.is_dir() and folder.stat().st_mtime < limit:
                shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            pass


# ---------------------------------------------------------------------- RDF files


def _is_rdf_name(name: str) -> bool:
    return name in RDF_NAMES or name.endswith(RDF_SUFFIXES)


def _find_rdf(folder: Path) -> Path | None:
    """Return the RDF directly inside ``folder``, or None.

    ``rdf.yaml`` wins over ``bioimageio.yaml``, which wins over one
    ``*.bioimageio.yaml`` or ``*.rdf.yaml``.
    """
    for name in RDF_NAMES:
        if (folder / name).is_file():
            return folder / name
    found = sorted(p for p in folder.iterdir() if p.is_file() and _is_rdf_name(p.name))
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise OncoAIError(
            f"{folder} holds several RDFs ({names}); keep one, or rename the one "
            "to use to rdf.yaml"
        )
    return found[0] if found else None


def _package_root(folder: Path, label: str) -> tuple[Path, Path]:
    """Return the package root and its RDF, allowing one wrapping folder."""
    rdf = _find_rdf(folder)
    if rdf is not None:
        return folder, rdf
    entries = [p for p in folder.iterdir() if p.name != "__MACOSX"]
    if len(entries) == 1 and entries[0].is_dir():
        rdf = _find_rdf(entries[0])
        if rdf is not None:
            return entries[0], rdf
    raise OncoAIError(
        f"no model description in {label}: expected rdf.yaml, bioimageio.yaml or "
        "*.bioimageio.yaml; give the folder or zip of a bioimage.io model package"
    )


def _read_rdf(path: Path) -> dict[str, Any]:
    """Parse an RDF with PyYAML; only its structure is checked here."""
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        reason = " ".join(str(err).split())
        raise OncoAIError(
            f"{path} is not valid YAML ({reason}); fix the file or download the "
            "package again"
        ) from err
    if not isinstance(content, dict):
        raise OncoAIError(
            f"{path} does not describe a model: expected a YAML mapping, got "
            f"{type(content).__name__}; check that it is a bioimage.io RDF"
        )
    return content


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _norm_sha(value: Any) -> str | None:
    return value.strip().lower() if isinstance(value, str) and value.strip() else None


def _file_refs(rdf: dict[str, Any]) -> list[_FileRef]:
    """List every file an RDF of spec 0.4 or 0.5 names, with its sha256 if given."""
    refs: list[_FileRef] = []

    def add(value: Any, field: str, fmt: str | None = None, sha: Any = None) -> None:
        if isinstance(value, dict):
            value, sha = value.get("source"), value.get("sha256", sha)
        if isinstance(value, str) and value.strip():
            refs.append(_FileRef(value.strip(), _norm_sha(sha), field, fmt))

    add(rdf.get("documentation"), "documentation")
    for i, cover in enumerate(_as_list(rdf.get("covers"))):
        add(cover, f"covers[{i}]")
    attachments = rdf.get("attachments")
    if isinstance(attachments, dict):  # spec 0.4: {files: [path, ...]}
        attachments = attachments.get("files")
    for i, item in enumerate(_as_list(attachments)):
        add(item, f"attachments[{i}]")
    for kind in ("inputs", "outputs"):
        for i, tensor in enumerate(_as_list(rdf.get(kind))):
            if isinstance(tensor, dict):
                for key in ("test_tensor", "sample_tensor"):
                    add(tensor.get(key), f"{kind}[{i}].{key}")
    for key in ("test_inputs", "test_outputs", "sample_inputs", "sample_outputs"):
        for i, item in enumerate(_as_list(rdf.get(key))):
            add(item, f"{key}[{i}]")
    _add_dependencies(add, rdf.get("dependencies"), "dependencies", None)

    weights = rdf.get("weights")
    for fmt, entry in weights.items() if isinstance(weights, dict) else []:
        if not isinstance(entry, dict):
            continue
        add(entry.get("source"), f"weights.{fmt}", fmt, entry.get("sha256"))
        architecture = entry.get("architecture")
        if isinstance(architecture, dict):  # spec 0.5; import_from has no source
            add(architecture, f"weights.{fmt}.architecture", fmt)
        elif isinstance(architecture, str) and ":" in architecture:
            # spec 0.4: "file.py:Callable" or "package.module.Callable"
            file_part = architecture.rsplit(":", 1)[0]
            if file_part.endswith(".py"):
                add(
                    file_part,
                    f"weights.{fmt}.architecture",
                    fmt,
                    entry.get("architecture_sha256"),
                )
        _add_dependencies(add, entry.get("dependencies"), f"weights.{fmt}", fmt)
    return refs


def _add_dependencies(
    add: Callable[..., None], value: Any, field: str, fmt: str | None
) -> None:
    if isinstance(value, str):  # spec 0.4: "conda:environment.yaml"
        value = _DEPENDENCY_MANAGER.sub("", value.strip())
    add(value, f"{field}.dependencies" if fmt else field, fmt)


def _package_path(ref: _FileRef) -> PurePosixPath:
    """Return a local file's path in the package; refuse one that leaves it."""
    text = ref.source.replace("\\", "/")
    path = PurePosixPath(text)
    parts = [part for part in path.parts if part not in ("", ".")]
    if path.is_absolute() or _DRIVE.match(text) or ".." in parts or not parts:
        raise OncoAIError(
            f"the RDF field {ref.field} points outside the package: {ref.source!r}; "
            "a package may only name files inside its own folder, or URLs"
        )
    return PurePosixPath(*parts)


def _code_refs(refs: Iterable[_FileRef]) -> list[_FileRef]:
    return [
        ref
        for ref in refs
        if not ref.is_remote
        and (ref.field.endswith(".architecture") or ref.source.endswith(".py"))
    ]


# ------------------------------------------------------------------------ hashing


@dataclass
class _Verified:
    sha256: dict[str, str]
    remote: list[dict[str, str]]
    absent: list[dict[str, str]]


def _verify_package(
    root: Path,
    refs: list[_FileRef],
    *,
    optional_formats: set[str],
    known: dict[str, str] | None = None,
    progress: ProgressCallback | None = None,
) -> _Verified:
    """Check every local file of a package against the sha256 in its RDF.

    Files of a weights format in ``optional_formats`` (hosted at a URL, or left
    out of a download) may be absent. ``known`` holds hashes computed while
    downloading, so that large files are not read twice.
    """
    known = dict(known or {})
    verified = _Verified(sha256={}, remote=[], absent=[])
    local: list[tuple[_FileRef, PurePosixPath]] = []
    base = root.resolve()
    for ref in refs:
        if ref.is_remote:
            verified.remote.append({"field": ref.field, "source": ref.source})
            continue
        rel = _package_path(ref)
        path = root / rel
        if not path.is_file() or not path.resolve().is_relative_to(base):
            if ref.weights_format in optional_formats:
                verified.absent.append({"field": ref.field, "source": str(rel)})
                continue
            raise OncoAIError(
                f"the package lacks {rel}, named by the RDF field {ref.field}; "
                "add the file or download the complete package again"
            )
        local.append((ref, rel))

    sizes = {str(rel): (root / rel).stat().st_size for _, rel in local}
    total = sum(size for rel, size in sizes.items() if rel not in known)
    done = 0
    for ref, rel in local:
        key = str(rel)
        if key not in known:
            known[key] = file_sha256(root / rel, progress, done, total)
            done += sizes[key]
        actual = known[key]
        if ref.sha256 is not None and actual != ref.sha256:
            raise OncoAIError(
                f"{rel} does not match the sha256 of the RDF field {ref.field}: "
                f"expected {ref.sha256}, got {actual}; the package is damaged or "
                "was edited, get an intact copy or correct the sha256"
            )
        verified.sha256[key] = actual
    return verified


# ------------------------------------------------------------------------ install


def _slug(text: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40].strip("-")
    return slug or "model"


def _dirname_for(model_id: str) -> str:
    if _SAFE_DIRNAME.match(model_id):
        return model_id
    return f"{_slug(model_id)}-{hashlib.sha256(model_id.encode()).hexdigest()[:8]}"


def _identity(
    rdf: dict[str, Any], rdf_sha256: str, nickname_hint: str | None
) -> tuple[str, str | None, str]:
    """Return the id, nickname and name a package is cached under."""
    raw_id = rdf.get("id")
    model_id = str(raw_id).strip() if isinstance(raw_id, str | int) else ""
    raw_name = rdf.get("name")
    name = str(raw_name).strip() if isinstance(raw_name, str | int | float) else ""
    if not name:
        if not model_id:
            raise OncoAIError(
                "the RDF has neither an id nor a name; add `name:` to it so that "
                "the model can be found in the cache"
            )
        name = model_id
    if not model_id:
        model_id = f"{_slug(name)}-{rdf_sha256[:8]}"

    config = rdf.get("config")
    bioimageio = config.get("bioimageio") if isinstance(config, dict) else None
    nickname = bioimageio.get("nickname") if isinstance(bioimageio, dict) else None
    if not isinstance(nickname, str) or not nickname.strip():
        nickname = nickname_hint
    nickname = nickname.strip() if nickname else None
    return model_id, (nickname if nickname != model_id else None), name


def _write_json(path: Path, content: dict[str, Any]) -> None:
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(content, indent=2, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


def _install_package(
    root: Path,
    rdf_path: Path,
    *,
    source: str,
    nickname_hint: str | None = None,
    skipped_formats: Iterable[str] = (),
    known: dict[str, str] | None = None,
    progress: ProgressCallback | None = None,
) -> CachedModel:
    """Verify the package in ``root`` (inside the cache) and rename it into place."""
    rdf = _read_rdf(rdf_path)
    refs = _file_refs(rdf)
    remote_formats = {
        r.weights_format
        for r in refs
        if r.is_remote and r.field == f"weights.{r.weights_format}"
    }
    skipped = set(skipped_formats)
    verified = _verify_package(
        root,
        refs,
        optional_formats=remote_formats | skipped,
        known=known,
        progress=progress,
    )
    local_weights = {
        r.weights_format
        for r in refs
        if r.field == f"weights.{r.weights_format}" and not r.is_remote
    } - skipped
    if not local_weights:
        logger.warning(
            "%s holds no weights of its own; the model cannot run offline", source
        )

    rdf_sha256 = file_sha256(rdf_path)
    model_id, nickname, name = _identity(rdf, rdf_sha256, nickname_hint)
    code: dict[str, str | None] = {}
    for ref in _code_refs(refs):
        key = str(_package_path(ref))
        code[key] = verified.sha256.get(key)
    imported_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    meta = {
        "format": 1,
        "id": model_id,
        "nickname": nickname,
        "name": name,
        "source": source,
        "imported_at": imported_at,
        "rdf": rdf_path.name,
        "rdf_sha256": rdf_sha256,
        "files_sha256": verified.sha256,
        "code_sha256": code,
        "remote": verified.remote,
        "absent": verified.absent,
        "skipped_weights": sorted(skipped),
    }
    _write_json(root / METADATA_NAME, meta)

    target = _move_into_place(root, _dirname_for(model_id))
    logger.info("installed model %s from %s into %s", model_id, source, target)
    return _cached_model(target, meta)


def _move_into_place(root: Path, dirname: str) -> Path:
    """Rename ``root`` to ``models/<dirname>``, replacing any model there."""
    models = _models_dir()
    models.mkdir(parents=True, exist_ok=True)
    target = models / dirname
    if not target.exists():
        os.replace(root, target)
        return target
    old = models / f"{_TMP_PREFIX}old-{uuid.uuid4().hex}"
    os.replace(target, old)
    try:
        os.replace(root, target)
    except OSError:
        os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return target


# ---------------------------------------------------------------------- zip files


def _zip_member_is_unsafe(info: zipfile.ZipInfo, dest: Path) -> bool:
    name = info.filename.replace("\\", "/")
    parts = PurePosixPath(name).parts
    if name.startswith("/") or _DRIVE.match(name) or ".." in parts:
        return True
    if stat.S_ISLNK(info.external_attr >> 16):
        return True
    return not (dest / name).resolve().is_relative_to(dest.resolve())


def _extract_zip(archive: Path, dest: Path) -> None:
    """Extract ``archive`` into ``dest``, refusing members that would leave it."""
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            for info in members:
                if _zip_member_is_unsafe(info, dest):
                    raise OncoAIError(
                        f"{archive} contains an unsafe entry {info.filename!r} (a "
                        "link, an absolute path or one leaving the package); "
                        "refusing to extract it, rebuild the zip without it"
                    )
            for info in members:
                zf.extract(info, dest)
    except (zipfile.BadZipFile, zlib.error, EOFError) as err:
        raise OncoAIError(
            f"{archive} is not a readable zip ({err}); download it again"
        ) from err


# ------------------------------------------------------------------------- import


def import_model(
    source: str | Path, *, progress: ProgressCallback | None = None
) -> CachedModel:
    """Install a model package from a zip or a folder into the cache.

    Every sha256 that the RDF gives for a file inside the package is checked.
    Weights hosted at a URL are not downloaded; they are recorded as remote.
    A model of the same id already in the cache is replaced.

    Parameters
    ----------
    source : str or Path
        A bioimage.io model zip, a folder holding ``rdf.yaml``,
        ``bioimageio.yaml`` or ``*.bioimageio.yaml``, or the path of such an RDF.
    progress : callable, optional
        Called as ``progress(done_bytes, total_bytes, name)`` while hashing.

    Returns
    -------
    CachedModel
        The installed model; ``trusted`` is True.

    Raises
    ------
    OncoAIError
        If ``source`` is missing, not a zip, a corrupt or unsafe zip, lacks an
        RDF, has invalid YAML, lacks a file its RDF names, or a file does not
        match its sha256. Nothing is left in the cache then.

    Examples
    --------
    >>> model = import_model("unet2d_nuclei_broad.zip")  # doctest: +SKIP
    >>> model.name  # doctest: +SKIP
    'UNet 2D Nuclei Broad'
    """
    src = Path(source).expanduser()
    if not src.exists():
        raise OncoAIError(
            f"cannot import {str(source)!r}: no such file or folder; give a "
            "bioimage.io model zip or a folder with an rdf.yaml"
        )
    src = src.resolve()
    try:
        return _import_into_cache(src, progress)
    except OSError as err:
        raise _cannot_write(err) from err


def _cannot_write(err: OSError) -> OncoAIError:
    return OncoAIError(
        f"cannot install the model into the cache {cache_dir()}: {err}; check that "
        f"the source is readable, free some disk space, or set {CACHE_DIR_ENV} to "
        "a writable folder"
    )


def _import_into_cache(src: Path, progress: ProgressCallback | None) -> CachedModel:
    with _work_dir(_models_dir()) as work:
        package = work / "package"
        if src.is_dir():
            found_root, rdf = _package_root(src, str(src))
            _copy_folder(found_root, package)
            root, rdf_path = package, package / rdf.name
        elif src.is_file() and _is_rdf_name(src.name):
            _copy_folder(src.parent, package)
            root, rdf_path = package, package / src.name
        elif zipfile.is_zipfile(src):
            _extract_zip(src, package)
            root, rdf_path = _package_root(package, str(src))
        else:
            raise OncoAIError(
                f"cannot import {src}: it is neither a zip nor a folder; give a "
                "bioimage.io model zip or a folder with an rdf.yaml"
            )
        return _install_package(root, rdf_path, source=str(src), progress=progress)


def _copy_folder(src: Path, dest: Path) -> None:
    try:
        shutil.copytree(
            src, dest, ignore=shutil.ignore_patterns(METADATA_NAME, "__pycache__")
        )
    except (OSError, shutil.Error) as err:
        raise OncoAIError(f"cannot copy {src} into the cache: {err}") from err


# -------------------------------------------------------------------------- fetch


def _user_agent() -> str:
    try:
        return f"oncoai/{version('napari-oncoai')}"
    except PackageNotFoundError:  # running from a checkout that is not installed
        return "oncoai"


def _check_cancel(cancel: threading.Event | None, what: str) -> None:
    if cancel is not None and cancel.is_set():
        raise CancelledError(f"{what} was cancelled; nothing was installed")


def _open_url(url: str, headers: dict[str, str] | None = None) -> Any:
    """Open ``url``; transient failures raise :class:`_Retry`."""
    request = urllib.request.Request(
        url, headers={"User-Agent": _user_agent(), **(headers or {})}
    )
    try:
        return urllib.request.urlopen(request, timeout=_TIMEOUT_S)
    except urllib.error.HTTPError as err:
        err.close()
        if err.code >= 500 or err.code in (408, 429):
            raise _Retry(f"HTTP {err.code} {err.reason}") from err
        if err.code == 416:
            raise
        raise OncoAIError(
            f"could not download {url}: HTTP {err.code} {err.reason}; check the "
            f"model id, or the address in {BIOIMAGEIO_URL_ENV}"
        ) from err
    except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
        raise _Retry(_reason(err)) from err


def _reason(err: BaseException) -> str:
    if isinstance(err, urllib.error.URLError) and not isinstance(
        err, urllib.error.HTTPError
    ):
        err = err.reason if isinstance(err.reason, BaseException) else err
    return " ".join(str(err).split()) or type(err).__name__


def _get_bytes(url: str, cancel: threading.Event | None) -> bytes:
    """Download a small document into memory, retrying transient failures."""
    last = ""
    attempts = len(_RETRY_DELAYS_S)
    for attempt, delay in enumerate(_RETRY_DELAYS_S, start=1):
        time.sleep(delay)
        _check_cancel(cancel, f"fetching {url}")
        try:
            with _open_url(url) as response:
                return response.read()
        except (_Retry, http.client.HTTPException, OSError) as err:
            last = _reason(err)
            logger.warning("%s, attempt %d of %d: %s", url, attempt, attempts, last)
    raise _DownloadInterrupted(
        f"could not reach {url} ({last}); check the network connection, or set "
        f"{BIOIMAGEIO_URL_ENV} to a reachable mirror"
    )


def _transfer(
    url: str,
    part: Path,
    name: str,
    progress: ProgressCallback | None,
    cancel: threading.Event | None,
) -> None:
    """Run one attempt to complete ``part``, resuming from its current size."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        response = _open_url(url, headers)
    except urllib.error.HTTPError as err:  # 416: our part is not a prefix of it
        part.unlink(missing_ok=True)
        raise _Retry(f"HTTP {err.code}; restarting {name}") from err

    with response:
        start, total = _response_range(response, offset)
        if start != offset:
            logger.info("server restarted %s from byte %d", name, start)
        mode = "ab" if start else "wb"
        done = start
        with part.open(mode) as out:
            if start:
                out.truncate(start)
            while chunk := _read_chunk(response, done):
                _check_cancel(cancel, f"downloading {name}")
                out.write(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total, name)
    if total is not None and done < total:
        raise _Retry(f"connection lost after {done} of {total} bytes")


def _read_chunk(response: Any, done: int) -> bytes:
    try:
        return response.read(_CHUNK_BYTES)
    except (http.client.HTTPException, OSError) as err:
        raise _Retry(f"connection lost after {done} bytes") from err


def _response_range(response: Any, offset: int) -> tuple[int, int | None]:
    """Return the first byte the response carries, and the full file size."""
    length = response.headers.get("Content-Length")
    length = int(length) if length and length.isdigit() else None
    if response.status != 206:
        return 0, length
    match = re.match(
        r"bytes (\d+)-\d+/(\d+|\*)", response.headers.get("Content-Range", "")
    )
    if match is None:
        raise _Retry("partial response without a Content-Range")
    start = int(match.group(1))
    if start > offset:
        raise _Retry(f"partial response starts at byte {start}, after {offset}")
    total = int(match.group(2)) if match.group(2) != "*" else None
    if total is None and length is not None:
        total = start + length
    return start, total


def _download(
    url: str,
    dest: Path,
    *,
    sha256: str | None,
    progress: ProgressCallback | None,
    cancel: threading.Event | None,
) -> str:
    """Download ``url`` to ``dest`` through ``dest.part``; return its sha256.

    An interrupted transfer resumes with an HTTP Range request, within this
    call and across calls. A complete file that fails its sha256 is deleted.
    """
    name = dest.name
    if dest.is_file():
        digest = file_sha256(dest)
        if sha256 is None or digest == sha256:
            return digest
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(f"{name}.part")
    # A part left by an earlier call may be the prefix of another file; if the
    # result fails its sha256, download once more from the first byte.
    resumed_earlier = part.is_file()
    while True:
        _transfer_with_retries(url, part, name, progress, cancel)
        digest = file_sha256(part)
        if sha256 is None or digest == sha256:
            os.replace(part, dest)
            return digest
        part.unlink()
        if not resumed_earlier:
            raise OncoAIError(
                f"{name} downloaded from {url} does not match the sha256 in its "
                f"RDF: expected {sha256}, got {digest}; the server sent a damaged "
                "file, try again later or tell the model's authors"
            )
        logger.warning("%s resumed from an earlier call was wrong; restarting", name)
        resumed_earlier = False


def _transfer_with_retries(
    url: str,
    part: Path,
    name: str,
    progress: ProgressCallback | None,
    cancel: threading.Event | None,
) -> None:
    last = ""
    attempts = len(_RETRY_DELAYS_S)
    for attempt, delay in enumerate(_RETRY_DELAYS_S, start=1):
        time.sleep(delay)
        _check_cancel(cancel, f"downloading {name}")
        try:
            _transfer(url, part, name, progress, cancel)
            return
        except _Retry as err:
            last = str(err)
            logger.warning("%s, attempt %d of %d: %s", url, attempt, attempts, last)
    kept = part.stat().st_size if part.exists() else 0
    raise _DownloadInterrupted(
        f"could not download {url} ({last}); {kept} bytes are kept, run the same "
        "command again to resume"
    )


def _normalise_query(query: str) -> str:
    text = query.strip()
    for prefix in ("https://doi.org/", "http://doi.org/", "doi:"):
        if text.lower().startswith(prefix):
            return text[len(prefix) :]
    for prefix in ("bioimage-io/", "bioimage.io/"):
        if text.startswith(prefix):
            return text[len(prefix) :]
    return text


def _resolve_remote(
    query: str, base_url: str, cancel: threading.Event | None
) -> _RemoteEntry:
    """Find the RDF address of a model id, nickname or DOI."""
    if _URL.match(query) and query.lower().endswith((".yaml", ".yml")):
        return _RemoteEntry(query)
    key = _normalise_query(query)
    if not key:
        raise OncoAIError(
            "no model id given; pass an id such as affable-shark or a DOI such as "
            "10.5281/zenodo.5764892"
        )
    if "{id}" in base_url:
        return _RemoteEntry(base_url.replace("{id}", urllib.parse.quote(key, "/")))

    base_url = base_url.rstrip("/").removesuffix("/collection.json")
    url = base_url + "/collection.json"
    try:
        collection = json.loads(_get_bytes(url, cancel))
        entries = [e for e in collection["collection"] if isinstance(e, dict)]
    except (ValueError, KeyError, TypeError) as err:
        raise OncoAIError(
            f"{url} is not a bioimage.io collection ({type(err).__name__}); set "
            f"{BIOIMAGEIO_URL_ENV} to the collection's root, or to an RDF address "
            "pattern containing {id}"
        ) from err

    entry = _match_entry(entries, key)
    if entry is None:
        raise OncoAIError(
            f"no model {key!r} in the bioimage.io collection at {url}; check the id "
            "on https://bioimage.io, or pass its DOI"
        )
    rdf_source = entry.get("rdf_source") or entry.get("entry_source")
    if not isinstance(rdf_source, str) and isinstance(entry.get("root_url"), str):
        rdf_source = entry["root_url"].rstrip("/") + "/rdf.yaml"
    if not isinstance(rdf_source, str):
        raise OncoAIError(
            f"the collection entry of {key!r} at {url} names no RDF; try again "
            "later or fetch the model by its RDF's URL"
        )
    nickname = entry.get("nickname")
    if not isinstance(nickname, str) or "/" in nickname:
        nickname = None
    return _RemoteEntry(
        rdf_url=urllib.parse.urljoin(base_url.rstrip("/") + "/", rdf_source),
        rdf_sha256=_norm_sha(entry.get("entry_sha256") or entry.get("rdf_sha256")),
        nickname=nickname,
    )


def _match_entry(entries: list[dict[str, Any]], key: str) -> dict[str, Any] | None:
    """Pick the entry of ``key``: by id, version DOI, concept DOI, then nickname."""
    for field in ("id", "doi", "concept_doi", "nickname"):
        matches = [e for e in entries if str(e.get(field, "")).strip() == key]
        if matches:
            # The collection lists each version and, again, the latest one under
            # the bare id; prefer the latter.
            for entry in matches:
                number = entry.get("version_number")
                entry_id = str(entry.get("id", ""))
                if number is None or not entry_id.endswith(f"/{number}"):
                    return entry
            return matches[-1]
    return None


def _select_downloads(
    refs: list[_FileRef], formats: Iterable[str] | None
) -> tuple[list[_FileRef], set[str]]:
    """Choose the files to download; return them and the weights formats skipped."""
    local_formats = {
        r.weights_format
        for r in refs
        if r.field == f"weights.{r.weights_format}" and not r.is_remote
    }
    all_formats = {r.weights_format for r in refs if r.weights_format}
    if formats is None:
        wanted = set(local_formats)
    else:
        wanted = set(formats)
        unknown = wanted - local_formats
        if unknown:
            choices = ", ".join(sorted(local_formats)) or "none"
            raise OncoAIError(
                f"weights {', '.join(sorted(unknown))} are not files of this "
                f"package; choose from: {choices}"
            )
    if not wanted:
        raise OncoAIError(
            "the model has no weights inside its package (all are hosted "
            "elsewhere); nothing that runs offline can be fetched"
        )
    skipped = {f for f in all_formats if f not in wanted}
    chosen = [
        r
        for r in refs
        if not r.is_remote and (r.weights_format is None or r.weights_format in wanted)
    ]
    return chosen, skipped - (all_formats - local_formats)


def fetch_model(
    id_or_doi: str,
    *,
    base_url: str | None = None,
    formats: Iterable[str] | None = None,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> CachedModel:
    """Download a model from bioimage.io and install it into the cache.

    The RDF is downloaded first, then the files it names inside its package:
    test and sample tensors, covers, documentation, attachments and the weights
    of ``formats`` with their architecture and dependency files. Interrupted
    transfers resume with HTTP Range requests, also in a later call, and every
    file is checked against its sha256 before the package is installed.

    Parameters
    ----------
    id_or_doi : str
        A bioimage.io id or nickname (``affable-shark``, ``affable-shark/1.1``,
        ``bioimage-io/affable-shark``), a DOI (``10.5281/zenodo.5764892``), or the
        URL of an RDF.
    base_url : str, optional
        The root of the collection, holding ``collection.json``; or an RDF address
        pattern containing ``{id}``, e.g.
        ``https://hypha.aicell.io/bioimage-io/artifacts/{id}/files/rdf.yaml``.
        Defaults to ``$ONCOAI_BIOIMAGEIO_URL``, else
        :data:`DEFAULT_BIOIMAGEIO_URL`.
    formats : iterable of str, optional
        The weights formats to download, e.g. ``["onnx"]``. Defaults to every
        format whose file is inside the package.
    progress : callable, optional
        Called as ``progress(done_bytes, total_bytes, name)`` for each file.
    cancel : threading.Event, optional
        Set it to stop the download; :class:`CancelledError` is raised.

    Returns
    -------
    CachedModel
        The installed model; ``trusted`` is True.

    Raises
    ------
    OncoAIError
        If the id is unknown, a file is missing on the server or fails its
        sha256 (nothing is left in the cache), or the network fails (partial
        files are kept under ``downloads/`` so that the next call resumes).
    CancelledError
        If ``cancel`` was set; nothing is left in the cache.

    Examples
    --------
    >>> model = fetch_model("affable-shark", formats=["torchscript"])  # doctest: +SKIP
    """
    base = base_url or os.environ.get(BIOIMAGEIO_URL_ENV, "").strip()
    entry = _resolve_remote(id_or_doi, base or DEFAULT_BIOIMAGEIO_URL, cancel)
    key = hashlib.sha256(entry.rdf_url.encode()).hexdigest()[:16]
    staging = _downloads_dir() / key
    staging.mkdir(parents=True, exist_ok=True)
    keep_partial = False
    try:
        return _fetch_into(staging, entry, formats, progress, cancel)
    except _DownloadInterrupted:
        keep_partial = True
        raise
    except OSError as err:
        raise _cannot_write(err) from err
    finally:
        if not keep_partial:
            shutil.rmtree(staging, ignore_errors=True)
        _remove_if_empty(_downloads_dir())


def _fetch_into(
    staging: Path,
    entry: _RemoteEntry,
    formats: Iterable[str] | None,
    progress: ProgressCallback | None,
    cancel: threading.Event | None,
) -> CachedModel:
    path = urllib.parse.urlsplit(entry.rdf_url).path
    rdf_name = posixpath.basename(path)
    if not _is_rdf_name(rdf_name):
        rdf_name = "rdf.yaml"
    rdf_path = staging / rdf_name
    # Always the current RDF, never one resumed from an earlier call.
    rdf_path.unlink(missing_ok=True)
    rdf_path.with_name(f"{rdf_name}.part").unlink(missing_ok=True)
    _download(
        entry.rdf_url,
        rdf_path,
        sha256=entry.rdf_sha256,
        progress=progress,
        cancel=cancel,
    )

    refs = _file_refs(_read_rdf(rdf_path))
    chosen, skipped = _select_downloads(refs, formats)
    root_url = entry.rdf_url.rsplit("/", 1)[0] + "/"
    known: dict[str, str] = {}
    for ref in chosen:
        rel = _package_path(ref)
        if str(rel) in known or str(rel) == rdf_name:
            continue
        url = urllib.parse.urljoin(root_url, urllib.parse.quote(str(rel)))
        known[str(rel)] = _download(
            url, staging / rel, sha256=ref.sha256, progress=progress, cancel=cancel
        )
    _check_cancel(cancel, "the download")
    return _install_package(
        staging,
        rdf_path,
        source=entry.rdf_url,
        nickname_hint=entry.nickname,
        skipped_formats=skipped,
        known=known,
    )


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass


# ------------------------------------------------------------------ list, resolve


def _read_metadata(folder: Path) -> dict[str, Any] | None:
    try:
        content = json.loads((folder / METADATA_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return content if isinstance(content, dict) else None


def list_models() -> list[CachedModel]:
    """Return the models installed in the cache, sorted by id.

    Returns
    -------
    list of CachedModel
        One per folder of ``cache_dir()/models`` that holds a readable
        ``oncoai_cache.json``; other folders are skipped with a warning.
    """
    models = _models_dir()
    if not models.is_dir():
        return []
    found = []
    for folder in sorted(models.iterdir()):
        if not folder.is_dir() or folder.name.startswith("."):
            continue
        meta = _read_metadata(folder) or {}
        rdf_name = meta.get("rdf")
        if not isinstance(rdf_name, str) or not (folder / rdf_name).is_file():
            logger.warning("skipping %s: not a package installed by OncoAI", folder)
            continue
        found.append(_cached_model(folder, meta))
    return sorted(found, key=lambda m: m.id)


def _cached_model(folder: Path, meta: dict[str, Any]) -> CachedModel:
    """The model installed in ``folder``, as its metadata describes it."""
    rdf = folder / str(meta["rdf"])
    return CachedModel(
        id=str(meta.get("id") or folder.name),
        nickname=meta.get("nickname") or None,
        name=str(meta.get("name") or folder.name),
        path=folder,
        rdf=rdf,
        source=str(meta.get("source") or ""),
        trusted=is_trusted(rdf),
        imported_at=str(meta.get("imported_at") or ""),
    )


def find_model(key: str) -> CachedModel | None:
    """Return the cached model whose id, nickname or name is ``key``, or None.

    Names match without regard to case. Raises :class:`OncoAIError` if a name is
    shared by several models.
    """
    models = list_models()
    for model in models:
        if key in (model.id, model.nickname, model.path.name):
            return model
    by_name = [m for m in models if m.name.casefold() == key.strip().casefold()]
    if len(by_name) > 1:
        ids = ", ".join(m.id for m in by_name)
        raise OncoAIError(
            f"several cached models are named {key!r} ({ids}); pass one of their ids"
        )
    return by_name[0] if by_name else None


def _unpack(archive: Path) -> Path:
    """Extract a zip into ``unpacked/<sha256>`` once, and return its RDF."""
    digest = file_sha256(archive)
    target = _unpacked_dir() / digest
    if not target.is_dir():
        with _work_dir(_unpacked_dir()) as work:
            _extract_zip(archive, work / "package")
            try:
                os.replace(work / "package", target)
            except OSError:
                if not target.is_dir():  # not another process that won the race
                    raise
    return _package_root(target, str(archive))[1]


def resolve_source(source: str | Path) -> Path:
    """Return the RDF file to load for a model source.

    Parameters
    ----------
    source : str or Path
        The path of an RDF; a folder holding one; a model zip, extracted once
        into ``cache_dir()/unpacked/<sha256-of-zip>/``; or the id, nickname or
        name of a cached model. An existing path wins over a cached name.

    Returns
    -------
    Path
        The RDF. Only models of the cache's ``models/`` are trusted, see
        :func:`is_trusted`; an extracted zip is not. Files of a folder or zip
        are not checked against their sha256 here; validating the RDF when the
        model is loaded does that.

    Raises
    ------
    OncoAIError
        If ``source`` is neither an existing file or folder nor a cached model,
        or the file or folder holds no model description.

    Examples
    --------
    >>> resolve_source("affable-shark")  # doctest: +SKIP
    PosixPath('/home/me/.cache/oncoai/models/affable-shark/rdf.yaml')
    """
    path = Path(source).expanduser()
    if path.is_dir():
        return _package_root(path.resolve(), str(path))[1]
    if path.is_file():
        if zipfile.is_zipfile(path):
            try:
                return _unpack(path.resolve())
            except OSError as err:
                raise _cannot_write(err) from err
        if path.suffix.lower() in (".yaml", ".yml"):
            return path.resolve()
        raise OncoAIError(
            f"{path} is neither a model description (.yaml) nor a zip; give an "
            "rdf.yaml, the folder holding it, or a model zip"
        )
    model = find_model(str(source).strip())
    if model is not None:
        return model.rdf
    raise OncoAIError(
        f"{str(source)!r} is neither an existing file or folder nor a cached model; "
        + _HOW_TO_ADD
    )


def is_trusted(rdf_path: str | Path) -> bool:
    """Tell whether a model may run the Python code its RDF names.

    Parameters
    ----------
    rdf_path : str or Path
        The RDF of a model.

    Returns
    -------
    bool
        True only if the RDF lies directly in a package folder of
        ``cache_dir()/models`` installed by :func:`import_model` or
        :func:`fetch_model`, the RDF still has the sha256 recorded then, and each
        architecture file still has its recorded sha256 (or is still absent, if
        it was absent then).
    """
    try:
        rdf = Path(rdf_path).expanduser().resolve(strict=True)
        models = _models_dir().resolve()
    except OSError:
        return False
    folder = rdf.parent
    if folder.parent != models or folder.name.startswith("."):
        return False
    meta = _read_metadata(folder)
    if meta is None or meta.get("rdf") != rdf.name:
        return False
    if file_sha256(rdf) != meta.get("rdf_sha256"):
        return False
    code = meta.get("code_sha256")
    if not isinstance(code, dict):
        return False
    for rel, digest in code.items():
        path = folder / rel
        if digest is None:
            if path.exists():
                return False
        elif not path.is_file() or file_sha256(path) != digest:
            return False
    return True


def remove_model(id_or_nickname: str) -> CachedModel:
    """Delete a model from the cache.

    Parameters
    ----------
    id_or_nickname : str
        The id, nickname or name of a cached model.

    Returns
    -------
    CachedModel
        The model that was removed; its folder no longer exists.

    Raises
    ------
    OncoAIError
        If no cached model has that id, nickname or name.
    """
    model = find_model(id_or_nickname)
    if model is None:
        raise OncoAIError(
            f"no cached model {id_or_nickname!r} to remove; run `oncoai models list` "
            "to see the cached models"
        )
    doomed = _models_dir() / f"{_TMP_PREFIX}rm-{uuid.uuid4().hex}"
    os.replace(model.path, doomed)  # gone from the listing at once
    shutil.rmtree(doomed, ignore_errors=True)
    logger.info("removed model %s from the cache", model.id)
    return model
