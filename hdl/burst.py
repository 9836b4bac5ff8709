"""The burst engine: walks a 2-D DMA (blocks x rows of a number of beats) and issues its AXI
bursts, up to `dram_outstanding` of them ahead of the data, for the load unit (read channels) and
the store unit (write channels) alike.

Each row starts at `addr + block * block_stride + row * row_stride` (bus-aligned) and is split into
bursts of at most `dram_max_burst` beats that never cross a 4 KiB boundary (hdl/axi.py
`burst_beats`).  The engine offers the next burst on `addr` (the AR or AW channel) whenever fewer
than `dram_outstanding` bursts are in flight, row after row and block after block, without waiting
for the data of the rows before: AXI returns read data, and takes write data, in the order of the
addresses (one ID), so the unit's data side just follows along.  The data side reports every beat
on `beat`; `last_beat` is high while the pending beat is the last of its burst (AXI's xLAST; the
bursts' lengths wait in a FIFO between the address and the data side); `pending` says a burst whose
address was accepted still owes beats (a write may send them).  A burst stays in flight until the
unit says `done`: a read's last beat, a write's response.  `busy` is high from `start` until every
burst is requested and done.
"""

from __future__ import annotations

from amaranth import Module, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out

from softnpu.hdl.axi import burst_beats
from softnpu.hdl.config import NPUConfig

__all__ = ["BurstEngine", "DmaLayout", "BurstLayout"]

ADDR_BITS = 40            # DMA address arithmetic: wide enough that a row never wraps
DmaLayout = data.StructLayout({
    "addr": unsigned(ADDR_BITS),          # first row's byte address
    "blocks": unsigned(16), "block_stride": unsigned(32),
    "rows": unsigned(16), "row_stride": unsigned(32),
    "beats": unsigned(32),                # beats per row
})
BurstLayout = data.StructLayout({"addr": unsigned(32), "len": unsigned(8)})     # AXI AxADDR, AxLEN


class BurstEngine(wiring.Component):
    def __init__(self, config: NPUConfig):
        if not isinstance(config, NPUConfig):
            raise TypeError(f"config must be an NPUConfig, got {config!r}")
        self.config = config
        super().__init__({
            "start": In(stream.Signature(DmaLayout, always_ready=True)),
            "addr": Out(stream.Signature(BurstLayout)),
            "beat": In(1),
            "last_beat": Out(1),
            "pending": Out(1),
            "done": In(1),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        c = self.config
        n = c.dram_outstanding
        dma = Signal(DmaLayout)             # the DMA being walked
        requesting = Signal()               # rows left to request
        blk, row = Signal(16), Signal(16)
        block_addr = Signal(ADDR_BITS)      # first row of the current block
        row_base = Signal(ADDR_BITS)        # first byte of the current row
        row_addr = Signal(ADDR_BITS)        # DRAM address of the next burst
        row_left = Signal(32)               # beats of the row not yet requested
        in_flight = Signal(range(n + 1))    # bursts requested and not done
        sent = Signal(8)                    # beats of the head burst transferred
        m.submodules.lens = lens = SyncFIFO(width=8, depth=n)      # AxLEN of bursts owing beats

        beats = burst_beats(c, row_left, row_addr)
        offer = requesting & (in_flight < n)
        accepted = self.addr.valid & self.addr.ready
        m.d.comb += [self.addr.valid.eq(offer), self.addr.p.addr.eq(row_addr[:32]),
                     self.addr.p.len.eq(beats - 1),
                     lens.w_en.eq(accepted), lens.w_data.eq(beats - 1),
                     self.pending.eq(lens.r_rdy), self.last_beat.eq(lens.r_rdy & (sent == lens.r_data)),
                     self.busy.eq(requesting | (in_flight != 0))]
        with m.If(self.start.valid):
            m.d.sync += [dma.eq(self.start.p), requesting.eq((self.start.p.blocks != 0)
                                                            & (self.start.p.rows != 0)
                                                            & (self.start.p.beats != 0)),
                         blk.eq(0), row.eq(0), block_addr.eq(self.start.p.addr),
                         row_base.eq(self.start.p.addr),
                         row_addr.eq(self.start.p.addr), row_left.eq(self.start.p.beats)]
        with m.Elif(accepted):
            with m.If(row_left != beats):
                m.d.sync += [row_left.eq(row_left - beats), row_addr.eq(row_addr + beats * c.dram_bus_bytes)]
            with m.Elif(row != dma.rows - 1):                # the next row of this block
                m.d.sync += [row.eq(row + 1), row_base.eq(row_base + dma.row_stride),
                             row_addr.eq(row_base + dma.row_stride), row_left.eq(dma.beats)]
            with m.Elif(blk != dma.blocks - 1):              # the first row of the next block
                m.d.sync += [row.eq(0), blk.eq(blk + 1), block_addr.eq(block_addr + dma.block_stride),
                             row_base.eq(block_addr + dma.block_stride),
                             row_addr.eq(block_addr + dma.block_stride), row_left.eq(dma.beats)]
            with m.Else():
                m.d.sync += requesting.eq(0)
        m.d.sync += in_flight.eq(in_flight + accepted - self.done)
        with m.If(self.beat):
            with m.If(self.last_beat):
                m.d.comb += lens.r_en.eq(1)
                m.d.sync += sent.eq(0)
            with m.Else():
                m.d.sync += sent.eq(sent + 1)
        return m
