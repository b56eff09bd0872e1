"""`ovstream` command line: one sub-command per module, imported only when used.

Each command module exposes ``add_arguments(parser)`` and ``main(args) -> int``. A user mistake
(:class:`OvstreamError`) prints one line and exits with its code (2); never a traceback.
"""
from __future__ import annotations

import signal

STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
if __name__ == "__main__":     # `python -m engine.cli`: hold Ctrl-C / SIGTERM from the first line on
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)

import argparse  # noqa: E402
import atexit  # noqa: E402
import importlib  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from typing import NoReturn  # noqa: E402

from engine.core.errors import EXIT_INTERRUPTED, OvstreamError  # noqa: E402
from engine.observe.logs import LEVELS, configure_cli, flush_output  # noqa: E402

COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("engine.tools.run", "stream a source through the models and devices of a config"),
    "devices": ("engine.tools.devices", "list the devices OpenVINO sees, with their properties"),
    "convert": ("engine.tools.modeltools.convert", "convert a TF/ONNX/TFLite/Paddle model to OpenVINO IR"),
    "quantize": ("engine.tools.modeltools.quantize", "INT8 post-training quantization with NNCF"),
    "eval": ("engine.tools.modeltools.evaluate", "accuracy: top-1/top-5, COCO mAP, or agreement of two models"),
    "train-mnist": ("engine.tools.modeltools.mnist", "train the codelab's MNIST CNN in TF2 and run it on OpenVINO"),
    "bench": ("engine.tools.bench.cli", "benchmarks: codelab loops, benchmark_app, engine, transport"),
    "serve": ("engine.tools.serve", "run as a service: an HTTP API to add and remove streams, health, live view"),
}


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (what is wrong, and where to read more)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="ovstream", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, description=help_text)
    return parser


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ovstream`` console script.

    Ctrl-C and SIGTERM are held back while the command's modules import (an interrupt inside a
    native extension's import would surface as a misleading ImportError); a command that installs
    its own handlers (``run``) releases them itself, the others get a KeyboardInterrupt → 130.
    """
    owns_process = argv is None            # called as the program, not from Python code
    args = list(sys.argv[1:] if argv is None else argv)
    if owns_process:
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        code = _dispatch(args, owns_process)
    except KeyboardInterrupt:
        print("ovstream: interrupted", file=sys.stderr)
        code = EXIT_INTERRUPTED
    finally:    # the work is done: a late Ctrl-C must not turn the exit code into a signal death
        if owns_process:
            for sig in STOP_SIGNALS:
                signal.signal(sig, signal.SIG_IGN)
    if owns_process and args[:1] == ["run"]:
        _exit_without_teardown(code)
    return code


def _exit_without_teardown(code: int) -> NoReturn:
    """End the program now: exit handlers run and the output is flushed, but the interpreter's
    teardown (destroying every module; OpenVINO unloading its plugins) is skipped. It took ~0.2 s
    after ``ovstream run`` had finished, and a run has closed everything of its own by then."""
    atexit._run_exitfuncs()
    flush_output()
    os._exit(code)


def _dispatch(argv: list[str], owns_process: bool = False) -> int:
    """Run one command; as the program (``owns_process``) it also sets up logging (--log-level),
    which a Python caller of :func:`main` keeps configuring itself."""
    parser = build_parser()
    if not argv or argv[0] not in COMMANDS:
        if argv and not argv[0].startswith("-"):
            parser.error(f"unknown command '{argv[0]}' (choose from {', '.join(COMMANDS)})")
        parser.parse_args(argv)          # --help, or no command
        parser.print_help()
        return 2
    name = argv[0]
    module_name, help_text = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        print(f"ovstream {name}: needs the missing package '{exc.name}' "
              f"(pip install -e '.[tools]' or '.[train]')", file=sys.stderr)
        return 2
    sub = OneLineParser(prog=f"ovstream {name}", description=help_text)
    module.add_arguments(sub)
    sub.add_argument("--log-level", type=str.upper, choices=LEVELS, default="WARNING",
                     help="diagnostics on stderr from this level on (default WARNING); each stage's "
                          "log in the output folder has INFO, or DEBUG with --log-level DEBUG")
    args = sub.parse_args(argv[1:])
    if owns_process:
        configure_cli(args.log_level)
    if not getattr(module, "HANDLES_SIGNALS", False):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    try:
        return int(module.main(args) or 0)
    except OvstreamError as exc:
        print(f"ovstream {name}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"ovstream {name}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
