"""The CSR block: an AXI4-Lite slave decoding the register map declared in hdl/csr_map.py.

Its ports follow the map: one member per register (lower-case name) holding one port per field.
A write-only register's fields are one-cycle strobes (CTRL.start, CTRL.clear); a read-write
register's fields are stored here and driven out (INSN_ADDR.addr, IRQ_ENABLE.enable); a read-only
register's fields come in from the NPU (STATUS.busy, ERROR.code).  The two array registers are
ports of their own: `counters` (every 64-bit counter, in COUNTERS order) and the trace memory's
synchronous read port (`trace_addr` out, `trace_data` in, one cycle later).

Writes take effect when both address and data are valid; reads answer one cycle after the address
(two for the trace memory).
"""

from __future__ import annotations

from amaranth import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from softnpu.hdl import csr_map
from softnpu.hdl.axi import AXI4LiteSignature
from softnpu.hdl.csr_map import COUNTERS, CSR, TRACE_ENTRY_WORDS

__all__ = ["CSRBlock", "FieldsSignature", "PLAIN_REGISTERS"]

# The registers decoded one word each; COUNTERS and TRACE are arrays with ports of their own.
PLAIN_REGISTERS = tuple(r for r in csr_map.REGISTERS if r.name not in ("COUNTERS", "TRACE"))


class FieldsSignature(wiring.Signature):
    """One register's fields, from the CSR block's side: driven out when software writes them,
    taken in when software only reads them."""

    def __init__(self, register: csr_map.Register):
        self.register = register
        direction = Out if register.writable else In
        super().__init__({f.name: direction(f.width) for f in register.fields})


class CSRBlock(wiring.Component):
    def __init__(self, trace_depth: int):
        if not isinstance(trace_depth, int) or trace_depth < 1:
            raise ValueError(f"trace_depth must be a positive int, got {trace_depth!r}")
        self.trace_depth = trace_depth
        entry_bits = 32 * (1 + len(COUNTERS))
        super().__init__({
            "bus": In(AXI4LiteSignature()),
            **{r.name.lower(): Out(FieldsSignature(r)) for r in PLAIN_REGISTERS},
            "counters": In(64 * len(COUNTERS)),
            "trace_addr": Out(max(1, (trace_depth - 1).bit_length())),
            "trace_data": In(entry_bits),
        })

    def fields(self, name: str):
        """The port of register `name` (as declared in the map)."""
        return getattr(self, name.lower())

    def elaborate(self, platform):
        m = Module()
        b = self.bus

        # read-write registers: stored here, driven out
        stored = {}
        for reg in PLAIN_REGISTERS:
            if reg.access != "RW":
                continue
            for f in reg.fields:
                name = reg.name.lower() if len(reg.fields) == 1 else f"{reg.name.lower()}_{f.name}"
                stored[reg.name, f.name] = value = Signal(f.width, name=name)
                m.d.comb += getattr(self.fields(reg.name), f.name).eq(value)

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
                for reg in PLAIN_REGISTERS:
                    if not reg.writable:
                        continue
                    with m.Case(reg.offset):
                        for f in reg.fields:
                            bits = b.wdata[f.lsb:f.lsb + f.width]
                            if reg.readable:
                                m.d.sync += stored[reg.name, f.name].eq(bits)
                            else:           # write-only: a strobe in the cycle of the write
                                m.d.comb += getattr(self.fields(reg.name), f.name).eq(bits)

        # reads: registers answer next cycle, the trace memory one cycle later
        rvalid, rdata = Signal(), Signal(32)
        trace_pending, trace_word, trace_valid = Signal(), Signal(4), Signal()
        trace_count = self.fields("TRACE_COUNT").count
        m.d.comb += [b.rvalid.eq(rvalid), b.rdata.eq(rdata)]
        with m.If(rvalid & b.rready):
            m.d.sync += rvalid.eq(0)
        accept_read = b.arvalid & ~rvalid & ~trace_pending
        m.d.comb += b.arready.eq(accept_read)
        addr = b.araddr
        words = [self.counters.word_select(i, 32) for i in range(2 * len(COUNTERS))]
        entry_shift = (4 * TRACE_ENTRY_WORDS).bit_length() - 1
        with m.If(accept_read):
            with m.If(addr >= CSR.TRACE):
                offset = addr - CSR.TRACE
                m.d.comb += self.trace_addr.eq(offset >> entry_shift)
                m.d.sync += [trace_pending.eq(1), trace_word.eq(offset[2:entry_shift]),
                             trace_valid.eq((offset >> entry_shift) < trace_count)]
            with m.Else():
                m.d.sync += rvalid.eq(1)
                with m.Switch(addr):
                    for reg in PLAIN_REGISTERS:
                        if not reg.readable:
                            continue
                        value = 0
                        for f in reg.fields:
                            bits = stored[reg.name, f.name] if reg.writable else \
                                getattr(self.fields(reg.name), f.name)
                            value = value | (bits << f.lsb)
                        with m.Case(reg.offset):
                            m.d.sync += rdata.eq(value)
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
        return m
