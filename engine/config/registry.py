"""The model registry: bundled and user entries by name, and a config's model section filled from them.
"""
from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from engine.config.explain import explain
from engine.config.options import MODEL_SUFFIXES
from engine.config.schema import ADAPTERS, PreprocessConfig, RunConfig
from engine.config.tomlfile import read_toml
from engine.core import paths
from engine.core.errors import ConfigError, ModelError


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



def resolve_model(cfg: RunConfig) -> RunConfig:
    """Fill the model section from the registry and check the model file and adapter exist.

    Keys the config sets (also single ``[model.preprocess]`` keys) win over the registry entry's.
    A registry entry's file and labels are relative to its registry's folder (or bundled resources).
    """
    model = cfg.model
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
    if model.adapter not in ADAPTERS:
        raise ModelError(f"model '{model.name}': unknown adapter '{model.adapter}' "
                         f"(known: {', '.join(ADAPTERS)})")
    if isinstance(model.labels, str):
        label_path = paths.resolve(model.labels)
        try:
            model.labels = label_path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ModelError(f"labels file {label_path}: {getattr(exc, 'strerror', None) or exc}") from None
    return cfg
