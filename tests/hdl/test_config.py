"""hdl/config.py: presets and validation."""

import pytest

from softnpu.hdl.config import PRESETS, NPUConfig, preset


def test_presets_exist_and_default_is_16x16():
    assert {"tiny", "default", "large"} <= set(PRESETS)
    assert (preset("default").rows, preset("default").cols) == (16, 16)
    assert preset("large").rows >= 32
    assert preset("tiny").macs_per_cycle < preset("default").macs_per_cycle


def test_unknown_preset_is_named():
    with pytest.raises(ValueError, match="unknown NPU config 'huge'"):
        preset("huge")


@pytest.mark.parametrize("changes, message", [
    (dict(rows=0), "rows must be positive"),
    (dict(rows=8, cols=16), "must be square"),
    (dict(rows=12, cols=12), "power of two"),
    (dict(inp_depth=1 << 17), "16-bit"),
    (dict(dram_max_burst=300), "256 beats"),
    (dict(clock_mhz=0), "clock_mhz"),
    (dict(acc_depth=1.5), "must be an int"),
    (dict(dram_bus_bytes=32), "whole number of bus beats"),
    (dict(dram_outstanding=0), "dram_outstanding must be positive"),
    (dict(dram_outstanding=65), "at most 64 bursts in flight"),
    (dict(dram_outstanding=True), "dram_outstanding must be an int"),
])
def test_validation_names_the_field(changes, message):
    with pytest.raises((ValueError, TypeError), match=message):
        NPUConfig(**changes)


def test_json_round_trip_and_entry_sizes():
    cfg = preset("tiny")
    assert NPUConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.entry_bytes("wgt") == cfg.rows * cfg.cols
    assert cfg.entry_bytes("acc") == 4 * cfg.rows
    with pytest.raises(ValueError, match="unknown NPUConfig fields"):
        NPUConfig.from_dict({"rows": 4, "bogus": 1})
