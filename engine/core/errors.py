"""User-facing errors and the exit codes they map to."""
from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1        # the run finished, but some frames failed or a stage gave up
EXIT_USAGE = 2         # bad config, missing model, unknown device: fix the input and retry
EXIT_INTERRUPTED = 130


def reason(exc: BaseException) -> str:
    """The informative line of an exception's text, at most 300 characters: OpenVINO's own
    ``Exception from src/…:LINE:`` and ``Check '…' failed at src/…`` lines are left out."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("Exception from", "Check "))]
    return (useful or lines or [type(exc).__name__])[0][:300]


def describe(exc: BaseException) -> str:
    """``Type: reason`` of an unexpected exception, for a record or a one-line report."""
    return f"{type(exc).__name__}: {reason(exc)}"


class OvstreamError(Exception):
    """An error the user can fix; printed as one line, never as a traceback."""

    exit_code = EXIT_USAGE


class ConfigError(OvstreamError):
    """A configuration file or command-line option is wrong."""


class ModelError(OvstreamError):
    """A model is missing, unreadable, or does not fit its adapter."""


class DeviceError(OvstreamError):
    """A device OpenVINO does not list, or one that fails to compile the model."""


class OutputError(OvstreamError):
    """The output folder cannot take what a stage writes (a full disk, a lost permission):
    restarting the stage cannot fix it, so the run stops with what was written whole."""

    exit_code = EXIT_FAILED


class PipelineError(OvstreamError):
    """A pipeline run from Python could not go on (a stage kept dying, its supervisor died, it
    was interrupted); the results it had written before came out first."""

    exit_code = EXIT_FAILED
