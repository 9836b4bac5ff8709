"""The compute unit: CONV on the MAC array with hardware loops, the vector ops (REQUANT, NARROW,
ADD, MUL), MARKER and FINISH (hdl/isa.py).

CONV is a two-stage pipeline, one window tap per cycle.  Stage 0 walks the loop counters (outer
block, output row, output column, then the taps: input block, kernel row, kernel column) and
issues synchronous reads of the input and weight entries (and, on an output's first tap, of the
accumulator entry it may add to).  Stage 1 multiplies on the array, adds into a running sum and,
on an output's last tap, writes the accumulator entry.

Vector ops fetch their parameter entries into registers (REQUANT per block, ADD/MUL once per
instruction plus the broadcast operand per block), then stream one entry per cycle through
`rows` lanes of hdl/vector_lane.py with the same two-stage read/compute split.
"""

from __future__ import annotations

from amaranth import Array, Cat, Module, Mux, Signal
from amaranth.lib.wiring import In, Out

from softnpu.hdl import isa, vector_lane
from softnpu.hdl.config import NPUConfig
from softnpu.hdl.insn_layout import view
from softnpu.hdl.load_unit import ScratchpadWriteSignature
from softnpu.hdl.mac_array import MACArray
from softnpu.hdl.store_unit import ScratchpadReadSignature
from softnpu.hdl.unit import Unit

__all__ = ["ComputeUnit"]

INT32_MIN = -(1 << 31)


def _lanes(value, width, n):
    return [value[width * i:width * (i + 1)].as_signed() for i in range(n)]


class ComputeUnit(Unit):
    def __init__(self, config: NPUConfig):
        self.config = config
        c = config
        super().__init__({
            "inp_a": Out(ScratchpadReadSignature(c.inp_depth, 8 * c.cols)),
            "inp_b": Out(ScratchpadReadSignature(c.inp_depth, 8 * c.cols)),
            "wgt_r": Out(ScratchpadReadSignature(c.wgt_depth, 8 * c.rows * c.cols)),
            "param_r": Out(ScratchpadReadSignature(c.param_depth, 32 * c.rows)),
            "acc_r": Out(ScratchpadReadSignature(c.acc_depth, 32 * c.rows)),
            "acc_w": Out(ScratchpadWriteSignature(c.acc_depth, 32 * c.rows)),
            "out_w": Out(ScratchpadWriteSignature(c.out_depth, 8 * c.rows)),
            "mac_active": Out(1),          # a CONV tap issued this cycle
            "marker": Out(1),              # MARKER: snapshot the counters now
            "marker_id": Out(16),
            "finish": Out(1),              # FINISH retired: the run is done
            "others_idle": In(1),          # load and store queues empty and units idle
        })

    def elaborate(self, platform):
        m = Module()
        c = self.config
        rows = c.rows
        m.submodules.array = array = MACArray(c)
        word = self.cur
        opcode = word[:isa.OPCODE_BITS]
        conv = view(isa.Conv, word)
        m.d.comb += self.status.pc.eq(self.cur_pc)

        # ---------------- CONV ------------------------------------------------------------------
        o0, oh, ow, tci, ki, kj = (Signal(16, name=n) for n in ("o0", "oh", "ow", "tci", "ki", "kj"))
        window = conv.mode != isa.ConvMode.MAC
        n_taps_ci = Mux(window, 1, conv.in_blocks)
        ci = Mux(window, o0, tci)
        first_tap = (tci == 0) & (ki == 0) & (kj == 0)
        last_tap = (tci == n_taps_ci - 1) & (ki == conv.kh - 1) & (kj == conv.kw - 1)
        last_out = (o0 == Mux(window, conv.in_blocks, conv.out_blocks) - 1) & (oh == conv.out_h - 1) & \
            (ow == conv.out_w - 1)
        inp_addr = conv.inp + ci * conv.inp_block + (oh * conv.stride_h + ki) * conv.inp_row + \
            ow * conv.stride_w + kj
        wgt_addr = conv.wgt + ((o0 * conv.in_blocks + tci) * conv.kh + ki) * conv.kw + kj
        acc_addr = conv.acc + (o0 * conv.out_h + oh) * conv.out_w + ow
        inp_last = conv.inp + (conv.in_blocks - 1) * conv.inp_block + \
            ((conv.out_h - 1) * conv.stride_h + conv.kh - 1) * conv.inp_row + \
            (conv.out_w - 1) * conv.stride_w + conv.kw
        n_acc = Mux(window, conv.in_blocks, conv.out_blocks) * conv.out_h * conv.out_w
        n_wgt = conv.out_blocks * conv.in_blocks * conv.kh * conv.kw

        s1_valid, s1_first, s1_last = Signal(), Signal(), Signal()
        s1_acc = Signal(16)
        running = Signal(32 * rows)
        old = Signal(32 * rows)
        m.d.comb += [array.x.eq(self.inp_a.data), array.w.eq(self.wgt_r.data)]
        x_lanes = _lanes(self.inp_a.data, 8, c.cols)
        dot_lanes = _lanes(array.dots, 32, rows)
        run_lanes = _lanes(running, 32, rows)
        old_now = Mux(s1_first, self.acc_r.data, old)
        old_lanes = _lanes(old_now, 32, rows)
        new_lanes, final_lanes = [], []
        for r in range(rows):
            tap = Mux(conv.mode == isa.ConvMode.MAC, dot_lanes[r], x_lanes[r])
            identity = Mux(conv.mode == isa.ConvMode.MAX, INT32_MIN, 0)
            base = Mux(s1_first, identity, run_lanes[r])
            is_max = conv.mode == isa.ConvMode.MAX
            new = Mux(is_max, Mux(tap > base, tap, base), vector_lane.wrap32(base + tap))
            combined = Mux(is_max, Mux(old_lanes[r] > new, old_lanes[r], new),
                           vector_lane.wrap32(old_lanes[r] + new))
            new_lanes.append(new[:32])
            final_lanes.append(Mux(conv.accumulate, combined, new)[:32])

        # ---------------- vector ops --------------------------------------------------------------
        req = view(isa.Requant, word)
        nar = view(isa.Narrow, word)
        add = view(isa.Add, word)          # ADD and MUL share a layout
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
        preg = Array(Signal(32 * rows, name=f"preg{i}") for i in range(9))
        v_s1 = Signal()
        v_s1_out = Signal(17)
        entry_index = vblk * v_count + vi
        # the parameter entries a block needs: REQUANT its (bias, mult, shift); ADD/MUL their
        # per-tensor parameters on the first block, then the broadcast operand b of each block
        n_first = Mux(vblk == 0, n_op_params, 0)
        n_fetch = Mux(is_requant, 3, Mux(is_binary, n_first + add.b_param, 0))
        param_addr = Mux(is_requant, req.param + 3 * vblk + fetch,
                         Mux(fetch < n_first, add.param + fetch, add.b + vblk))
        fetch_slot = Mux(is_binary & (fetch >= n_first), 8, fetch)

        a_lanes = _lanes(self.inp_a.data, 8, rows)
        b_inp = _lanes(self.inp_b.data, 8, rows)
        acc_lanes = _lanes(self.acc_r.data, 32, rows)
        p = [_lanes(preg[i], 32, rows) for i in range(9)]
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
        vec_range_bad = (v_out + v_n > c.out_depth) | (v_src + v_n > src_depth) | (is_binary & b_bad) | p_bad

        # ---------------- sequencing ---------------------------------------------------------------
        div_rem = Signal(17)
        div_bit = Signal(5)
        m.d.comb += [
            self.marker_id.eq(view(isa.Marker, word).id),
            self.acc_w.data.eq(Cat(*final_lanes)),
            self.acc_w.addr.eq(s1_acc),
        ]
        with m.If(v_s1):
            m.d.comb += [self.out_w.addr.eq(v_s1_out), self.out_w.data.eq(Cat(*out_lanes))]
        with m.FSM() as fsm:
            with m.State("IDLE"):
                self.issue(m, "DECODE")
            with m.State("DECODE"):
                m.d.sync += [o0.eq(0), oh.eq(0), ow.eq(0), tci.eq(0), ki.eq(0), kj.eq(0), vblk.eq(0),
                             vi.eq(0), fetch.eq(0), s1_valid.eq(0), v_s1.eq(0)]
                with m.Switch(opcode):
                    with m.Case(isa.Conv.OPCODE):
                        with m.If((inp_last > c.inp_depth) | (conv.acc + n_acc > c.acc_depth)
                                  | (~window & (conv.wgt + n_wgt > c.wgt_depth))):
                            self.fault(m, isa.ErrorCode.SRAM_RANGE)
                        with m.Else():
                            m.next = "CONV"
                    with m.Case(isa.Requant.OPCODE, isa.Narrow.OPCODE, isa.Add.OPCODE, isa.Mul.OPCODE):
                        with m.If(vec_range_bad):
                            self.fault(m, isa.ErrorCode.SRAM_RANGE)
                        with m.Elif(is_narrow):
                            m.d.sync += [div_rem.eq(0), recip.eq(0), div_bit.eq(31)]
                            m.next = "RECIPROCAL"
                        with m.Else():
                            m.next = "PARAMS"
                    with m.Case(isa.Marker.OPCODE):
                        m.d.comb += self.marker.eq(1)
                        self.retire(m)
                    with m.Case(isa.Finish.OPCODE):
                        m.next = "FINISH"
                    with m.Default():
                        self.fault(m, isa.ErrorCode.ILLEGAL_OPCODE)

            with m.State("CONV"):
                # stage 0: issue the reads of one tap
                m.d.comb += [self.inp_a.addr.eq(inp_addr), self.inp_a.en.eq(1),
                             self.wgt_r.addr.eq(wgt_addr), self.wgt_r.en.eq(1),
                             self.acc_r.addr.eq(acc_addr), self.acc_r.en.eq(first_tap),
                             self.mac_active.eq(1)]
                m.d.sync += [s1_valid.eq(1), s1_first.eq(first_tap), s1_last.eq(last_tap),
                             s1_acc.eq(acc_addr)]
                with m.If(kj != conv.kw - 1):
                    m.d.sync += kj.eq(kj + 1)
                with m.Else():
                    m.d.sync += kj.eq(0)
                    with m.If(ki != conv.kh - 1):
                        m.d.sync += ki.eq(ki + 1)
                    with m.Else():
                        m.d.sync += ki.eq(0)
                        with m.If(tci != n_taps_ci - 1):
                            m.d.sync += tci.eq(tci + 1)
                        with m.Else():
                            m.d.sync += tci.eq(0)
                            with m.If(ow != conv.out_w - 1):
                                m.d.sync += ow.eq(ow + 1)
                            with m.Else():
                                m.d.sync += ow.eq(0)
                                with m.If(oh != conv.out_h - 1):
                                    m.d.sync += oh.eq(oh + 1)
                                with m.Else():
                                    m.d.sync += [oh.eq(0), o0.eq(o0 + 1)]
                with m.If(last_tap & last_out):
                    m.next = "CONV_DRAIN"
            with m.State("CONV_DRAIN"):
                m.d.sync += s1_valid.eq(0)
                self.retire(m)

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
                    self.retire(m)
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
                            self.retire(m)
                        with m.Else():
                            m.d.sync += vblk.eq(vblk + 1)
                            m.next = "PARAMS"
            with m.State("FINISH"):
                with m.If(self.others_idle):
                    m.d.comb += self.finish.eq(1)
                    self.retire(m)

        # stage 1 of CONV: accumulate, and write on an output's last tap
        with m.If(s1_valid):
            m.d.sync += running.eq(Cat(*new_lanes))
            with m.If(s1_first):
                m.d.sync += old.eq(self.acc_r.data)
            m.d.comb += self.acc_w.en.eq(s1_last)
        # parameter registers: the entry requested last cycle
        fetched = Signal()
        fetched_slot = Signal(4)
        m.d.sync += [fetched.eq(self.param_r.en), fetched_slot.eq(fetch_slot)]
        with m.If(fetched):
            m.d.sync += preg[fetched_slot].eq(self.param_r.data)
        # stage 1 of vector ops: write the output entry
        with m.If(v_s1):
            m.d.comb += self.out_w.en.eq(1)

        m.d.comb += self.status.busy.eq(~fsm.ongoing("IDLE"))
        return m
