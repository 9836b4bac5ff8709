"""The load unit: LOAD, a 2-D strided DMA from DRAM into the input, weight or parameter
scratchpad with pad fill (hdl/isa.py `Load`).

The burst engine (hdl/burst.py) requests the data rows' bytes in AXI bursts of at most
`dram_max_burst` beats (split at 4 KiB boundaries, which AXI4 bursts must not cross), up to
`dram_outstanding` bursts ahead of the data and across rows.  The data side walks the padded tile:
per padded row of each plane it writes the left pad entries (one per cycle), then takes the row's
beats as they arrive (in request order) and packs them into scratchpad entries (an entry is a whole
number of beats), then the right-hand pads.  Entries are written at consecutive addresses from
`sram`, which is the padded tile's layout.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import Out

from softnpu.hdl import isa
from softnpu.hdl.axi import ReadPortSignature
from softnpu.hdl.burst import BurstEngine
from softnpu.hdl.config import NPUConfig
from softnpu.hdl.insn_layout import view
from softnpu.hdl.unit import Unit, dma_fault_addresses, dma_spans

__all__ = ["LoadUnit", "ScratchpadWriteSignature"]


class ScratchpadWriteSignature(wiring.Signature):
    def __init__(self, depth: int, width: int):
        super().__init__({"addr": Out(max(1, (depth - 1).bit_length())), "data": Out(width), "en": Out(1)})


class LoadUnit(Unit):
    def __init__(self, config: NPUConfig):
        self.config = config
        bus = config.dram_bus_bytes
        super().__init__({
            "mem": Out(ReadPortSignature(data_bytes=bus)),
            "inp_w": Out(ScratchpadWriteSignature(config.inp_depth, 8 * config.cols)),
            "wgt_w": Out(ScratchpadWriteSignature(config.wgt_depth, 8 * config.rows * config.cols)),
            "param_w": Out(ScratchpadWriteSignature(config.param_depth, 32 * config.rows)),
            "read_beats": Out(1),          # one data beat accepted this cycle (for the DRAM counter)
        })

    def elaborate(self, platform):
        m = Module()
        c = self.config
        bus = c.dram_bus_bytes
        insn = view(isa.Load, self.cur)
        entry_bytes = {isa.Buffer.INP: c.cols, isa.Buffer.WGT: c.rows * c.cols, isa.Buffer.PARAM: 4 * c.rows}
        depths = {isa.Buffer.INP: c.inp_depth, isa.Buffer.WGT: c.wgt_depth, isa.Buffer.PARAM: c.param_depth}
        max_entry = max(entry_bytes.values())

        def per_buffer(table, of=insn):
            return Mux(of.buffer == isa.Buffer.INP, table[isa.Buffer.INP],
                       Mux(of.buffer == isa.Buffer.WGT, table[isa.Buffer.WGT], table[isa.Buffer.PARAM]))

        entry = per_buffer(entry_bytes)
        beats_per_entry = per_buffer({k: v // bus for k, v in entry_bytes.items()})
        depth = per_buffer(depths)
        prows = insn.pad_top + insn.rows + insn.pad_bottom
        pcols = insn.pad_left + insn.cols + insn.pad_right

        blk = Signal(16)
        y = Signal(17)                 # padded row within the plane
        x = Signal(17)                 # entry within the padded row
        ptr = Signal(17)               # next scratchpad entry
        m.submodules.burst = burst = BurstEngine(c)     # the data rows' bursts, requested ahead
        k = Signal(range(max_entry // bus + 1))   # beat within the entry being assembled
        assemble = Signal(8 * max_entry)
        beat = self.mem.rdata

        pad_entry = Cat(*([insn.pad_value] * c.cols))
        data_row = (y >= insn.pad_top) & (y < insn.pad_top + insn.rows)
        in_data = data_row & (x >= insn.pad_left) & (x < insn.pad_left + insn.cols)
        # without pads every entry is data: the beats run on from row to row
        padded = (insn.pad_top | insn.pad_bottom | insn.pad_left | insn.pad_right) != 0

        def write(value_for):
            for buf, port in ((isa.Buffer.INP, self.inp_w), (isa.Buffer.WGT, self.wgt_w),
                              (isa.Buffer.PARAM, self.param_w)):
                m.d.comb += [port.addr.eq(ptr), port.data.eq(value_for(buf)),
                             port.en.eq(insn.buffer == buf)]

        def next_entry():
            """Advance (blk, y, x, ptr) past the entry written this cycle; returns 'last' signal."""
            last_x = x == pcols - 1
            last_y = y == prows - 1
            m.d.sync += ptr.eq(ptr + 1)
            with m.If(~last_x):
                m.d.sync += x.eq(x + 1)
            with m.Else():
                m.d.sync += x.eq(0)
                with m.If(~last_y):
                    m.d.sync += y.eq(y + 1)
                with m.Else():
                    m.d.sync += [y.eq(0), blk.eq(blk + 1)]
            return last_x & last_y & (blk == insn.blocks - 1)

        m.d.comb += [self.status.pc.eq(self.cur_pc), self.mem.araddr.eq(burst.addr.p.addr),
                     self.mem.arvalid.eq(burst.addr.valid), self.mem.arlen.eq(burst.addr.p.len),
                     burst.addr.ready.eq(self.mem.arready)]
        # the checks' products, from the queue head in the issue cycle (Unit.early)
        head = view(isa.Load, self.head)
        head_rows = head.pad_top + head.rows + head.pad_bottom
        planes_rows = self.early(m, 34, head.blocks * head_rows, "planes_rows")
        padded_cols = self.early(m, 18, head.pad_left + head.cols + head.pad_right, "padded_cols")
        spans = [self.early(m, 49, span, f"span{i}")
                 for i, span in enumerate(dma_spans(head, per_buffer(entry_bytes, head)))]
        misaligned, align_addr, last_byte = dma_fault_addresses(insn, entry, bus, spans)
        with m.FSM() as fsm:
            with m.State("IDLE"):
                self.issue(m, "CHECK")
            with m.State("CHECK"):
                m.d.sync += [blk.eq(0), y.eq(0), x.eq(0), ptr.eq(insn.sram), k.eq(0)]
                with m.If(insn.sram + planes_rows * padded_cols > depth):
                    self.fault(m, isa.ErrorCode.SRAM_RANGE)
                with m.Elif(misaligned):
                    self.fault(m, isa.ErrorCode.DRAM_ALIGN, align_addr)
                with m.Elif(last_byte > c.dram_bytes):
                    self.fault(m, isa.ErrorCode.DRAM_RANGE, last_byte - 1)
                with m.Else():
                    m.d.comb += [burst.start.valid.eq(1), burst.start.p.addr.eq(insn.dram),
                                 burst.start.p.blocks.eq(insn.blocks),
                                 burst.start.p.block_stride.eq(insn.block_stride),
                                 burst.start.p.rows.eq(insn.rows),
                                 burst.start.p.row_stride.eq(insn.row_stride),
                                 burst.start.p.beats.eq(insn.cols * beats_per_entry)]
                    m.next = "ENTRY"
            with m.State("ENTRY"):
                # pad entries are written one per cycle; a data row's first data entry takes beats
                with m.If(in_data):
                    m.next = "BEATS"
                with m.Else():
                    write(lambda buf: pad_entry if buf == isa.Buffer.INP else Const(0))
                    with m.If(next_entry()):
                        m.next = "DONE"
            with m.State("BEATS"):
                m.d.comb += self.mem.rready.eq(1)
                with m.If(self.mem.rvalid):
                    m.d.comb += [self.read_beats.eq(1), burst.beat.eq(1), burst.done.eq(burst.last_beat)]
                    done_entry = k == beats_per_entry - 1
                    with m.If(done_entry):
                        # the completing beat lands above the bytes assembled so far
                        for buf, port in ((isa.Buffer.INP, self.inp_w), (isa.Buffer.WGT, self.wgt_w),
                                          (isa.Buffer.PARAM, self.param_w)):
                            nbytes = entry_bytes[buf]
                            value = Cat(assemble[:8 * (nbytes - bus)], beat) if nbytes > bus else beat
                            m.d.comb += [port.addr.eq(ptr), port.data.eq(value[:8 * nbytes]),
                                         port.en.eq(insn.buffer == buf)]
                        m.d.sync += k.eq(0)
                        last = next_entry()
                        with m.If(last):
                            m.next = "DONE"
                        with m.Elif((x == insn.pad_left + insn.cols - 1) & padded):
                            m.next = "ENTRY"          # row finished: right pads or next row
                    with m.Else():
                        m.d.sync += [assemble.word_select(k, 8 * bus).eq(beat), k.eq(k + 1)]
            with m.State("DONE"):
                self.retire(m)
        m.d.comb += self.status.busy.eq(~fsm.ongoing("IDLE"))
        return m
