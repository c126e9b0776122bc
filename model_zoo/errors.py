"""Errors that OncoAI shows to its users.

Every host (command line, napari, the service, the macros) turns an
:class:`OncoAIError` into one line of text, and never into a traceback.
"""

from __future__ import annotations


class OncoAIError(Exception):
    """A problem the user can fix: a bad file, a bad option, a bad model.

    The message says what was wrong, the value received, and how to fix it.
    The command line exits with :attr:`exit_code`.
    """

    exit_code: int = 2


class NotReproducedError(OncoAIError):
    """A model ran but did not reproduce its own test outputs."""

    exit_code = 1


class CancelledError(OncoAIError):
    """Long work was cancelled by the user; nothing was written."""

    exit_code = 130


def one_line(error: BaseException) -> str:
    """Return ``error`` as a single line fit for a dialog or a log.

    Parameters
    ----------
    error : BaseException
        Any exception.

    Returns
    -------
    str
        The message with newlines folded into spaces.
    """
    text = str(error) or type(error).__name__
    return " ".join(text.split())
