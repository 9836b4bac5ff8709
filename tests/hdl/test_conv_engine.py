"""hdl/conv_engine.py on Amaranth's simulator, against the CONV semantics of hdl/isa.py `Conv`:
MAC over every window tap and input block, SUM and MAX pooling windows, `accumulate` adding to (or
taking the maximum with) the old entries with 32-bit wrap, strides and row/block pitches; one tap
per cycle and `done` as the last tap is written (mac_latency cycles after its reads), a longer
configured latency only later; `range_bad` for every scratchpad overrun."""

import itertools

import numpy as np
import pytest
from amaranth.hdl import Value

from softnpu.hdl import isa
from softnpu.hdl.config import preset
from softnpu.hdl.conv_engine import ConvEngine
from softnpu.hdl.isa import ConvMode
from tests.hdl.bfm import SyncReadPort, WriteRecorder, simulate

CFG = preset("tiny")
R, C = CFG.rows, CFG.cols
INT32_MIN = -(1 << 31)


def pack(values, bits: int) -> int:
    word = 0
    for i, v in enumerate(np.asarray(values).reshape(-1)):
        word |= (int(v) & ((1 << bits) - 1)) << (bits * i)
    return word


def unpack(word: int, bits: int, n: int) -> np.ndarray:
    out = [(word >> (bits * i)) & ((1 << bits) - 1) for i in range(n)]
    return np.array([v - (1 << bits) if v >> (bits - 1) else v for v in out], np.int64)


def wrap32(x):
    return ((np.asarray(x, np.int64) + (1 << 31)) % (1 << 32)) - (1 << 31)


class Scratchpads:
    def __init__(self, seed: int):
        rng = np.random.default_rng(seed)
        self.inp = rng.integers(-128, 128, (CFG.inp_depth, C))
        self.inp[:4] = -128                                        # extremes at the start
        self.wgt = rng.integers(-128, 128, (CFG.wgt_depth, R, C))
        self.wgt[:2] = -128
        self.acc = rng.integers(INT32_MIN, 1 << 31, (CFG.acc_depth, R))
        self.acc[:8] = (1 << 31) - 1                               # sums that wrap

    def reference(self, insn: isa.Conv) -> dict[int, np.ndarray]:
        """acc entry -> lanes, from the docstring of hdl/isa.py `Conv`."""
        window = insn.mode != ConvMode.MAC
        out = {}
        for o in range(insn.in_blocks if window else insn.out_blocks):
            for oh in range(insn.out_h):
                for ow in range(insn.out_w):
                    value = np.full(R, INT32_MIN if insn.mode == ConvMode.MAX else 0, np.int64)
                    cis = [o] if window else range(insn.in_blocks)
                    for ci, i, j in itertools.product(cis, range(insn.kh), range(insn.kw)):
                        x = self.inp[insn.inp + ci * insn.inp_block + (oh * insn.stride_h + i) * insn.inp_row
                                     + ow * insn.stride_w + j]
                        if insn.mode == ConvMode.MAC:
                            w = self.wgt[insn.wgt + ((o * insn.in_blocks + ci) * insn.kh + i) * insn.kw + j]
                            value = wrap32(value + w @ x)
                        elif insn.mode == ConvMode.SUM:
                            value = wrap32(value + x[:R])
                        else:
                            value = np.maximum(value, x[:R])
                    addr = insn.acc + (o * insn.out_h + oh) * insn.out_w + ow
                    if insn.accumulate:
                        old = self.acc[addr]
                        value = np.maximum(old, value) if insn.mode == ConvMode.MAX else wrap32(old + value)
                    out[addr] = value
        return out


def conv(mode=ConvMode.MAC, accumulate=0, out_blocks=1, in_blocks=1, kh=1, kw=1, stride_h=1,
         stride_w=1, out_h=1, out_w=1, acc=0, inp=0, wgt=0, inp_row=None, inp_block=None) -> isa.Conv:
    inp_row = inp_row if inp_row is not None else (out_w - 1) * stride_w + kw
    inp_block = inp_block if inp_block is not None else ((out_h - 1) * stride_h + kh) * inp_row
    return isa.Conv(mode=mode, accumulate=accumulate, out_blocks=out_blocks, in_blocks=in_blocks, kh=kh,
                    kw=kw, stride_h=stride_h, stride_w=stride_w, out_h=out_h, out_w=out_w, acc=acc, inp=inp,
                    wgt=wgt, inp_row=inp_row, inp_block=inp_block)


CASES = {
    "mac_1x1": conv(),
    "mac_extremes_wrap_into_old": conv(accumulate=1, kh=2, kw=2, out_w=2),
    "mac_3x3_stride2_blocks": conv(out_blocks=2, in_blocks=2, kh=3, kw=3, stride_h=2, stride_w=2, out_h=2,
                                   out_w=3, acc=40, inp=17, wgt=5),
    "mac_pitches_wider_than_the_window": conv(in_blocks=3, kh=2, kw=1, out_h=2, out_w=2, inp_row=9,
                                              inp_block=40, inp=100, wgt=30, acc=100),
    "mac_accumulate": conv(accumulate=1, out_blocks=3, in_blocks=1, kh=1, kw=3, out_w=4, acc=8, wgt=9),
    "sum_2x2_pool": conv(mode=ConvMode.SUM, in_blocks=2, kh=2, kw=2, stride_h=2, stride_w=2, out_h=2, out_w=2,
                         acc=60, inp=3),
    "sum_accumulate_wraps": conv(mode=ConvMode.SUM, accumulate=1, kh=1, kw=4, out_w=2, acc=0),
    "max_3x3_stride2": conv(mode=ConvMode.MAX, in_blocks=2, kh=3, kw=3, stride_h=2, stride_w=2, out_h=2,
                            out_w=2, acc=200, inp=50),
    "max_accumulate": conv(mode=ConvMode.MAX, accumulate=1, kh=2, kw=1, out_h=3, acc=300),
}


def taps(insn: isa.Conv) -> int:
    window = insn.mode != ConvMode.MAC
    outs = (insn.in_blocks if window else insn.out_blocks) * insn.out_h * insn.out_w
    return outs * (1 if window else insn.in_blocks) * insn.kh * insn.kw


def run(insn: isa.Conv, pads: Scratchpads, config=CFG):
    dut = ConvEngine(config)
    ports = [SyncReadPort(dut.inp, {a: pack(v, 8) for a, v in enumerate(pads.inp)}),
             SyncReadPort(dut.wgt, {a: pack(v, 8) for a, v in enumerate(pads.wgt)}),
             SyncReadPort(dut.acc_r, {a: pack(v, 32) for a, v in enumerate(pads.acc)})]
    writes = WriteRecorder(dut.acc_w)
    got = {}

    async def bench(ctx):
        ctx.set(Value.cast(dut.head), insn.encode_int())       # as the queue head issues
        await ctx.tick()
        ctx.set(Value.cast(dut.insn), insn.encode_int())
        got["range_bad"] = ctx.get(dut.range_bad)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        cycles = active = 0
        while True:
            _, _, done, mac_active = await ctx.tick().sample(dut.done, dut.mac_active)
            cycles += 1
            active += mac_active
            if done:
                break
            assert cycles < 10_000, "no done"
        got["cycles"], got["active"] = cycles, active
        for _ in range(2):                        # nothing after done
            await ctx.tick()

    simulate(dut, bench, processes=[p.serve for p in ports] + [writes.watch])
    return got, writes


@pytest.mark.parametrize("name", list(CASES))
def test_conv_matches_the_isa_semantics_one_tap_per_cycle(name):
    insn = CASES[name]
    pads = Scratchpads(seed=len(name))
    got, writes = run(insn, pads)
    want = pads.reference(insn)
    assert got["range_bad"] == 0
    entries = writes.entries()
    assert len(writes.writes) == len(want), "one write per output entry"
    for addr, lanes in want.items():
        assert np.array_equal(unpack(entries[addr], 32, R), lanes), \
            f"{name}: acc[{addr}] {unpack(entries[addr], 32, R)}, want {lanes}"
    assert got["active"] == taps(insn), "one tap per MAC-active cycle"
    assert got["cycles"] == taps(insn) + CFG.mac_latency, "done as the last tap is written"


def test_longer_mac_latency_delays_done_not_results():
    config = CFG.replace(mac_latency=CFG.mac_latency + 2)
    insn = CASES["mac_3x3_stride2_blocks"]
    pads = Scratchpads(seed=5)
    got, writes = run(insn, pads, config)
    entries = writes.entries()
    for addr, lanes in pads.reference(insn).items():
        assert np.array_equal(unpack(entries[addr], 32, R), lanes)
    assert got["cycles"] == taps(insn) + CFG.mac_latency + 2


@pytest.mark.parametrize("insn, bad", [
    (conv(out_h=2, out_w=2, acc=CFG.acc_depth - 4), False),
    (conv(out_h=2, out_w=2, acc=CFG.acc_depth - 3), True),                     # acc overrun
    (conv(kh=2, kw=2, inp=CFG.inp_depth - 4, inp_row=2), False),               # last entry is the last
    (conv(kh=2, kw=2, inp=CFG.inp_depth - 3, inp_row=2), True),                # inp overrun
    (conv(in_blocks=2, kh=2, kw=2, wgt=CFG.wgt_depth - 8), False),
    (conv(in_blocks=2, kh=2, kw=2, wgt=CFG.wgt_depth - 7), True),              # wgt overrun
    (conv(mode=ConvMode.MAX, in_blocks=2, kh=2, kw=2, wgt=CFG.wgt_depth - 1), False),   # windows read no W
])
def test_range_check_covers_every_scratchpad(insn, bad):
    dut = ConvEngine(CFG)
    got = {}

    async def bench(ctx):
        ctx.set(Value.cast(dut.head), insn.encode_int())       # as the queue head issues
        await ctx.tick()
        ctx.set(Value.cast(dut.insn), insn.encode_int())
        got["bad"] = ctx.get(dut.range_bad)

    simulate(dut, bench)
    assert got["bad"] == bad
