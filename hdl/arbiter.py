"""The memory arbiter: the NPU's one AXI4 master, shared by fetch and the load unit (reads) and
owned by the store unit (writes).

A reader owns the read channels from its address request until the last beat of its last burst in
flight (the load unit keeps up to `dram_outstanding` bursts in flight, and in-order AXI returns
their beats in request order, so beats are never another reader's), and while its address is
offered, so the address stays stable until the handshake, as AXI requires; when both ask in the
same cycle the load unit wins (fetch only runs ahead of it).  The grant costs one cycle: a
requester's `arvalid` reaches the bus the cycle after it rises.  The write channels pass straight through.
"""

from __future__ import annotations

from amaranth import Module, Signal
from amaranth.lib import enum, wiring
from amaranth.lib.wiring import In, Out

from softnpu.hdl.axi import WRITE_CHANNELS, AXI4Signature, ReadPortSignature, WritePortSignature
from softnpu.hdl.config import NPUConfig

__all__ = ["MemoryArbiter", "Owner"]


class Owner(enum.Enum, shape=2):
    NONE = 0
    LOAD = 1
    FETCH = 2


class MemoryArbiter(wiring.Component):
    """`load` and `fetch` are the readers' ports, `store` the writer's, `bus` the AXI4 master.
    Reset (the top's ResetInserter on start and fault) drops any grant."""

    def __init__(self, config: NPUConfig):
        if not isinstance(config, NPUConfig):
            raise TypeError(f"config must be an NPUConfig, got {config!r}")
        self.config = config
        bus = config.dram_bus_bytes
        super().__init__({
            "load": In(ReadPortSignature(data_bytes=bus)),
            "fetch": In(ReadPortSignature(data_bytes=bus)),
            "store": In(WritePortSignature(data_bytes=bus)),
            "bus": Out(AXI4Signature(data_bytes=bus)),
        })

    def elaborate(self, platform):
        m = Module()
        axi = self.bus
        owner = Signal(Owner, name="owner")
        in_flight = Signal(range(self.config.dram_outstanding + 2))    # the owner's bursts owing beats
        for index, port in ((Owner.LOAD, self.load), (Owner.FETCH, self.fetch)):
            mine = owner == index
            m.d.comb += [port.rdata.eq(axi.rdata), port.rlast.eq(axi.rlast),
                         port.rvalid.eq(axi.rvalid & mine), port.arready.eq(axi.arready & mine)]
            with m.If(mine):
                m.d.comb += [axi.araddr.eq(port.araddr), axi.arlen.eq(port.arlen),
                             axi.arvalid.eq(port.arvalid), axi.rready.eq(port.rready)]
        with m.If(owner == Owner.NONE):
            with m.If(self.load.arvalid):
                m.d.sync += owner.eq(Owner.LOAD)
            with m.Elif(self.fetch.arvalid):
                m.d.sync += owner.eq(Owner.FETCH)
        accepted, last = axi.arvalid & axi.arready, axi.rvalid & axi.rready & axi.rlast
        m.d.sync += in_flight.eq(in_flight + accepted - last)
        with m.If((owner != Owner.NONE) & ~axi.arvalid & (in_flight == last)):
            m.d.sync += owner.eq(Owner.NONE)

        for name in WRITE_CHANNELS:
            to_store = name in ("awready", "wready", "bvalid")
            master, slave = (axi, self.store) if to_store else (self.store, axi)
            m.d.comb += getattr(slave, name).eq(getattr(master, name))
        return m
