"""Where operations teams read a run: Prometheus /metrics scraped over HTTP, results over MQTT
through a real Mosquitto broker (started here on 127.0.0.1), checked against report.json and
results.jsonl."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import COCO, FACE_ON_COCO, REPO, ovstream_command, run_ovstream
from tests.servers import Mosquitto, Subscriber, free_port, tls_files

MODEL = ("--model", "face")             # fast; named so a change of default model changes nothing here


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """``{(sample name, sorted labels): value}`` of one /metrics scrape."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def few_images(tmp_path: Path, n: int = 10) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for src in sorted(COCO.glob("*.jpg"))[:n]:
        shutil.copy(src, folder / src.name)
    return folder


class Stderr:
    """The lines a running process writes to stderr, read by a thread."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stderr:
            self.lines.append(line)

    def wait_for(self, text: str, proc: subprocess.Popen, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line for line in self.lines):
                return True
            if proc.poll() is not None:
                time.sleep(0.2)
                return any(text in line for line in self.lines)
            time.sleep(0.05)
        return False


def test_metrics_scraped_during_the_run_match_the_report(engine_env, tmp_path):
    port = free_port()
    out = tmp_path / "out"
    config = tmp_path / "metrics.toml"
    config.write_text("[metrics]\nlinger_s = 120\n", encoding="utf-8")
    proc = subprocess.Popen(ovstream_command("run", str(config), *FACE_ON_COCO, "--loop", "6", "--metrics-port",
                                             str(port),
                                             "--output", str(out), "--no-dashboard"),
                            cwd=REPO, env=engine_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stderr = Stderr(proc)
    try:
        assert stderr.wait_for(f"metrics on http://127.0.0.1:{port}/metrics", proc, 60), stderr.lines
        running = []                               # scrapes while frames flow
        while not stderr.wait_for("serving the final metrics", proc, 0.1):
            assert proc.poll() is None, stderr.lines
            samples = scrape(port)
            if samples and value(samples, "ovstream_state", ovstream_state="running") == 1:
                running.append(samples)
            time.sleep(0.2)
        final = scrape(port)
        report = json.loads((out / "report.json").read_text(encoding="utf-8"))
        proc.send_signal(signal.SIGTERM)            # ends the linger; the run's exit code stays
        assert proc.wait(timeout=30) == 0, stderr.lines
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    assert running, "no scrape saw the run in progress"
    previous = 0.0
    for samples in running:                         # every mid-run scrape is consistent
        read = value(samples, "ovstream_frames_read_total", stream=COCO.name)
        done = sum(value(samples, "ovstream_frames_total", stream=COCO.name, outcome=o)
                   for o in ("ok", "error", "drop"))
        assert value(samples, "ovstream_frames_in_flight", stream=COCO.name) == read - done >= 0
        assert done >= previous                     # counters never go back
        previous = done
    assert previous <= 600

    acc = report["accounting"]
    assert value(final, "ovstream_state", ovstream_state="finished") == 1
    assert value(final, "ovstream_frames_read_total", stream=COCO.name) == acc["in"] == 600
    assert value(final, "ovstream_frames_total", stream=COCO.name, outcome="ok") == acc["out"] == 600
    assert value(final, "ovstream_frames_total", stream=COCO.name, outcome="error") == acc["errors"] == 0
    assert value(final, "ovstream_frames_total", stream=COCO.name, outcome="drop") == acc["drops"] == 0
    assert value(final, "ovstream_frames_in_flight", stream=COCO.name) == 0
    assert value(final, "ovstream_average_frames_per_second") == report["throughput_fps"] > 0
    for stage, lat in report["latency_ms"].items():      # histograms: the report's exact buckets
        assert value(final, "ovstream_stage_latency_seconds_count", stage=stage) == lat["count"] > 0
        assert abs(value(final, "ovstream_stage_latency_seconds_sum", stage=stage) - lat["sum"] / 1000) < 1e-6
        for bound_ms, n in lat["buckets"].items():
            assert value(final, "ovstream_stage_latency_seconds_bucket", stage=stage,
                         le=f"{float(bound_ms) / 1000:g}") == n
        assert value(final, "ovstream_stage_latency_seconds_bucket", stage=stage, le="+Inf") == lat["count"]
    assert value(final, "ovstream_stage_latency_seconds_count", stage="end_to_end") == 600
    assert value(final, "ovstream_stream_latency_seconds_count", stream=COCO.name) == 600
    for stage, lat in report["latency_ms_by_device"]["CPU"].items():
        assert value(final, "ovstream_device_stage_latency_seconds_count", device="CPU", stage=stage) == lat["count"]
    (device,) = report["devices"]
    assert value(final, "ovstream_device_frames_total", device="CPU", worker="CPU#0") == device["frames"] == 600
    assert value(final, "ovstream_device_requests", device="CPU", worker="CPU#0") == device["nireq"] > 0
    assert value(final, "ovstream_device_requests_in_flight", device="CPU", worker="CPU#0") == device["in_flight"]
    for p in report["processes"]:
        key = {"process": p["name"], "role": p["role"]}
        assert value(final, "ovstream_process_restarts_total", **key) == p["restarts"] == 0
        assert value(final, "ovstream_process_cpu_seconds_total", **key) == p["cpu_s"] > 0
        if p["rss_mib"] is not None:
            assert value(final, "ovstream_process_resident_memory_bytes", **key) == p["rss_mib"] * 2**20
    assert {p["role"] for p in report["processes"]} >= {"supervisor", "decoder", "postprocessor", "inference"}


def test_a_busy_metrics_port_is_a_usage_error(engine_env, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_ovstream(*FACE_ON_COCO, "--metrics-port", str(port), output=tmp_path / "out", env=engine_env)
    assert result.code == 2
    assert f"[metrics] cannot serve on 127.0.0.1:{port}" in result.stderr


def mqtt_config(tmp_path: Path, port: int, **extra: object) -> Path:
    lines = ["[output.mqtt]", 'host = "127.0.0.1"', f"port = {port}"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in extra.items()]
    path = tmp_path / "mqtt.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("qos", [1, 0])
def test_every_record_is_published_in_order(engine_env, tmp_path, qos):
    broker = Mosquitto(tmp_path / "broker").start()
    subscriber = Subscriber(broker.port)
    try:
        config = mqtt_config(tmp_path, broker.port, qos=qos)
        result = run_ovstream(str(config), *FACE_ON_COCO, output=tmp_path / "out", env=engine_env)
        assert result.code == 0, result.stderr
        lines = (result.output / "results.jsonl").read_text(encoding="utf-8").splitlines()
        assert len(lines) == 100
        assert subscriber.wait_for(100, timeout=10)
    finally:
        subscriber.close()
        broker.stop()
    assert {topic for topic, _ in subscriber.messages} == {f"ovstream/{COCO.name}/results"}
    assert [payload.decode() for _, payload in subscriber.messages] == lines      # the same JSON, in order
    (sink,) = result.report["sinks"]
    assert (sink["name"], sink["published"], sink["dropped"], sink["buffered"]) == ("mqtt", 100, 0, 0)


def test_tls_and_password_are_used_and_a_refused_login_never_blocks(engine_env, tmp_path):
    tls = tls_files(tmp_path / "tls")
    broker = Mosquitto(tmp_path / "broker", tls=tls, users={"ops": "s3cret"}).start()
    subscriber = Subscriber(broker.port, ca=tls["ca.crt"], username="ops", password="s3cret")
    try:
        good = mqtt_config(tmp_path, broker.port, tls=True, ca=str(tls["ca.crt"]), username="ops", password="s3cret")
        result = run_ovstream(str(good), *FACE_ON_COCO, output=tmp_path / "good", env=engine_env)
        assert result.code == 0, result.stderr
        assert subscriber.wait_for(100, timeout=10)
        bad = mqtt_config(tmp_path, broker.port, tls=True, ca=str(tls["ca.crt"]), username="ops",
                          password="wrong", flush_timeout_s=0.5)
        refused = run_ovstream(str(bad), *FACE_ON_COCO, output=tmp_path / "bad", env=engine_env)
    finally:
        subscriber.close()
        broker.stop()
    assert [payload.decode() for _, payload in subscriber.messages] == \
        (result.output / "results.jsonl").read_text(encoding="utf-8").splitlines()
    assert refused.code == 0 and len(refused.records) == 100          # the stream did not wait
    (sink,) = refused.report["sinks"]
    assert (sink["published"], sink["dropped"]) == (0, 100)
    assert "refused the connection" in (refused.output / "logs" / "postprocessor.log").read_text(encoding="utf-8")


def _long_qos1_run(tmp_path: Path, env: dict) -> tuple[Mosquitto, Subscriber, Path, subprocess.Popen]:
    """A broker, a subscriber and a 1500-frame QoS 1 run publishing to it, started in the background."""
    broker = Mosquitto(tmp_path / "broker").start()
    subscriber = Subscriber(broker.port)
    out = tmp_path / "out"
    config = mqtt_config(tmp_path, broker.port, qos=1, flush_timeout_s=20.0)
    proc = subprocess.Popen(ovstream_command("run", str(config), *MODEL, "--source", str(few_images(tmp_path)),
                                             "--loop", "150", "--output", str(out), "--no-dashboard"),
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return broker, subscriber, out, proc


def _stop_long_run(broker: Mosquitto, subscriber: Subscriber, proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    subscriber.close()
    broker.stop()


def _first_copies(subscriber: Subscriber) -> dict[int, str]:
    """frame_id → the first payload received for it (QoS 1 is at least once: repeats dropped)."""
    first: dict[int, str] = {}
    for _, payload in subscriber.messages:
        first.setdefault(json.loads(payload)["frame_id"], payload.decode())
    return first


def test_broker_restarted_mid_run_loses_no_record(engine_env, tmp_path):
    broker, subscriber, out, proc = _long_qos1_run(tmp_path, engine_env)
    try:
        assert subscriber.wait_for(150, timeout=120), "the run published nothing"
        broker.stop()                               # the broker goes away mid-run ...
        before = subscriber.count
        assert proc.poll() is None, "the run ended before the broker was stopped"
        time.sleep(1.5)                             # ... the run goes on, the sink buffers ...
        broker.start()                              # ... and it comes back on the same port
        code = proc.wait(timeout=240)
        assert code == 0, proc.stderr.read()
        lines = (out / "results.jsonl").read_text(encoding="utf-8").splitlines()
        assert len(lines) == 1500
        assert subscriber.wait_for(1500, timeout=30)
        time.sleep(0.5)                             # let late duplicates arrive too
    finally:
        _stop_long_run(broker, subscriber, proc)
    assert before < 1500, "the broker was not away mid-run"
    first = _first_copies(subscriber)
    assert list(first) == list(range(1500))         # none lost, in order
    assert list(first.values()) == lines
    (sink,) = json.loads((out / "report.json").read_text(encoding="utf-8"))["sinks"]
    assert sink["published"] == 1500 and sink["dropped"] == 0
    log = (out / "logs" / "postprocessor.log").read_text(encoding="utf-8")
    assert "mqtt: lost" in log and log.count("mqtt: connected") >= 2


def test_broker_away_never_blocks_the_stream_and_overflow_is_counted(engine_env, tmp_path):
    config = mqtt_config(tmp_path, free_port(), buffer=20, flush_timeout_s=0.5)   # nothing listens there
    result = run_ovstream(str(config), *FACE_ON_COCO, output=tmp_path / "out", env=engine_env)
    assert result.code == 0, result.stderr
    assert len(result.records) == 100 and result.report["accounting"]["balanced"]
    (sink,) = result.report["sinks"]
    # 80 pushed out of the 20-record buffer while running, the last 20 given up at close
    assert (sink["published"], sink["dropped"], sink["buffered"], sink["connected"]) == (0, 100, 0, False)
    log = (result.output / "logs" / "postprocessor.log").read_text(encoding="utf-8")
    assert log.count("mqtt: cannot reach") == 1 and "20 records not confirmed" in log


def _postprocessor_pids(proc: subprocess.Popen) -> list[int]:
    pids = []
    for child in psutil.Process(proc.pid).children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "workers.postprocessor" in " ".join(child.cmdline()):
                pids.append(child.pid)
        except psutil.Error:
            continue
    return pids


def test_postprocessor_killed_while_the_broker_is_away_loses_no_record(engine_env, tmp_path):
    """The records in the dead process's buffer were written to results.jsonl but never confirmed
    by the broker: the restarted postprocessor publishes them again from there."""
    broker, subscriber, out, proc = _long_qos1_run(tmp_path, engine_env)
    results = out / "results.jsonl"
    try:
        assert subscriber.wait_for(150, timeout=120), "the run published nothing"
        broker.stop()
        received = subscriber.count
        deadline = time.monotonic() + 60               # let the sink's buffer fill with 100+ records
        while results.read_text(encoding="utf-8").count("\n") < received + 100 and time.monotonic() < deadline:
            time.sleep(0.05)
        (victim,) = _postprocessor_pids(proc)
        written = results.read_text(encoding="utf-8").count("\n")
        os.kill(victim, signal.SIGKILL)
        assert written < 1500, "the run ended before the postprocessor was killed"
        deadline = time.monotonic() + 60
        while _postprocessor_pids(proc) in ([], [victim]) and time.monotonic() < deadline:
            time.sleep(0.05)
        broker.start()
        code = proc.wait(timeout=240)
        assert code == 0, proc.stderr.read()
        lines = results.read_text(encoding="utf-8").splitlines()
        assert len(lines) == 1500
        assert subscriber.wait_for(1500, timeout=30), (
            subscriber.count, (out / "logs" / "postprocessor.log").read_text(encoding="utf-8")[-3000:])
        time.sleep(0.5)
    finally:
        _stop_long_run(broker, subscriber, proc)
    assert written >= received + 100                   # the dead buffer held that many at least
    first = _first_copies(subscriber)
    assert list(first) == list(range(1500))
    assert list(first.values()) == lines
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["restarts"]["postprocessor"] == 1
