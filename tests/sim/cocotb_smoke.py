"""cocotb tests of the smoke harness (tests/sim/smoke_top.sv): run by tests/sim/test_toolchain.py.

The clock runs in the simulator (``Clock(impl="gpi")``); Python sets the engine's arguments, pulses
``start`` and sleeps until ``irq`` rises, so it is not woken once per cycle. Memory is loaded and
checked in bulk through the DPI memory's numpy view.

Environment: ``SMOKE_BENCH_WORDS`` sizes ``bench_throughput`` (default 65536 words);
``SMOKE_REPORT`` names a JSON file the measuring tests add their figures to;
``SMOKE_HARNESS_CLOCK=1`` for a build with +define+SOFTNPU_HARNESS_CLOCK (no GPI clock);
``SMOKE_DELIBERATE_FAILURE=1`` enables a test that fails on purpose (to test error reporting).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, RisingEdge, with_timeout

from softnpu.sim.rtl.dpi_mem import DpiMemory, MemoryFault

LANES = 16  # bytes per bus word, as in smoke_top.sv
CLOCK_NS = 10


def affine_reference(x: np.ndarray, scale: int, bias: int) -> np.ndarray:
    return np.clip(x.astype(np.int32) * scale + bias, -128, 127).astype(np.int8)


def report(**figures) -> None:
    path = os.environ.get("SMOKE_REPORT")
    if not path:
        return
    p = Path(path)
    old = json.loads(p.read_text()) if p.is_file() else {}
    p.write_text(json.dumps({**old, **figures}, indent=2))


class TB:
    """The smoke harness: clock, reset, the DPI memory and one engine job at a time."""

    def __init__(self, dut):
        self.dut = dut
        self.mem = DpiMemory()
        self.log = dut._log

    async def reset(self) -> None:
        dut = self.dut
        if os.environ.get("SMOKE_HARNESS_CLOCK") != "1":  # else smoke_top makes its own
            Clock(dut.clk, CLOCK_NS, unit="ns", impl="gpi").start(start_high=False)
        dut.start.value = 0
        dut.rst.value = 1
        await ClockCycles(dut.core_clk, 2)
        dut.rst.value = 0
        self.mem.clear_stats()

    async def run_job(self, src: int, dst: int, count: int, scale: int, bias: int) -> int:
        """Run the engine once; return its busy cycles. Python sleeps until irq."""
        dut = self.dut
        dut.src.value, dut.dst.value, dut.count.value = src, dst, count
        dut.scale.value, dut.bias.value = scale, bias
        dut.start.value = 1
        await RisingEdge(dut.core_clk)
        dut.start.value = 0
        await with_timeout(RisingEdge(dut.irq), (count + 100) * CLOCK_NS, "ns")
        self.mem.check()
        return dut.cycles.value.to_unsigned()


@cocotb.test()
async def hdl_reads_python_writes_and_python_reads_hdl_writes(dut):
    tb = TB(dut)
    await tb.reset()
    rng = np.random.default_rng(1)
    words = 4096
    x = rng.integers(-128, 128, size=words * LANES, dtype=np.int8)
    src, dst = 0x1000, 0x20_0000
    tb.mem.fill(0x5A, dst, x.nbytes + 64)  # a guard band after the output
    tb.mem.write(src, x)
    for scale, bias in [(3, -7), (-128, 127), (1, 0)]:
        cycles = await tb.run_job(src, dst, words, scale, bias)
        y = tb.mem.read(dst, x.nbytes).view(np.int8)
        np.testing.assert_array_equal(y, affine_reference(x, scale, bias), err_msg=f"{scale=} {bias=}")
        assert cycles == words + 2, cycles  # one word per cycle + read latency + irq
    assert (tb.mem.read(dst + x.nbytes, 64) == 0x5A).all(), "the engine wrote past its output"
    assert tb.mem.lanes_read == tb.mem.lanes_written == 3 * words * LANES // 8


@cocotb.test()
async def zero_count_raises_irq_at_once(dut):
    tb = TB(dut)
    await tb.reset()
    assert await tb.run_job(0, 0x100, 0, 1, 0) == 1
    assert tb.mem.lanes_written == 0


@cocotb.test()
async def out_of_range_access_is_reported(dut):
    tb = TB(dut)
    await tb.reset()
    end = tb.mem.size
    report(mem_bytes=end)
    try:
        await tb.run_job(0, end - LANES, 2, 1, 0)  # the second word lands past the end
    except MemoryFault as e:
        assert f"{end:#x}" in str(e), e
    else:
        raise AssertionError("a write past the end of the DPI memory went unreported")


@cocotb.test()
async def bulk_copy_speed(dut):
    """Python <-> DPI memory copy rate (reported, not asserted: tests assert behaviour)."""
    tb = TB(dut)
    nbytes = 32 << 20
    buf = np.random.default_rng(2).integers(0, 256, size=nbytes, dtype=np.uint8)
    tb.mem.write(0, buf)  # first touch maps the pages; time the second copy
    t0 = time.perf_counter()
    for _ in range(4):
        tb.mem.write(0, buf)
    write_gbps = 4 * nbytes / (time.perf_counter() - t0) / 1e9
    back = np.empty_like(buf)
    tb.mem.read(0, nbytes, out=back)
    t0 = time.perf_counter()
    for _ in range(4):
        tb.mem.read(0, nbytes, out=back)
    read_gbps = 4 * nbytes / (time.perf_counter() - t0) / 1e9
    np.testing.assert_array_equal(back, buf)
    tb.log.info("bulk copy: Python -> memory %.2f GB/s, memory -> Python %.2f GB/s", write_gbps, read_gbps)
    report(bulk_write_gbps=round(write_gbps, 2), bulk_read_gbps=round(read_gbps, 2))


@cocotb.test()
async def bench_throughput(dut):
    """Simulated cycles per wall-clock second on one long job (reported, not asserted)."""
    tb = TB(dut)
    await tb.reset()
    words = int(os.environ.get("SMOKE_BENCH_WORDS", 65536))
    src, dst = 0, words * LANES
    x = np.random.default_rng(3).integers(-128, 128, size=words * LANES, dtype=np.int8)
    tb.mem.write(src, x)
    t0 = time.perf_counter()
    cycles = await tb.run_job(src, dst, words, -5, 9)
    wall = time.perf_counter() - t0
    np.testing.assert_array_equal(tb.mem.read(dst, x.nbytes).view(np.int8), affine_reference(x, -5, 9))
    tb.log.info("%d cycles in %.3f s: %.0f cycles/s", cycles, wall, cycles / wall)
    report(cycles=cycles, wall_s=round(wall, 3), cycles_per_s=round(cycles / wall))


@cocotb.test(skip=os.environ.get("SMOKE_DELIBERATE_FAILURE") != "1")
async def deliberate_failure(dut):
    await tb_reset_only(dut)
    assert dut.cycles.value.to_unsigned() == 12345, "deliberate failure: cycles is not 12345"


async def tb_reset_only(dut) -> None:
    await TB(dut).reset()
