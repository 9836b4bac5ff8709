"""hdl/timing.py's DMA model: a DMA pays dram_latency once and then streams a beat per cycle when
dram_outstanding bursts in flight cover a burst's time in flight; with one burst in flight every
burst pays the latency (what the RTL measured before dram_outstanding); in between, one wait per
dram_outstanding bursts.  The constants are the RTL's (tests/sim/test_rtl.py holds the whole
programs to it)."""

import pytest

from softnpu.hdl import timing
from softnpu.hdl.config import preset

DEFAULT = preset("default")


def test_streaming_pays_the_latency_once():
    rows, row_bytes = 16, 16 * DEFAULT.dram_bus_bytes * DEFAULT.dram_max_burst     # 16 rows of 256 beats
    beats = rows * row_bytes // DEFAULT.dram_bus_bytes
    cycles = timing.dma_cycles(DEFAULT, rows, row_bytes)
    assert beats + DEFAULT.dram_latency <= cycles <= beats + DEFAULT.dram_latency + 8


def test_one_burst_in_flight_pays_the_latency_per_burst():
    one = DEFAULT.replace(dram_outstanding=1)
    bursts, beats = 64, 64 * DEFAULT.dram_max_burst
    cycles = timing.dma_cycles(one, 4, beats // 4 * DEFAULT.dram_bus_bytes)
    assert cycles >= beats + bursts * DEFAULT.dram_latency


@pytest.mark.parametrize("write", [False, True])
def test_more_bursts_in_flight_never_cost_more(write):
    costs = [timing.dma_cycles(DEFAULT.replace(dram_outstanding=n), 8, 1000 * DEFAULT.dram_bus_bytes, write)
             for n in (1, 2, 3, 4, 8)]
    assert costs == sorted(costs, reverse=True)
    assert costs[-1] == costs[-2], "4 bursts of 16 beats already cover 32 cycles of latency"
