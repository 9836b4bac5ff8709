"""hdl/burst.py on Amaranth's simulator: a row's bursts are those of `split_bursts` (at most
dram_max_burst beats, none across 4 KiB), whatever the address channel's back-pressure; xLAST
marks each burst's last beat; the row advances only on an accepted address."""

import itertools

import pytest

from softnpu.hdl.burst import BurstEngine
from softnpu.hdl.config import preset
from tests.hdl.bfm import STALLY, simulate, split_bursts

CFG = preset("tiny").replace(name="burst-test", dram_max_burst=4)
BUS = CFG.dram_bus_bytes


@pytest.mark.parametrize("addr, beats", [
    (0x0, 1), (0x100, 4), (0x100, 11), (4096 - 2 * BUS, 5), (4096 - BUS, 1), (3 * 4096 - 6 * BUS, 14),
    ((1 << 32) - 8 * BUS, 3),
])
@pytest.mark.parametrize("accept", [(1,), STALLY], ids=["ready", "stalls"])
def test_row_splits_into_legal_bursts(addr, beats, accept):
    dut = BurstEngine(CFG)
    got = {"bursts": [], "lasts": []}

    async def bench(ctx):
        ctx.set(dut.row.p.addr, addr)
        ctx.set(dut.row.p.beats, beats)
        ctx.set(dut.row.valid, 1)
        await ctx.tick()
        ctx.set(dut.row.valid, 0)
        ready = itertools.cycle(accept)
        while True:
            _, _, left = await ctx.tick().sample(dut.row_left)      # a cycle between bursts
            if not left:
                break
            ctx.set(dut.request, 1)
            while True:
                r = next(ready)
                ctx.set(dut.addr.ready, r)
                _, _, valid, burst_addr, length = await ctx.tick().sample(dut.addr.valid, dut.addr.p.addr,
                                                                          dut.addr.p.len)
                assert valid
                if r:
                    break
            ctx.set(dut.request, 0)
            ctx.set(dut.addr.ready, 0)
            got["bursts"].append((burst_addr, length + 1))
            ctx.set(dut.beat, 1)
            for _ in range(length + 1):
                _, _, last = await ctx.tick().sample(dut.last_beat)
                got["lasts"].append(last)
            ctx.set(dut.beat, 0)

    simulate(dut, bench)
    want = split_bursts(addr, beats, BUS, CFG.dram_max_burst)
    assert got["bursts"] == want
    assert got["lasts"] == [i == n - 1 for _, n in want for i in range(n)]
