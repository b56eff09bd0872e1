"""Streams of a config: one per [[sources]] entry (a glob: one per file), each with a unique name.
"""
from __future__ import annotations

import glob
import os
import re
from pathlib import Path

from engine.config.schema import RunConfig, SourceConfig
from engine.core.errors import ConfigError

STREAM_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://")


def is_live_uri(uri: str) -> bool:
    """A camera index, /dev/video* device or stream URL (as opposed to a file, folder or glob): the one
    rule for "is this uri live"."""
    uri = uri.strip()
    return bool(re.fullmatch(r"[0-9]+", uri)) or bool(re.fullmatch(r"/dev/video[0-9]+", uri)) \
        or uri.lower().startswith(STREAM_SCHEMES)


_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def redact_uri(uri: str) -> str:
    """``uri`` with the password of its user info hidden (``rtsp://user:***@host/...``): how a uri is
    logged and shown. The user info ends at the last ``@`` (a password may hold ``/`` or ``@``, as
    cameras' pasted passwords do and FFmpeg accepts)."""
    scheme = _SCHEME.match(uri)
    body = uri[scheme.end():] if scheme else ""
    query = min((i for i in (body.find("?"), body.find("#")) if i >= 0), default=len(body))
    if scheme is None or "@" not in body[:query]:
        return uri
    userinfo, _, host = body[:query].rpartition("@")
    user, colon, _ = userinfo.partition(":")
    return f"{scheme.group(0)}{user}:***@{host}{body[query:]}" if colon else uri


_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def stream_name(uri: str) -> str:
    """A short readable name for a stream: a file's stem, a folder's name, ``cam0`` for camera 0,
    the last path part (else the host) of a URL; only ``[A-Za-z0-9._-]``."""
    uri = uri.strip()
    if uri.isdigit():
        return f"cam{uri}"
    if "://" in uri:
        rest = uri.split("://", 1)[1].split("?")[0]
        host, _, path = rest.partition("/")
        parts = [p for p in path.split("/") if p]
        raw = Path(parts[-1]).stem if parts else host.split("@")[-1].split(":")[0]
    else:
        file = Path(uri.rstrip("/"))
        raw = file.stem if file.suffix else file.name
    return _NAME_UNSAFE.sub("_", raw).strip("_.") or "stream"


def _expand(entry: SourceConfig) -> list[SourceConfig]:
    """A uri with glob characters that names no file becomes one stream per match."""
    uri = entry.uri.strip()
    if is_live_uri(uri) or not glob.has_magic(uri) or os.path.lexists(uri):
        return [entry]
    matches = sorted(glob.glob(os.path.expanduser(uri)))
    if not matches:
        raise ConfigError(f"[[sources]] uri '{uri}': the pattern matches no file")
    return [entry.model_copy(update={"uri": m, "name": ""}) for m in matches]


def resolve_streams(cfg: RunConfig) -> RunConfig:
    """Fill ``cfg.sources``: ``[[sources]]`` (globs expanded), else the one ``[source]``; every
    stream gets a unique name (``clip``, ``clip-2``, ...)."""
    entries = [s for entry in cfg.streams for s in _expand(entry)]
    seen: set[str] = set()
    for entry in entries:
        if entry.name and (_NAME_UNSAFE.search(entry.name) or entry.name in seen):
            raise ConfigError(f"[[sources]] name '{entry.name}': "
                              + ("used twice" if entry.name in seen else "use only letters, digits, '.', '_', '-'"))
        seen.add(entry.name)
    taken = {e.name for e in entries if e.name}
    for entry in entries:
        if not entry.name:
            base = name = stream_name(entry.uri)
            n = 1
            while name in taken:
                n += 1
                name = f"{base}-{n}"
            entry.name = name
            taken.add(name)
    cfg.sources = entries
    return cfg
