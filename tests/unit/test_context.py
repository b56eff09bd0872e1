"""engine/protocol/context.py: the stage context's JSON, the model input typed."""
from __future__ import annotations

import json

from engine.config import load_config
from engine.protocol.context import ModelInput, StageContext
from engine.protocol.shm import PoolSpec


def test_model_input_round_trips_and_the_context_keeps_its_json_keys():
    model_input = ModelInput(height=300, width=400, batch=4)
    assert ModelInput.from_dict(model_input.to_dict()) == model_input
    ctx = StageContext(role="preprocessor", name="preprocessor", generation=2, endpoints={"control": "ipc:///x"},
                       pools={"raw": PoolSpec("/dev/shm/x", 16, 2)}, config=load_config(), input=model_input)
    data = json.loads(ctx.to_json())
    assert data["input"] == {"height": 300, "width": 400, "batch": 4}
    back = StageContext.from_json(ctx.to_json())
    assert back.input == model_input and back.input.batch == 4 and back.generation == 2
