"""AXI4 (memory master) and AXI4-Lite (CSR slave) signatures, as a real FPGA shell offers them.

Only the signals the NPU uses are present: bursts are INCR with full-width beats (AxSIZE =
log2(bus bytes)), one ID, no QoS/cache/prot attributes; the harness ties those off.
Directions are from the master's side (`Out` = driven by the master).
"""

from __future__ import annotations

from amaranth import Const, Mux
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["AXI4Signature", "AXI4LiteSignature", "ReadPortSignature", "WritePortSignature", "burst_beats"]


def burst_beats(config, beats_left, addr):
    """Beats of the next burst of a DMA row: at most `dram_max_burst`, and never across a 4 KiB
    boundary (AXI4 forbids it).  `addr` is the burst's byte address (bus-aligned)."""
    capped = Mux(beats_left > config.dram_max_burst, config.dram_max_burst, beats_left)
    to_boundary = (Const(4096, 13) - addr[:12]) >> (config.dram_bus_bytes - 1).bit_length()
    return Mux(capped > to_boundary, to_boundary, capped)


class AXI4Signature(wiring.Signature):
    def __init__(self, *, addr_width: int = 32, data_bytes: int = 16):
        self.addr_width, self.data_bytes = addr_width, data_bytes
        super().__init__({
            "araddr": Out(addr_width), "arlen": Out(8), "arvalid": Out(1), "arready": In(1),
            "rdata": In(8 * data_bytes), "rlast": In(1), "rvalid": In(1), "rready": Out(1),
            "awaddr": Out(addr_width), "awlen": Out(8), "awvalid": Out(1), "awready": In(1),
            "wdata": Out(8 * data_bytes), "wstrb": Out(data_bytes), "wlast": Out(1), "wvalid": Out(1),
            "wready": In(1),
            "bvalid": In(1), "bready": Out(1),
        })


class AXI4LiteSignature(wiring.Signature):
    def __init__(self, *, addr_width: int = 16):
        super().__init__({
            "awaddr": Out(addr_width), "awvalid": Out(1), "awready": In(1),
            "wdata": Out(32), "wvalid": Out(1), "wready": In(1),
            "bvalid": In(1), "bready": Out(1),
            "araddr": Out(addr_width), "arvalid": Out(1), "arready": In(1),
            "rdata": In(32), "rvalid": In(1), "rready": Out(1),
        })


class ReadPortSignature(wiring.Signature):
    """One requester's side of the shared AXI read channels (fetch and load unit): a single burst
    at a time; `ar*` handshakes the address, beats arrive on `r*`."""

    def __init__(self, *, addr_width: int = 32, data_bytes: int = 16):
        super().__init__({
            "araddr": Out(addr_width), "arlen": Out(8), "arvalid": Out(1), "arready": In(1),
            "rdata": In(8 * data_bytes), "rlast": In(1), "rvalid": In(1), "rready": Out(1),
        })


WRITE_CHANNELS = ("awaddr", "awlen", "awvalid", "awready", "wdata", "wstrb", "wlast", "wvalid", "wready",
                  "bvalid", "bready")


class WritePortSignature(wiring.Signature):
    """The store unit's side of the AXI write channels (address, data, response), which it owns
    alone: the members of `AXI4Signature` whose names start with aw, w or b."""

    def __init__(self, *, addr_width: int = 32, data_bytes: int = 16):
        axi = AXI4Signature(addr_width=addr_width, data_bytes=data_bytes)
        super().__init__({name: axi.members[name] for name in WRITE_CHANNELS})
