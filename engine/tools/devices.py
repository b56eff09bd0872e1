"""`ovstream devices`: what OpenVINO sees on this machine, with the properties users tune."""
from __future__ import annotations

import argparse
import json

from rich.console import Console
from rich.table import Table

from engine.model.runtime import ov

PROPERTIES = ("FULL_DEVICE_NAME", "DEVICE_ARCHITECTURE", "OPTIMIZATION_CAPABILITIES",
              "RANGE_FOR_STREAMS", "RANGE_FOR_ASYNC_INFER_REQUESTS", "INFERENCE_NUM_THREADS",
              "NUM_STREAMS", "PERFORMANCE_HINT", "INFERENCE_PRECISION_HINT", "CACHE_DIR")


def describe(core: ov.Core, device: str) -> dict[str, str]:
    """The readable properties of one device (those it does not support are left out)."""
    out = {}
    for key in PROPERTIES:
        try:
            value = core.get_property(device, key)
        except Exception:  # each plugin supports its own subset
            continue
        out[key] = ", ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def main(args: argparse.Namespace) -> int:
    core = ov.Core()
    devices = {d: describe(core, d) for d in core.available_devices}
    if args.json:
        print(json.dumps({"openvino": ov.get_version(), "devices": devices}, indent=2))
        return 0
    table = Table(title=f"OpenVINO {ov.get_version()}: {len(devices)} device(s)")
    table.add_column("device", style="bold")
    table.add_column("property")
    table.add_column("value")
    for device, props in devices.items():
        for i, (key, value) in enumerate(props.items()):
            table.add_row(device if i == 0 else "", key, value)
    Console().print(table)
    print("Use these names in [inference] devices, e.g. [\"CPU\", \"GPU\"], \"AUTO\" or \"MULTI:CPU,GPU\".")
    return 0
