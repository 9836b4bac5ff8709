"""hdl/vector_lane.py mirrors hdl/numerics.py bit for bit (Amaranth simulator), as one combinational
cloud and cut into the registered stages the vector unit uses (operands held, results read once the
deepest pipeline has filled)."""

import numpy as np
import pytest
from amaranth import Module, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from softnpu.hdl import numerics, vector_lane
from softnpu.sim.iss_exec import SHIFT_MAX, SHIFT_MIN

I32 = signed(32)


class Lane(wiring.Component):
    """Every lane function at once, on shared operands."""
    acc: In(I32)
    x: In(I32)
    mult: In(I32)
    shift: In(I32)
    zp: In(signed(8))
    lo: In(signed(8))
    hi: In(signed(8))
    divisor: In(16)
    a: In(signed(8))
    b: In(I32)
    off_a: In(I32)
    off_b: In(I32)
    mult_b: In(I32)
    shift_b: In(I32)
    dbl: In(64)
    requant: Out(signed(8))
    requant_double: Out(signed(8))
    mbqm: Out(I32)
    pool: Out(signed(8))
    recip: In(32)
    pool_recip: Out(signed(35))
    add: Out(signed(8))
    mul: Out(signed(8))

    def __init__(self, cut=vector_lane.comb, static=vector_lane.comb):
        self.cut, self.static = cut, static
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        lane = vector_lane
        cut, static = self.cut, self.static
        m.d.comb += [
            self.requant.eq(lane.requantize(m, self.acc, self.x, self.mult, self.shift, self.zp, self.lo,
                                            self.hi, cut)),
            self.requant_double.eq(lane.requantize_double(m, self.acc, self.x, self.dbl[:32], self.dbl[32:],
                                                          self.zp, self.lo, self.hi, cut)),
            self.mbqm.eq(lane.multiply_by_quantized_multiplier(m, self.acc, self.mult,
                                                               lane.clamp_shift(m, self.shift), cut, static)),
            self.pool.eq(lane.pool_output(m, self.acc, self.divisor, self.lo, self.hi)),
            self.pool_recip.eq(lane.round_divide_by_reciprocal(m, self.acc, self.divisor, self.recip, cut,
                                                               static)),
            self.add.eq(lane.add(m, self.a, self.b, self.off_a, self.mult, self.shift, self.off_b,
                                 self.mult_b, self.shift_b, self.x, self.shift_b, self.zp, self.lo, self.hi,
                                 cut)),
            self.mul.eq(lane.mul(m, self.a, self.b, self.off_a, self.off_b, self.mult, self.shift,
                                 self.zp, self.lo, self.hi, cut)),
        ]
        return m


OUTPUTS = ("requant", "requant_double", "mbqm", "pool", "pool_recip", "add", "mul")


def _cases(n=200, seed=0):
    rng = np.random.default_rng(seed)
    edge32 = [numerics.INT32_MIN, numerics.INT32_MIN + 1, -1, 0, 1, numerics.INT32_MAX, 1 << 30,
              -(1 << 30), 12345, -12345]
    cases = []

    def pick(lo, hi, edges):
        return int(rng.choice(edges)) if rng.random() < 0.3 else int(rng.integers(lo, hi, endpoint=True))

    for _ in range(n):
        lo = int(rng.integers(-128, 128))
        cases.append(dict(
            acc=pick(numerics.INT32_MIN, numerics.INT32_MAX, edge32),
            x=pick(-(1 << 24), 1 << 24, edge32),
            mult=pick(0, numerics.INT32_MAX, [0, 1 << 30, numerics.INT32_MAX, numerics.INT32_MIN]),
            shift=pick(-40, 35, [-31, 30, 0, -1, 1, -32, 31]),
            zp=int(rng.integers(-128, 128)), lo=lo, hi=int(rng.integers(lo, 128)),
            divisor=pick(1, 300, [1, 2, 3, 4, 9, 49, 65535]),
            a=int(rng.integers(-128, 128)), b=pick(-128, 127, [-128, 127, numerics.INT32_MIN]),
            off_a=int(rng.integers(-127, 129)), off_b=int(rng.integers(-127, 129)),
            mult_b=int(rng.integers(1 << 30, 1 << 31)), shift_b=int(rng.integers(-31, 1)),
            dbl=_double_bits(float(rng.choice([rng.uniform(1e-6, 1e-2), rng.uniform(1e-2, 4.0),
                                               2.0 ** -int(rng.integers(1, 40)), 0.0, 1e9]))),
        ))
    # rounding ties and both ends of the shift range
    cases += [dict(cases[0], acc=v, shift=s, mult=1 << 30, divisor=d) for v in (5, -5, 6, -6, 7, -7)
              for s in (-1, -31, 30) for d in (2, 4)]
    # double rounding: exact ties (x.5) in both signs, products needing 53-bit rounding, overflow
    cases += [dict(cases[0], acc=v, x=0, dbl=_double_bits(f), zp=0, lo=-128, hi=127)
              for v in (1, -1, 3, -3, 5, -5, 255, -255) for f in (0.5, 1.5, 0.25)]
    cases += [dict(cases[0], acc=v, x=0, dbl=_double_bits(f), zp=z, lo=-128, hi=127)
              for v in (numerics.INT32_MAX, numerics.INT32_MIN, 123456789) for f in (1.0, 3.7, 0.999999999)
              for z in (0, 5, -5)]
    return cases


def _double_bits(value: float) -> int:
    return int(np.float64(value).view(np.uint64))


def _expected(c):
    sh = int(np.clip(c["shift"], SHIFT_MIN, SHIFT_MAX))
    shb = int(np.clip(c["shift_b"], SHIFT_MIN, SHIFT_MAX))
    return dict(
        requant=int(numerics.requantize(c["acc"], c["x"], c["mult"], sh, c["zp"], c["lo"], c["hi"])),
        requant_double=int(numerics.requantize_double(c["acc"], c["x"], np.uint64(c["dbl"]).view(np.float64),
                                                      c["zp"], c["lo"], c["hi"])),
        mbqm=int(numerics.multiply_by_quantized_multiplier(c["acc"], c["mult"], sh)),
        pool=int(numerics.pool_output(c["acc"], c["divisor"], c["lo"], c["hi"])),
        pool_recip=int(numerics.round_divide(c["acc"], c["divisor"])),
        add=int(numerics.add(c["a"], c["b"], a_offset=c["off_a"], a_mult=c["mult"], a_shift=sh,
                             b_offset=c["off_b"], b_mult=c["mult_b"], b_shift=shb, out_mult=c["x"],
                             out_shift=shb, zero_point=c["zp"], act_min=c["lo"], act_max=c["hi"])),
        mul=int(numerics.mul(c["a"], c["b"], a_offset=c["off_a"], b_offset=c["off_b"], out_mult=c["mult"],
                             out_shift=sh, zero_point=c["zp"], act_min=c["lo"], act_max=c["hi"])),
    )


PIPELINE_DEPTH = 11         # the deepest function's cuts (add, requantize_double: 8), plus the static
                            # operands' two registers, plus one


@pytest.mark.parametrize("pipelined", [False, True], ids=["comb", "registered"])
@pytest.mark.parametrize("seed", [0, 1])
def test_lane_matches_numerics(seed, pipelined):
    dut = Lane(vector_lane.register, vector_lane.register) if pipelined else Lane()
    cases = _cases(seed=seed)
    mismatches = []

    async def bench(ctx):
        for c in cases:
            for name, value in c.items():
                ctx.set(getattr(dut, name), value)
            ctx.set(dut.recip, (1 << 31) // c["divisor"])
            if pipelined:
                await ctx.tick().repeat(PIPELINE_DEPTH)
            got = {name: ctx.get(getattr(dut, name)) for name in OUTPUTS}
            want = _expected(c)
            if got != want:
                mismatches.append((c, got, want))

    sim = Simulator(dut)
    if pipelined:
        sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert not mismatches, f"{len(mismatches)} mismatches, first: {mismatches[0]}"


class RoundingDivide(wiring.Component):
    x: In(I32)
    exponent: In(5)
    out: Out(I32)

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.out.eq(vector_lane.rounding_divide_by_pot(m, self.x, self.exponent))
        return m


def test_rounding_divide_by_pot_every_exponent():
    """The one-add form against numerics (gemmlowp's remainder test) for every exponent, on the ends of
    int32, the ties either side of zero and random values."""
    rng = np.random.default_rng(3)
    xs = [numerics.INT32_MIN, numerics.INT32_MIN + 1, numerics.INT32_MAX, numerics.INT32_MAX - 1, -1, 0, 1]
    xs += [int(v) for v in rng.integers(numerics.INT32_MIN, numerics.INT32_MAX, 24, endpoint=True)]
    cases = [(x, e) for e in range(32) for x in xs + [s * ((1 << e) * k + (1 << e >> 1) + d)
                                                       for s in (1, -1) for k in (0, 3) for d in (-1, 0, 1)]
             if numerics.INT32_MIN <= x <= numerics.INT32_MAX]
    dut = RoundingDivide()
    got = []

    async def bench(ctx):
        for x, e in cases:
            ctx.set(dut.x, x)
            ctx.set(dut.exponent, e)
            got.append(ctx.get(dut.out))

    sim = Simulator(dut)
    sim.add_testbench(bench)
    sim.run()
    want = numerics.rounding_divide_by_pot(np.array([x for x, _ in cases]), np.array([e for _, e in cases]))
    bad = [(c, g, int(w)) for c, g, w in zip(cases, got, want, strict=True) if g != w]
    assert len(cases) > 1000 and not bad, f"{len(bad)} mismatches, first: {bad[:3]}"
