"""engine/control/pools.py: the sizes of a run's slot pools, refused when memory cannot hold them."""
from __future__ import annotations

import pytest

from engine.config import load_config
from engine.control.pools import PoolSizes, check_memory, input_slots, pool_sizes, slots_per_stream
from engine.core.errors import ConfigError


def test_pool_sizes_follow_the_config_and_annotation_holds_more_raw_slots():
    cfg = load_config(overrides={"sources": [{"uri": "data/samples"}] * 2, "pipeline": {"input_slots": 6}})
    assert input_slots(cfg) == 6 and slots_per_stream(cfg, batch=4) == max(3, cfg.pipeline.raw_slots // 2)
    drawn = load_config(overrides={"sources": [{"uri": "data/samples"}] * 2, "pipeline": {"input_slots": 6},
                                   "output": {"images": True}})
    assert slots_per_stream(drawn, batch=4) == max(3, cfg.pipeline.raw_slots // 2, -(-(6 * 4 + 4) // 2))
    sizes = pool_sizes(cfg, raw_slots=10, batch=4, frame_bytes=100)
    assert sizes == PoolSizes(cfg.pipeline.max_frame_width * cfg.pipeline.max_frame_height * 3, 10, 400, 6)


def test_pools_larger_than_half_the_memory_are_refused_in_one_line():
    check_memory(PoolSizes(1 << 20, 4, 1 << 20, 4))
    with pytest.raises(ConfigError, match="frame pools would need") as err:
        check_memory(PoolSizes(1 << 40, 1 << 10, 1, 1))
    assert "\n" not in str(err.value)
