"""The vector unit: REQUANT, NARROW, ADD and MUL (hdl/isa.py) on `rows` lanes of
hdl/vector_lane.py, from the accumulator or input scratchpad to the output scratchpad.

Per block of `count` entries it first fetches its parameter entries into registers (REQUANT its
bias, multiplier and shift; ADD/MUL their per-tensor parameters on the first block, then the
broadcast operand b of each block), then streams the entries through a pipeline, one per cycle:
the cycle that reads an entry's sources is followed by `config.vector_latency - 1` stages of
registers, the last of which writes the output entry.  Every op takes the same path length, set
by ADD's two multiply-by-quantized-multiplier in series (each stage at most one 32 x 32-bit
multiply or one wide add):

    1     source lanes + offsets, the left shifts    (REQUANT: acc + bias; MUL: both offsets;
    2-4   ADD's inputs scaled (multiply, nudge,        NARROW: |acc +- divisor/2|, then its
          rounding shift)                              reciprocal multiply, the remainder, the
    5-8   the sum's (ADD) / the value's (REQUANT,      correction, the sign)
          MUL) multiply-by-quantized-multiplier
    9     zero point and clamp
    10+   the output register (and any further delay the config asks for), written

The parameter registers and the instruction's fields that the lanes use (op, zero point, clamp
bounds, divisor) are registers that stay put while the pipeline holds entries; what the lanes
derive from them (shift amounts, rounding masks, the divisor's multiples) is registered again, off
the entries' path.  Each block drains its pipeline before the next block's parameters are fetched,
and the last block's drain ends with `done`, so an instruction's every output entry is written
when the compute unit retires it (the next instruction, and the tokens it pushes, see them).
NARROW first divides 2**31 by its divisor (one quotient bit per cycle) to get the reciprocal it
rounds with.  REQUANT with rounding=double (FULLY_CONNECTED) goes one lane per cycle through one
shared, pipelined lane instead.

`start` (one cycle, with `insn` valid) runs the instruction; `insn` must stay put until `done`,
high for one cycle as the last entry is written.  `range_bad` says that `insn` would address past a
scratchpad (the unit faults SRAM_RANGE instead of starting it); it needs the same instruction on
`head` the cycle before (the compute unit's queue head as it issues): its product is registered
from there.
"""

from __future__ import annotations

from amaranth import Array, Cat, Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from softnpu.hdl import isa, timing, vector_lane
from softnpu.hdl.config import MIN_VECTOR_LATENCY, NPUConfig
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
            "head": In(VectorInsnLayout),     # the instruction a cycle before `insn` (range check)
            "start": In(1),
            "done": Out(1),
            "range_bad": Out(1),
            # the source entries it reads, valid with `range_bad`: accumulators (REQUANT, NARROW)
            # or the input scratchpad (ADD, MUL)
            "reads_acc": Out(1),
            "src_first": Out(16),
            "src_end": Out(33),
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
        n_op_params = Mux(opcode == isa.Add.OPCODE, len(isa.Add.PARAMS), len(isa.Mul.PARAMS))

        # the instruction's fields that the lanes read, registered at start (no path from the
        # instruction register through a multiplier)
        op_requant, op_narrow, op_add, op_b_param = Signal(), Signal(), Signal(), Signal()
        zp, lo, hi = Signal(signed(8)), Signal(signed(8)), Signal(signed(8))
        divisor = Signal(16)
        with m.If(self.start):
            m.d.sync += [
                op_requant.eq(is_requant), op_narrow.eq(is_narrow), op_add.eq(opcode == isa.Add.OPCODE),
                op_b_param.eq(add.b_param),
                zp.eq(Mux(is_requant, req.zero_point, add.zero_point)),
                lo.eq(Mux(is_requant, req.act_min, Mux(is_narrow, nar.act_min, add.act_min))),
                hi.eq(Mux(is_requant, req.act_max, Mux(is_narrow, nar.act_max, add.act_max))),
                divisor.eq(nar.divisor)]

        vblk = Signal(16)
        vi = Signal(16)
        idx = Signal(17)                   # entry index within the instruction: vblk * count + vi
        pnext = Signal(17)                 # this block's parameter entries: REQUANT's triple, ADD/MUL's b
        fetch = Signal(4)                  # parameter entry being requested
        preg = Array(Signal(32 * rows, name=f"preg{i}") for i in range(PARAM_SLOTS))
        # the parameter entries a block needs: REQUANT its (bias, mult, shift); ADD/MUL their
        # per-tensor parameters on the first block, then the broadcast operand b of each block
        n_first = Mux(vblk == 0, n_op_params, 0)
        n_fetch = Mux(is_requant, 3, Mux(is_binary, n_first + add.b_param, 0))
        param_addr = Mux(is_requant, pnext + fetch, Mux(fetch < n_first, add.param + fetch, pnext))
        fetch_slot = Mux(is_binary & (fetch >= n_first), PARAM_SLOTS - 1, fetch)

        # -- the lanes: stage 1 is the cycle after the read, combinational on the read data ----------
        reg = vector_lane.register
        mbqm = vector_lane.multiply_by_quantized_multiplier
        wrap32 = vector_lane.wrap32
        p = [_lanes(preg[i], 32, rows) for i in range(PARAM_SLOTS)]
        recip = Signal(32)                 # floor(2**31 / divisor), made once per NARROW
        out_lanes = []
        for r in range(rows):
            a, acc = self.inp_a.data[r], self.acc_r.data[r]
            b = Mux(op_b_param, p[8][r], self.inp_b.data[r])
            # ADD: both inputs scaled (u2, u3: stages 1-4)
            u2 = mbqm(m, wrap32((a + p[0][r]) << isa.ADD_LEFT_SHIFT), p[1][r],
                      vector_lane.clamp_shift(m, p[2][r]), reg, reg)
            u3 = mbqm(m, wrap32((b + p[3][r]) << isa.ADD_LEFT_SHIFT), p[4][r],
                      vector_lane.clamp_shift(m, p[5][r]), reg, reg)
            # REQUANT: acc + bias (stage 1); MUL: the offsets (1), the product (2); both wait to stage 5
            requant_x = reg(m, signed(32), wrap32(acc + p[0][r]), "rq_x")
            mul_a = reg(m, signed(32), wrap32(a + p[0][r]), "mul_a")
            mul_b = reg(m, signed(32), wrap32(b + p[1][r]), "mul_b")
            mul_x = reg(m, signed(32), wrap32(mul_a * mul_b), "mul_x")
            early = reg(m, signed(32), Mux(op_requant, reg(m, signed(32), requant_x, "rq_x"), mul_x), "x")
            early = reg(m, signed(32), early, "x")
            # stage 5: the value to scale; u1 (stages 5-8) scales it
            x1 = Mux(op_add, wrap32(reg(m, signed(32), u2, "u2") + reg(m, signed(32), u3, "u3")), early)
            mult1 = reg(m, signed(32), Mux(op_requant, p[1][r], Mux(op_add, p[6][r], p[2][r])), "mult1")
            shift1 = vector_lane.clamp_shift(m, Mux(op_requant, p[2][r], Mux(op_add, p[7][r], p[3][r])))
            u1 = reg(m, signed(32), mbqm(m, x1, mult1, shift1, reg, reg), "u1")
            # NARROW: stages 1-6, then clamped and carried to stage 9
            quotient = vector_lane.round_divide_by_reciprocal(m, acc, divisor, recip, reg, reg)
            narrowed = vector_lane.clamp(m, quotient, lo, hi)
            for _ in range(3):
                narrowed = reg(m, signed(8), narrowed, "narrowed")
            # stage 9: zero point and clamp; then the output register
            lane_out = Mux(op_narrow, narrowed, vector_lane.clamp(m, u1 + zp, lo, hi))
            out_lanes.append(reg(m, signed(8), lane_out, "out"))
        out_data = Cat(*out_lanes)
        for _ in range(c.vector_latency - MIN_VECTOR_LATENCY):     # a longer pipeline, if configured
            out_data = reg(m, 8 * rows, out_data, "out_delay")

        # the entries in flight: valid and output address, one per stage (the last one writes)
        in_valid = Signal()
        in_addr = Signal(17)
        valid, addr = in_valid, in_addr
        for _ in range(c.vector_latency):
            valid, addr = reg(m, 1, valid, "flight_valid"), reg(m, 17, addr, "flight_addr")

        # REQUANT with rounding=double: one shared lane, one lane per cycle (FULLY_CONNECTED only),
        # pipelined: a lane's result lands RQD_LATENCY cycles after it enters
        rqd_acc = Signal(32 * rows)
        rqd_out = Signal(8 * rows)
        lane = Signal(range(rows))
        lane_in = Signal()
        pick = [Array(_lanes(v, 32, rows))[lane] for v in (rqd_acc, preg[0], preg[1], preg[2])]
        rqd_value = reg(m, signed(8), vector_lane.requantize_double(m, *pick, zp, lo, hi, reg), "rqd_value")
        rqd_lane, rqd_valid = lane, lane_in
        for _ in range(timing.RQD_LATENCY):
            rqd_lane, rqd_valid = reg(m, range(rows), rqd_lane, "rqd_lane"), reg(m, 1, rqd_valid, "rqd_valid")
        rqd_entry = Signal(8 * rows)
        m.d.comb += rqd_entry.eq(rqd_out)
        with m.Switch(rqd_lane):
            for r in range(rows):
                with m.Case(r):
                    m.d.comb += rqd_entry.word_select(r, 8).eq(rqd_value)
        with m.If(rqd_valid):
            m.d.sync += rqd_out.eq(rqd_entry)

        # the range check's product from `head`, registered; the sums and compares on `insn`
        h_req, h_nar, h_add = self.head.requant, self.head.narrow, self.head.add
        h_requant, h_narrow = h_req.opcode == isa.Requant.OPCODE, h_req.opcode == isa.Narrow.OPCODE
        v_n = Signal(32)
        m.d.sync += v_n.eq(Mux(h_requant, h_req.blocks, Mux(h_narrow, h_nar.blocks, h_add.blocks))
                           * Mux(h_requant, h_req.count, Mux(h_narrow, h_nar.count, h_add.count)))
        src_depth = Mux(is_binary, c.inp_depth, c.acc_depth)
        b_bad = Mux(add.b_param, add.b + add.blocks > c.param_depth, add.b + v_n > c.inp_depth)
        p_bad = Mux(is_requant, req.param + 3 * req.blocks > c.param_depth,
                    is_binary & (add.param + n_op_params > c.param_depth))
        m.d.comb += [self.range_bad.eq((v_out + v_n > c.out_depth) | (v_src + v_n > src_depth)
                                       | (is_binary & b_bad) | p_bad),
                     self.reads_acc.eq(~is_binary), self.src_first.eq(v_src), self.src_end.eq(v_src + v_n)]

        # -- sequencing -------------------------------------------------------------------------
        div_rem = Signal(17)
        div_bit = Signal(5)
        wait = Signal(range(max(c.vector_latency, timing.RQD_LATENCY) + 1))
        def next_block():
            """After a block's last entry: done after the last block, else the next block's parameters."""
            with m.If(vblk == v_blocks - 1):
                m.d.comb += self.done.eq(1)
                m.next = "IDLE"
            with m.Else():
                m.d.sync += [vblk.eq(vblk + 1), pnext.eq(pnext + Mux(is_requant, 3, 1))]
                m.next = "PARAMS"
        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [vblk.eq(0), vi.eq(0), idx.eq(0), fetch.eq(0),
                                 pnext.eq(Mux(is_requant, req.param, add.b))]
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
                    with m.If(is_requant & (req.rounding == isa.Rounding.DOUBLE)):
                        m.next = "RQD_READ"
            with m.State("STREAM"):
                # the input ports only for ADD and MUL: the first is shared with the conv engine,
                # which may run beside a REQUANT or NARROW
                with m.If(is_binary):
                    m.d.comb += [self.inp_a.addr.eq(v_src + idx), self.inp_a.en.eq(1),
                                 self.inp_b.addr.eq(add.b + idx), self.inp_b.en.eq(1)]
                with m.Else():
                    m.d.comb += [self.acc_r.addr.eq(v_src + idx), self.acc_r.en.eq(1)]
                m.d.comb += [in_valid.eq(1), in_addr.eq(v_out + idx)]
                m.d.sync += idx.eq(idx + 1)
                with m.If(vi != v_count - 1):
                    m.d.sync += vi.eq(vi + 1)
                with m.Else():
                    m.d.sync += [vi.eq(0), wait.eq(c.vector_latency - 1)]
                    m.next = "STREAM_DRAIN"
            with m.State("STREAM_DRAIN"):
                # the block's last entry is written in the cycle `wait` reaches 0
                m.d.sync += wait.eq(wait - 1)
                with m.If(wait == 0):
                    next_block()
            with m.State("RQD_READ"):
                m.d.comb += [self.acc_r.addr.eq(v_src + idx), self.acc_r.en.eq(1)]
                m.next = "RQD_LATCH"
            with m.State("RQD_LATCH"):
                m.d.sync += [rqd_acc.eq(self.acc_r.data), lane.eq(0)]
                m.next = "RQD_LANE"
            with m.State("RQD_LANE"):
                m.d.comb += lane_in.eq(1)
                m.d.sync += lane.eq(lane + 1)
                with m.If(lane == rows - 1):
                    m.d.sync += wait.eq(timing.RQD_LATENCY - 1)
                    m.next = "RQD_WAIT"
            with m.State("RQD_WAIT"):
                # the entry's last lane lands in the cycle `wait` reaches 0
                m.d.sync += wait.eq(wait - 1)
                with m.If(wait == 0):
                    m.d.comb += [self.out_w.en.eq(1), self.out_w.addr.eq(v_out + idx),
                                 self.out_w.data.eq(rqd_entry)]
                    m.d.sync += idx.eq(idx + 1)
                    with m.If(vi != v_count - 1):
                        m.d.sync += vi.eq(vi + 1)
                        m.next = "RQD_READ"
                    with m.Else():
                        m.d.sync += vi.eq(0)
                        next_block()

        # parameter registers: the entry requested last cycle
        fetched = Signal()
        fetched_slot = Signal(4)
        m.d.sync += [fetched.eq(self.param_r.en), fetched_slot.eq(fetch_slot)]
        with m.If(fetched):
            m.d.sync += preg[fetched_slot].eq(self.param_r.data)
        # the pipeline's last stage: write the output entry
        with m.If(valid):
            m.d.comb += [self.out_w.en.eq(1), self.out_w.addr.eq(addr), self.out_w.data.eq(out_data)]
        return m
