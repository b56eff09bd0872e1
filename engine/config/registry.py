"""The model registry: bundled and user entries by name (or by file), and a config's model section filled from them.
"""
from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from engine.config.explain import explain
from engine.config.options import MODEL_SUFFIXES
from engine.config.schema import ADAPTERS, ModelConfig, PreprocessConfig, RunConfig
from engine.config.tomlfile import read_toml
from engine.core import paths
from engine.core.errors import ConfigError, ModelError


def read_labels(path: Path) -> list[str]:
    """A labels file: one label per line (line i = class i); in a ``.tsv`` table the label is each line's
    last tab-separated field (the others say where it comes from: a COCO id, an ImageNet synset)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.rsplit("\t", 1)[-1] for line in lines] if path.suffix.lower() == ".tsv" else lines


def load_registry(path: Path | None = None) -> dict[str, dict]:
    """A registry file as ``{name: entry}`` (none there: empty); without ``path``, the model
    registry: the bundled ``models/models.toml`` with the user's (``OVSTREAM_HOME``) over it."""
    if path is not None:
        return read_toml(path) if path.exists() else {}
    return {name: entry for file in paths.registries() for name, entry in load_registry(file).items()}


def find_model(name: str) -> tuple[dict, Path] | None:
    """The registry entry of ``name`` and the registry file it comes from (the user's first)."""
    for file in reversed(paths.registries()):
        entry = load_registry(file).get(name)
        if entry is not None:
            return entry, file
    return None



ModelDetector = Callable[[Path], dict[str, Any]]
"""A model file → a registry-like entry (adapter, preprocess, params, …) read from the file itself,
or a :class:`ModelError` (one line). The engine's is :func:`engine.model.detect.detect_model`; the
config layer takes it as a parameter because it sits below engine.model (see that module)."""


def find_model_file(path: Path) -> tuple[str, dict, Path] | None:
    """The registry entry (name, entry, registry file; the user's first) whose model file is ``path``:
    the same file, else one with the same content (sha256; an IR's .bin too), e.g. a copy."""
    if not path.is_file():
        return None
    candidates = []
    for registry in reversed(paths.registries()):
        for name, entry in load_registry(registry).items():
            if isinstance(entry, dict) and isinstance(entry.get("file"), str) and entry["file"]:
                file = paths.resolve_model_file(entry["file"], registry.parent)
                if file.is_file():
                    if os.path.samefile(file, path):
                        return name, entry, registry
                    candidates.append((file, name, entry, registry))
    size, digest = path.stat().st_size, None
    for file, name, entry, registry in candidates:
        if file.stat().st_size == size:
            digest = digest or _sha256(path)
            if _sha256(file) == digest:
                return name, entry, registry
    return None


def _sha256(path: Path) -> str:
    """A model file's sha256; an IR .xml's includes its .bin (same topology, other weights: another model)."""
    h = hashlib.sha256()
    for part in (path, path.with_suffix(".bin")) if path.suffix == ".xml" else (path,):
        if part.is_file():
            with open(part, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()


def file_model_name(path: Path) -> str:
    """A model name for a file the registry does not know: its stem, registry-safe."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", path.stem).strip("_") or "model"


def model_from_file(overrides: dict | None) -> bool:
    """Whether ``overrides`` (the command line's, a Pipeline's) name the model by a file alone
    (``--model FILE``): then the config's model name does not apply (see :func:`resolve_model`)."""
    model = (overrides or {}).get("model")
    return isinstance(model, dict) and bool(model.get("path")) and "name" not in model


def resolve_model(cfg: RunConfig, detect: ModelDetector | None = None, *, by_file: bool = False) -> RunConfig:
    """Fill the model section from the registry and check the model file and adapter exist.

    Keys the config sets (also single ``[model.preprocess]`` keys) win over the registry entry's.
    A registry entry's file and labels are relative to its registry's folder (or bundled resources).

    ``by_file`` (``--model FILE``): the model starts from its file, not from the config's name: the
    registry entry of the same file (:func:`find_model_file`) when there is one, else, without an
    adapter, what ``detect`` reads from the file (no ``detect``: one line asking for ``--adapter``).
    """
    model = cfg.model
    if by_file:
        same = find_model_file(paths.resolve(model.path))
        model.name = same[0] if same else file_model_name(Path(model.path))
        found: tuple[dict, Path] | None = (same[1], same[2]) if same else None
    else:
        found = find_model(model.name)
    if found is None and not model.path:
        known = ", ".join(load_registry()) or "none"
        raise ModelError(f"model '{model.name}' is not in the model registry ({paths.bundled(paths.REGISTRY)}, "
                         f"{paths.user_registry()}; known: {known}); set [model] path to a file")
    if found is not None:
        entry, registry = dict(found[0]), found[1]
        file = entry.pop("file", "")
        merged = RunConfig.from_dict({"model": {**entry, "name": model.name}}, origin=str(registry)).model
        if isinstance(merged.labels, str) and merged.labels:
            merged.labels = str(paths.resolve(merged.labels, registry.parent))
        searched = not model.path
        if searched:
            model.path = str(paths.resolve_model_file(file, registry.parent))
        same_adapter = model.adapter in ("", merged.adapter)
        model.adapter = model.adapter or merged.adapter
        model.labels = model.labels or merged.labels
        model.description = model.description or merged.description
        given = model.preprocess.model_dump(include=model.preprocess.model_fields_set)
        try:
            model.preprocess = PreprocessConfig.model_validate({**merged.preprocess.model_dump(), **given})
        except ValidationError as exc:
            raise ConfigError(explain(exc, PreprocessConfig, {**merged.preprocess.model_dump(), **given},
                                      f"model '{model.name}'").replace("top level", "[model.preprocess]")) \
                from None
        if same_adapter:                    # another adapter's parameters would not apply
            model.params = {**merged.params, **model.params}
    else:
        searched = False
        model.path = str(paths.resolve(model.path))
    path = Path(model.path)
    if not path.exists():
        where = f" (nor in the model search path: {', '.join(str(p) for p in paths.model_search_path())}; " \
            f"model '{model.name}' is not bundled)" if searched else ""
        raise ModelError(f"model file not found: {path}{where}")
    if path.is_file() and path.suffix not in MODEL_SUFFIXES:
        raise ModelError(f"{path}: unsupported model format '{path.suffix}' "
                         f"(use {', '.join(MODEL_SUFFIXES)}, or `ovstream convert` first)")
    if found is None and not model.adapter:
        if detect is None:
            raise ModelError(f"{path}: give the model's output adapter (--adapter, or [model] adapter: one of "
                             f"{', '.join(ADAPTERS)}), or register the model")
        _merge_detected(model, detect(path), str(path))
    if model.adapter not in ADAPTERS:
        raise ModelError(f"model '{model.name}': unknown adapter '{model.adapter}' "
                         f"(known: {', '.join(ADAPTERS)})")
    if isinstance(model.labels, str):
        label_path = paths.resolve(model.labels)
        try:
            model.labels = read_labels(label_path)
        except (OSError, UnicodeDecodeError) as exc:
            raise ModelError(f"labels file {label_path}: {getattr(exc, 'strerror', None) or exc}") from None
    return cfg


def _merge_detected(model: ModelConfig, entry: dict[str, Any], origin: str) -> None:
    """What a detector read from the model file, under the keys the config sets."""
    detected = RunConfig.from_dict({"model": {**entry, "name": model.name}}, origin=origin).model
    model.adapter = detected.adapter
    model.labels = model.labels or detected.labels
    model.description = model.description or detected.description
    given = model.preprocess.model_dump(include=model.preprocess.model_fields_set)
    model.preprocess = PreprocessConfig.model_validate({**detected.preprocess.model_dump(), **given})
    model.params = {**detected.params, **model.params}
