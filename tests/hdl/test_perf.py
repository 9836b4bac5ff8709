"""hdl/perf.py on Amaranth's simulator: each counter counts its event only while running (the DRAM
counters by bus bytes per beat), a start zeroes counters and trace, a marker snapshots the marker
id and the counters' low words into the next trace entry until the trace is full."""

import itertools

from amaranth.hdl import Value

from softnpu.hdl.config import preset
from softnpu.hdl.csr_map import COUNTERS
from softnpu.hdl.perf import BEAT_COUNTERS, PerfCounters
from tests.hdl.bfm import simulate

CFG = preset("tiny").replace(name="perf-test", trace_depth=4)
# a different on/off pattern per counter, so a crossed wire shows
PATTERNS = {name: tuple((i + 1) >> b & 1 for b in range(4)) + (1,) for i, name in enumerate(COUNTERS)}


def test_counters_count_events_while_running_and_clear_on_start():
    dut = PerfCounters(CFG)
    got = {}
    cycles, idle = 37, 5

    async def bench(ctx):
        ctx.set(dut.clear, 1)
        await ctx.tick()
        ctx.set(dut.clear, 0)
        streams = {name: itertools.cycle(p) for name, p in PATTERNS.items()}
        want = dict.fromkeys(COUNTERS, 0)
        for cycle in range(cycles + idle):
            running = cycle < cycles
            ctx.set(dut.running, running)
            for name in COUNTERS:
                event = next(streams[name])
                ctx.set(getattr(dut.events, name), event)
                if running:
                    want[name] += event * (CFG.dram_bus_bytes if name in BEAT_COUNTERS else 1)
            await ctx.tick()
        got["counters"] = dict(zip(COUNTERS, ctx.get(dut.counters), strict=True))
        got["want"] = want
        ctx.set(dut.clear, 1)
        await ctx.tick()
        got["cleared"] = list(ctx.get(dut.counters))

    simulate(dut, bench)
    assert got["counters"] == got["want"]
    assert all(v > 0 for v in got["want"].values())
    assert got["cleared"] == [0] * len(COUNTERS)


def test_markers_snapshot_until_the_trace_is_full():
    dut = PerfCounters(CFG)
    got = {"entries": []}
    markers = {3: 0x11, 4: 0x22, 9: 0xBEEF, 12: 0x44, 15: 0x55, 20: 0x66}     # cycle -> id

    async def bench(ctx):
        ctx.set(dut.clear, 1)
        await ctx.tick()
        ctx.set(dut.clear, 0)
        ctx.set(dut.running, 1)
        ctx.set(dut.events.cycles, 1)
        snapshots = []
        for cycle in range(24):
            ctx.set(dut.marker, cycle in markers)
            ctx.set(dut.marker_id, markers.get(cycle, 0x77))
            if cycle in markers:
                snapshots.append((markers[cycle], ctx.get(dut.counters)[0]))
            await ctx.tick()
        ctx.set(dut.marker, 0)
        got["count"] = ctx.get(dut.trace_count)
        got["snapshots"] = snapshots
        for e in range(CFG.trace_depth):
            ctx.set(dut.trace_addr, e)
            await ctx.tick()
            entry = ctx.get(Value.cast(dut.trace_data))
            got["entries"].append([entry & 0xFFFF_FFFF, entry >> 32 & 0xFFFF_FFFF])    # id, cycles

    simulate(dut, bench)
    assert got["count"] == CFG.trace_depth, "a full trace takes no more entries"
    assert got["entries"] == [[marker, cycles] for marker, cycles in got["snapshots"][:CFG.trace_depth]]
