"""The CSR block: an AXI4-Lite slave exposing the register map of hdl/isa.py `CSR`.

It owns the writable registers (INSN_ADDR, INSN_COUNT, IRQ_ENABLE) and turns CTRL writes into
`start` and `clear` strobes; the top owns the run state, the counters and the trace memory, which
this block reads.  Writes take effect when both address and data are valid; reads answer one
cycle after the address (two for the trace memory, which has a synchronous read port).
"""

from __future__ import annotations

from amaranth import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from softnpu.hdl.axi import AXI4LiteSignature
from softnpu.hdl.isa import COUNTERS, CSR, TRACE_ENTRY_WORDS
from softnpu.hdl.unit import PC_BITS

__all__ = ["CSRBlock"]


class CSRBlock(wiring.Component):
    def __init__(self, trace_depth: int):
        self.trace_depth = trace_depth
        entry_bits = 32 * (1 + len(COUNTERS))
        super().__init__({
            "bus": In(AXI4LiteSignature()),
            "start": Out(1), "clear": Out(1),
            "insn_addr": Out(32), "insn_count": Out(32), "irq_enable": Out(1),
            "running": In(1), "done": In(1), "error": In(1), "error_code": In(4), "error_pc": In(PC_BITS),
            "counters": In(64 * len(COUNTERS)),
            "trace_count": In(32),
            "trace_addr": Out(max(1, (trace_depth - 1).bit_length())),
            "trace_data": In(entry_bits),
        })

    def elaborate(self, platform):
        m = Module()
        b = self.bus
        insn_addr, insn_count, irq_enable = Signal(32), Signal(32), Signal()
        m.d.comb += [self.insn_addr.eq(insn_addr), self.insn_count.eq(insn_count),
                     self.irq_enable.eq(irq_enable)]

        # writes
        bvalid = Signal()
        m.d.comb += b.bvalid.eq(bvalid)
        with m.If(bvalid & b.bready):
            m.d.sync += bvalid.eq(0)
        accept_write = b.awvalid & b.wvalid & ~bvalid
        m.d.comb += [b.awready.eq(accept_write), b.wready.eq(accept_write)]
        with m.If(accept_write):
            m.d.sync += bvalid.eq(1)
            with m.Switch(b.awaddr):
                with m.Case(CSR.CTRL):
                    m.d.comb += [self.start.eq(b.wdata[0]), self.clear.eq(b.wdata[1])]
                with m.Case(CSR.INSN_ADDR):
                    m.d.sync += insn_addr.eq(b.wdata)
                with m.Case(CSR.INSN_COUNT):
                    m.d.sync += insn_count.eq(b.wdata)
                with m.Case(CSR.IRQ_ENABLE):
                    m.d.sync += irq_enable.eq(b.wdata[0])

        # reads: registers answer next cycle, the trace memory one cycle later
        rvalid, rdata = Signal(), Signal(32)
        trace_pending, trace_word, trace_valid = Signal(), Signal(4), Signal()
        m.d.comb += [b.rvalid.eq(rvalid), b.rdata.eq(rdata)]
        with m.If(rvalid & b.rready):
            m.d.sync += rvalid.eq(0)
        accept_read = b.arvalid & ~rvalid & ~trace_pending
        m.d.comb += b.arready.eq(accept_read)
        addr = b.araddr
        words = [self.counters.word_select(i, 32) for i in range(2 * len(COUNTERS))]
        with m.If(accept_read):
            with m.If(addr >= CSR.TRACE):
                offset = addr - CSR.TRACE
                m.d.comb += self.trace_addr.eq(offset >> 6)
                m.d.sync += [trace_pending.eq(1), trace_word.eq(offset[2:6]),
                             trace_valid.eq((offset >> 6) < self.trace_count)]
            with m.Else():
                m.d.sync += rvalid.eq(1)
                with m.Switch(addr):
                    with m.Case(CSR.STATUS):
                        m.d.sync += rdata.eq(self.running | (self.done << 1) | (self.error << 2))
                    with m.Case(CSR.ERROR):
                        m.d.sync += rdata.eq(self.error_code)
                    with m.Case(CSR.ERROR_PC):
                        m.d.sync += rdata.eq(self.error_pc)
                    with m.Case(CSR.INSN_ADDR):
                        m.d.sync += rdata.eq(insn_addr)
                    with m.Case(CSR.INSN_COUNT):
                        m.d.sync += rdata.eq(insn_count)
                    with m.Case(CSR.IRQ_ENABLE):
                        m.d.sync += rdata.eq(irq_enable)
                    with m.Case(CSR.TRACE_COUNT):
                        m.d.sync += rdata.eq(self.trace_count)
                    for i, word in enumerate(words):
                        with m.Case(CSR.COUNTERS + 4 * i):
                            m.d.sync += rdata.eq(word)
                    with m.Default():
                        m.d.sync += rdata.eq(0)
        with m.If(trace_pending):
            m.d.sync += [trace_pending.eq(0), rvalid.eq(1)]
            entry_words = [self.trace_data.word_select(i, 32) for i in range(1 + len(COUNTERS))]
            m.d.sync += rdata.eq(0)
            for i, word in enumerate(entry_words):
                with m.If(trace_valid & (trace_word == i)):
                    m.d.sync += rdata.eq(word)
        assert TRACE_ENTRY_WORDS == 16
        return m
