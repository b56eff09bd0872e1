"""SIGKILL the postprocessor of a tracking run: the restarted one rebuilds its trackers from results.jsonl,
so the track ids after the restart are those one tracker gives the whole written sequence."""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

import cv2
import psutil

from engine.analytics.streams import Tracking
from engine.config import TrackingConfig
from engine.core.results import read_results
from tests.conftest import REPO, ovstream_command
from tests.helpers.mot_sequence import make_sequence

LOOPS = 2


def _frames(folder: Path) -> int:
    folder.mkdir()
    frames = make_sequence().frames
    for i, frame in enumerate(frames):
        cv2.imwrite(str(folder / f"{i:04d}.jpg"), frame)
    return len(frames) * LOOPS


def _wait_for(path: Path, count: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if path.exists() and path.read_text(encoding="utf-8").count("\n") >= count:
            return
        time.sleep(0.02)
    raise AssertionError(f"no {count} results in time")


def test_track_ids_survive_a_postprocessor_sigkill(engine_env, tmp_path):
    total = _frames(tmp_path / "seq")
    out = tmp_path / "out"
    config = tmp_path / "tracking.toml"
    config.write_text(f"[[sources]]\nuri = '{tmp_path / 'seq'}'\nname = 'cam'\nloop = {LOOPS}\n"
                      f"[model]\nname = 'face'\nscore_threshold = 0.3\n"
                      f"[output]\ndir = '{out}'\n[tracking]\nenabled = true\n", encoding="utf-8")
    proc = subprocess.Popen(ovstream_command("run", str(config), "--no-dashboard"), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=engine_env)
    _wait_for(out / "results.jsonl", 150, proc)
    killed_at = (out / "results.jsonl").read_text(encoding="utf-8").count("\n")
    victims = [c for c in psutil.Process(proc.pid).children() if "workers.postprocessor" in " ".join(c.cmdline())]
    victims[0].kill()
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stderr
    assert "postprocessor" in stderr and "restarting" in stderr

    records = list(read_results(out / "results.jsonl", strict=True))
    assert [r.frame_id for r in records] == list(range(total))            # exactly once, in order
    written = [[d.track_id for d in r.detections or ()] for r in records]
    again = Tracking(TrackingConfig(enabled=True))
    recomputed = [[d.track_id for d in again.apply(r).detections or ()] for r in records]
    assert written == recomputed
    after = {i for ids in written[killed_at + 50:] for i in ids if i is not None}
    assert after, "no tracked face after the restart: the check above proves nothing"
