"""Tracking mistakes found before any stage starts: exit code 2 and one stderr line."""
from __future__ import annotations

import pytest

from tests.conftest import run_ovstream
from tests.faults.test_bad_config import TIMEOUT, _config, _one_line

ZONE = "[[tracking.zones]]\nname = 'z'\npoints = [{}]\n"


@pytest.mark.parametrize("toml, expected", [
    ("[tracking]\nenabled = true\n" + ZONE.format("[0, 0], [9, 9], [9, 0], [0, 9]"),
     "[[tracking.zones]] #1 z: the polygon crosses itself"),
    ("[tracking]\nenabled = true\n[[tracking.lines]]\nname = 'door'\npoints = [[5, 5], [5, 5]]\n",
     "[[tracking.lines]] #1 door: a line of zero length"),
    ("[tracking]\nenabled = true\n" + ZONE.format("[0, 0], [0.5, 0], [0.5, 2]") + "relative = true\n",
     "z: relative points must be from 0 to 1"),
    ("[model]\nname = 'ssd_mobilenet_v2_coco'\n[tracking]\nenabled = true\n"
     + ZONE.format("[0, 0], [9, 0], [9, 9]") + "classes = ['persn']\n",
     "[[tracking.zones]] #1 z: classes names 'persn', which the model has not (did you mean 'person'?)"),
    ("[[sources]]\nuri = 'data/samples'\ndetect_every = 5\n", "detect_every = 5 needs [tracking] enabled = true"),
    ("[source]\nuri = 'data/clip.mp4'\nname = 'cam'\n[tracking]\nenabled = true\n"
     + ZONE.format("[0, 0], [700, 0], [700, 100]"),
     "[[tracking.zones]] #1 z: point [700.0, 0.0] is outside stream 'cam''s 640x480 frames"),
], ids=["self-crossing", "zero-line", "relative-beyond-1", "unknown-class", "budget-without-tracking", "outside"])
def test_bad_tracking_config(engine_env, tmp_path, toml, expected):
    line = _one_line(run_ovstream(_config(tmp_path, toml), output=tmp_path / "out", env=engine_env, timeout=TIMEOUT))
    assert expected in line, line
