"""hdl/mac_array.py: `rows` int8 dot products of `cols` lanes (typed ports: lists of lanes in,
lanes out), against numpy (Amaranth simulator, combinational): random values, and the extremes
where the sums are largest in magnitude."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from softnpu.hdl.config import preset
from softnpu.hdl.mac_array import MACArray


def _vectors(rows, cols, n, seed):
    rng = np.random.default_rng(seed)
    cases = [(rng.integers(-128, 128, cols), rng.integers(-128, 128, (rows, cols))) for _ in range(n)]
    full = lambda v, shape: np.full(shape, v)                       # noqa: E731
    for x, w in ((-128, -128), (-128, 127), (127, -128), (127, 127), (0, -128), (-1, -1), (1, -128)):
        cases.append((full(x, cols), full(w, (rows, cols))))
    # alternating extremes per lane and per row (sums that cancel, and one row of each sign)
    alt = np.where(np.arange(cols) % 2, 127, -128)
    cases.append((alt, np.tile(alt, (rows, 1))))
    cases.append((alt, np.where(np.arange(rows)[:, None] % 2, 127, -128) * np.ones((1, cols), np.int64)))
    # one lane at a time (wiring: lane c of x meets column c of every row of W)
    for c in range(cols):
        x = np.zeros(cols, np.int64)
        x[c] = -128
        cases.append((x, rng.integers(-128, 128, (rows, cols))))
    return cases


@pytest.mark.parametrize("name, n", [("tiny", 150), ("default", 40), ("large", 4)])
def test_dots_match_numpy(name, n):
    config = preset(name)
    rows, cols = config.rows, config.cols
    dut = MACArray(config)
    cases = _vectors(rows, cols, n, seed=rows)
    bad = []

    async def bench(ctx):
        for x, w in cases:
            ctx.set(dut.x, [int(v) for v in x])
            ctx.set(dut.w, [[int(v) for v in row] for row in w])
            got = np.array(list(ctx.get(dut.dots)), np.int64)
            want = w.astype(np.int64) @ x.astype(np.int64)
            if not np.array_equal(got, want):
                bad.append((x, w, got, want))

    sim = Simulator(dut)
    sim.add_testbench(bench)
    sim.run()
    assert not bad, f"{len(bad)} of {len(cases)} vectors differ; first: x={bad[0][0]} got {bad[0][2]} " \
                    f"want {bad[0][3]}"
