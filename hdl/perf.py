"""Performance counters and the marker trace.

Ten 64-bit counters (hdl/csr_map.py COUNTERS) count while the NPU runs, one event input each:
cycles, busy and stall cycles per unit, MAC-active cycles, and DRAM beats read and written (the
byte counters add the bus width per beat).  A MARKER retiring snapshots the marker id and every
counter's low 32 bits into the next trace entry, while the trace has room.  A start (`clear`)
zeroes counters and trace; the trace memory is read by the CSR block through a synchronous port.
"""

from __future__ import annotations

from amaranth import Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, memory, wiring
from amaranth.lib.wiring import In, Out

from softnpu.hdl.config import NPUConfig
from softnpu.hdl.csr_map import COUNTERS

__all__ = ["PerfCounters", "EventLayout", "CountersLayout", "TraceEntryLayout", "BEAT_COUNTERS"]

COUNTER_BITS = 64
# A trace of at most this many entries is LUT RAM: in block RAM its 352-bit entries would take ten
# 36-bit-wide blocks used to an eighth of their depth, side by side in one block-RAM row, where
# their 720 data pins and the CSR read mux they feed made the routing hotspot that kept `tiny` from
# routing on an ECP5 (README, FPGA figures).
TRACE_LUTRAM_DEPTH = 64
BEAT_COUNTERS = ("dram_read_bytes", "dram_write_bytes")       # count bus bytes per event
EventLayout = data.StructLayout({name: 1 for name in COUNTERS})
CountersLayout = data.ArrayLayout(unsigned(COUNTER_BITS), len(COUNTERS))
# what the CSR block reads: the marker id (16 bits, zero-extended) and each counter's low word
TraceEntryLayout = data.ArrayLayout(unsigned(32), 1 + len(COUNTERS))


class PerfCounters(wiring.Component):
    def __init__(self, config: NPUConfig):
        if not isinstance(config, NPUConfig):
            raise TypeError(f"config must be an NPUConfig, got {config!r}")
        self.config = config
        depth = config.trace_depth
        super().__init__({
            "clear": In(1),                   # a start: zero counters and trace
            "running": In(1),                 # count only while running
            "events": In(EventLayout),        # this cycle's event per counter
            "marker": In(1),                  # a MARKER retires this cycle
            "marker_id": In(16),
            "counters": Out(CountersLayout),
            "trace_count": Out(32),
            "trace_addr": In(max(1, (depth - 1).bit_length())),
            "trace_data": Out(TraceEntryLayout),     # the entry at trace_addr of the last cycle
        })

    def elaborate(self, platform):
        m = Module()
        c = self.config
        counters = {name: Signal(COUNTER_BITS, name=f"count_{name}") for name in COUNTERS}
        for i, (name, counter) in enumerate(counters.items()):
            event = getattr(self.events, name)
            step = Mux(event, c.dram_bus_bytes, 0) if name in BEAT_COUNTERS else event
            with m.If(self.clear):
                m.d.sync += counter.eq(0)
            with m.Elif(self.running):
                m.d.sync += counter.eq(counter + step)
            m.d.comb += self.counters[i].eq(counter)

        style = {"ram_style": "distributed"} if c.trace_depth <= TRACE_LUTRAM_DEPTH else {}
        trace = memory.Memory(shape=TraceEntryLayout, depth=c.trace_depth, init=[], attrs=style)
        m.submodules.trace = trace
        trace_w = trace.write_port()
        trace_r = trace.read_port()
        trace_count = Signal(32)
        entry = [self.marker_id.as_unsigned() | Const(0, 32)] + [counters[n][:32] for n in COUNTERS]
        m.d.comb += [trace_r.addr.eq(self.trace_addr), trace_r.en.eq(1), self.trace_data.eq(trace_r.data),
                     self.trace_count.eq(trace_count), trace_w.addr.eq(trace_count)]
        m.d.comb += [trace_w.data[i].eq(word) for i, word in enumerate(entry)]
        with m.If(self.clear):
            m.d.sync += trace_count.eq(0)
        with m.Elif(self.running & self.marker & (trace_count < c.trace_depth)):
            m.d.comb += trace_w.en.eq(1)
            m.d.sync += trace_count.eq(trace_count + 1)
        return m
