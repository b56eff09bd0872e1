"""The service's stream list, kept in ``<output dir>/streams.json`` so that a restarted service resumes its
cameras: the ``[[sources]]`` entries as they were added (each with its name), rewritten whole on every
change (written to a temporary file, then renamed over the last one). It holds the uris as given, passwords
included, so it is readable by its owner only."""
from __future__ import annotations

import json
import os
from pathlib import Path

from engine.core.errors import ConfigError

FILE = "streams.json"


class StreamsState:
    """The open streams' entries, by name, in the order they were added; ``path`` None: not kept."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.entries: dict[str, dict] = {}

    def load(self) -> list[dict] | None:
        """The entries saved by the last service (None: no file, or not kept)."""
        if self.path is None or not self.path.exists():
            return None
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{self.path}: cannot read the saved stream list ({exc}); fix or remove it") from None
        if not (isinstance(data, dict) and isinstance(data.get("streams"), list)
                and all(isinstance(e, dict) and isinstance(e.get("name"), str) for e in data["streams"])):
            raise ConfigError(f"{self.path}: not a stream list (expected {{\"streams\": [{{\"name\": ...}}]}}); "
                              "fix or remove it")
        return list(data["streams"])

    def put_all(self) -> None:
        """Save the entries as they are now."""
        self._save()

    def put(self, entry: dict) -> None:
        self.entries[entry["name"]] = entry
        self._save()

    def drop(self, name: str) -> None:
        self.entries.pop(name, None)
        self._save()

    def _save(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({"streams": list(self.entries.values())}, fh, indent=1)
        os.replace(tmp, self.path)
