"""The output folder of a run: checked and owned before any process starts.

A run owns its folder through an exclusive ``flock`` on ``.ovstream.lock`` inside it (holding the
supervisor's pid, for the message a second run gets). The kernel drops the lock when the owner
exits in any way, SIGKILL included, so a lock is never stale: a crashed run's folder is free at
once and a later run resumes nothing by accident (it truncates results.jsonl). We chose a lock over
a fresh sub-folder per run because users and scripts read ``<output>/results.jsonl`` at the path
they gave, and two runs on one folder are a mistake worth one clear line, not a silent split.

``report.json`` is reserved at start (a valid placeholder, pre-allocated), so a run stopped by a
full disk can still say how far it got.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
from pathlib import Path

from engine.core.errors import ConfigError, OvstreamError

LOCK_NAME = ".ovstream.lock"
MIN_FREE_BYTES = 16 << 20          # below this a run would fail on its first records
REPORT_RESERVE_BYTES = 256 << 10   # room kept for report.json


class OutputBusy(OvstreamError):
    """Another run writes to the same output folder."""


class OutputDir:
    """Claim ``path`` for one run: a writable folder with room to start, locked against a second
    run. :meth:`release` (also on any exit) gives it back."""

    def __init__(self, path: str | Path, reserve_report: bool = True) -> None:
        self.path = Path(path)
        self._fd = -1
        self._placeholder = False       # report.json holds the reservation, not a report
        _make_folder(self.path)
        self._lock()
        try:
            free = shutil.disk_usage(self.path).free
            if free < MIN_FREE_BYTES:
                raise ConfigError(f"output folder {self.path}: only {free >> 20} MiB free on its disk; "
                                  f"a run needs at least {MIN_FREE_BYTES >> 20} MiB to start")
            if reserve_report:
                reserve(self.path / "report.json", REPORT_RESERVE_BYTES)
                self._placeholder = True
        except BaseException:
            self.release()
            raise

    def _lock(self) -> None:
        lock_path = self.path / LOCK_NAME
        while True:
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise ConfigError(f"output folder {self.path}: not writable ({exc.strerror})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
                os.close(fd)
                raise OutputBusy(f"output folder {self.path} is in use by another ovstream run (pid {owner}); "
                                 f"wait for it to end or choose another --output") from None
            try:                 # the file we locked may have been removed by its last owner meanwhile
                same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        except OSError as exc:
            os.close(fd)
            raise ConfigError(f"output folder {self.path}: not writable ({exc.strerror})") from None
        self._fd = fd

    def write_report(self, report: dict) -> Path:
        """Write ``report.json`` over its reserved space (in place, then cut to its length)."""
        path = self.path / "report.json"
        data = json.dumps(report, indent=2).encode("utf-8")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            view = memoryview(data)
            offset = 0
            while offset < len(data):
                offset += os.pwrite(fd, view[offset:], offset)
            os.ftruncate(fd, len(data))
        finally:
            os.close(fd)
        self._placeholder = False
        return path

    def release(self) -> None:
        """Remove an unused report placeholder and the lock file, and drop the lock (idempotent)."""
        if self._fd < 0:
            return
        for name in ("report.json",) * self._placeholder + (LOCK_NAME,):
            try:
                os.unlink(self.path / name)
            except OSError:
                pass
        os.close(self._fd)
        self._fd = -1

    def __enter__(self) -> OutputDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _make_folder(path: Path) -> None:
    """Create ``path`` (and parents) or say in one line why it cannot be a folder."""
    for parent in (path, *path.parents):
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                where = "is a file" if parent == path else f"is below {parent}, which is a file"
                raise ConfigError(f"output folder {path} {where}; choose a folder with --output")
            break
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = "not writable" if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else "cannot be created"
        raise ConfigError(f"output folder {path}: {reason} ({exc.strerror})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"output folder {path}: not writable (Permission denied)")


def reserve(path: Path, size: int) -> None:
    """Write a placeholder report to ``path``, padded with spaces (still valid JSON) to ``size``
    bytes, so that the blocks of the final report are held from the start."""
    placeholder = json.dumps({"state": "running", "note": "the run has not finished"}).encode() + b"\n"
    try:
        with open(path, "wb") as fh:
            fh.write(placeholder.ljust(size, b" "))
    except OSError as exc:
        raise ConfigError(f"output folder {path.parent}: cannot write {path.name} ({exc.strerror})") from None


def read_json_file(path: Path) -> dict | None:
    """A run folder's JSON object file (``status.json``, ``report.json``) as it is now; None when
    it is missing, unreadable or not a JSON object (it is rewritten whole, by rename)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
