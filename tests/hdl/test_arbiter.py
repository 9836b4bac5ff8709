"""hdl/arbiter.py on Amaranth's simulator: fetch and the load unit share the AXI read channels, the
address channel one burst at a time (each reader gets its own bursts' beats, none of the other's,
also when fetch's burst slips in between the load unit's bursts in flight), the load unit wins a
tie, a grant costs one cycle, and the store unit's write channels pass straight through."""

import pytest

from softnpu.hdl.arbiter import MemoryArbiter
from softnpu.hdl.axi import WRITE_CHANNELS
from softnpu.hdl.config import preset
from tests.hdl.bfm import STALLY, ReadMemory, Strobes, edge_where, simulate

CFG = preset("tiny")
BUS = CFG.dram_bus_bytes


def _reader(port, name, bursts, log, delay=0):
    async def bench(ctx):
        for _ in range(delay):
            await ctx.tick()
        for addr, beats in bursts:
            ctx.set(port.araddr, addr)
            ctx.set(port.arlen, beats - 1)
            ctx.set(port.arvalid, 1)
            await edge_where(ctx, port.arready)
            ctx.set(port.arvalid, 0)
            ctx.set(port.rready, 1)
            data = []
            while len(data) < beats:
                last, value = await edge_where(ctx, port.rvalid, port.rlast, port.rdata)
                data.append(value)
                assert last == (len(data) == beats), f"{name}: rlast on beat {len(data)} of {beats}"
            ctx.set(port.rready, 0)
            log.append((name, addr, data))
    return bench


def _until_logged(log, n):
    """The testbench: ticks until the readers have logged `n` bursts (400 cycles at most)."""
    async def bench(ctx):
        for _ in range(400):
            await ctx.tick()
            if len(log) == n:
                return
        raise AssertionError(f"readers stuck: {log}")
    return bench


@pytest.mark.parametrize("pattern", [(1,), STALLY], ids=["steady", "stalls"])
@pytest.mark.parametrize("fetch_delay, load_delay, first", [(0, 0, "load"), (0, 3, "fetch"), (5, 0, "load")])
def test_readers_get_their_own_bursts_one_at_a_time(pattern, fetch_delay, load_delay, first):
    dut = MemoryArbiter(CFG)
    memory = ReadMemory(dut.bus, BUS, data={a: a * 7 & 0xFF for a in range(0x3000)}, pattern=pattern)
    log = []
    fetch = [(0x1000, 8), (0x1020, 8)]
    load = [(0x2000, 3), (0x2100, 5)]

    simulate(dut, _until_logged(log, 4), processes=[memory.serve],
             background=[_reader(dut.fetch, "fetch", fetch, log, fetch_delay),
                         _reader(dut.load, "load", load, log, load_delay)])
    assert log[0][0] == first
    for name, addr, data in log:
        assert data == [memory.beat(addr + i * BUS) for i in range(len(data))], f"{name} at {addr:#x}"
    assert sorted((b.addr, b.beats) for b in memory.bursts) == sorted(fetch + load)


def _pipelined_reader(port, name, bursts, log):
    """Offers every address back to back, then takes the beats (in order, as AXI returns them)."""
    async def bench(ctx):
        for addr, beats in bursts:
            ctx.set(port.araddr, addr)
            ctx.set(port.arlen, beats - 1)
            ctx.set(port.arvalid, 1)
            await edge_where(ctx, port.arready)
        ctx.set(port.arvalid, 0)
        ctx.set(port.rready, 1)
        for addr, beats in bursts:
            data = []
            while len(data) < beats:
                last, value = await edge_where(ctx, port.rvalid, port.rlast, port.rdata)
                data.append(value)
                assert last == (len(data) == beats), f"{name}: rlast on beat {len(data)} of {beats}"
            log.append((name, addr, data))
        ctx.set(port.rready, 0)
    return bench


@pytest.mark.parametrize("pattern", [(1,), STALLY], ids=["steady", "stalls"])
def test_fetch_slips_in_between_the_load_units_bursts_in_flight(pattern):
    dut = MemoryArbiter(CFG)
    memory = ReadMemory(dut.bus, BUS, data={a: a * 7 & 0xFF for a in range(0x3000)}, pattern=pattern,
                        latency=6)
    log = []
    load = [(0x2000, 3), (0x2100, 5), (0x2200, 2)]

    simulate(dut, _until_logged(log, 4), processes=[memory.serve],
             background=[_pipelined_reader(dut.load, "load", load, log),
                         _reader(dut.fetch, "fetch", [(0x1000, 8)], log, delay=2)])
    for name, addr, data in log:
        assert data == [memory.beat(addr + i * BUS) for i in range(len(data))], f"{name} at {addr:#x}"
    order = [(b.addr, b.beats) for b in memory.bursts]
    assert sorted(order) == sorted(load + [(0x1000, 8)])
    assert [burst for burst in order if burst in load] == load, "the load unit's bursts in its order"
    assert order[-1] in load, "fetch's burst is granted between the load unit's"
    assert memory.max_in_flight >= 3


def test_a_grant_costs_one_cycle():
    dut = MemoryArbiter(CFG)
    memory = ReadMemory(dut.bus, BUS)
    strobes = Strobes(bus_arvalid=dut.bus.arvalid)
    log = []

    async def bench(ctx):
        while not log:
            await ctx.tick()

    simulate(dut, bench, processes=[memory.serve, strobes.watch],
             background=[_reader(dut.fetch, "fetch", [(0x40, 1)], log)])
    assert strobes.cycles["bus_arvalid"][0] == 1, "the request of cycle 0 reaches the bus in cycle 1"


def test_write_channels_pass_through():
    dut = MemoryArbiter(CFG)
    got = {}
    to_bus = [n for n in WRITE_CHANNELS if n not in ("awready", "wready", "bvalid")]

    async def bench(ctx):
        for i, name in enumerate(to_bus):
            ctx.set(getattr(dut.store, name), (0x5A5A_5A5A + i) & ((1 << len(getattr(dut.store, name))) - 1))
        for name in ("awready", "wready", "bvalid"):
            ctx.set(getattr(dut.bus, name), 1)
        got["bus"] = {n: ctx.get(getattr(dut.bus, n)) for n in to_bus}
        got["store"] = {n: ctx.get(getattr(dut.store, n)) for n in ("awready", "wready", "bvalid")}

    simulate(dut, bench)
    for i, name in enumerate(to_bus):
        assert got["bus"][name] == (0x5A5A_5A5A + i) & ((1 << len(getattr(dut.store, name))) - 1), name
    assert got["store"] == {"awready": 1, "wready": 1, "bvalid": 1}
