"""The conv engine: CONV (hdl/isa.py `Conv`) on the MAC array, with hardware loops.

A pipeline, one window tap per cycle.  Stage 0 walks the loop counters (outer block, output row,
output column, then the taps: input block, kernel row, kernel column) with their addresses as
running sums, and issues the synchronous reads of the input and weight entries (and, on an
output's first tap, of the accumulator entry it may add to).  When the reads have landed, stage 1
multiplies on the array (the products registered), stage 2 sums them in the adder trees (MAC mode)
or takes the input lanes (SUM and MAX window modes), stage 3 folds the tap into a running value
and, on an output's last tap, stage 4 writes the accumulator entry (adding to, or taking the
maximum with, the old entry when `accumulate`): `config.mac_latency` cycles (at least 4) from a
tap's reads to its write.  The entries an instruction writes are distinct, so no tap reads what
the pipeline still holds.

`start` (one cycle, with `insn` valid) runs the instruction; the engine holds no copy of it, so
`insn` must stay put until `done`, which is high for one cycle, the one in which the last tap is
written (the drain).  `range_bad` says that `insn` would address past a scratchpad (the unit faults
SRAM_RANGE instead of starting it); it needs the same instruction on `head` the cycle before (the
compute unit's queue head as it issues): its products are registered from there.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal, Value, signed
from amaranth.lib import data, enum, wiring
from amaranth.lib.wiring import In, Out

from softnpu.hdl import isa, vector_lane
from softnpu.hdl.config import NPUConfig
from softnpu.hdl.insn_layout import layout
from softnpu.hdl.load_unit import ScratchpadWriteSignature
from softnpu.hdl.mac_array import MACArray, activation_lanes, weight_rows
from softnpu.hdl.store_unit import ScratchpadReadSignature

__all__ = ["ConvEngine", "accumulator_lanes"]

INT32_MIN = -(1 << 31)


def accumulator_lanes(config: NPUConfig) -> data.ArrayLayout:
    """An accumulator entry: `rows` int32 lanes."""
    return data.ArrayLayout(signed(32), config.rows)


class ConvEngine(wiring.Component):
    class State(enum.Enum):
        IDLE = 0
        TAPS = 1      # stage 0 of one tap per cycle
        DRAIN = 2     # stages 1-4 of the last tap

    def __init__(self, config: NPUConfig):
        if not isinstance(config, NPUConfig):
            raise TypeError(f"config must be an NPUConfig, got {config!r}")
        self.config = config
        c = config
        super().__init__({
            "insn": In(layout(isa.Conv)),
            "head": In(layout(isa.Conv)),     # the instruction a cycle before `insn` (range check)
            "start": In(1),
            "done": Out(1),
            "range_bad": Out(1),
            "acc_end": Out(49),            # one past the last accumulator entry, valid with range_bad
            "mac_active": Out(1),          # a tap is issued this cycle
            "inp": Out(ScratchpadReadSignature(c.inp_depth, activation_lanes(c))),
            "wgt": Out(ScratchpadReadSignature(c.wgt_depth, weight_rows(c))),
            "acc_r": Out(ScratchpadReadSignature(c.acc_depth, accumulator_lanes(c))),
            "acc_w": Out(ScratchpadWriteSignature(c.acc_depth, accumulator_lanes(c))),
        })

    def elaborate(self, platform):
        m = Module()
        c = self.config
        rows = c.rows
        m.submodules.array = array = MACArray(c, registered_products=True)
        conv = self.insn

        o0, oh, ow, tci, ki, kj = (Signal(16, name=n) for n in ("o0", "oh", "ow", "tci", "ki", "kj"))
        window = conv.mode != isa.ConvMode.MAC
        n_taps_ci = Mux(window, 1, conv.in_blocks)
        first_tap = (tci == 0) & (ki == 0) & (kj == 0)
        last_tap = (tci == n_taps_ci - 1) & (ki == conv.kh - 1) & (kj == conv.kw - 1)
        last_row = oh == conv.out_h - 1
        last_col = ow == conv.out_w - 1
        last_out = (o0 == Mux(window, conv.in_blocks, conv.out_blocks) - 1) & last_row & last_col
        # The addresses of the loops, kept as running sums (no multiplier between the counters and
        # the scratchpads):
        #   inp = inp + ci*inp_block + (oh*stride_h + ki)*inp_row + ow*stride_w + kj
        #       = pix (the output's window origin: block, row and column) + tap_row (ci, ki) + kj
        #   wgt = wgt + ((o0*in_blocks + tci)*kh + ki)*kw + kj: one more per tap, back to the out
        #         block's first weight for its next output
        #   acc = acc + (o0*out_h + oh)*out_w + ow: one more per output
        blk_base, row_base, pix = Signal(16), Signal(16), Signal(16)    # window origins
        tap_blk, tap_row = Signal(16), Signal(16)                       # ci*inp_block, + ki*inp_row
        row_step = Signal(16)                                           # stride_h * inp_row
        wgt_base, wgt_ptr = Signal(16), Signal(16)
        acc_ptr = Signal(16)
        inp_addr = pix + tap_row + kj
        wgt_addr = wgt_ptr
        acc_addr = acc_ptr
        # the range check in two steps: products of `head`'s fields registered, then `insn`'s sums
        head = self.head

        def early(width, value, name):
            reg = Signal(width, name=name)
            m.d.sync += reg.eq(value)
            return reg

        blocks_span = early(32, (head.in_blocks - 1) * head.inp_block, "blocks_span")
        rows_before = early(21, (head.out_h - 1) * head.stride_h + head.kh - 1, "rows_before")
        cols_span = early(21, (head.out_w - 1) * head.stride_w + head.kw, "cols_span")
        head_planes = Mux(head.mode != isa.ConvMode.MAC, head.in_blocks, head.out_blocks)
        planes_rows = early(32, head_planes * head.out_h, "planes_rows")
        weight_blocks = early(24, head.out_blocks * head.in_blocks, "weight_blocks")
        kernel = early(8, head.kh * head.kw, "kernel")
        inp_last = conv.inp + blocks_span + rows_before * conv.inp_row + cols_span
        n_acc = planes_rows * conv.out_w
        n_wgt = weight_blocks * kernel
        m.d.comb += self.acc_end.eq(conv.acc + n_acc)
        m.d.comb += self.range_bad.eq((inp_last > c.inp_depth) | (conv.acc + n_acc > c.acc_depth)
                                      | (~window & (conv.wgt + n_wgt > c.wgt_depth)))

        # Stages 1-4 (mac_latency cycles from a tap's reads to its write, the minimum 4):
        #   1: the reads land: the products (registered in the array); the old entry, taken on an
        #      output's first tap, is carried with every tap of the output
        #   2: the adder trees (MAC) or the input lanes (SUM, MAX): the tap
        #   3: the tap folded into the running value (a one-cycle recurrence)
        #   4: on an output's last tap, into the old entry (accumulate), written
        # Any further latency the config asks for delays the write.
        is_max = conv.mode == isa.ConvMode.MAX
        s1_valid, s1_first, s1_last = Signal(), Signal(), Signal()
        s1_acc = Signal(16)
        m.d.comb += [array.x.eq(self.inp.data), array.w.eq(self.wgt.data)]
        old_hold = Signal(accumulator_lanes(c))
        old1 = Signal(accumulator_lanes(c))
        m.d.comb += old1.eq(Mux(s1_first, self.acc_r.data.as_value(), old_hold.as_value()))
        with m.If(s1_valid & s1_first):
            m.d.sync += old_hold.eq(self.acc_r.data)

        def carry(values, stage):
            """The stage's registers for `values` (name -> value) of the stage before."""
            out = {}
            for name, value in values.items():
                reg = Signal(value.shape(), name=f"s{stage}_{name}")
                m.d.sync += reg.eq(value)
                out[name] = reg
            return out

        ctl1 = dict(valid=s1_valid, first=s1_first, last=s1_last, acc=s1_acc)
        s2 = carry({**ctl1, "old": Value.cast(old1), "x": Value.cast(self.inp.data)}, 2)
        tap = Signal(accumulator_lanes(c))
        for r in range(rows):
            m.d.comb += tap[r].eq(Mux(conv.mode == isa.ConvMode.MAC, array.dots[r],
                                      s2["x"].word_select(r, 8).as_signed()))
        s3 = carry({k: s2[k] for k in ("valid", "first", "last", "acc", "old")} | {"tap": Value.cast(tap)}, 3)
        running = Signal(accumulator_lanes(c))
        new_lanes = Signal(accumulator_lanes(c))
        identity = Mux(is_max, INT32_MIN, 0)
        for r in range(rows):
            t = s3["tap"].word_select(r, 32).as_signed()
            base = Mux(s3["first"], identity, running[r])
            m.d.comb += new_lanes[r].eq(Mux(is_max, Mux(t > base, t, base), vector_lane.wrap32(base + t)))
        with m.If(s3["valid"]):
            m.d.sync += running.eq(new_lanes)
        s4 = carry({k: s3[k] for k in ("valid", "last", "acc", "old")} | {"new": Value.cast(new_lanes)}, 4)
        out_lanes = Signal(accumulator_lanes(c))
        for r in range(rows):
            old, new = s4["old"].word_select(r, 32).as_signed(), s4["new"].word_select(r, 32).as_signed()
            combined = Mux(is_max, Mux(old > new, old, new), vector_lane.wrap32(old + new))
            m.d.comb += out_lanes[r].eq(Mux(conv.accumulate, combined, new))
        w_en, w_addr, w_data = s4["valid"] & s4["last"], s4["acc"], Value.cast(out_lanes)
        for stage in range(5, c.mac_latency + 1):
            w = carry(dict(en=w_en, addr=w_addr, data=w_data), stage)
            w_en, w_addr, w_data = w["en"], w["addr"], w["data"]
        m.d.comb += [self.acc_w.addr.eq(w_addr), self.acc_w.data.eq(w_data), self.acc_w.en.eq(w_en)]

        # stage 0: the loops
        state = Signal(self.State)
        wait = Signal(range(c.mac_latency))
        with m.Switch(state):
            with m.Case(self.State.IDLE):
                with m.If(self.start):
                    m.d.sync += [o0.eq(0), oh.eq(0), ow.eq(0), tci.eq(0), ki.eq(0), kj.eq(0),
                                 blk_base.eq(conv.inp), row_base.eq(conv.inp), pix.eq(conv.inp),
                                 tap_blk.eq(0), tap_row.eq(0), row_step.eq(conv.stride_h * conv.inp_row),
                                 wgt_base.eq(conv.wgt), wgt_ptr.eq(conv.wgt), acc_ptr.eq(conv.acc),
                                 s1_valid.eq(0), state.eq(self.State.TAPS)]
            with m.Case(self.State.TAPS):
                m.d.comb += [self.inp.addr.eq(inp_addr), self.inp.en.eq(1),
                             self.wgt.addr.eq(wgt_addr), self.wgt.en.eq(1),
                             self.acc_r.addr.eq(acc_addr), self.acc_r.en.eq(first_tap),
                             self.mac_active.eq(1)]
                m.d.sync += [s1_valid.eq(1), s1_first.eq(first_tap), s1_last.eq(last_tap),
                             s1_acc.eq(acc_addr), wgt_ptr.eq(wgt_ptr + 1)]
                with m.If(kj != conv.kw - 1):
                    m.d.sync += kj.eq(kj + 1)
                with m.Else():
                    m.d.sync += kj.eq(0)
                    with m.If(ki != conv.kh - 1):
                        m.d.sync += [ki.eq(ki + 1), tap_row.eq(tap_row + conv.inp_row)]
                    with m.Else():
                        m.d.sync += ki.eq(0)
                        with m.If(tci != n_taps_ci - 1):
                            m.d.sync += [tci.eq(tci + 1), tap_blk.eq(tap_blk + conv.inp_block),
                                         tap_row.eq(tap_blk + conv.inp_block)]
                        with m.Else():
                            # the output is done: the next one
                            m.d.sync += [tci.eq(0), tap_blk.eq(0), tap_row.eq(0), acc_ptr.eq(acc_ptr + 1)]
                            with m.If(~(last_row & last_col)):
                                m.d.sync += wgt_ptr.eq(wgt_base)
                            with m.Else():
                                m.d.sync += wgt_base.eq(wgt_ptr + 1)
                            with m.If(~last_col):
                                m.d.sync += [ow.eq(ow + 1), pix.eq(pix + conv.stride_w)]
                            with m.Else():
                                m.d.sync += ow.eq(0)
                                with m.If(~last_row):
                                    m.d.sync += [oh.eq(oh + 1), row_base.eq(row_base + row_step),
                                                 pix.eq(row_base + row_step)]
                                with m.Else():
                                    # the next out block; a window's reads its own input block
                                    next_blk = Mux(window, blk_base + conv.inp_block, blk_base)
                                    m.d.sync += [oh.eq(0), o0.eq(o0 + 1), blk_base.eq(next_blk),
                                                 row_base.eq(next_blk), pix.eq(next_blk)]
                with m.If(last_tap & last_out):
                    m.d.sync += [state.eq(self.State.DRAIN), wait.eq(c.mac_latency - 1)]
            with m.Case(self.State.DRAIN):
                # the last tap is written in the cycle `wait` reaches 0
                m.d.sync += [s1_valid.eq(0), wait.eq(wait - 1)]
                with m.If(wait == 0):
                    m.d.sync += state.eq(self.State.IDLE)
                    m.d.comb += self.done.eq(1)
        return m
