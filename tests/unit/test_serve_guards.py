"""`ovstream serve`'s guards without a pipeline: the uri policy, the token, the body limit, the saved stream list."""
from __future__ import annotations

import asyncio

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from engine.api.control_plane import read_token
from engine.api.http_app import BearerToken, BodyLimit
from engine.api.streams_state import StreamsState
from engine.api.uri_policy import UriRefused, check_uri
from engine.config import RunConfig, ServeConfig, redact_uri
from engine.core.errors import ConfigError


def test_uris_are_stream_urls_of_allowed_schemes_or_files_under_the_roots(tmp_path):
    root = tmp_path / "media"
    (root / "clips").mkdir(parents=True)
    (root / "clips" / "a.mp4").write_bytes(b"")
    (root / "out").symlink_to("/etc")
    serve = ServeConfig(roots=[str(root)])
    assert check_uri("rtsp://cam.local/stream", serve) == "rtsp://cam.local/stream"
    assert check_uri(str(root / "clips" / "a.mp4"), serve) == str(root / "clips" / "a.mp4")
    assert check_uri(str(root / "clips"), serve) == str(root / "clips")
    (root / "clips" / "b.mp4").symlink_to(root / "clips" / "a.mp4")           # a link that stays inside: fine
    assert check_uri(str(root / "clips"), serve) == str(root / "clips")
    (root / "clips" / "c.jpg").symlink_to("/etc/hostname")                      # one that leads out: refused
    refused = {str(root): "out links outside", str(root / "clips"): "c.jpg links outside",
               "/etc/passwd": "must be under", str(root / "out" / "passwd"): "must be under",
               str(root / ".." / "secret"): "must be under", str(tmp_path / "media-2" / "x"): "must be under",
               "file:///etc/passwd": "scheme 'file'", "ftp://host/x": "scheme 'ftp'",
               "0": "cameras", "/dev/video0": "cameras"}
    for uri, why in refused.items():
        with pytest.raises(UriRefused, match=why):
            check_uri(uri, serve)
    with pytest.raises(UriRefused, match="no folder is configured"):
        check_uri(str(root / "clips" / "a.mp4"), ServeConfig())
    assert check_uri("0", ServeConfig(schemes=["device"])) == "0"
    with pytest.raises(UriRefused, match="scheme 'rtsp'"):
        check_uri("rtsp://cam/x", ServeConfig(schemes=["https"]))


def test_a_token_comes_from_the_environment_or_a_file_and_is_needed_beyond_loopback(tmp_path, monkeypatch):
    monkeypatch.delenv("OVSTREAM_TOKEN", raising=False)
    assert read_token(RunConfig()) == ""
    with pytest.raises(ConfigError, match="set a token"):
        read_token(RunConfig.from_dict({"serve": {"host": "0.0.0.0"}}))
    secret = tmp_path / "token"
    secret.write_text("abc\n")
    assert read_token(RunConfig.from_dict({"serve": {"host": "0.0.0.0", "token_file": str(secret)}})) == "abc"
    with pytest.raises(ConfigError, match="token_file"):
        read_token(RunConfig.from_dict({"serve": {"token_file": str(tmp_path / "none")}}))
    monkeypatch.setenv("OVSTREAM_TOKEN", "xyz")
    assert read_token(RunConfig.from_dict({"serve": {"token_file": str(secret)}})) == "xyz"


class _Client:
    """Requests to an ASGI app in this process (httpx's ASGI transport)."""

    def __init__(self, app: Starlette) -> None:
        self.app = app

    def request(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        async def go() -> httpx.Response:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://t") as c:
                return await c.request(method, path, **kwargs)  # type: ignore[arg-type]
        return asyncio.run(go())

    def get(self, path: str, **kwargs: object) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: object) -> httpx.Response:
        return self.request("POST", path, **kwargs)


def _client(**guards: object) -> _Client:
    async def echo(request: Request) -> PlainTextResponse:
        return PlainTextResponse(str(len(await request.body())))
    app = Starlette(routes=[Route(path, echo, methods=["GET", "POST"]) for path in ("/", "/x")])
    app.add_middleware(BodyLimit, limit=100)
    if guards.get("token"):
        app.add_middleware(BearerToken, token=guards["token"])
    return _Client(app)


def test_a_body_over_the_limit_is_413_with_or_without_its_length():
    client = _client()
    assert client.post("/x", content=b"x" * 100).text == "100"
    assert client.post("/x", content=b"x" * 101).status_code == 413
    async def chunks():                                     # no Content-Length: counted as it arrives
        for _ in range(3):
            yield b"x" * 60
    too_long = client.post("/x", content=chunks())
    assert too_long.status_code == 413 and "max_body_bytes" in too_long.json()["detail"]


def test_with_a_token_every_request_needs_it_and_the_page_cookie_only_reads():
    client = _client(token="t0k/+")
    assert client.get("/x").status_code == 401
    assert client.get("/x", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.get("/x", headers={"Authorization": "t0k/+"}).status_code == 401
    assert client.get("/x", headers={"Authorization": "Bearer t0k/+"}).status_code == 200
    assert client.post("/x", headers={"Authorization": "Bearer t0k/+"}).status_code == 200
    cookie = {"Cookie": "ovstream_token=t0k%2F%2B"}                   # as the page sets it (URI-encoded)
    assert client.get("/x", headers=cookie).status_code == 200
    assert client.post("/x", headers=cookie).status_code == 401      # a change needs the header
    assert client.get("/x", headers={"Cookie": "ovstream_token=t0k"}).status_code == 401
    assert client.get("/").status_code == 200                         # the page (no figures) asks for it
    assert client.post("/").status_code == 401


def test_the_saved_stream_list_round_trips_and_a_broken_one_is_one_line(tmp_path):
    path = tmp_path / "streams.json"
    state = StreamsState(path)
    assert state.load() is None
    state.put({"name": "a", "uri": "rtsp://x/a"})
    state.put({"name": "b", "uri": "rtsp://x/b", "loop": 2})
    state.drop("a")
    assert StreamsState(path).load() == [{"name": "b", "uri": "rtsp://x/b", "loop": 2}]
    path.write_text("{broken")
    with pytest.raises(ConfigError, match="cannot read the saved stream list"):
        state.load()
    path.write_text('{"streams": [1]}')
    with pytest.raises(ConfigError, match="not a stream list"):
        state.load()


def test_a_uri_is_shown_without_its_password():
    assert redact_uri("rtsp://admin:hunter2@10.0.0.5:554/s1") == "rtsp://admin:***@10.0.0.5:554/s1"
    assert redact_uri("rtsp://10.0.0.5/s1") == "rtsp://10.0.0.5/s1"
    assert redact_uri("https://token@host/x") == "https://token@host/x"      # a user alone is not a password
    assert redact_uri("/srv/media/a:b@c.mp4") == "/srv/media/a:b@c.mp4"
    assert redact_uri("rtsp://admin:ab/cd@cam/s1") == "rtsp://admin:***@cam/s1"          # a '/' in the password
    assert redact_uri("rtsp://u:p@ss@cam:554/s1") == "rtsp://u:***@cam:554/s1"           # an '@' in it
    assert redact_uri("rtsp://u:pw@cam/s1?x=@y") == "rtsp://u:***@cam/s1?x=@y"           # not the query's '@'
