"""hdl/tokens.py on Amaranth's simulator: the count follows pushes and pops (both at once: no
change), `room` until `depth` tokens wait, `available` while one does."""

import pytest

from softnpu.hdl.tokens import TokenChannel
from tests.hdl.bfm import simulate

DEPTH = 3


@pytest.mark.parametrize("steps, counts", [
    ([(1, 0), (1, 0), (0, 1), (0, 1)], [1, 2, 1, 0]),
    ([(1, 0), (1, 1), (1, 1), (0, 1)], [1, 1, 1, 0]),
    ([(1, 0)] * 3, [1, 2, 3]),
    ([(0, 0), (1, 0), (0, 0), (0, 1)], [0, 1, 1, 0]),
])
def test_count_room_and_available(steps, counts):
    dut = TokenChannel(DEPTH)
    got = []

    async def bench(ctx):
        for push, pop in steps:
            ctx.set(dut.push, push)
            ctx.set(dut.pop, pop)
            await ctx.tick()
            got.append((ctx.get(dut.count), ctx.get(dut.room), ctx.get(dut.available)))

    simulate(dut, bench)
    assert got == [(n, int(n < DEPTH), int(n > 0)) for n in counts]
