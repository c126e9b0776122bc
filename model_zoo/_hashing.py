"""The one sha256 of a file that the engine computes, streamed in 1 MiB chunks.

It lives apart from :mod:`model_zoo.model` and :mod:`model_zoo.cache` so that
both, and the starter's exporter, can import it without importing each other.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

_CHUNK = 1 << 20

_memo: dict[tuple[str, int, int], str] = {}


def file_sha256(
    path: Path,
    progress: Callable[[int, int | None, str], None] | None = None,
    done: int = 0,
    total: int | None = None,
) -> str:
    """Return the hex sha256 of a file, read afresh every call.

    Parameters
    ----------
    path : pathlib.Path
        The file.
    progress : callable or None
        Called as ``progress(bytes_done, total, file_name)`` after each chunk.
    done : int
        Bytes already counted before this file, so that one progress bar can
        span several files.
    total : int or None
        The total passed on to ``progress``.

    Returns
    -------
    str
        64 hexadecimal digits.
    """
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
            done += len(chunk)
            if progress is not None:
                progress(done, total, path.name)
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    """Return the hex sha256 of a file, remembered by path, size and mtime.

    A file rewritten within the file system's mtime resolution, with the same
    size, would be reported with its old digest; use :func:`file_sha256` where
    a file is checked for damage.
    """
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _memo:
        _memo[key] = file_sha256(path)
    return _memo[key]
