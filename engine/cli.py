"""`ovstream` command line: one sub-command per module, imported only when used.

Each command module exposes ``add_arguments(parser)`` and ``main(args) -> int``. A user mistake
(:class:`OvstreamError`) prints one line and exits with its code (2); never a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from engine.errors import EXIT_INTERRUPTED, OvstreamError

COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("engine.runner", "stream a source through the models and devices of a config"),
    "devices": ("engine.devices", "list the devices OpenVINO sees, with their properties"),
    "convert": ("engine.modeltools.convert", "convert a TF/ONNX/TFLite/Paddle model to OpenVINO IR"),
    "quantize": ("engine.modeltools.quantize", "INT8 post-training quantization with NNCF"),
    "eval": ("engine.modeltools.evaluate", "accuracy: top-1/top-5, COCO mAP, or agreement of two models"),
    "train-mnist": ("engine.modeltools.mnist", "train the codelab's MNIST CNN in TF2 and run it on OpenVINO"),
    "bench": ("bench.cli", "benchmarks: codelab loops, benchmark_app, engine, transport"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ovstream", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, description=help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ovstream`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
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
    sub = argparse.ArgumentParser(prog=f"ovstream {name}", description=help_text)
    module.add_arguments(sub)
    args = sub.parse_args(argv[1:])
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
