"""ovstream: streaming multi-process, multi-device inference on OpenVINO."""

__version__ = "0.1.0"
