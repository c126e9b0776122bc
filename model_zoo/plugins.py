"""The registry through which bridges add commands and output formats.

The engine never imports a bridge.  Instead each bridge declares an entry point in
the ``oncoai.plugins`` group that points to a ``register(registry)`` function; the
engine calls it when it first needs a command or a writer.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from model_zoo.result import PredictionResult

log = logging.getLogger(__name__)

Writer = Callable[["PredictionResult", Path], None]
"""Writes one result to one path; must write atomically."""


@dataclass
class Command:
    """A subcommand of ``oncoai``.

    Attributes
    ----------
    name : str
        The word after ``oncoai``.
    help : str
        One line for ``oncoai --help``.
    configure : callable
        Adds the subcommand's arguments to its ``argparse`` parser.
    run : callable
        Takes the parsed arguments and returns the exit code.
    """

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


@dataclass
class Registry:
    """Commands and output writers known to the engine."""

    commands: dict[str, Command] = field(default_factory=dict)
    writers: dict[str, Writer] = field(default_factory=dict)
    instance_suffixes: set[str] = field(default_factory=set)

    def add_command(self, command: Command) -> None:
        """Register a subcommand, refusing a name that is already taken."""
        if command.name in self.commands:
            raise ValueError(f"oncoai command {command.name!r} is registered twice")
        self.commands[command.name] = command

    def add_writer(
        self, suffixes: tuple[str, ...], writer: Writer, *, instances: bool = False
    ) -> None:
        """Register a writer for file names ending in any of ``suffixes``.

        Parameters
        ----------
        suffixes : tuple of str
            Lower-case endings with their dot, e.g. ``(".geojson", ".geojson.gz")``.
        writer : callable
            ``writer(result, path)``; it must write atomically.
        instances : bool
            True when the format holds objects, so that a probability output is
            turned into instances before writing.
        """
        for suffix in suffixes:
            self.writers[suffix.lower()] = writer
            if instances:
                self.instance_suffixes.add(suffix.lower())

    def writer_for(self, path: Path) -> tuple[str, Writer] | None:
        """Return the longest registered suffix that ``path`` ends with."""
        name = path.name.lower()
        matches = [s for s in self.writers if name.endswith(s)]
        if not matches:
            return None
        best = max(matches, key=len)
        return best, self.writers[best]


_registry: Registry | None = None


def get_registry() -> Registry:
    """Return the registry, loading the built-in formats and all plugins once."""
    global _registry
    if _registry is None:
        registry = Registry()
        from model_zoo import outputs

        outputs.register(registry)
        for ep in entry_points(group="oncoai.plugins"):
            _load_plugin(registry, ep)
        _registry = registry
    return _registry


def _load_plugin(registry: Registry, ep: Any) -> None:
    # A broken bridge must not take the engine down with it.
    try:
        ep.load()(registry)
    except Exception:  # noqa: BLE001
        log.warning(
            "OncoAI plugin %r failed to load; its commands and formats "
            "are missing (run with --verbose for details)",
            ep.name,
        )
        log.info("plugin %r failed", ep.name, exc_info=True)
