"""hdl/bus_drain.py on Amaranth's simulator, between a master playing the NPU's arbiter and the
AXI memory BFMs: it passes the bus straight through, and after an abort that cuts off a read burst,
an address not yet accepted or a write burst, it completes the transaction (the cut-off write's
missing beats write nothing) so that the next transfers find the memory idle and get their data."""

from softnpu.hdl.bus_drain import BusDrain
from softnpu.hdl.config import preset
from tests.hdl.bfm import Burst, ReadMemory, WriteMemory, edge_where, simulate

CFG = preset("tiny")
BUS = CFG.dram_bus_bytes
DATA = bytes(range(256)) * 4


def _memories(dut, accept=(1,)):
    reads = ReadMemory(dut.outer, BUS, latency=2, accept=accept)
    reads.load(0, DATA)
    return reads, WriteMemory(dut.outer, BUS, latency=2)


async def _abort(ctx, dut, **inner_idle):
    """The abort cycle: the units are reset at its end, so the inside goes quiet."""
    ctx.set(dut.abort, 1)
    await ctx.tick()
    ctx.set(dut.abort, 0)
    for name in ("arvalid", "rready", "awvalid", "wvalid", "bready"):
        ctx.set(getattr(dut.inner, name), 0)


async def _read(ctx, dut, addr, beats, take=None) -> list[int]:
    """A burst from the inside; returns the first `take` beats' data (all by default)."""
    i = dut.inner
    ctx.set(i.araddr, addr)
    ctx.set(i.arlen, beats - 1)
    ctx.set(i.arvalid, 1)
    await edge_where(ctx, i.arready)
    ctx.set(i.arvalid, 0)
    ctx.set(i.rready, 1)
    got = []
    for _ in range(beats if take is None else take):
        (data,) = await edge_where(ctx, i.rvalid, i.rdata)
        got.append(data)
    return got


def _beats(addr, n):
    return [int.from_bytes(DATA[addr + k * BUS:addr + (k + 1) * BUS], "little") for k in range(n)]


def test_straight_through_without_an_abort():
    dut = BusDrain(CFG)
    reads, writes = _memories(dut)
    got = {}

    async def bench(ctx):
        ctx.set(dut.inner.arvalid, 1)
        got["same_cycle"] = ctx.get(dut.outer.arvalid)
        ctx.set(dut.inner.arvalid, 0)
        got["data"] = await _read(ctx, dut, 0x40, 3)
        await _abort(ctx, dut)                        # nothing outstanding: no drain at all
        for _ in range(3):
            got.setdefault("draining", []).append(ctx.get(dut.draining))
            await ctx.tick()

    simulate(dut, bench, processes=[reads.serve, writes.serve])
    assert got["same_cycle"] == 1
    assert got["data"] == _beats(0x40, 3) and got["draining"] == [0, 0, 0]


def test_a_read_burst_cut_off_is_drained_and_the_next_read_gets_its_data():
    dut = BusDrain(CFG)
    reads, writes = _memories(dut)
    got = {}

    async def bench(ctx):
        await _read(ctx, dut, 0x100, 8, take=3)
        await _abort(ctx, dut)
        cycles = 0
        while ctx.get(dut.draining):
            assert not ctx.get(dut.inner.rvalid) and not ctx.get(dut.inner.arready)
            await ctx.tick()
            cycles += 1
        got["drain_cycles"] = cycles
        got["data"] = await _read(ctx, dut, 0x200, 2)

    simulate(dut, bench, processes=[reads.serve, writes.serve])
    assert got["drain_cycles"] >= 5 - 1                # the five beats left
    assert reads.bursts == [Burst(0x100, 8), Burst(0x200, 2)]
    assert got["data"] == _beats(0x200, 2)


def test_an_address_not_yet_accepted_is_offered_until_it_is():
    dut = BusDrain(CFG)
    reads, writes = _memories(dut, accept=(0, 0, 0, 0, 1))
    got = {}

    async def bench(ctx):
        ctx.set(dut.inner.araddr, 0x80)
        ctx.set(dut.inner.arlen, 3)
        ctx.set(dut.inner.arvalid, 1)
        while ctx.get(dut.outer.arready):           # cut off while the memory is not accepting
            await ctx.tick()
        await _abort(ctx, dut)
        got["held"] = (ctx.get(dut.outer.arvalid), ctx.get(dut.outer.araddr))
        while ctx.get(dut.draining):
            await ctx.tick()
        got["data"] = await _read(ctx, dut, 0x300, 1)

    simulate(dut, bench, processes=[reads.serve, writes.serve])
    assert got["held"] == (1, 0x80)
    assert reads.bursts == [Burst(0x80, 4), Burst(0x300, 1)]
    assert got["data"] == _beats(0x300, 1)


def test_a_write_burst_cut_off_gets_its_beats_without_strobes_and_its_response():
    dut = BusDrain(CFG)
    reads, writes = _memories(dut)
    ones = (1 << BUS) - 1

    async def write(ctx, addr, beats, send):
        i = dut.inner
        ctx.set(i.awaddr, addr)
        ctx.set(i.awlen, beats - 1)
        ctx.set(i.awvalid, 1)
        await edge_where(ctx, i.awready)
        ctx.set(i.awvalid, 0)
        ctx.set(i.wstrb, ones)
        for k in range(send):
            ctx.set(i.wdata, int.from_bytes(bytes([0x11]) * BUS, "little"))
            ctx.set(i.wlast, k == beats - 1)
            ctx.set(i.wvalid, 1)
            await edge_where(ctx, i.wready)
        ctx.set(i.wvalid, 0)

    async def bench(ctx):
        await write(ctx, 0x300, 4, send=1)
        await _abort(ctx, dut)
        while ctx.get(dut.draining):
            await ctx.tick()
        await write(ctx, 0x400, 1, send=1)
        ctx.set(dut.inner.bready, 1)
        await edge_where(ctx, dut.inner.bvalid)

    simulate(dut, bench, processes=[reads.serve, writes.serve])
    assert writes.bursts == [Burst(0x300, 4), Burst(0x400, 1)] and not writes.wlast_errors
    assert writes.read(0x300, 4 * BUS) == bytes([0x11] * BUS + [0] * 3 * BUS), "drained beats wrote nothing"
    assert writes.read(0x400, BUS) == bytes([0x11] * BUS)


def test_several_bursts_cut_off_in_flight_are_all_completed_each_with_its_wlast():
    """dram_outstanding bursts per direction: two read bursts and two write bursts accepted, one
    beat of each direction taken or sent, then the abort."""
    dut = BusDrain(CFG)
    reads, writes = _memories(dut)
    ones = (1 << BUS) - 1
    got = {}

    async def offer(ctx, prefix, addr, beats):
        i = dut.inner
        ctx.set(getattr(i, f"{prefix}addr"), addr)
        ctx.set(getattr(i, f"{prefix}len"), beats - 1)
        ctx.set(getattr(i, f"{prefix}valid"), 1)
        await edge_where(ctx, getattr(i, f"{prefix}ready"))
        ctx.set(getattr(i, f"{prefix}valid"), 0)

    async def bench(ctx):
        i = dut.inner
        await offer(ctx, "ar", 0x100, 4)
        await offer(ctx, "ar", 0x200, 3)
        await offer(ctx, "aw", 0x300, 3)
        await offer(ctx, "aw", 0x400, 2)
        ctx.set(i.rready, 1)
        await edge_where(ctx, i.rvalid)
        ctx.set(i.rready, 0)
        ctx.set(i.wstrb, ones)
        ctx.set(i.wdata, int.from_bytes(bytes([0x22]) * BUS, "little"))
        ctx.set(i.wvalid, 1)
        await edge_where(ctx, i.wready)
        ctx.set(i.wvalid, 0)
        await _abort(ctx, dut)
        while ctx.get(dut.draining):
            await ctx.tick()
        got["data"] = await _read(ctx, dut, 0x40, 2)

    simulate(dut, bench, processes=[reads.serve, writes.serve])
    assert reads.bursts == [Burst(0x100, 4), Burst(0x200, 3), Burst(0x40, 2)]
    assert got["data"] == _beats(0x40, 2)
    assert writes.bursts == [Burst(0x300, 3), Burst(0x400, 2)] and not writes.wlast_errors
    assert writes.read(0x300, 5 * BUS) == bytes([0x22] * BUS + [0] * 4 * BUS), "drained beats wrote nothing"
