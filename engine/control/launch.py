"""How stage processes start: forked from the supervisor, or (inference workers) exec'd early.

Start-up is mostly imports, paid once per interpreter: numpy, ZeroMQ, pydantic, OpenCV and the
engine's own modules cost each stage ~0.25 core-s, which on a small machine is most of the time
to the first result. So:

- **decoders, the preprocessor and the postprocessor are forked** from the supervisor, which has
  imported all they need already (they use no OpenVINO): a fork costs milliseconds. The child
  gets its own session, its log file as stdout and stderr, the title ``python -m workers.ROLE
  NAME`` (so ``ps`` names it), its own ZeroMQ context, and leaves with ``os._exit``, never
  returning into the supervisor's code.
- **inference workers are exec'd** (``python -m workers.inference NAME``): the supervisor has
  used OpenVINO (the pre-flight checks), whose thread pools are not fork-safe. They can be
  started before anything is known (:meth:`Launcher.prestart`), so that their imports overlap
  the supervisor's. A worker reads two lines on stdin: the run's config with its device and the
  batch, as soon as the supervisor's checks have chosen the batch (:meth:`Launcher.configure`:
  it compiles the model while the supervisor makes the pools and forks the other stages), then
  the path of its context file. One that is never needed (the config or the checks failed) is
  killed unseen: it has no log file yet.
"""
from __future__ import annotations

import contextlib
import importlib
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import IO, TYPE_CHECKING, Union

if TYPE_CHECKING:                  # the runner imports this module before the heavy ones
    from engine.config import RunConfig
    from engine.protocol.context import StageContext

EXEC_ROLES = ("inference",)        # roles that load OpenVINO: never forked


def inference_name(index: int) -> str:
    """The name of the inference worker of ``[inference] devices[index]``."""
    return f"inference-{index}"


def stage_title(role: str, name: str) -> str:
    """What ``ps`` shows for a stage, forked or exec'd alike."""
    return f"{sys.executable} -m workers.{role} {name}"


def stage_of(cmdline: list[str]) -> str | None:
    """The stage name (``decoder-0``) in a process's command line, or None if not a stage.
    A forked stage's title comes back as one string (with NUL padding), an exec'd one's as
    arguments: both read the same once joined."""
    words = " ".join(cmdline).split()
    for i, word in enumerate(words[:-1]):
        if word == "-m" and words[i + 1].startswith("workers.") and i + 2 < len(words):
            return words[i + 2]
    return None


class ForkedProcess:
    """A stage forked from this process, with what the supervisor uses of :class:`subprocess.Popen`."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self._reap(os.WNOHANG)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if timeout is None:
            if self.returncode is None:
                self._reap(0)
            assert self.returncode is not None      # a blocking waitpid returns once it has exited
            return self.returncode
        deadline = time.monotonic() + timeout
        while (code := self.poll()) is None:
            if time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout)
            time.sleep(0.005)
        return code

    def _reap(self, flags: int) -> None:
        try:
            pid, status = os.waitpid(self.pid, flags)
        except ChildProcessError:          # reaped already (SIGCHLD ignored by whoever started us): as Popen does
            self.returncode = 0
            return
        if pid:
            self.returncode = os.waitstatus_to_exitcode(status)

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:            # never a pid that was reaped and may be reused
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


StageProcess = Union[subprocess.Popen, ForkedProcess]


def single_threaded_opencv() -> None:
    """OpenCV without its own thread pool in a forked stage: the stages' parallelism is their
    processes and the streams' threads, a pool per resize only competes with them on busy cores
    (NanoDet's 416×416 resize: −5 % CPU per frame, +6 % FPS), and a pool that the supervisor
    may have started does not survive the fork."""
    import cv2

    cv2.setNumThreads(1)


def fork_stage(ctx: StageContext) -> ForkedProcess:
    """Fork the stage of ``ctx`` (not an inference worker) from this process."""
    assert ctx.role not in EXEC_ROLES, ctx.role
    from setproctitle import setproctitle

    from workers.runtime import die_with_parent, redirect_output, serve

    run = importlib.import_module(f"workers.{ctx.role}").run    # imported here once, shared by every fork
    pid = os.fork()
    if pid:
        return ForkedProcess(pid)
    code = 1
    try:                                   # the child: never returns into the caller's code
        os.setsid()                        # a terminal's Ctrl-C reaches only the supervisor
        die_with_parent()
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        redirect_output(ctx.log_file)
        setproctitle(stage_title(ctx.role, ctx.name))
        single_threaded_opencv()
        code = serve(ctx, run)
    except BaseException:  # noqa: B036 — whatever happens, the trace goes to the log and the child exits here
        traceback.print_exc()
    finally:
        os._exit(code)


def _config_line(cfg: RunConfig, device: str, batch: int) -> str:
    return json.dumps({"config": cfg.to_dict(), "device": device, "batch": batch})


class Launcher:
    """Starts one run's stage processes; inference workers may be started ahead of their context.

    Use it as a context manager (or call :meth:`close`): workers started ahead and never handed a
    context are killed and reaped on the way out.
    """

    def __init__(self) -> None:
        self._waiting: dict[str, subprocess.Popen] = {}
        self._configured: set[str] = set()      # waiting workers that have their config

    def prestart(self, count: int) -> None:
        """Start inference workers ``inference-0`` … ``inference-{count-1}`` not started yet:
        they import OpenVINO while the caller does its own work, then wait for their config."""
        for i in range(count):
            name = inference_name(i)
            if name not in self._waiting:
                self._waiting[name] = self._exec("inference", name, log=None)

    def configure(self, cfg: RunConfig, batch: int) -> None:
        """Tell every waiting worker the run's config, its device and the frames per request the
        checks chose: it compiles the model now."""
        for i, device in enumerate(cfg.inference.devices):
            proc = self._waiting.get(inference_name(i))
            if proc is not None and inference_name(i) not in self._configured:
                self._configured.add(inference_name(i))
                self._tell(proc, _config_line(cfg, device, batch))

    def start(self, ctx: StageContext, ctx_path: Path) -> StageProcess:
        """Start the stage of ``ctx``: fork it, or hand an exec'd one (waiting, or started now)
        the context written to ``ctx_path``."""
        if ctx.role not in EXEC_ROLES:
            return fork_stage(ctx)
        proc = self._waiting.pop(ctx.name, None)     # one that died meanwhile is handed over dead, a crash like any
        if proc is None:
            proc = self._exec(ctx.role, ctx.name, log=Path(ctx.log_file) if ctx.log_file else None)
        try:
            if ctx.name not in self._configured:
                self._tell(proc, _config_line(ctx.config, ctx.device, ctx.input.batch))
            self._configured.discard(ctx.name)
            ctx_path.write_text(ctx.to_json(), encoding="utf-8")
        except BaseException:              # e.g. a full disk: nobody holds it but us
            proc.kill()
            proc.wait()
            raise
        self._tell(proc, str(ctx_path), last=True)
        return proc

    @staticmethod
    def _tell(proc: subprocess.Popen, line: str, last: bool = False) -> None:
        """One line on a worker's stdin (``last``: then close it)."""
        stdin = proc.stdin
        assert stdin is not None            # started with a pipe (:meth:`_exec`)
        try:
            stdin.write(f"{line}\n".encode())
            stdin.flush()
            if last:
                stdin.close()
        except OSError:
            pass                   # it died already: the caller sees it exit like any stage

    @staticmethod
    def _exec(role: str, name: str, log: Path | None) -> subprocess.Popen:
        """``python -m workers.ROLE NAME`` in its own session; its output goes to ``log`` until it
        reads its context (which names the log), or nowhere for a worker started ahead."""
        out: IO[bytes] | int = open(log, "ab") if log is not None else subprocess.DEVNULL
        try:
            return subprocess.Popen([sys.executable, "-m", f"workers.{role}", name], stdin=subprocess.PIPE,
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            if not isinstance(out, int):
                out.close()

    def close(self) -> None:
        """Kill and reap every worker started ahead that never got a context."""
        waiting, self._waiting = self._waiting, {}
        self._configured.clear()
        for proc in waiting.values():
            proc.kill()
        for proc in waiting.values():
            proc.wait()
            with contextlib.suppress(OSError):
                if proc.stdin is not None:
                    proc.stdin.close()

    def __enter__(self) -> Launcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
