"""What ``POST /streams`` may open: a stream URL of an allowed scheme, a camera if allowed, or a file
or folder under one of ``[serve] roots``, so the API cannot be used to read arbitrary files."""
from __future__ import annotations

import os
from pathlib import Path

from engine.config import ServeConfig, is_live_uri
from engine.core.errors import ConfigError


class UriRefused(ConfigError):
    """A uri the service's policy does not allow (HTTP 403)."""


def check_uri(uri: str, serve: ServeConfig) -> str:
    """``uri`` as the pipeline will open it (a file path made absolute and real), or
    :class:`UriRefused` with one line saying why not."""
    text = uri.strip()
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if scheme:
        if scheme not in serve.schemes:
            raise UriRefused(f"uri scheme '{scheme}' is not allowed (allowed: "
                             f"{', '.join(s for s in serve.schemes if s != 'device') or 'none'}; [serve] schemes)")
        return text
    if is_live_uri(text):                  # a camera index or /dev/video*
        if "device" not in serve.schemes:
            raise UriRefused("cameras of this machine are not allowed (add \"device\" to [serve] schemes)")
        return text
    if not serve.roots:
        raise UriRefused("file paths are not allowed: no folder is configured in [serve] roots")
    roots = [Path(os.path.realpath(Path(root).expanduser())) for root in serve.roots]
    path = Path(os.path.realpath(Path(text).expanduser()))
    if not _under(path, roots):
        raise UriRefused(f"uri {text}: file paths must be under [serve] roots")
    if path.is_dir():           # a folder's images are opened as they are named: no link may lead out
        for folder, dirs, files in os.walk(path):
            for name in (*dirs, *files):
                entry = Path(folder) / name
                if entry.is_symlink() and not _under(Path(os.path.realpath(entry)), roots):
                    raise UriRefused(f"uri {text}: {entry} links outside [serve] roots")
    return str(path)


def _under(path: Path, roots: list[Path]) -> bool:
    return any(path == root or root in path.parents for root in roots)
