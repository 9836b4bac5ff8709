"""A dependency-token channel between two units: a counter of tokens pushed by the producer and
not yet popped by the consumer, at most `depth` (hdl/config.py `token_queue_depth`).

A push and a pop in the same cycle leave the count unchanged.  `room` and `available` are what
the producer's and the consumer's issue logic wait on (hdl/unit.py).  The top resets the channel
(ResetInserter) on start and on a fault.
"""

from __future__ import annotations

from amaranth import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["TokenChannel"]


class TokenChannel(wiring.Component):
    def __init__(self, depth: int):
        if not isinstance(depth, int) or depth < 1:
            raise ValueError(f"depth must be a positive int, got {depth!r}")
        self.depth = depth
        super().__init__({
            "push": In(1), "room": Out(1),          # the producer's side
            "pop": In(1), "available": Out(1),      # the consumer's side
            "count": Out(range(depth + 1)),
        })

    def elaborate(self, platform):
        m = Module()
        count = Signal(range(self.depth + 1), name="count")
        m.d.comb += [self.room.eq(count < self.depth), self.available.eq(count > 0), self.count.eq(count)]
        with m.If(self.push & ~self.pop):
            m.d.sync += count.eq(count + 1)
        with m.Elif(self.pop & ~self.push):
            m.d.sync += count.eq(count - 1)
        return m
