"""The vector unit: REQUANT, NARROW, ADD and MUL (hdl/isa.py) on `rows` lanes of
hdl/vector_lane.py, from the accumulator or input scratchpad to the output scratchpad.

Per block of `count` entries it first fetches its parameter entries into registers (REQUANT its
bias, multiplier and shift; ADD/MUL their per-tensor parameters on the first block, then the
broadcast operand b of each block), then streams the entries one per cycle: stage 0 reads the
source entries, stage 1 (a cycle later, when the reads have landed) computes the lanes and writes
the output entry.  NARROW first divides 2**31 by its divisor (one quotient bit per cycle) to get
the reciprocal it rounds with.  REQUANT with rounding=double (FULLY_CONNECTED) goes one lane per
cycle through one shared lane instead.

`start` (one cycle, with `insn` valid) runs the instruction; `insn` must stay put until `done`,
high for one cycle as the last entry is written.  `range_bad` says, from `insn` alone, that the
instruction would address past a scratchpad (the unit faults SRAM_RANGE instead of starting it).
"""

from __future__ import annotations

from amaranth import Array, Cat, Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from softnpu.hdl import isa, vector_lane
from softnpu.hdl.config import NPUConfig
from softnpu.hdl.conv_engine import accumulator_lanes
from softnpu.hdl.insn_layout import layout
from softnpu.hdl.load_unit import ScratchpadWriteSignature
from softnpu.hdl.mac_array import activation_lanes
from softnpu.hdl.store_unit import ScratchpadReadSignature

__all__ = ["VectorUnit", "VectorInsnLayout", "output_lanes", "VECTOR_OPS"]

VECTOR_OPS = (isa.Requant, isa.Narrow, isa.Add, isa.Mul)
# One instruction word seen as each of the vector ops (they share the header: opcode, tokens).
VectorInsnLayout = data.UnionLayout({cls.MNEMONIC.lower(): layout(cls) for cls in VECTOR_OPS})
PARAM_SLOTS = 9          # parameter registers: up to 8 per-tensor values, slot 8 the broadcast b


def output_lanes(config: NPUConfig) -> data.ArrayLayout:
    """An output entry: `rows` int8 lanes."""
    return data.ArrayLayout(signed(8), config.rows)


def _lanes(value, width, n):
    return [value[width * i:width * (i + 1)].as_signed() for i in range(n)]


class VectorUnit(wiring.Component):
    def __init__(self, config: NPUConfig):
        if not isinstance(config, NPUConfig):
            raise TypeError(f"config must be an NPUConfig, got {config!r}")
        self.config = config
        c = config
        super().__init__({
            "insn": In(VectorInsnLayout),
            "start": In(1),
            "done": Out(1),
            "range_bad": Out(1),
            "acc_r": Out(ScratchpadReadSignature(c.acc_depth, accumulator_lanes(c))),
            "inp_a": Out(ScratchpadReadSignature(c.inp_depth, activation_lanes(c))),
            "inp_b": Out(ScratchpadReadSignature(c.inp_depth, activation_lanes(c))),
            "param_r": Out(ScratchpadReadSignature(c.param_depth, accumulator_lanes(c))),
            "out_w": Out(ScratchpadWriteSignature(c.out_depth, output_lanes(c))),
        })

    def elaborate(self, platform):
        m = Module()
        c = self.config
        rows = c.rows
        req, nar, add = self.insn.requant, self.insn.narrow, self.insn.add   # MUL shares ADD's layout
        opcode = req.opcode
        is_requant = opcode == isa.Requant.OPCODE
        is_narrow = opcode == isa.Narrow.OPCODE
        is_binary = (opcode == isa.Add.OPCODE) | (opcode == isa.Mul.OPCODE)
        v_blocks = Mux(is_requant, req.blocks, Mux(is_narrow, nar.blocks, add.blocks))
        v_count = Mux(is_requant, req.count, Mux(is_narrow, nar.count, add.count))
        v_out = Mux(is_requant, req.out, Mux(is_narrow, nar.out, add.out))
        v_src = Mux(is_requant, req.acc, Mux(is_narrow, nar.acc, add.a))
        v_lo = Mux(is_requant, req.act_min, Mux(is_narrow, nar.act_min, add.act_min)).as_signed()
        v_hi = Mux(is_requant, req.act_max, Mux(is_narrow, nar.act_max, add.act_max)).as_signed()
        zp = Mux(is_requant, req.zero_point, add.zero_point).as_signed()
        n_op_params = Mux(opcode == isa.Add.OPCODE, len(isa.Add.PARAMS), len(isa.Mul.PARAMS))
        vblk = Signal(16)
        vi = Signal(16)
        fetch = Signal(4)                  # parameter entry being requested
        preg = Array(Signal(32 * rows, name=f"preg{i}") for i in range(PARAM_SLOTS))
        v_s1 = Signal()
        v_s1_out = Signal(17)
        entry_index = vblk * v_count + vi
        # the parameter entries a block needs: REQUANT its (bias, mult, shift); ADD/MUL their
        # per-tensor parameters on the first block, then the broadcast operand b of each block
        n_first = Mux(vblk == 0, n_op_params, 0)
        n_fetch = Mux(is_requant, 3, Mux(is_binary, n_first + add.b_param, 0))
        param_addr = Mux(is_requant, req.param + 3 * vblk + fetch,
                         Mux(fetch < n_first, add.param + fetch, add.b + vblk))
        fetch_slot = Mux(is_binary & (fetch >= n_first), PARAM_SLOTS - 1, fetch)

        # -- the lanes ------------------------------------------------------------------------
        a_lanes = [self.inp_a.data[r] for r in range(rows)]
        b_inp = [self.inp_b.data[r] for r in range(rows)]
        acc_lanes = [self.acc_r.data[r] for r in range(rows)]
        p = [_lanes(preg[i], 32, rows) for i in range(PARAM_SLOTS)]
        is_add = opcode == isa.Add.OPCODE
        is_double = is_requant & (req.rounding == isa.Rounding.DOUBLE)
        recip = Signal(32)                 # floor(2**31 / divisor), made once per NARROW
        out_lanes = []
        for r in range(rows):
            # Three MultiplyByQuantizedMultiplier units per lane: ADD scales both inputs (u2, u3)
            # and their sum (u1); REQUANT and MUL use u1 alone.
            b_lane = Mux(add.b_param, p[8][r], b_inp[r])
            u2 = vector_lane.multiply_by_quantized_multiplier(
                m, vector_lane.wrap32((a_lanes[r] + p[0][r]) << isa.ADD_LEFT_SHIFT), p[1][r],
                vector_lane.clamp_shift(m, p[2][r]))
            u3 = vector_lane.multiply_by_quantized_multiplier(
                m, vector_lane.wrap32((b_lane + p[3][r]) << isa.ADD_LEFT_SHIFT), p[4][r],
                vector_lane.clamp_shift(m, p[5][r]))
            x1 = Mux(is_requant, vector_lane.wrap32(acc_lanes[r] + p[0][r]),
                     Mux(is_add, vector_lane.wrap32(u2 + u3),
                         vector_lane.wrap32(vector_lane.wrap32(a_lanes[r] + p[0][r])
                                            * vector_lane.wrap32(b_lane + p[1][r]))))
            mult1 = Mux(is_requant, p[1][r], Mux(is_add, p[6][r], p[2][r]))
            shift1 = Mux(is_requant, p[2][r], Mux(is_add, p[7][r], p[3][r]))
            shift1 = vector_lane.clamp_shift(m, shift1)
            u1 = vector_lane.multiply_by_quantized_multiplier(m, x1, mult1, shift1)
            quotient = vector_lane.round_divide_by_reciprocal(m, acc_lanes[r], nar.divisor, recip)
            out_lanes.append(vector_lane.clamp(m, Mux(is_narrow, quotient, u1 + zp), v_lo, v_hi))

        # REQUANT with rounding=double: one shared lane, one lane per cycle (FULLY_CONNECTED only)
        rqd_acc = Signal(32 * rows)
        rqd_out = Signal(8 * rows)
        lane = Signal(range(rows))
        pick = [Array(_lanes(v, 32, rows))[lane] for v in (rqd_acc, preg[0], preg[1], preg[2])]
        rqd_value = vector_lane.requantize_double(m, *pick, zp, v_lo, v_hi)
        rqd_entry = Signal(8 * rows)
        m.d.comb += rqd_entry.eq(rqd_out)
        with m.Switch(lane):
            for r in range(rows):
                with m.Case(r):
                    m.d.comb += rqd_entry.word_select(r, 8).eq(rqd_value)

        v_n = v_blocks * v_count
        src_depth = Mux(is_binary, c.inp_depth, c.acc_depth)
        b_bad = Mux(add.b_param, add.b + add.blocks > c.param_depth, add.b + v_n > c.inp_depth)
        p_bad = Mux(is_requant, req.param + 3 * req.blocks > c.param_depth,
                    is_binary & (add.param + n_op_params > c.param_depth))
        m.d.comb += self.range_bad.eq((v_out + v_n > c.out_depth) | (v_src + v_n > src_depth)
                                      | (is_binary & b_bad) | p_bad)

        # -- sequencing -------------------------------------------------------------------------
        div_rem = Signal(17)
        div_bit = Signal(5)
        with m.If(v_s1):
            m.d.comb += [self.out_w.addr.eq(v_s1_out), self.out_w.data.eq(Cat(*out_lanes))]
        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [vblk.eq(0), vi.eq(0), fetch.eq(0), v_s1.eq(0)]
                    with m.If(is_narrow):
                        m.d.sync += [div_rem.eq(0), recip.eq(0), div_bit.eq(31)]
                        m.next = "RECIPROCAL"
                    with m.Else():
                        m.next = "PARAMS"
            with m.State("RECIPROCAL"):
                # restoring division of 2**31 by the divisor, one quotient bit per cycle
                rem = Cat(Mux(div_bit == 31, 1, 0), div_rem)
                with m.If(rem >= nar.divisor):
                    m.d.sync += [div_rem.eq(rem - nar.divisor), recip.eq(recip | (1 << div_bit))]
                with m.Else():
                    m.d.sync += div_rem.eq(rem)
                m.d.sync += div_bit.eq(div_bit - 1)
                with m.If(div_bit == 0):
                    m.next = "PARAMS"
            with m.State("PARAMS"):
                # request entry `fetch`; it lands in its register at the end of the next cycle,
                # before stage 1 of the first streamed entry reads it
                with m.If(fetch < n_fetch):
                    m.d.comb += [self.param_r.addr.eq(param_addr), self.param_r.en.eq(1)]
                    m.d.sync += fetch.eq(fetch + 1)
                with m.Else():
                    m.d.sync += fetch.eq(0)
                    m.next = "STREAM"
                    with m.If(is_double):
                        m.next = "RQD_READ"
            with m.State("STREAM"):
                index = v_src + entry_index
                m.d.comb += [self.acc_r.addr.eq(index), self.acc_r.en.eq(1),
                             self.inp_a.addr.eq(index), self.inp_a.en.eq(1),
                             self.inp_b.addr.eq(add.b + entry_index), self.inp_b.en.eq(1)]
                m.d.sync += [v_s1.eq(1), v_s1_out.eq(v_out + entry_index)]
                with m.If(vi != v_count - 1):
                    m.d.sync += vi.eq(vi + 1)
                with m.Else():
                    m.d.sync += vi.eq(0)
                    m.next = "STREAM_DRAIN"
            with m.State("STREAM_DRAIN"):
                m.d.sync += v_s1.eq(0)
                with m.If(vblk == v_blocks - 1):
                    m.d.comb += self.done.eq(1)
                    m.next = "IDLE"
                with m.Else():
                    m.d.sync += vblk.eq(vblk + 1)
                    m.next = "PARAMS"
            with m.State("RQD_READ"):
                m.d.comb += [self.acc_r.addr.eq(v_src + entry_index), self.acc_r.en.eq(1)]
                m.next = "RQD_LATCH"
            with m.State("RQD_LATCH"):
                m.d.sync += [rqd_acc.eq(self.acc_r.data), lane.eq(0)]
                m.next = "RQD_LANE"
            with m.State("RQD_LANE"):
                m.d.sync += [rqd_out.eq(rqd_entry), lane.eq(lane + 1)]
                with m.If(lane == rows - 1):
                    m.d.comb += [self.out_w.en.eq(1), self.out_w.addr.eq(v_out + entry_index),
                                 self.out_w.data.eq(rqd_entry)]
                    with m.If(vi != v_count - 1):
                        m.d.sync += vi.eq(vi + 1)
                        m.next = "RQD_READ"
                    with m.Else():
                        m.d.sync += vi.eq(0)
                        with m.If(vblk == v_blocks - 1):
                            m.d.comb += self.done.eq(1)
                            m.next = "IDLE"
                        with m.Else():
                            m.d.sync += vblk.eq(vblk + 1)
                            m.next = "PARAMS"

        # parameter registers: the entry requested last cycle
        fetched = Signal()
        fetched_slot = Signal(4)
        m.d.sync += [fetched.eq(self.param_r.en), fetched_slot.eq(fetch_slot)]
        with m.If(fetched):
            m.d.sync += preg[fetched_slot].eq(self.param_r.data)
        # stage 1: write the output entry
        with m.If(v_s1):
            m.d.comb += self.out_w.en.eq(1)
        return m
