"""The store unit: STORE, a 2-D strided DMA from the output scratchpad to DRAM (hdl/isa.py
`Store`).  Entries are read at consecutive addresses from `sram`; each row of `cols` entries is
written in AXI bursts of at most `dram_max_burst` beats (split at 4 KiB boundaries, which AXI4
bursts must not cross), one burst (address, beats, response) at a time.  The next entry is read
while the last beat of the current one is accepted, so beats flow one per cycle."""

from __future__ import annotations

from amaranth import Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import Out

from softnpu.hdl import isa
from softnpu.hdl.axi import WritePortSignature
from softnpu.hdl.burst import ADDR_BITS, BurstEngine
from softnpu.hdl.config import NPUConfig
from softnpu.hdl.insn_layout import view
from softnpu.hdl.unit import Unit, dma_fault_addresses, dma_spans

__all__ = ["StoreUnit", "ScratchpadReadSignature"]


class ScratchpadReadSignature(wiring.Signature):
    """A synchronous read port: data holds the entry at the address of the last cycle with en."""

    def __init__(self, depth: int, width: int):
        super().__init__({"addr": Out(max(1, (depth - 1).bit_length())), "en": Out(1),
                          "data": wiring.In(width)})


class StoreUnit(Unit):
    def __init__(self, config: NPUConfig):
        self.config = config
        super().__init__({
            "mem": Out(WritePortSignature(data_bytes=config.dram_bus_bytes)),
            "out_r": Out(ScratchpadReadSignature(config.out_depth, 8 * config.rows)),
            "write_beats": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        c = self.config
        bus = c.dram_bus_bytes
        bpe = c.rows // bus                       # beats per output entry
        insn = view(isa.Store, self.cur)
        blk = Signal(16)
        y = Signal(16)
        ptr = Signal(17)
        # DRAM address of the plane and of the row: dram + blk * block_stride (+ y * row_stride), as
        # running sums (no multiplier before the burst engine)
        plane_addr, row_addr = Signal(ADDR_BITS), Signal(ADDR_BITS)
        m.submodules.burst = burst = BurstEngine(c)     # the row's bursts: address, beats left
        k = Signal(range(max(bpe, 2)))
        advance = Signal()

        m.d.comb += [
            self.status.pc.eq(self.cur_pc),
            self.out_r.addr.eq(Mux(advance, ptr + 1, ptr)),
            self.mem.awaddr.eq(burst.addr.p.addr), self.mem.awvalid.eq(burst.addr.valid),
            self.mem.awlen.eq(burst.addr.p.len), burst.addr.ready.eq(self.mem.awready),
            self.mem.wdata.eq(self.out_r.data.word_select(k, 8 * bus) if bpe > 1 else self.out_r.data),
            self.mem.wstrb.eq((1 << bus) - 1),
            self.mem.wlast.eq(burst.last_beat),
        ]
        # the checks' products, from the queue head in the issue cycle (Unit.early)
        head = view(isa.Store, self.head)
        planes_rows = self.early(m, 32, head.blocks * head.rows, "planes_rows")
        spans = [self.early(m, 49, span, f"span{i}") for i, span in enumerate(dma_spans(head, c.rows))]
        misaligned, align_addr, last_byte = dma_fault_addresses(insn, c.rows, bus, spans)
        last_row = (y == insn.rows - 1) & (blk == insn.blocks - 1)
        with m.FSM() as fsm:
            with m.State("IDLE"):
                self.issue(m, "CHECK")
            with m.State("CHECK"):
                m.d.sync += [blk.eq(0), y.eq(0), ptr.eq(insn.sram), k.eq(0), plane_addr.eq(insn.dram),
                             row_addr.eq(insn.dram)]
                with m.If(insn.sram + planes_rows * insn.cols > c.out_depth):
                    self.fault(m, isa.ErrorCode.SRAM_RANGE)
                with m.Elif(misaligned):
                    self.fault(m, isa.ErrorCode.DRAM_ALIGN, align_addr)
                with m.Elif(last_byte > c.dram_bytes):
                    self.fault(m, isa.ErrorCode.DRAM_RANGE, last_byte - 1)
                with m.Else():
                    m.next = "PREFETCH"
            with m.State("PREFETCH"):
                m.d.comb += self.out_r.en.eq(1)          # entry `sram` is on out_r.data next cycle
                m.next = "ROW"
            with m.State("ROW"):
                m.d.comb += [burst.row.valid.eq(1),
                             burst.row.p.addr.eq(row_addr),
                             burst.row.p.beats.eq(insn.cols * bpe)]
                m.next = "ADDR"
            with m.State("ADDR"):
                m.d.comb += burst.request.eq(1)
                with m.If(self.mem.awready):
                    m.next = "BEATS"
            with m.State("BEATS"):
                m.d.comb += self.mem.wvalid.eq(1)
                with m.If(self.mem.wready):
                    m.d.comb += [self.write_beats.eq(1), burst.beat.eq(1)]
                    with m.If(k == bpe - 1):
                        m.d.comb += [advance.eq(1), self.out_r.en.eq(1)]
                        m.d.sync += [k.eq(0), ptr.eq(ptr + 1)]
                    with m.Else():
                        m.d.sync += k.eq(k + 1)
                    with m.If(burst.last_beat):
                        m.next = "RESPONSE"
            with m.State("RESPONSE"):
                m.d.comb += self.mem.bready.eq(1)
                with m.If(self.mem.bvalid):
                    with m.If(burst.row_left != 0):
                        m.next = "ADDR"
                    with m.Elif(last_row):
                        m.next = "DONE"
                    with m.Else():
                        with m.If(y == insn.rows - 1):
                            next_plane = plane_addr + insn.block_stride
                            m.d.sync += [y.eq(0), blk.eq(blk + 1), plane_addr.eq(next_plane),
                                         row_addr.eq(next_plane)]
                        with m.Else():
                            m.d.sync += [y.eq(y + 1), row_addr.eq(row_addr + insn.row_stride)]
                        m.next = "ROW"
            with m.State("DONE"):
                self.retire(m)
        m.d.comb += self.status.busy.eq(~fsm.ongoing("IDLE"))
        return m
