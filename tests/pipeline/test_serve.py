"""`ovstream serve`: the real service on a free loopback port, driven over HTTP (httpx) and in Chromium.

Each test starts the command as a user would (`python -m engine.cli serve CONFIG`), reads the URL it
prints, and stops it with SIGTERM, which must drain and exit 0. The browser test drives the
distribution's Chromium (/usr/bin/chromium) through Playwright.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from engine.config import RunConfig
from engine.core.errors import ConfigError
from tests.conftest import COCO, REPO, leftovers, ovstream_command

TOKEN = "s3cret-token-for-the-test"
START_TIMEOUT_S = 180
CHROMIUM = "/usr/bin/chromium"


def write_config(path: Path, output: Path, roots: list[Path], max_streams: int = 2, tracking: str = "",
                 **serve: object) -> Path:
    extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in serve.items())
    path.write_text(f"""
[model]
name = "face"
[[sources]]
uri = "{COCO}"
name = "coco"
loop = 1000
max_fps = 10
[output]
dir = "{output}"
{tracking}
[serve]
port = 0
max_streams = {max_streams}
roots = {json.dumps([str(r) for r in roots])}
{extra}""", encoding="utf-8")
    return path


@contextmanager
def serving(config: Path, env: dict) -> Iterator[tuple[str, subprocess.Popen]]:
    """The service of ``config``: its URL once it listens; stopped (SIGTERM) if the test leaves it running."""
    proc = subprocess.Popen(ovstream_command("serve", str(config)), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        url = ""
        while not url and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line and proc.poll() is not None:
                pytest.fail(f"ovstream serve exited with {proc.returncode} before it listened")
            if line.startswith("ovstream serve: http://"):
                url = line.split()[2].rstrip("/")
        assert url, "ovstream serve did not print its URL"
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)


def stop(proc: subprocess.Popen) -> int:
    """SIGTERM: every stream drains, every process ends, and the command exits."""
    proc.send_signal(signal.SIGTERM)
    return proc.wait(60)


def wait_for(check, timeout: float = 60.0, every: float = 0.3):
    """``check()``'s first truthy value (polled), or a failure after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    pytest.fail(f"not true within {timeout} s: {check.__doc__ or check}")


def test_streams_over_http_checked_guarded_and_resumed(engine_env, tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    (media / "escape").symlink_to("/etc")              # a link out of the root is refused like any outside path
    env = dict(engine_env, OVSTREAM_TOKEN=TOKEN)
    config = write_config(tmp_path / "serve.toml", tmp_path / "out", roots=[COCO.parent, media])
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with serving(config, env) as (url, proc), httpx.Client(base_url=url, headers=auth, timeout=60) as http:
        # the token is needed on every endpoint, reads included
        for method, path in (("GET", "/status"), ("GET", "/healthz"), ("POST", "/streams"), ("GET", "/metrics")):
            assert httpx.request(method, url + path, json={}).status_code == 401
        assert httpx.get(url + "/status", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert http.get("/healthz").json() == {"status": "alive"}
        wait_for(lambda: http.get("/readyz").status_code == 200)
        assert [s["name"] for s in http.get("/streams").json()] == ["coco"]

        # a bad entry is the config's own one-line message
        bad = http.post("/streams", json={"uri": str(COCO), "loop": 0})
        with pytest.raises(ConfigError) as expected:
            RunConfig.from_dict({"sources": [{"uri": str(COCO), "loop": 0}]}, origin="POST /streams")
        assert bad.status_code == 422 and bad.json()["detail"] == str(expected.value)
        assert "\n" not in bad.json()["detail"]
        assert http.post("/streams", json={"uri": str(COCO), "colour": 1}).status_code == 422
        as_json, as_text = {"Content-Type": "application/json"}, {"Content-Type": "text/plain"}
        assert http.post("/streams", content=b"{not json", headers=as_json).status_code == 422
        assert http.post("/streams", content=b"[" * 5000, headers=as_json).status_code == 422      # deep: one line
        assert http.post("/streams", content=b'{"uri": "x"}', headers=as_text).status_code == 415   # no preflight
        assert http.post("/streams", json={"uri": str(COCO), "detect_every": 5}).status_code == 422
        assert http.get("/healthz", headers={"Host": "attacker.example"}).status_code == 400   # DNS rebinding
        assert http.post("/streams", json=[str(COCO)]).status_code == 422
        # the uri policy: only the roots' files, only the allowed schemes
        for uri in ("/etc/passwd", str(media / "escape" / "passwd"), "file:///etc/passwd", "0", "/dev/video0"):
            refused = http.post("/streams", json={"uri": uri})
            assert refused.status_code == 403, (uri, refused.text)
        assert http.post("/streams", json={"uri": str(tmp_path / "out")}).status_code == 403
        # the size limit
        assert http.post("/streams", json={"uri": "x" * 20_000}).status_code == 413

        short = http.post("/streams", json={"uri": str(COCO), "name": "short", "loop": 1})
        assert short.status_code == 201 and short.json()["name"] == "short"
        assert http.post("/streams", json={"uri": str(COCO), "name": "short"}).status_code == 409
        full = http.post("/streams", json={"uri": str(COCO), "name": "third"})
        assert full.status_code == 409 and "max_streams" in full.json()["detail"]
        assert http.get("/streams/short").json()["entry"]["loop"] == 1

        def short_ended() -> dict:
            """the added stream played its 100 images to the end"""
            row = http.get("/status").json()["streams"].get("short", {})
            return row if row.get("state") == "ended" and row["out"] + row["errors"] == row["expected"] else {}
        row = wait_for(short_ended, timeout=120)
        assert row["out"] == 100 and row["errors"] == 0
        assert http.get("/readyz").status_code == 200          # an ended stream is not a failing one
        assert http.delete("/streams/short").json() == {"name": "short", "removed": True}
        assert http.get("/streams/short").status_code == 404
        assert http.delete("/streams/short").status_code == 404
        assert http.post("/streams", json={"uri": str(COCO), "name": "kept", "loop": 1000, "max_fps": 5}) \
            .status_code == 201

        metrics = wait_for(lambda: "" if 'stream="kept"' not in (m := http.get("/metrics").text) else m)
        assert 'ovstream_frames_per_second{stream="coco"}' in metrics
        assert 'ovstream_frames_read_total{stream="kept"}' in metrics
        schema = http.get("/openapi.json").json()
        assert {"/streams", "/streams/{name}", "/status", "/healthz", "/readyz"} <= set(schema["paths"])
        assert stop(proc) == 0
    saved = json.loads((tmp_path / "out" / "streams.json").read_text())
    assert [e["name"] for e in saved["streams"]] == ["coco", "kept"]
    assert leftovers(engine_env["OVSTREAM_TAG"]) == []

    # a restarted service resumes its streams
    with serving(config, env) as (url, proc), httpx.Client(base_url=url, headers=auth, timeout=60) as http:
        assert [s["name"] for s in http.get("/streams").json()] == ["coco", "kept"]
        assert http.get("/streams/kept").json()["entry"]["max_fps"] == 5
        assert (tmp_path / "out" / "results.1.jsonl").stat().st_size > 0      # the first run's results, kept
        second = subprocess.run(ovstream_command("serve", str(config)), cwd=REPO, env=env, capture_output=True,
                                text=True, timeout=120)           # the same output folder: refused, nothing moved
        assert second.returncode == 2 and "in use by another ovstream run" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
        assert (tmp_path / "out" / "results.jsonl").exists() and not (tmp_path / "out" / "results.2.jsonl").exists()
        # a stage that dies is restarted as in a run; the service stays up and is ready again
        wait_for(lambda: http.get("/readyz").status_code == 200)
        post = next(p for p in http.get("/status").json()["processes"] if p["role"] == "postprocessor")
        os.kill(post["pid"], signal.SIGKILL)

        def restarted() -> bool:
            """the postprocessor is back and the service ready"""
            rows = http.get("/status").json()["processes"]
            back = any(p["role"] == "postprocessor" and p["restarts"] >= 1 and p["alive"] for p in rows)
            return back and http.get("/readyz").status_code == 200
        wait_for(restarted, timeout=120)
        assert http.get("/healthz").status_code == 200
        out = http.get("/streams/kept").json()["out"]
        wait_for(lambda: http.get("/streams/kept").json()["out"] > out)       # its frames go on
        assert stop(proc) == 0
    assert leftovers(engine_env["OVSTREAM_TAG"]) == []


def chromium() -> str:
    if shutil.which(CHROMIUM):
        return CHROMIUM
    if os.environ.get("CI"):
        pytest.fail("chromium is not installed, but CI is set: .ci/run must apt-get install chromium")
    pytest.skip("chromium is not installed (apt-get install chromium); CI installs it")


CLIP = REPO / "data" / "clip.mp4"        # the bundled clip: pans and zooms over the sample photos (a face in one)
TRACKING_WITH_A_ZONE = """[tracking]
enabled = true
[[tracking.zones]]
name = "all"
relative = true
points = [[0, 0], [1, 0], [1, 1], [0, 1]]
"""


def test_the_web_page_shows_live_annotated_frames_and_the_status_figures(engine_env, tmp_path):
    from playwright.sync_api import sync_playwright

    from engine.observe.dashboard import analytics_text
    from engine.observe.metrics import AnalyticsRow

    browser_path = chromium()
    config = write_config(tmp_path / "serve.toml", tmp_path / "out", roots=[COCO.parent, CLIP.parent], max_streams=3,
                          tracking=TRACKING_WITH_A_ZONE)
    env = dict(engine_env, OVSTREAM_TOKEN=TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with serving(config, env) as (url, proc), httpx.Client(base_url=url, headers=auth, timeout=60) as http, \
            sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(url + "/")
        page.fill("#token", TOKEN)            # the page asks for the token once; reads then carry it
        page.click("#login button")
        image = page.locator("#stream-coco img")
        page.wait_for_function("document.querySelector('#stream-coco img')?.naturalWidth > 0", timeout=60_000)
        first = image.screenshot()

        def changed() -> bytes:
            """the live image changes"""
            now = image.screenshot()
            return now if now != first else b""
        wait_for(changed, timeout=30)
        view = http.get("/status").json()["service"]["view"]["coco"]
        assert view["viewers"] >= 1 and view["frames"] >= 2

        # a second stream that ends: its figures are final, so the page and /status must agree exactly
        assert http.post("/streams", json={"uri": str(CLIP), "name": "short", "loop": 1}).status_code == 201

        def ended() -> dict:
            """short has ended with every frame counted"""
            row = http.get("/status").json()["streams"].get("short", {})
            return row if row.get("state") == "ended" and row["out"] + row["errors"] == row["expected"] else {}
        row = wait_for(ended, timeout=120)
        page.wait_for_function("document.querySelector('#stream-short [data-figure=out]')?.dataset.value"
                               f" === '{row['out']}'", timeout=30_000)
        figures = "els => Object.fromEntries(els.map(e => [e.dataset.figure, e.dataset.value]))"
        shown = page.eval_on_selector_all("#stream-short [data-figure]", figures)
        assert shown["out"] == str(row["out"]) == str(row["expected"]) == "360"
        assert shown["drops"] == str(row["drops"]) and shown["errors"] == str(row["errors"])
        assert float(shown["latency"]) == row["latency_ms"]["end_to_end"]["p50"]
        status = http.get("/status").json()           # tracking on: the zone's counts, worded as the dashboard's
        counts = analytics_text(tuple(AnalyticsRow(**a) for a in status["analytics"]), "short")
        assert "all " in counts and shown["analytics"] == counts
        assert shown["tracks"] == str(status["service"]["last_frame"]["short"]["tracks"])
        coco = page.eval_on_selector("#stream-coco [data-figure=out]", "e => Number(e.dataset.value)")
        assert 0 < coco <= http.get("/status").json()["streams"]["coco"]["out"]   # it goes on counting
        shot = tmp_path / "serve.png"
        page.screenshot(path=str(shot))
        if os.environ.get("OVSTREAM_SCREENSHOT"):              # docs/images/serve.png is made this way
            shutil.copyfile(shot, os.environ["OVSTREAM_SCREENSHOT"])
        browser.close()
        assert stop(proc) == 0
    assert leftovers(engine_env["OVSTREAM_TAG"]) == []


def test_past_its_life_of_streams_the_pipeline_restarts_with_the_open_ones(engine_env, tmp_path, monkeypatch):
    from engine.api import control_plane
    from engine.config import load_config

    monkeypatch.setenv("OVSTREAM_TAG", engine_env["OVSTREAM_TAG"])
    monkeypatch.setattr(control_plane, "MAX_STREAMS", 3)          # the engine's is 256: reached the same way
    cfg = load_config(write_config(tmp_path / "serve.toml", tmp_path / "out", roots=[COCO.parent], max_streams=3))
    plane = control_plane.ControlPlane(cfg)
    plane.start()
    try:
        for name in ("a", "b"):
            plane.engine.call(lambda pipe, n=name: pipe.add_source(COCO, name=n, loop=1000)).result(60)
            plane.streams.put({"uri": str(COCO), "name": name, "loop": 1000})
        plane.engine.call(lambda pipe: pipe.remove_source("a")).result(60)
        plane.streams.drop("a")
        assert plane.life_left == 0
        assert plane.recycle({"uri": str(COCO), "name": "a", "loop": 1}) == "a"   # a removed name is free again
        assert plane.recycles == 1 and plane.life_left == 0
        assert list(plane.streams.entries) == ["coco", "b", "a"]
        assert plane.pipeline.streams == ["coco", "b", "a"] and plane.engine.running
        plane.engine.call(lambda pipe: pipe.remove_source("b")).result(60)
        plane.streams.drop("b")
        with pytest.raises(ConfigError, match="no such file"):            # it cannot start with the new one:
            plane.recycle({"uri": str(tmp_path / "missing"), "name": "x"})  # it starts without it
        assert plane.engine.running and list(plane.streams.entries) == ["coco", "a"]
    finally:
        plane.stop()
    assert leftovers(engine_env["OVSTREAM_TAG"]) == []
