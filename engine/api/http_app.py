"""``ovstream serve``'s HTTP API (FastAPI): streams added and removed over HTTP, health, status, metrics, live view.

:func:`create_app` builds the application around a :class:`Service` (the running pipeline, its stream
list and live view). The routes and their answers are in docs/serve.md; the OpenAPI schema is
served at ``/openapi.json`` (pages: ``/docs``). Every mistake is one line in ``{"detail": ...}``:
422 for a bad entry (the config's own message), 403 for a uri the policy refuses, 404 for no such
stream, 409 for a name taken or ``[serve] max_streams`` open, 413 for a body over
``[serve] max_body_bytes``, 401 without the bearer token when one is set.
"""
from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine.api.control_plane import LOOPBACK, ApiError, ControlPlane
from engine.api.live import BOUNDARY, mjpeg_part
from engine.config import SourceConfig
from engine.core.errors import ConfigError, PipelineError

COOKIE = "ovstream_token"     # the web page's copy of the token, for reads only (see BearerToken)
CALL_TIMEOUT_S = 40.0       # above the pipeline's own request timeout (30 s)
PAGE = Path(__file__).with_name("index.html")


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes is answered 413 (by its Content-Length,
    or as it arrives when it has none)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await _too_large(self.limit)(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _BodyTooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _BodyTooLarge:
            await _too_large(self.limit)(scope, receive, send)


class _BodyTooLarge(Exception):
    pass


def _too_large(limit: int) -> JSONResponse:
    return JSONResponse({"detail": f"request body over {limit} bytes ([serve] max_body_bytes)"}, status_code=413)


class BearerToken:
    """ASGI middleware: with a token set, every request must carry ``Authorization: Bearer TOKEN``.

    A browser's ``<img>`` cannot send that header, so reads (GET, HEAD) also take the token as the
    cookie :data:`COOKIE` (the web page sets it, ``SameSite=Strict``); a change (POST, DELETE) needs
    the header, so no other site can make a browser change anything. The page itself (``GET /``,
    static, no figures) is served to anyone, so it can ask for the token."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not (scope["method"] == "GET" and scope["path"] == "/"):
            headers = dict(scope["headers"])
            given = headers.get(b"authorization", b"")
            ok = hmac.compare_digest(given, b"Bearer " + self.token)
            if not ok and scope["method"] in ("GET", "HEAD"):
                cookie = unquote(cookie_parser(headers.get(b"cookie", b"").decode("latin-1")).get(COOKIE, ""))
                ok = hmac.compare_digest(cookie.encode(), self.token)
            if not ok:
                await JSONResponse({"detail": "a bearer token is required (Authorization: Bearer TOKEN)"},
                                   status_code=401, headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=exc.status)


def create_app(service: ControlPlane) -> FastAPI:
    """The application; ``service`` is started and stopped by the caller."""
    app = FastAPI(title="ovstream", summary="Streams added and removed in a running ovstream pipeline",
                  version="1")
    serve = service.cfg.serve
    app.add_middleware(BodyLimit, limit=serve.max_body_bytes)
    if serve.host in LOOPBACK:         # a page elsewhere reaching 127.0.0.1 by a rebound name is refused
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=["localhost", "127.0.0.1", "::1", "[::1]"])
    if service.token:
        app.add_middleware(BearerToken, token=service.token)
    app.add_exception_handler(ApiError, _api_error)  # type: ignore[arg-type]
    registry = CollectorRegistry()
    registry.register(service.collector)
    changing = asyncio.Lock()          # one add or remove at a time: the checks hold until it is done

    async def in_engine(fn: Any, late: Callable[[Any], None]) -> Any:
        """``fn(pipeline)`` in the engine's thread; a call that times out once begun still ends,
        and ``late`` then records what it did."""
        future = service.engine.call(fn)
        try:
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), CALL_TIMEOUT_S)
        except PipelineError as exc:
            raise HTTPException(503, str(exc)) from None
        except asyncio.TimeoutError:
            if future.cancel():           # not begun: it never will be
                raise HTTPException(503, "the pipeline did not answer; nothing was changed") from None
            future.add_done_callback(lambda done: late(done.result()) if done.exception() is None else None)
            raise HTTPException(503, "the pipeline did not answer in time; the change goes on (see GET /streams)") \
                from None

    @app.get("/streams", summary="The open streams: their entries and figures")
    async def list_streams() -> list[dict]:
        return [service.describe(name) for name in list(service.streams.entries)]

    @app.post("/streams", status_code=201, summary="Open a stream: the keys of a [[sources]] entry",
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": SourceConfig.model_json_schema()}}}})
    async def add_stream(request: Request) -> dict:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/json":    # a cross-site form or text/plain POST gets no say (CORS preflight)
            raise HTTPException(415, f"the body must be application/json, not {kind or 'untyped'}")
        try:
            body = json.loads(await request.body())
        except (ValueError, RecursionError) as exc:
            raise HTTPException(422, f"the body is not JSON: {exc}") from None
        async with changing:
            entry = service.check_entry(body)            # 422 / 403 / 409, one line
            try:
                if service.life_left <= 0:
                    name = await asyncio.to_thread(service.recycle, entry)
                else:
                    name = await in_engine(lambda pipe: pipe.add_source(**entry),
                                           late=lambda added: service.streams.put({**entry, "name": added}))
            except ConfigError as exc:
                raise HTTPException(409 if "no room" in str(exc) or "taken" in str(exc) else 422, str(exc)) from None
            service.streams.put({**entry, "name": name})
        return service.describe(name)

    @app.get("/streams/{name}", summary="One open stream: its entry and figures")
    async def get_stream(name: str) -> dict:
        service.require(name)
        return service.describe(name)

    @app.delete("/streams/{name}", summary="Close a stream: what it has read still comes out, then it ends")
    async def remove_stream(name: str) -> dict:
        async with changing:
            service.require(name)
            try:
                await in_engine(lambda pipe: pipe.remove_source(name), late=lambda _: service.forget(name))
            except ConfigError as exc:
                raise HTTPException(404, str(exc)) from None
            service.forget(name)
        return {"name": name, "removed": True}

    @app.get("/status", summary="The run's snapshot (what report.json holds), and the live view's figures")
    async def status() -> dict:
        return service.status()

    @app.get("/healthz", summary="200 while the process is alive")
    async def healthz() -> dict:
        return {"status": "alive"}

    @app.get("/readyz", summary="200 when every stage is up and no stream is failing, else 503 and why")
    async def readyz() -> JSONResponse:
        problem = service.not_ready()
        return JSONResponse({"status": "not ready", "reason": problem} if problem else {"status": "ready"},
                            status_code=503 if problem else 200)

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/streams/{name}/video.mjpg", summary="The stream's annotated frames as MJPEG, while watched",
             response_class=StreamingResponse)
    async def video(name: str) -> StreamingResponse:
        service.require(name)
        live = service.live
        if live is None:
            raise HTTPException(404, "the live view is off ([serve] view_fps = 0)")

        async def parts() -> AsyncIterator[bytes]:
            async for jpeg in live.frames(name):
                yield mjpeg_part(jpeg)

        return StreamingResponse(parts(), media_type=f"multipart/x-mixed-replace; boundary={BOUNDARY}",
                                 headers={"Cache-Control": "no-store"})

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    return app
