"""TOML files read strictly (one-line errors naming the file) and tables merged key by key."""
from __future__ import annotations

import json
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from engine.core.errors import ConfigError


def read_toml(path: Path) -> dict:
    """Parse a TOML file (or a ``.json`` one: the resolved form a cluster driver hands its
    engines); a missing, binary, non-UTF-8 or malformed file is a :class:`ConfigError`."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a config file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in raw[:4096]:
        kind = "UTF-16" if raw.startswith((b"\xff\xfe", b"\xfe\xff")) else "binary (NUL bytes)"
        raise ConfigError(f"{path}: not a TOML text file ({kind}); save it as UTF-8")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}: {raw[exc.start:exc.start + 1]!r}); "
                          f"save it as UTF-8") from None
    if Path(path).suffix == ".json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"{path}: not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a JSON config must be an object")
        return data
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def merge_tables(base: dict, override: dict) -> dict:
    """``override`` over ``base``, tables merged key by key (neither is changed)."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_tables(out[key], value)
        else:
            out[key] = value
    return out
