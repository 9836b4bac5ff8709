"""hdl/vector_unit.py on Amaranth's simulator, against hdl/numerics.py (the specification):
REQUANT (fixed and double rounding), NARROW, ADD and MUL (operand b from the input scratchpad or
broadcast from a parameter entry), over several blocks, with their cycle counts (parameter fetch,
one entry per cycle, the pipeline's drain; NARROW's 32-cycle reciprocal; double rounding one lane
per cycle through its own pipeline), one written entry per cycle however deep the pipeline, and
`range_bad` for scratchpad overruns."""

import numpy as np
import pytest
from amaranth.hdl import Value

from softnpu.hdl import isa, numerics
from softnpu.hdl.config import MIN_VECTOR_LATENCY, preset
from softnpu.hdl.isa import Rounding
from softnpu.hdl.timing import RQD_LATENCY
from softnpu.hdl.vector_unit import VectorUnit
from tests.hdl.bfm import Strobes, SyncReadPort, WriteRecorder, simulate
from tests.hdl.test_conv_engine import pack, unpack

CFG = preset("tiny")
R, C = CFG.rows, CFG.cols
L = CFG.vector_latency              # an entry's read to its write


def _double_words(value: float) -> tuple[int, int]:
    bits = int(np.float64(value).view(np.uint64))
    return bits & 0xFFFF_FFFF, bits >> 32


class Pads:
    """Scratchpad contents (numpy) and the expected output entries of an instruction."""

    def __init__(self, seed: int):
        self.rng = rng = np.random.default_rng(seed)
        self.acc = rng.integers(-40_000, 40_000, (CFG.acc_depth, R))
        self.acc[:2] = [[(1 << 31) - 1] * R, [-(1 << 31)] * R]     # extremes at the start
        self.inp = rng.integers(-128, 128, (CFG.inp_depth, C))
        self.param = np.zeros((CFG.param_depth, R), np.int64)

    def set_params(self, at: int, rows: list) -> None:
        for k, row in enumerate(rows):
            self.param[at + k] = np.broadcast_to(np.asarray(row, np.int64), (R,))

    def entries(self, base: int, blk: int, count: int) -> range:
        return range(base + blk * count, base + (blk + 1) * count)


def requant_case(pads: Pads, rounding: Rounding):
    insn = isa.Requant(out=5, acc=0, param=10, blocks=2, count=3, zero_point=-7, act_min=-100, act_max=120,
                       rounding=rounding)
    want = {}
    for blk in range(insn.blocks):
        bias = pads.rng.integers(-3000, 3000, R)
        if rounding == Rounding.FIXED:
            mult = pads.rng.integers(1 << 30, (1 << 31) - 1, R)
            shift = pads.rng.integers(-12, 1, R)
            pads.set_params(insn.param + 3 * blk, [bias, mult, shift])
        else:
            real = 10.0 ** pads.rng.uniform(-4, -1)
            lo, hi = _double_words(real)
            pads.set_params(insn.param + 3 * blk, [bias, lo, hi])
        for i, a in enumerate(pads.entries(insn.acc, blk, insn.count)):
            if rounding == Rounding.FIXED:
                out = numerics.requantize(pads.acc[a], bias, mult, shift, insn.zero_point, insn.act_min,
                                          insn.act_max)
            else:
                out = numerics.requantize_double(pads.acc[a], bias, real, insn.zero_point, insn.act_min,
                                                 insn.act_max)
            want[insn.out + blk * insn.count + i] = out
    entries = insn.count + L if rounding == Rounding.FIXED else insn.count * (2 + R + RQD_LATENCY)
    per_block = [3 + 1 + entries for _ in range(insn.blocks)]
    return insn, want, sum(per_block)


def narrow_case(pads: Pads):
    insn = isa.Narrow(out=0, acc=2, blocks=3, count=2, divisor=9, act_min=-128, act_max=127)
    pads.acc[2:2 + 6] = pads.rng.integers(-128 * 9, 128 * 9, (6, R))
    want = {insn.out + k: numerics.pool_output(pads.acc[insn.acc + k], insn.divisor) for k in range(6)}
    return insn, want, 32 + insn.blocks * (1 + insn.count + L)


def binary_case(pads: Pads, cls, b_param: int):
    insn = cls(out=7, a=20, b=200 if not b_param else 40, b_param=b_param, param=30, blocks=2, count=3,
               zero_point=3, act_min=-128, act_max=127)
    if cls is isa.Add:
        p = numerics.add_params(0.05, 3, 0.08, -5, 0.1)
    else:
        p = numerics.mul_params(0.05, 3, 0.08, -5, 0.3)
    pads.set_params(insn.param, [p[name] for name in cls.PARAMS])
    op = numerics.add if cls is isa.Add else numerics.mul
    params = {name: p[name] for name in cls.PARAMS}
    want = {}
    for blk in range(insn.blocks):
        if b_param:
            b_row = pads.rng.integers(-128, 128, R)
            pads.param[insn.b + blk] = b_row
        for i, a in enumerate(pads.entries(insn.a, blk, insn.count)):
            b = b_row if b_param else pads.inp[insn.b + blk * insn.count + i][:R]
            want[insn.out + blk * insn.count + i] = op(pads.inp[a][:R], b, **params,
                                                       zero_point=insn.zero_point, act_min=insn.act_min,
                                                       act_max=insn.act_max)
    fetches = [len(cls.PARAMS) * (blk == 0) + b_param for blk in range(insn.blocks)]
    return insn, want, sum(f + 1 + insn.count + L for f in fetches)


CASES = {
    "requant_fixed": lambda pads: requant_case(pads, Rounding.FIXED),
    "requant_double_one_lane_per_cycle": lambda pads: requant_case(pads, Rounding.DOUBLE),
    "narrow_after_its_reciprocal": narrow_case,
    "add_b_from_inputs": lambda pads: binary_case(pads, isa.Add, 0),
    "add_b_broadcast_from_params": lambda pads: binary_case(pads, isa.Add, 1),
    "mul_b_from_inputs": lambda pads: binary_case(pads, isa.Mul, 0),
    "mul_b_broadcast_from_params": lambda pads: binary_case(pads, isa.Mul, 1),
}


def run(insn, pads: Pads, config=CFG, strobes=None):
    dut = VectorUnit(config)
    ports = [SyncReadPort(dut.acc_r, {a: pack(v, 32) for a, v in enumerate(pads.acc)}),
             SyncReadPort(dut.inp_a, {a: pack(v, 8) for a, v in enumerate(pads.inp)}),
             SyncReadPort(dut.inp_b, {a: pack(v, 8) for a, v in enumerate(pads.inp)}),
             SyncReadPort(dut.param_r, {a: pack(v, 32) for a, v in enumerate(pads.param)})]
    writes = WriteRecorder(dut.out_w)
    monitors = [] if strobes is None else [strobes(dut).watch]
    got = {}

    async def bench(ctx):
        ctx.set(Value.cast(dut.head), insn.encode_int())       # as the queue head issues
        await ctx.tick()
        ctx.set(Value.cast(dut.insn), insn.encode_int())
        got["range_bad"] = ctx.get(dut.range_bad)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        cycles = 0
        while True:
            _, _, done = await ctx.tick().sample(dut.done)
            cycles += 1
            if done:
                break
            assert cycles < 10_000, "no done"
        got["cycles"] = cycles
        for _ in range(2):
            await ctx.tick()

    simulate(dut, bench, processes=[p.serve for p in ports] + [writes.watch] + monitors)
    return got, writes


@pytest.mark.parametrize("name", list(CASES))
def test_vector_op_matches_numerics_with_its_cycle_count(name):
    pads = Pads(seed=len(name))
    insn, want, cycles = CASES[name](pads)
    got, writes = run(insn, pads)
    assert got["range_bad"] == 0
    assert len(writes.writes) == len(want), "one write per output entry"
    entries = writes.entries()
    for addr, lanes in want.items():
        assert np.array_equal(unpack(entries[addr], 8, R), lanes), \
            f"{name}: out[{addr}] {unpack(entries[addr], 8, R)}, want {lanes}"
    assert got["cycles"] == cycles


@pytest.mark.parametrize("latency", [MIN_VECTOR_LATENCY, MIN_VECTOR_LATENCY + 3])
def test_pipeline_writes_one_entry_per_cycle(latency):
    """A block of 24 entries: 24 writes in 24 consecutive cycles, the first `latency` cycles after the
    first read, the last in the cycle of `done`; a longer configured latency only delays them."""
    config = CFG.replace(vector_latency=latency)
    pads = Pads(seed=3)
    insn = isa.Requant(out=100, acc=2, param=0, blocks=1, count=24, zero_point=5, act_min=-128, act_max=127,
                       rounding=Rounding.FIXED)
    pads.set_params(0, [pads.rng.integers(-3000, 3000, R), pads.rng.integers(1 << 30, (1 << 31) - 1, R),
                        pads.rng.integers(-12, 1, R)])
    bias, mult, shift = pads.param[0], pads.param[1], pads.param[2]
    box = {}

    def strobes(dut):
        box["s"] = Strobes(read=dut.acc_r.en, write=dut.out_w.en, done=dut.done)
        return box["s"]

    got, writes = run(insn, pads, config, strobes)
    s = box["s"].cycles
    assert s["write"] == list(range(s["write"][0], s["write"][0] + 24)), "one entry per cycle"
    assert s["read"] == list(range(s["read"][0], s["read"][0] + 24))
    assert s["write"][0] - s["read"][0] == latency
    assert s["done"] == [s["write"][-1]]
    assert got["cycles"] == 3 + 1 + 24 + latency
    for i, (addr, data) in enumerate(writes.writes):
        assert addr == insn.out + i
        want = numerics.requantize(pads.acc[insn.acc + i], bias, mult, shift, 5, -128, 127)
        assert np.array_equal(unpack(data, 8, R), want)


def test_vector_latency_below_the_pipeline_is_rejected():
    with pytest.raises(ValueError, match="vector_latency"):
        CFG.replace(vector_latency=MIN_VECTOR_LATENCY - 1)


@pytest.mark.parametrize("insn, bad", [
    (isa.Narrow(out=CFG.out_depth - 4, acc=0, blocks=2, count=2, divisor=1, act_min=-128, act_max=127),
     False),
    (isa.Narrow(out=CFG.out_depth - 3, acc=0, blocks=2, count=2, divisor=1, act_min=-128, act_max=127), True),
    (isa.Narrow(out=0, acc=CFG.acc_depth - 3, blocks=2, count=2, divisor=1, act_min=-128, act_max=127), True),
    (isa.Requant(out=0, acc=0, param=CFG.param_depth - 6, blocks=2, count=1, zero_point=0, act_min=-128,
                 act_max=127, rounding=0), False),
    (isa.Requant(out=0, acc=0, param=CFG.param_depth - 5, blocks=2, count=1, zero_point=0, act_min=-128,
                 act_max=127, rounding=0), True),
    (isa.Add(out=0, a=CFG.inp_depth - 2, b=0, b_param=0, param=0, blocks=1, count=2, zero_point=0,
             act_min=-128, act_max=127), False),
    (isa.Add(out=0, a=CFG.inp_depth - 1, b=0, b_param=0, param=0, blocks=1, count=2, zero_point=0,
             act_min=-128, act_max=127), True),
    (isa.Add(out=0, a=0, b=CFG.param_depth - 1, b_param=1, param=0, blocks=2, count=2, zero_point=0,
             act_min=-128, act_max=127), True),
    (isa.Mul(out=0, a=0, b=0, b_param=0, param=CFG.param_depth - 4, blocks=1, count=2, zero_point=0,
             act_min=-128, act_max=127), False),
    (isa.Mul(out=0, a=0, b=0, b_param=0, param=CFG.param_depth - 3, blocks=1, count=2, zero_point=0,
             act_min=-128, act_max=127), True),
])
def test_range_check_covers_every_scratchpad(insn, bad):
    dut = VectorUnit(CFG)
    got = {}

    async def bench(ctx):
        ctx.set(Value.cast(dut.head), insn.encode_int())       # as the queue head issues
        await ctx.tick()
        ctx.set(Value.cast(dut.insn), insn.encode_int())
        got["bad"] = ctx.get(dut.range_bad)

    simulate(dut, bench)
    assert got["bad"] == bad
