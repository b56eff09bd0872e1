"""The stage context: everything the supervisor tells a stage process at start, as JSON.

The supervisor (:mod:`engine.control.launch`) writes it; each stage (``workers/``) reads it.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, fields
from typing import Any

from engine.config import RunConfig
from engine.protocol.ledger import FrameLedger
from engine.protocol.shm import PoolSpec


@dataclass(frozen=True)
class ModelInput:
    """What the model takes: frames of ``height × width``, ``batch`` of them per request."""

    height: int = 0
    width: int = 0
    batch: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"height": self.height, "width": self.width, "batch": self.batch}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelInput:
        return cls(int(data.get("height", 0)), int(data.get("width", 0)), int(data.get("batch", 0)))


@dataclass
class StageContext:
    """Everything a stage process is told at start."""

    role: str
    name: str
    generation: int
    endpoints: dict[str, str]
    pools: dict[str, PoolSpec]
    config: RunConfig
    input: ModelInput = field(default_factory=ModelInput)
    device: str = ""
    completed: dict[str, list[list[int]]] = field(default_factory=dict)  # stream → id ranges [a, b) done
    supervisor_pid: int = 0
    layout: dict = field(default_factory=dict)       # engine.io.streams.Layout.to_dict()
    epoch: int = 0                                    # this instance's restart count (decoders)
    resume: dict[str, int] = field(default_factory=dict)   # live stream → first frame id to use
    replay_from: dict[str, int] = field(default_factory=dict)  # postprocessor: stream → first frame id to publish again
    api_from: dict[str, int] = field(default_factory=dict)     # … and to hand a library pipeline's iterator again
    log_level: int = logging.INFO                     # of the stage's log file
    log_file: str = ""                                # stdout and stderr go there ("": left as they are)
    run_id: str = ""                                  # names the pools a stage creates itself

    def to_json(self) -> str:
        """Every field by name (the typed ones as plain data): what :meth:`from_json` reads back."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data.update(pools={k: v.to_dict() for k, v in self.pools.items()}, config=self.config.to_dict(),
                    input=self.input.to_dict())
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> StageContext:
        data = json.loads(text)
        data["pools"] = {k: PoolSpec(**v) for k, v in data["pools"].items()}
        data["config"] = RunConfig.from_dict(data["config"], origin="stage context")
        data["input"] = ModelInput.from_dict(data.get("input", {}))
        return cls(**data)

    def completed_ids(self, stream: int) -> FrameLedger:
        """Frame ids of ``stream`` already written (skipped on resume), as compact as the ledger."""
        return FrameLedger.from_ranges(self.completed.get(str(stream), []))
