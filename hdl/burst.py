"""The burst engine: splits a DMA row into AXI bursts, for the load unit (read channels) and the
store unit (write channels) alike.

A row is a bus-aligned DRAM address and a number of beats.  Each burst is at most
`dram_max_burst` beats and never crosses a 4 KiB boundary (hdl/axi.py `burst_beats`).  The unit
owning the engine keeps the protocol's control flow (when to ask for the next burst, what to do
with the beats) and drives three strobes: `row` loads a new row, `request` offers the next burst's
address on `addr` (the AR or AW channel; it advances the row when `addr.ready`), `beat` counts one
data beat of the current burst.  `last_beat` is high while the burst's last beat is pending (AXI's
xLAST), `row_left` is the row's beats not yet requested.
"""

from __future__ import annotations

from amaranth import Module, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from softnpu.hdl.axi import burst_beats
from softnpu.hdl.config import NPUConfig

__all__ = ["BurstEngine", "RowLayout", "BurstLayout"]

ADDR_BITS = 40            # DMA address arithmetic: wide enough that a row never wraps
RowLayout = data.StructLayout({"addr": unsigned(ADDR_BITS), "beats": unsigned(32)})
BurstLayout = data.StructLayout({"addr": unsigned(32), "len": unsigned(8)})     # AXI AxADDR, AxLEN


class BurstEngine(wiring.Component):
    def __init__(self, config: NPUConfig):
        if not isinstance(config, NPUConfig):
            raise TypeError(f"config must be an NPUConfig, got {config!r}")
        self.config = config
        super().__init__({
            "row": In(stream.Signature(RowLayout, always_ready=True)),
            "request": In(1),
            "addr": Out(stream.Signature(BurstLayout)),
            "beat": In(1),
            "last_beat": Out(1),
            "row_left": Out(32),
        })

    def elaborate(self, platform):
        m = Module()
        c = self.config
        row_addr = Signal(ADDR_BITS)       # DRAM address of the next burst
        row_left = Signal(32)              # beats of the row not yet requested
        burst_left = Signal(9)             # beats still to transfer in this burst
        beats = burst_beats(c, row_left, row_addr)
        m.d.comb += [self.addr.p.addr.eq(row_addr[:32]), self.last_beat.eq(burst_left == 1),
                     self.row_left.eq(row_left)]
        with m.If(self.row.valid):
            m.d.sync += [row_addr.eq(self.row.p.addr), row_left.eq(self.row.p.beats)]
        with m.If(self.request):
            m.d.comb += [self.addr.valid.eq(1), self.addr.p.len.eq(beats - 1)]
            with m.If(self.addr.ready):
                m.d.sync += [burst_left.eq(beats), row_left.eq(row_left - beats),
                             row_addr.eq(row_addr + beats * c.dram_bus_bytes)]
        with m.If(self.beat):
            m.d.sync += burst_left.eq(burst_left - 1)
        return m
