"""The store unit: STORE, a 2-D strided DMA from the output scratchpad to DRAM (hdl/isa.py
`Store`).  Entries are read at consecutive addresses from `sram`; each row of `cols` entries is
written in AXI bursts of at most `dram_max_burst` beats (split at 4 KiB boundaries, which AXI4
bursts must not cross).  The burst engine (hdl/burst.py) offers the addresses up to
`dram_outstanding` bursts ahead, across rows; the data side sends each accepted burst's beats in
address order without waiting for the responses before, and the instruction completes (its tokens
are pushed) once every burst's response is in.  The next entry is read while the last beat of the
current one is accepted, so beats flow one per cycle."""

from __future__ import annotations

from amaranth import Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import Out

from softnpu.hdl import isa
from softnpu.hdl.axi import WritePortSignature
from softnpu.hdl.burst import BurstEngine
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
        ptr = Signal(17)
        m.submodules.burst = burst = BurstEngine(c)     # the rows' bursts, requested ahead
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
            self.mem.bready.eq(1),
            burst.done.eq(self.mem.bvalid),
        ]
        # the checks' products, from the queue head in the issue cycle (Unit.early)
        head = view(isa.Store, self.head)
        planes_rows = self.early(m, 32, head.blocks * head.rows, "planes_rows")
        spans = [self.early(m, 49, span, f"span{i}") for i, span in enumerate(dma_spans(head, c.rows))]
        misaligned, align_addr, last_byte = dma_fault_addresses(insn, c.rows, bus, spans)
        with m.FSM() as fsm:
            with m.State("IDLE"):
                self.issue(m, "CHECK")
            with m.State("CHECK"):
                m.d.sync += [ptr.eq(insn.sram), k.eq(0)]
                with m.If(insn.sram + planes_rows * insn.cols > c.out_depth):
                    self.fault(m, isa.ErrorCode.SRAM_RANGE)
                with m.Elif(misaligned):
                    self.fault(m, isa.ErrorCode.DRAM_ALIGN, align_addr)
                with m.Elif(last_byte > c.dram_bytes):
                    self.fault(m, isa.ErrorCode.DRAM_RANGE, last_byte - 1)
                with m.Else():
                    m.next = "PREFETCH"
            with m.State("PREFETCH"):
                m.d.comb += [self.out_r.en.eq(1),          # entry `sram` is on out_r.data next cycle
                             burst.start.valid.eq(1), burst.start.p.addr.eq(insn.dram),
                             burst.start.p.blocks.eq(insn.blocks),
                             burst.start.p.block_stride.eq(insn.block_stride),
                             burst.start.p.rows.eq(insn.rows), burst.start.p.row_stride.eq(insn.row_stride),
                             burst.start.p.beats.eq(insn.cols * bpe)]
                m.next = "BEATS"
            with m.State("BEATS"):
                # the beats of every burst whose address was accepted, in order; then the responses
                m.d.comb += self.mem.wvalid.eq(burst.pending)
                with m.If(burst.pending & self.mem.wready):
                    m.d.comb += [self.write_beats.eq(1), burst.beat.eq(1)]
                    with m.If(k == bpe - 1):
                        m.d.comb += [advance.eq(1), self.out_r.en.eq(1)]
                        m.d.sync += [k.eq(0), ptr.eq(ptr + 1)]
                    with m.Else():
                        m.d.sync += k.eq(k + 1)
                with m.If(~burst.busy):
                    m.next = "DONE"
            with m.State("DONE"):
                self.retire(m)
        m.d.comb += self.status.busy.eq(~fsm.ongoing("IDLE"))
        return m
