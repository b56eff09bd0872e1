"""Logging like a library: no configuration on import, --log-level, lines above the live view,
and OpenVINO's own exception text reduced to its informative line."""
from __future__ import annotations

import io
import logging
import subprocess
import sys

import openvino as ov
import pytest
from rich.console import Console
from rich.live import Live

from engine.core.errors import describe, reason
from engine.observe.logs import PACKAGES, configure_cli
from tests.conftest import REPO, ovstream_command, run_ovstream


@pytest.fixture
def restore_logging():
    """configure_cli changes the process's ovstream loggers: put them back afterwards."""
    saved = {name: (logging.getLogger(name).handlers[:], logging.getLogger(name).level,
                    logging.getLogger(name).propagate) for name in PACKAGES}
    yield
    for name, (handlers, level, propagate) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:], logger.level, logger.propagate = handlers, level, propagate


def test_importing_the_library_configures_no_logging():
    code = ("import logging\n"
            "import engine.cli, engine.config, engine.control.supervisor, engine.tools.run, engine.io.mqtt\n"
            "import engine.io.sources\n"
            "import workers.runtime, workers.decoder, workers.inference, workers.postprocessor, workers.preprocessor\n"
            "loggers = [logging.getLogger(), logging.getLogger('engine'), logging.getLogger('workers')]\n"
            "assert not any(logger.handlers for logger in loggers), [l.handlers for l in loggers]\n"
            "assert logging.getLogger().level == logging.WARNING\n"
            "assert logging.getLogger('engine.control.supervisor').getEffectiveLevel() == logging.WARNING\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_log_lines_go_above_the_live_dashboard(restore_logging):
    """While the rich Live view draws, sys.stderr is rich's proxy: a warning is printed through the
    view's console (above it), not written over it on the terminal."""
    configure_cli("WARNING")
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=100)
    real_stderr = sys.stderr
    sys.stderr = terminal = io.StringIO()          # what the terminal would get directly
    try:
        with Live("the dashboard", console=console, auto_refresh=False):
            logging.getLogger("engine.control.supervisor").warning("inference-0 exited with code -9; restarting")
            logging.getLogger("engine.control.supervisor").info("not shown at WARNING")
    finally:
        sys.stderr = real_stderr
    assert "[supervisor] inference-0 exited with code -9; restarting" in screen.getvalue()
    assert "not shown" not in screen.getvalue() and terminal.getvalue() == ""


def test_log_level_option(tmp_path):
    bad = subprocess.run(ovstream_command("run", "--log-level", "loud"), cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "--log-level" in bad.stderr


def test_openvino_exception_text_is_reduced_to_its_reason():
    model = ov.Core().read_model(str(REPO / "models" / "mnist" / "mnist.xml"))   # a 1-channel input
    ppp = ov.preprocess.PrePostProcessor(model)
    ppp.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC")).set_shape([1, 28, 28, 3])
    with pytest.raises(Exception) as err:
        ppp.build()
    assert "Check '" in str(err.value)                               # what OpenVINO says ...
    assert reason(err.value).startswith("Resulting shape '[1,28,28,3]'")   # ... and what a user reads
    assert describe(err.value) == f"{type(err.value).__name__}: {reason(err.value)}"
    assert reason(RuntimeError("plain\nsecond")) == "plain"


@pytest.mark.parametrize("level", ["DEBUG", None])
def test_log_level_reaches_the_command_and_the_stage_logs(engine_env, tmp_path, level):
    """--log-level DEBUG shows the supervisor's debug lines and puts debug lines in each stage's log
    file; by default neither (stage logs keep INFO and up, as before)."""
    extra = ["--log-level", level] if level else []
    result = run_ovstream("--model", "mnist", "--source", "data/mnist_samples", *extra, output=tmp_path / "out",
                          env=engine_env, timeout=240)
    assert result.code == 0, result.stderr
    stage_log = (tmp_path / "out" / "logs" / "inference-0.log").read_text()
    shown = "[supervisor] inference-0 started: pid" in result.stderr
    assert shown == bool(level), result.stderr
    assert ("[inference-0] pid" in stage_log) == bool(level), stage_log
