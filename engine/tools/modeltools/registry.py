"""Writes entries into the model registry (models/models.toml), leaving the rest of the file as it is.

``tomllib`` only reads TOML, so an entry is rendered here (strings, numbers, booleans, lists, and
one level of sub-tables such as ``[NAME.preprocess]``) and spliced into the text: the entry's old
block, if any, is replaced in place; a new one is appended. Comments and other entries survive.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from engine.config import (
    ADAPTERS,
    RunConfig,
    tomllib,  # the stdlib module, or tomli on Python 3.10
)
from engine.core import paths
from engine.core.errors import ConfigError

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_HEADER = re.compile(r"^\s*\[\s*([^\[\]]+?)\s*\]\s*(#.*)?$")


def file_value(path: Path, registry: Path) -> str:
    """How ``registry`` names a model file: relative to the registry's folder when inside it,
    else as :func:`engine.core.paths.display` (``models/…`` for a bundled file, else absolute)."""
    path, base = path.resolve(), registry.resolve().parent
    return path.relative_to(base).as_posix() if path.is_relative_to(base) else paths.display(path)


def labels_value(text: str) -> list[str] | str:
    """``--labels``: an existing file (kept as ``data/…`` when bundled, else absolute) or ``a,b,c``."""
    candidate = paths.resolve(text)
    if candidate.is_file():
        return paths.display(candidate.resolve())
    return [item.strip() for item in text.split(",") if item.strip()]


def register_model(name: str, entry: dict[str, Any], registry: Path | None = None) -> None:
    """Add or replace ``[name]`` in the registry with ``entry`` (keys of :class:`ModelConfig`
    plus ``file``) of ``registry`` (default: the user's, in ``OVSTREAM_HOME``). The entry is
    validated first; the file is rewritten atomically."""
    registry = registry or paths.user_registry()
    if not _BARE_KEY.match(name):
        raise ConfigError(f"model name '{name}' must use only letters, digits, '_' and '-'")
    check_entry(name, entry, registry)
    text = registry.read_text(encoding="utf-8") if registry.exists() else ""
    new_text = _splice(text, name, render_entry(name, entry))
    try:
        tomllib.loads(new_text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{registry}: would not stay valid TOML after registering '{name}': {exc}") from None
    registry.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".models.", suffix=".toml", dir=registry.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(new_text)
    os.replace(tmp, registry)


def check_entry(name: str, entry: dict[str, Any], registry: Path) -> None:
    """Raise :class:`ConfigError` unless ``entry`` reads back as a valid model section."""
    fields = {key: value for key, value in entry.items() if key != "file"}
    model = RunConfig.from_dict({"model": {**fields, "name": name}}, origin=str(registry)).model
    if model.adapter not in ADAPTERS:
        raise ConfigError(f"model '{name}': adapter must be one of {', '.join(ADAPTERS)}, not '{model.adapter}'")
    if not entry.get("file"):
        raise ConfigError(f"model '{name}': the registry entry needs a file")


def render_entry(name: str, entry: dict[str, Any]) -> str:
    """TOML text of one registry entry: plain keys first, then one sub-table per dict value."""
    lines = [f"[{name}]"]
    tables = {key: value for key, value in entry.items() if isinstance(value, dict)}
    lines += [f"{_key(key)} = {_value(value)}" for key, value in entry.items() if key not in tables]
    for key, table in tables.items():
        if table:
            lines.append(f"[{name}.{_key(key)}]")
            lines += [f"{_key(k)} = {_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def _key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + "}"
    raise ConfigError(f"cannot write {type(value).__name__} {value!r} into the registry")


def _splice(text: str, name: str, block: str) -> str:
    """Replace the lines of entry ``name`` (its table and sub-tables) with ``block``, or append it."""
    lines = text.splitlines(keepends=True)
    owner: list[str | None] = []          # which entry each line belongs to (None: before any table)
    current: str | None = None
    for line in lines:
        match = _HEADER.match(line)
        if match:
            current = _first_key(match.group(1))
        owner.append(current)
    mine = [i for i, who in enumerate(owner) if who == name]
    if not mine:
        return text.rstrip("\n") + "\n\n" + block if text.strip() else block
    start, end = mine[0], mine[-1] + 1
    while end > start + 1 and (not lines[end - 1].strip() or lines[end - 1].lstrip().startswith("#")):
        end -= 1                          # comments and blank lines before the next entry stay
    kept = [line for i, line in enumerate(lines) if owner[i] != name or not start <= i < end]
    return "".join(kept[:start]) + block + "".join(kept[start:])


def _first_key(header: str) -> str:
    head = header.strip()
    if head.startswith('"'):
        return json.loads(head[: head.index('"', 1) + 1])
    return head.split(".", 1)[0].strip()

