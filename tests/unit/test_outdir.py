"""The output folder: claimed by one run at a time, checked in one line, report space reserved."""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil

import pytest

from engine.core.errors import ConfigError
from engine.io.run_folder import LOCK_NAME, REPORT_RESERVE_BYTES, OutputBusy, OutputDir


def test_a_second_claim_is_refused_until_the_first_is_released(tmp_path):
    out = tmp_path / "a" / "b"
    first = OutputDir(out)
    assert (out / LOCK_NAME).read_text().strip() == str(os.getpid())
    with pytest.raises(OutputBusy, match=rf"{out} is in use by another ovstream run \(pid {os.getpid()}\)"):
        OutputDir(out)
    first.release()
    assert not (out / LOCK_NAME).exists()
    with OutputDir(out):
        pass


def _claim_and_die(path: str) -> None:
    OutputDir(path)
    os._exit(9)                     # no release: as if SIGKILLed


def test_a_lock_whose_owner_died_is_not_stale(tmp_path):
    proc = multiprocessing.get_context("fork").Process(target=_claim_and_die, args=(str(tmp_path),))
    proc.start()
    proc.join()
    assert (tmp_path / LOCK_NAME).exists() and proc.exitcode == 9
    with OutputDir(tmp_path):          # the kernel dropped the dead owner's lock
        pass


def test_report_space_is_reserved_and_the_placeholder_is_valid_json(tmp_path):
    out = OutputDir(tmp_path)
    report = tmp_path / "report.json"
    assert report.stat().st_size == REPORT_RESERVE_BYTES
    assert json.loads(report.read_text())["state"] == "running"
    out.write_report({"state": "finished", "n": 1})
    out.release()
    assert json.loads(report.read_text()) == {"state": "finished", "n": 1}
    assert report.stat().st_size < 100


def test_an_unused_placeholder_is_removed(tmp_path):
    OutputDir(tmp_path).release()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("path, words", [("f", "is a file"), ("f/out/deeper", "is below .*/f, which is a file")])
def test_a_path_that_cannot_be_a_folder(tmp_path, path, words):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match=words):
        OutputDir(tmp_path / path)
    assert (tmp_path / "f").read_text() == "x"


def test_too_little_free_space(tmp_path, monkeypatch):
    monkeypatch.setattr("engine.io.run_folder.shutil.disk_usage",
                        lambda _p: shutil._ntuple_diskusage(1 << 30, 0, 1 << 20))
    with pytest.raises(ConfigError, match="only 1 MiB free"):
        OutputDir(tmp_path)
    assert not (tmp_path / LOCK_NAME).exists()
