"""The model cache: a model read, checked and prepared once, then loaded in milliseconds.

Reading a model is the slow part of a start (the SSD's ``detect.tflite`` through the TFLite
frontend and its conversion extension: ~0.6 s, paid by the supervisor's checks and again by
every inference worker), then compiling it (~0.4 s). The first run stores, per model file and
preparation (file contents, ``[model]`` params and preprocessing, batch, OpenVINO version, the
engine's own reading code), the prepared model as OpenVINO IR and the facts the checks need
(input, output shapes). Later runs check from the facts and compile the IR by path with
OpenVINO's ``CACHE_DIR`` set, which loads the compiled blob instead of compiling.

``[inference] cache_dir``: ``"auto"`` (the default) is ``$XDG_CACHE_HOME/ovstream`` or
``~/.cache/ovstream``; ``"off"`` (or ``""``) disables it; anything else is the folder. A cache
that cannot be written is skipped with one warning: it never stops a run.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from engine.config import CACHE_WORDS, ModelConfig
from engine.model.runtime import ov

log = logging.getLogger(__name__)

OFF = tuple(word for word in CACHE_WORDS if word != "auto")
_CODE = ("prepare.py", "tflite_ops.py")        # the engine's reading and preparation: part of every key
FACT_FIELDS = {"name", "layout", "height", "width", "channels"}     # engine.model.prepare.InputInfo


def cache_root(setting: str) -> Path | None:
    """The cache folder for ``[inference] cache_dir``, or None when caching is off."""
    if setting.strip().lower() in OFF:
        return None
    if setting.strip().lower() == "auto":
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        return Path(base) / "ovstream"
    return Path(setting).expanduser()


def writable(root: Path | None) -> Path | None:
    """``root`` created if needed, or None (with a warning) when it cannot be written."""
    if root is None:
        return None
    try:
        root.mkdir(parents=True, exist_ok=True)
        if os.access(root, os.W_OK | os.X_OK):
            return root
    except OSError:
        pass
    log.warning("model cache %s is not writable: starting without it", root)
    return None


WEIGHTS = {".xml": ".bin", ".pdmodel": ".pdiparams"}     # graph file → the weights file beside it


def _neighbours(path: Path) -> bytes:
    """Name, size and modification time of the other files beside an ONNX model: its external
    data, which ONNX names freely (read by metadata, not content: the folder may be large)."""
    if path.suffix.lower() != ".onnx" or not path.parent.is_dir():
        return b""
    stats = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in path.parent.iterdir()
                   if p.is_file() and p != path)
    return json.dumps(stats).encode()


def entry_key(cfg: ModelConfig, batch: int) -> str:
    """What the prepared model depends on, hashed: file contents (and its weights file; an ONNX
    model's neighbours by size and time), params,
    preprocessing, batch, OpenVINO version and the engine's reading code."""
    h = hashlib.sha256()
    path = Path(cfg.path)
    weights = path.with_suffix(WEIGHTS[path.suffix.lower()]) if path.suffix.lower() in WEIGHTS else None
    for part in (path, weights):
        if part is not None and part.exists():
            with open(part, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    h.update(_neighbours(path))
    here = Path(__file__).parent
    for name in _CODE:
        h.update((here / name).read_bytes())
    h.update(json.dumps({"params": cfg.params, "preprocess": cfg.preprocess.model_dump(), "batch": batch,
                         "openvino": ov.__version__}, sort_keys=True, default=str).encode())
    return h.hexdigest()[:32]


class ModelCache:
    """Prepared models as IR plus their facts, one folder per :func:`entry_key`."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def compiled_dir(self) -> Path:
        """OpenVINO's own CACHE_DIR (compiled blobs) inside the cache."""
        return self.root / "compiled"

    def _entry(self, cfg: ModelConfig, batch: int) -> Path:
        return self.root / "models" / entry_key(cfg, batch)

    def lookup(self, cfg: ModelConfig, batch: int) -> tuple[Path, dict] | None:
        """(prepared IR path, facts) of a complete entry, or None."""
        entry = self._entry(cfg, batch)
        xml, facts = entry / "model.xml", entry / "facts.json"
        try:
            if xml.exists() and (entry / "model.bin").exists():
                found = json.loads(facts.read_text(encoding="utf-8"))
                if isinstance(found, dict) and isinstance(found.get("outputs"), dict) and \
                        isinstance(found.get("input"), dict) and set(found["input"]) == FACT_FIELDS:
                    return xml, found
        except (OSError, ValueError):
            pass
        return None

    def discard(self, cfg: ModelConfig, batch: int) -> None:
        """Remove a damaged entry, so the next :meth:`store` writes it again."""
        shutil.rmtree(self._entry(cfg, batch), ignore_errors=True)

    def store(self, cfg: ModelConfig, batch: int, prepared: ov.Model, facts: dict) -> Path | None:
        """Write an entry (atomically: a temporary folder renamed into place); None on failure."""
        entry = self._entry(cfg, batch)
        if (entry / "facts.json").exists():
            return entry / "model.xml"
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=entry.parent))
            ov.save_model(prepared, str(tmp / "model.xml"), compress_to_fp16=False)
            (tmp / "facts.json").write_text(json.dumps(facts), encoding="utf-8")
            try:
                tmp.rename(entry)
            except OSError:             # another run stored it first
                shutil.rmtree(tmp, ignore_errors=True)
            return entry / "model.xml"
        except Exception as exc:  # a full disk, permissions, a model OpenVINO cannot serialize: run without
            log.warning("cannot store the prepared model in %s: %s", entry.parent, exc)
            shutil.rmtree(locals().get("tmp", entry.parent / ".none"), ignore_errors=True)
            return None
