"""Smoke design for the RTL toolchain: a small Amaranth engine streaming through the DPI memory.

``AffineEngine`` reads ``count`` bus words of int8 lanes from ``src``, computes per lane
``y = saturate_int8(x * scale + bias)`` and writes them to ``dst``, one word per cycle, then
raises ``irq``. The harness ``smoke_top.sv`` wires it to ``softnpu_dpi_mem`` (sim/rtl/dpi_mem.sv).
"""

from __future__ import annotations

from pathlib import Path

from amaranth import Module, Mux, Signal, signed
from amaranth.back import verilog
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

HARNESS = Path(__file__).with_name("smoke_top.sv")
TOPLEVEL = "smoke_top"
LANES = 16  # int8 lanes per bus word: a 128-bit bus, two DPI calls per access
ADDR_WIDTH = 32


def mem_port_signature(addr_width: int, data_bytes: int) -> wiring.Signature:
    """Initiator side of ``softnpu_dpi_mem``: byte addresses, registered read (rdata one cycle after re)."""
    return wiring.Signature({
        "re": Out(1), "raddr": Out(addr_width), "rdata": In(8 * data_bytes),
        "we": Out(1), "waddr": Out(addr_width), "wdata": Out(8 * data_bytes), "wstrb": Out(data_bytes),
    })


class AffineEngine(wiring.Component):
    """Streams ``count`` words from byte address ``src`` to ``dst`` through ``saturate(x*scale+bias)``.

    Arguments are sampled on the cycle ``start`` is high while idle. ``irq`` rises when the last word
    is written and stays high until the next ``start``; ``cycles`` counts the busy cycles:
    ``count + 2`` (one word per cycle, one of read latency, one to raise irq), or 1 if ``count`` is 0.
    """

    def __init__(self, lanes: int = LANES, addr_width: int = ADDR_WIDTH):
        if lanes < 8 or lanes % 8:
            raise ValueError(f"lanes must be a positive multiple of 8 (whole 64-bit DPI lanes), got {lanes}")
        self.lanes = lanes
        self.addr_width = addr_width
        super().__init__({
            "start": In(1), "src": In(addr_width), "dst": In(addr_width), "count": In(32),
            "scale": In(signed(8)), "bias": In(signed(16)),
            "busy": Out(1), "irq": Out(1), "cycles": Out(32),
            "mem": Out(mem_port_signature(addr_width, lanes)),
        })

    def elaborate(self, platform):
        m = Module()
        word = data.ArrayLayout(signed(8), self.lanes)
        src, dst = Signal(self.addr_width), Signal(self.addr_width)
        count, rd_idx, wr_idx = Signal(32), Signal(32), Signal(32)
        scale, bias = Signal(signed(8)), Signal(signed(16))
        pending = Signal()  # a read was issued last cycle: rdata is valid now

        x = data.View(word, self.mem.rdata)
        y = Signal(word)
        for i in range(self.lanes):
            acc = x[i] * scale + bias
            m.d.comb += y[i].eq(Mux(acc > 127, 127, Mux(acc < -128, -128, acc)))

        m.d.sync += pending.eq(0)
        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [
                        src.eq(self.src), dst.eq(self.dst), count.eq(self.count),
                        scale.eq(self.scale), bias.eq(self.bias),
                        rd_idx.eq(0), wr_idx.eq(0), self.cycles.eq(0), self.irq.eq(0),
                    ]
                    m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += self.cycles.eq(self.cycles + 1)
                with m.If(rd_idx != count):
                    m.d.comb += [self.mem.re.eq(1), self.mem.raddr.eq(src + rd_idx * self.lanes)]
                    m.d.sync += [rd_idx.eq(rd_idx + 1), pending.eq(1)]
                with m.If(pending):
                    m.d.comb += [
                        self.mem.we.eq(1),
                        self.mem.waddr.eq(dst + wr_idx * self.lanes),
                        self.mem.wdata.eq(y),
                        self.mem.wstrb.eq(-1),
                    ]
                    m.d.sync += wr_idx.eq(wr_idx + 1)
                with m.Elif(wr_idx == count):
                    m.d.sync += self.irq.eq(1)
                    m.next = "IDLE"
        return m


def emit(out_dir: str | Path, lanes: int = LANES) -> list[Path]:
    """Write the engine's Verilog to ``out_dir``; return the sources of the smoke harness."""
    out = Path(out_dir) / "smoke_affine.v"
    out.write_text(verilog.convert(AffineEngine(lanes), name="smoke_affine", emit_src=False))
    return [out, HARNESS]
