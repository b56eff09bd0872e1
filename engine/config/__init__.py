"""RunConfig: one run's settings, loaded from TOML and validated in one place, with one-line errors.

Every section is a pydantic model whose fields carry their type, range and finiteness; cross-field
rules are validators next to the fields they relate. A config file is validated strictly (no
``"4"`` for 4, no ``1`` for true, no NaN or inf), and every mistake becomes one
:class:`ConfigError` line naming the file, the section, the key, what is allowed and what was
given (with a "did you mean" for a near-miss key). The resolved config travels to every worker
process as JSON (``to_dict`` / ``from_dict``).

The package's modules: :mod:`~engine.config.schema` (the sections and their bounds),
:mod:`~engine.config.explain` (one line per mistake), :mod:`~engine.config.tomlfile` (strict TOML),
:mod:`~engine.config.loading` (a file plus overrides, paths anchored), :mod:`~engine.config.streams`
(stream names, globs, the live-uri rule), :mod:`~engine.config.registry` (the model registry) and
:mod:`~engine.config.options` (the command line's options as overrides). The names below are the
package's public face.
"""
from engine.config.explain import explain
from engine.config.loading import CACHE_WORDS, anchor_paths, load_config
from engine.config.options import MODEL_SUFFIXES
from engine.config.registry import (
    ModelDetector,
    find_model,
    find_model_file,
    load_registry,
    model_from_file,
    read_labels,
    resolve_model,
)
from engine.config.schema import (
                                  ADAPTERS,
                                  MAX_BATCH,
                                  MAX_FRAME_SIDE,
                                  MAX_NIREQ,
                                  MAX_SLOTS,
                                  MAX_STREAMS,
                                  ClusterConfig,
                                  DashboardConfig,
                                  InferenceConfig,
                                  LineConfig,
                                  MetricsConfig,
                                  ModelConfig,
                                  MqttConfig,
                                  OutputConfig,
                                  PipelineConfig,
                                  PreprocessConfig,
                                  RunConfig,
                                  Section,
                                  ServeConfig,
                                  SourceConfig,
                                  TrackingConfig,
                                  ZoneConfig,
                                  channels_of,
                                  check_classes,
)
from engine.config.streams import is_live_uri, redact_uri, resolve_streams, stream_name
from engine.config.tomlfile import merge_tables, read_toml, tomllib

__all__ = [
    "ADAPTERS", "CACHE_WORDS", "MAX_BATCH", "MAX_FRAME_SIDE", "MAX_NIREQ", "MAX_SLOTS", "MAX_STREAMS",
    "MODEL_SUFFIXES", "ClusterConfig", "DashboardConfig", "InferenceConfig", "LineConfig", "MetricsConfig",
    "ModelConfig", "ModelDetector", "MqttConfig", "OutputConfig", "PipelineConfig", "PreprocessConfig", "RunConfig",
    "Section", "ServeConfig", "SourceConfig", "TrackingConfig", "ZoneConfig", "anchor_paths", "channels_of",
    "check_classes", "explain", "find_model", "find_model_file", "is_live_uri", "load_config", "load_registry",
    "merge_tables", "model_from_file", "read_labels", "read_toml", "redact_uri", "resolve_model", "resolve_streams",
    "stream_name", "tomllib",
]
