"""Logging set-up for ovstream's own programs: the ``ovstream`` command and the stage processes.

The library only creates loggers (``logging.getLogger(__name__)`` in each module) and never
configures logging on import: a Python user configures it the usual way (``logging.basicConfig``).
"""
from __future__ import annotations

import logging
import sys

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
PACKAGES = ("engine", "workers")


class CurrentStderr(logging.StreamHandler):
    """A handler writing to whatever ``sys.stderr`` is when a record comes: while the live
    dashboard shows, rich redirects it, and the line is printed above the view, not over it."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)       # no stream of its own: see the property

    @property
    def stream(self):
        return sys.stderr


class ShortNames(logging.Formatter):
    """``[supervisor] message``: a record's logger named by the last part of its module."""

    def format(self, record: logging.LogRecord) -> str:
        record.short = record.name.rsplit(".", 1)[-1]
        return super().format(record)


def configure_cli(level: str) -> None:
    """The ``ovstream`` command's logging: ovstream's loggers at ``level`` to stderr, one line each."""
    handler = CurrentStderr()
    handler.setFormatter(ShortNames("[%(short)s] %(message)s"))
    for name in PACKAGES:
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False


def stage_level() -> int:
    """The level for a stage's log file: INFO, or lower when the caller logs ovstream lower."""
    return min(logging.INFO, logging.getLogger("workers").getEffectiveLevel())


def configure_stage(name: str, level: int) -> None:
    """A stage process's logging: every record to its stderr (its log file), as ``[name] message``.
    What a forked stage inherits of the command's set-up (:func:`configure_cli`) is undone."""
    for package in PACKAGES:
        logger = logging.getLogger(package)
        logger.handlers.clear()
        logger.setLevel(logging.NOTSET)
        logger.propagate = True
    logging.basicConfig(level=level, format=f"[{name}] %(message)s", stream=sys.stderr, force=True)


def flush_output() -> None:
    """Flush ``sys.stdout`` and ``sys.stderr`` as they are (closed or broken ones are skipped):
    the last step of a process that leaves with ``os._exit``."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
