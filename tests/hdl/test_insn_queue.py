"""hdl/insn_queue.py on Amaranth's simulator: entries (instruction word and index) come out in
order under back-pressure on both sides, the queue holds `depth` entries, and `level` counts
what it holds."""

import itertools

import pytest
from amaranth.hdl import Value

from softnpu.hdl.insn_queue import InsnQueue
from tests.hdl.bfm import STALLY, simulate

DEPTH = 4


def _entry(i: int) -> tuple[int, int]:
    return (0xA5 << 248) | (i * 0x0101_0101 + 3), 1000 + i


@pytest.mark.parametrize("give, take", [((1,), (1,)), (STALLY, (1,)), ((1,), STALLY), (STALLY, (0, 1, 1))])
def test_entries_come_out_in_order(give, take):
    dut = InsnQueue(DEPTH)
    n = 12
    got = []

    async def producer(ctx):
        pattern = itertools.cycle(give)
        for i in range(n):
            while not next(pattern):
                ctx.set(dut.i.valid, 0)
                await ctx.tick()
            word, pc = _entry(i)
            ctx.set(Value.cast(dut.i.payload.insn), word)
            ctx.set(dut.i.payload.pc, pc)
            ctx.set(dut.i.valid, 1)
            await ctx.tick().until(dut.i.ready)
        ctx.set(dut.i.valid, 0)

    async def consumer(ctx):
        pattern = itertools.cycle(take)
        while len(got) < n:
            ready = next(pattern)
            ctx.set(dut.o.ready, ready)
            _, _, valid, word, pc = await ctx.tick().sample(dut.o.valid, Value.cast(dut.o.payload.insn),
                                                            dut.o.payload.pc)
            if valid and ready:
                got.append((word, pc))

    simulate(dut, consumer, background=[producer])
    assert got == [_entry(i) for i in range(n)]


def test_holds_depth_entries_and_counts_them():
    dut = InsnQueue(DEPTH)
    got = {"levels": []}

    async def bench(ctx):
        ctx.set(dut.i.valid, 1)
        for i in range(DEPTH + 2):
            ctx.set(dut.i.payload.pc, i)
            _, _, ready, level = await ctx.tick().sample(dut.i.ready, dut.level)
            got["levels"].append((ready, level))
        ctx.set(dut.i.valid, 0)
        got["full"] = ctx.get(dut.level)

    simulate(dut, bench)
    assert got["full"] == DEPTH
    assert [ready for ready, _ in got["levels"]] == [1] * DEPTH + [0, 0]

