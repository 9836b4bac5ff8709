"""An instruction queue: a FIFO of `QueueEntry` (instruction word and program index) between fetch
and a unit, with a stream on each side (`i` from fetch, `o` to the unit) and its fill `level`.

A first-word-fall-through `SyncFIFOBuffered`: an entry written in one cycle is at `o` two cycles
later (the buffered read port absorbs the memory's read latency); `level` counts every entry held,
the one at `o` included.
"""

from __future__ import annotations

from amaranth import Module
from amaranth.lib import fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from softnpu.hdl.unit import QueueEntry

__all__ = ["InsnQueue"]


class InsnQueue(wiring.Component):
    def __init__(self, depth: int):
        if not isinstance(depth, int) or depth < 1:
            raise ValueError(f"depth must be a positive int, got {depth!r}")
        self.depth = depth
        super().__init__({
            "i": In(stream.Signature(QueueEntry)),
            "o": Out(stream.Signature(QueueEntry)),
            "level": Out(range(depth + 1)),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.fifo = q = fifo.SyncFIFOBuffered(width=QueueEntry.size, depth=self.depth)
        m.d.comb += [q.w_data.eq(self.i.payload), q.w_en.eq(self.i.valid), self.i.ready.eq(q.w_rdy),
                     self.o.payload.eq(q.r_data), self.o.valid.eq(q.r_rdy), q.r_en.eq(self.o.ready),
                     self.level.eq(q.level)]
        return m
