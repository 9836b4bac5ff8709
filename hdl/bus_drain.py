"""The bus drain: finishes the AXI4 transactions that a fault (or a start) cut off.

A fault resets every unit at once (hdl/run_control.py), but AXI has no abort: an address already
offered must be accepted, a read burst's beats must be taken, a write burst's beats must be sent
and its response taken.  Otherwise the memory stays in the cut-off burst and the next program's
first fetch waits for ever.  The drain sits between the memory arbiter and the AXI4 master port and
is not reset by `abort`.  It passes every signal straight through (no added cycle) and counts what
is outstanding: read bursts, write beats and write responses.  From the cycle after `abort`, while
anything is outstanding, it holds the inside off the bus and completes the transactions itself:
re-offers an address that was not accepted yet (latched), takes read beats, sends the missing write
beats with no byte strobes (they write nothing) and takes the responses.

A program that does not fault never sees it: a run ends with nothing outstanding.  Up to
`dram_outstanding` bursts may be in flight per direction; the write side keeps the lengths of the
accepted bursts that still owe beats (in address order, as AXI takes their beats), so that it can
end each burst it completes with wlast.  The store unit sends a burst's beats only after its
address was accepted.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out

from softnpu.hdl.axi import AXI4Signature
from softnpu.hdl.config import NPUConfig

__all__ = ["BusDrain"]

_OUTSTANDING = 8        # counter bits: bursts in flight (NPUConfig allows at most 64 per direction)


class BusDrain(wiring.Component):
    """`inner` faces the arbiter (the NPU's side), `outer` the memory; `abort` is the units' reset."""

    def __init__(self, config: NPUConfig):
        if not isinstance(config, NPUConfig):
            raise TypeError(f"config must be an NPUConfig, got {config!r}")
        self.config = config
        bus = config.dram_bus_bytes
        super().__init__({
            "inner": In(AXI4Signature(data_bytes=bus)),
            "outer": Out(AXI4Signature(data_bytes=bus)),
            "abort": In(1),
            "draining": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        i, o = self.inner, self.outer
        reads = Signal(_OUTSTANDING)          # read bursts accepted, last beat not yet taken
        m.submodules.w_owed = w_owed = SyncFIFO(width=8, depth=self.config.dram_outstanding)
        w_sent = Signal(8)                    # beats of the head burst of w_owed sent
        w_last = w_owed.r_rdy & (w_sent == w_owed.r_data)
        b_owed = Signal(_OUTSTANDING)         # write responses not yet taken
        ar_hold, aw_hold = Signal(), Signal()  # an address offered but not accepted when cut off
        araddr, arlen = Signal.like(i.araddr), Signal.like(i.arlen)
        awaddr, awlen = Signal.like(i.awaddr), Signal.like(i.awlen)
        orphans = Signal()                    # since the last abort, until nothing is outstanding
        idle = (reads == 0) & ~w_owed.r_rdy & (b_owed == 0) & ~ar_hold & ~aw_hold
        draining = orphans & ~idle
        m.d.comb += self.draining.eq(draining)

        with m.If(~draining):
            # straight through; the addresses are latched in case this is the cycle of an abort
            for name, member in o.signature.members.items():
                if member.flow == Out:
                    m.d.comb += getattr(o, name).eq(getattr(i, name))
                else:
                    m.d.comb += getattr(i, name).eq(getattr(o, name))
            m.d.sync += [araddr.eq(i.araddr), arlen.eq(i.arlen), awaddr.eq(i.awaddr), awlen.eq(i.awlen)]
            with m.If(self.abort):
                m.d.sync += [ar_hold.eq(i.arvalid & ~o.arready), aw_hold.eq(i.awvalid & ~o.awready)]
        with m.Else():
            # the inside sees an idle bus: nothing accepted, nothing delivered
            m.d.comb += [o.araddr.eq(araddr), o.arlen.eq(arlen), o.arvalid.eq(ar_hold), o.rready.eq(1),
                         o.awaddr.eq(awaddr), o.awlen.eq(awlen), o.awvalid.eq(aw_hold),
                         o.wvalid.eq(w_owed.r_rdy), o.wstrb.eq(0), o.wlast.eq(w_last),
                         o.bready.eq(1)]
            with m.If(o.arvalid & o.arready):
                m.d.sync += ar_hold.eq(0)
            with m.If(o.awvalid & o.awready):
                m.d.sync += aw_hold.eq(0)

        with m.If(self.abort):
            m.d.sync += orphans.eq(1)
        with m.Elif(idle):
            m.d.sync += orphans.eq(0)

        # what is outstanding on the memory's side, whoever drives the bus
        ar_done, r_last = o.arvalid & o.arready, o.rvalid & o.rready & o.rlast
        m.d.sync += reads.eq(reads + ar_done - r_last)
        aw_done, w_done, b_done = o.awvalid & o.awready, o.wvalid & o.wready, o.bvalid & o.bready
        m.d.comb += [w_owed.w_en.eq(aw_done), w_owed.w_data.eq(o.awlen), w_owed.r_en.eq(w_done & w_last)]
        with m.If(w_done):
            m.d.sync += w_sent.eq(Mux(w_last, 0, w_sent + 1))
        m.d.sync += b_owed.eq(b_owed + aw_done - b_done)
        return m
