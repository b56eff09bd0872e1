"""Loading a run's config: TOML read strictly, tables merged, relative paths anchored, streams and model resolved.
"""
from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any

from engine.config.registry import ModelDetector, model_from_file, resolve_model
from engine.config.schema import RunConfig
from engine.config.streams import is_live_uri, resolve_streams
from engine.config.tomlfile import merge_tables, read_toml
from engine.core import paths


def load_config(path: str | Path | None = None, overrides: dict | None = None,
                detect: ModelDetector | None = None) -> RunConfig:
    """Load a config file (default: the bundled configs/default.toml), apply overrides, resolve the
    model. Relative paths are relative to the config file's folder, those of ``overrides`` (the
    command line) to the working directory; either may name a bundled resource (``data/samples``,
    also ``path`` itself: ``configs/mnist.toml``). A bundled config writes to the working directory.

    ``overrides`` that name the model by a file alone (``--model FILE``) start it from that file:
    the config's model name is set aside, and ``detect`` (see :func:`resolve_model`) reads the
    adapter from a file the registry does not know."""
    cfg_path = paths.resolve(path) if path else paths.bundled(paths.DEFAULT_CONFIG)
    bundled = cfg_path.resolve().is_relative_to(paths.bundled_root().resolve())
    data = anchor_paths(read_toml(cfg_path), cfg_path.absolute().parent, writes_to_cwd=bundled)
    if overrides:
        RunConfig.from_dict(overrides, origin="command line")   # a bad option is named as such
        data = merge_tables(data, anchor_paths(overrides, Path.cwd()))
    cfg = RunConfig.from_dict(data, origin=str(cfg_path))
    resolve_streams(cfg)
    return resolve_model(cfg, detect, by_file=model_from_file(overrides))


CACHE_WORDS = ("auto", "off", "none", "false", "")     # [inference] cache_dir values that are not folders
_INPUT_PATHS = (("model", "path"), ("model", "labels"), ("inference", "cache_dir"),
                ("output", "mqtt", "ca"), ("output", "mqtt", "cert"), ("output", "mqtt", "key"),
                ("serve", "token_file"))


def anchor_paths(data: dict, base: Path, writes_to_cwd: bool = False) -> dict:
    """A copy of raw config ``data`` whose relative paths are made absolute: what is read (sources,
    model, labels, certificates) by :func:`engine.core.paths.resolve` from ``base``; the output folder
    from ``base`` too, or from the working directory for a bundled config (``writes_to_cwd``)."""
    data = merge_tables({}, data)                         # tables copied: the caller's stay as they were
    if isinstance(data.get("sources"), list):
        data["sources"] = [dict(entry) if isinstance(entry, dict) else entry for entry in data["sources"]]

    def table(*keys: str) -> dict | None:
        node: Any = data
        for key in keys:
            node = node.get(key) if isinstance(node, dict) else None
        return node if isinstance(node, dict) else None

    for *keys, key in _INPUT_PATHS:
        node = table(*keys)
        if key == "cache_dir" and node is not None and str(node.get(key, "")).strip().lower() in CACHE_WORDS:
            continue                                # auto / off: not a folder
        if node is not None and isinstance(node.get(key), str) and node[key]:
            node[key] = str(paths.resolve(node[key], base))
    serve = table("serve")
    if serve is not None and isinstance(serve.get("roots"), list):      # folders: from base, as they are named
        serve["roots"] = [str(base / Path(r).expanduser()) if isinstance(r, str) and r else r for r in serve["roots"]]
    output = table("output")
    if output is not None and isinstance(output.get("dir"), str) and output["dir"]:
        output["dir"] = str((Path.cwd() if writes_to_cwd else base) / Path(output["dir"]).expanduser())
    entries = [table("source")] + (data["sources"] if isinstance(data.get("sources"), list) else [])
    for entry in entries:
        if isinstance(entry, dict) and isinstance(entry.get("uri"), str):
            entry["uri"] = _anchor_uri(entry["uri"], base)
    return data


def _anchor_uri(uri: str, base: Path) -> str:
    """A source uri with its path made absolute (cameras and URLs as they are); a glob pattern is
    anchored where it matches (``base``, else the bundled resources)."""
    text = uri.strip()
    if not text or is_live_uri(text):
        return uri
    if glob.has_magic(text) and not os.path.lexists(base / Path(text).expanduser()):
        pattern = Path(text).expanduser()
        if pattern.is_absolute():
            return str(pattern)
        for root in (base, paths.bundled_root()):
            if glob.glob(str(root / pattern)):
                return str(root / pattern)
        return str(base / pattern)
    return str(paths.resolve(text, base))
