"""``python -m engine.api.service SPEC.json``: the supervisor of a pipeline that Python code runs.

:class:`engine.api.pipeline.Pipeline` starts this process with a JSON spec (the resolved config, its two
endpoints, its own pid) and talks to it through :class:`~engine.protocol.apilink.ServiceLink`. It is
``ovstream run`` without a terminal: the same pre-flight checks, output folder, supervisor and
report.json, and its own session, so the Ctrl-C of a terminal or a notebook reaches only the
Python process, which stops the pipeline through the link. Its last message is the outcome.
"""
from __future__ import annotations

import json
import logging
import shutil
import sys
import traceback
from pathlib import Path

import zmq

from engine.config import RunConfig
from engine.control.launch import Launcher
from engine.core.errors import EXIT_FAILED, EXIT_USAGE, OvstreamError
from engine.io.run_folder import OutputDir
from engine.observe.logs import configure_stage
from engine.protocol.apilink import ServiceLink
from engine.protocol.messages import OutcomeMsg

log = logging.getLogger(__name__)


def serve(spec: dict, link: ServiceLink) -> OutcomeMsg:
    """Run the pipeline of ``spec``; the outcome to send (``usage``: a mistake found before start)."""
    try:
        cfg = RunConfig.from_dict(spec["config"], origin="pipeline config")
        with Launcher() as launcher:
            launcher.prestart(len(cfg.inference.devices))    # they import OpenVINO while this process does
            return _serve(cfg, spec, link, launcher)
    except OvstreamError as exc:        # found before start: the API raises it as it is
        return OutcomeMsg(exc.exit_code, str(exc), {}, usage=exc.exit_code == EXIT_USAGE, error=type(exc).__name__)


def _serve(cfg: RunConfig, spec: dict, link: ServiceLink, launcher: Launcher) -> OutcomeMsg:
    from engine.control.supervisor import Supervisor  # imported after the inference workers were started

    supervisor = Supervisor(cfg, dashboard=False, link=link, max_streams=int(spec.get("max_streams", 0)),
                            launcher=launcher, persistent=bool(spec.get("persistent")))
    try:
        with OutputDir(cfg.output.dir, reserve_report=cfg.output.report) as output:
            outcome = supervisor.run()
            message, code = outcome.message, outcome.exit_code
            if outcome.report and cfg.output.report:
                try:
                    output.write_report(outcome.report)
                except OSError as exc:
                    message = message or f"cannot write {output.path / 'report.json'}: {exc.strerror}"
                    code = max(code, EXIT_FAILED)
    finally:
        if supervisor.exporter is not None:
            supervisor.exporter.close()
    return OutcomeMsg(code, message, outcome.report, usage=False)


def main(argv: list[str]) -> int:
    with open(argv[0], encoding="utf-8") as fh:
        spec = json.load(fh)
    configure_stage("supervisor", int(spec.get("log_level", logging.INFO)))   # into logs/supervisor.log
    context = zmq.Context()
    link = ServiceLink(context, spec["control"], spec["results"], int(spec["owner_pid"]), spec.get("view", ""))
    try:
        try:
            outcome = serve(spec, link)
        except Exception as exc:  # a bug: the trace into the log, one line to the API
            log.error("%s", traceback.format_exc())
            outcome = OutcomeMsg(EXIT_FAILED, f"{type(exc).__name__}: {exc}", {}, usage=False)
        link.send(outcome)
    finally:
        link.close()
        context.term()
        if link.orphaned:           # the Python process died without closing: its run directory too
            shutil.rmtree(Path(argv[0]).parent, ignore_errors=True)
    return outcome.exit_code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
