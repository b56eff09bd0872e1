"""MNIST end to end: train in TF2, convert, quantize, and the codelab's accuracy targets."""
from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import openvino as ov
import pytest

from engine.config import ModelConfig, PreprocessConfig
from engine.model.prepare import prepare_model
from tests.conftest import REPO

pytest.importorskip("tensorflow", reason="tensorflow not installed (pip install -e '.[train]')")
pytest.importorskip("nncf", reason="nncf not installed (pip install -e '.[tools]')")

from engine.config import tomllib  # the stdlib module, or tomli on Python 3.10
from engine.tools.modeltools.mnist import run_flow  # noqa: E402

SAMPLES = REPO / "data" / "mnist_samples"


@pytest.mark.slow
def test_mnist_flow_meets_the_targets(tmp_path: Path) -> None:
    registry = tmp_path / "models.toml"
    shutil.copy(REPO / "models" / "models.toml", registry)
    report = run_flow(epochs=3, output=tmp_path / "mnist", registry=registry, seconds=1.0)

    assert report.tf_accuracy >= 0.97
    assert report.agreement >= 0.999
    assert report.ov_accuracy - report.int8_accuracy <= 0.01
    assert report.failures() == []
    assert report.speedup > 0

    entries = tomllib.loads(registry.read_text())
    for name, xml in (("mnist", report.fp32_xml), ("mnist_int8", report.int8_xml)):
        entry = entries[name]
        assert entry["file"] == f"mnist/{xml.name}" and entry["adapter"] == "classification"
        assert entry["labels"] == [str(d) for d in range(10)]
        assert entry["preprocess"] == {"resize": "stretch", "color": "GRAY", "mean": [0.0], "scale": [255.0]}

    # The engine's way: BGR PNG frames, PrePostProcessor folds BGR→GRAY and /255 into the model.
    pre = PreprocessConfig(resize="stretch", color="GRAY", mean=[0.0], scale=[255.0])
    core = ov.Core()
    for xml in (report.fp32_xml, report.int8_xml):
        cfg = ModelConfig(name="mnist", path=str(xml), adapter="classification", preprocess=pre)
        compiled = core.compile_model(prepare_model(core.read_model(xml), cfg, batch=1)[0], "CPU")
        right = 0
        for png in sorted(SAMPLES.glob("*.png")):
            frame = cv2.resize(cv2.imread(str(png)), (28, 28))
            right += int(np.argmax(compiled(frame[None])[0])) == int(png.name.split("-")[0])
        assert right >= 9, f"{xml.name}: {right}/10 bundled sample digits"
