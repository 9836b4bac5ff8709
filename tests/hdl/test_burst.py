"""hdl/burst.py on Amaranth's simulator: a DMA's bursts are those of `split_bursts` for each row in
order (at most dram_max_burst beats, none across 4 KiB), whatever the address channel's
back-pressure; xLAST marks each burst's last beat; at most `dram_outstanding` bursts are in flight,
and the addresses run ahead of the data across rows."""

import itertools

import pytest

from softnpu.hdl.burst import BurstEngine
from softnpu.hdl.config import preset
from tests.hdl.bfm import STALLY, simulate, split_bursts

CFG = preset("tiny").replace(name="burst-test", dram_max_burst=4)
BUS = CFG.dram_bus_bytes


def _walk(config, dma, accept, take):
    """Start `dma`; accept addresses and take beats on the cycles the patterns allow (a burst is
    done at its last beat).  The bursts, every beat's last_beat and the most bursts in flight."""
    dut = BurstEngine(config)
    got = {"bursts": [], "lasts": [], "in_flight": 0}

    async def bench(ctx):
        for name, value in dma.items():
            ctx.set(getattr(dut.start.p, name), value)
        ctx.set(dut.start.valid, 1)
        await ctx.tick()
        ctx.set(dut.start.valid, 0)
        ready, beat = itertools.cycle(accept), itertools.cycle(take)
        in_flight = 0
        for _ in range(10_000):
            r, b = next(ready), next(beat)
            ctx.set(dut.addr.ready, r)
            pending = ctx.get(dut.pending)
            last = ctx.get(dut.last_beat)
            ctx.set(dut.beat, b & pending)
            ctx.set(dut.done, b & pending & last)
            _, _, valid, addr, length, busy = await ctx.tick().sample(dut.addr.valid, dut.addr.p.addr,
                                                                      dut.addr.p.len, dut.busy)
            if b and pending:
                got["lasts"].append(last)
                in_flight -= last
            if valid and r:
                got["bursts"].append((addr, length + 1))
                in_flight += 1
            got["in_flight"] = max(got["in_flight"], in_flight)
            if not busy:
                break
        else:
            raise AssertionError("the engine never finished")

    simulate(dut, bench)
    return got


@pytest.mark.parametrize("addr, beats", [
    (0x0, 1), (0x100, 4), (0x100, 11), (4096 - 2 * BUS, 5), (4096 - BUS, 1), (3 * 4096 - 6 * BUS, 14),
    ((1 << 32) - 8 * BUS, 3),
])
@pytest.mark.parametrize("accept", [(1,), STALLY], ids=["ready", "stalls"])
def test_row_splits_into_legal_bursts(addr, beats, accept):
    dma = dict(addr=addr, blocks=1, block_stride=0, rows=1, row_stride=0, beats=beats)
    got = _walk(CFG, dma, accept, (1,))
    want = split_bursts(addr, beats, BUS, CFG.dram_max_burst)
    assert got["bursts"] == want
    assert got["lasts"] == [i == n - 1 for _, n in want for i in range(n)]


@pytest.mark.parametrize("outstanding", [1, 2, 4])
@pytest.mark.parametrize("take", [(1,), (0, 0, 0, 1)], ids=["streaming", "slow-data"])
def test_blocks_and_rows_in_order_with_at_most_dram_outstanding_in_flight(outstanding, take):
    config = CFG.replace(dram_outstanding=outstanding)
    dma = dict(addr=0x1000 - 3 * BUS, blocks=2, block_stride=0x2000, rows=3, row_stride=0x100, beats=6)
    got = _walk(config, dma, (1,), take)
    want = [burst for b in range(2) for y in range(3)
            for burst in split_bursts(0x1000 - 3 * BUS + b * 0x2000 + y * 0x100, 6, BUS, CFG.dram_max_burst)]
    assert got["bursts"] == want
    assert got["lasts"] == [i == n - 1 for _, n in want for i in range(n)]
    assert got["in_flight"] == outstanding
