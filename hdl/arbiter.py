"""The memory arbiter: the NPU's one AXI4 master, shared by fetch and the load unit (reads) and
owned by the store unit (writes).

The read address channel is granted one burst at a time: a reader keeps the grant while its
address is offered (it stays stable until the handshake, as AXI requires); after that, or while
it offers nothing, the grant goes to the other reader if it asks, and otherwise stays (the grant
is parked).  With nobody granted, the load unit wins a tie (fetch only runs ahead of it).  A grant
costs one cycle: a requester's `arvalid` reaches the bus the cycle after it rises, unless the
grant was parked on it.  The load unit keeps up to `dram_outstanding` bursts in flight and fetch
one, so fetch's instruction bursts slip in between the load's; in-order AXI (one ID) returns
every burst's beats in request order, and a FIFO of who asked for each burst in flight routes
them.  The write channels pass straight through.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal
from amaranth.lib import enum, wiring
from amaranth.lib.fifo import SyncFIFO
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
        owner = Signal(Owner, name="owner")        # the reader granted the address channel
        # who asked for each burst in flight, oldest first (1: fetch): at most dram_outstanding
        # of the load unit's and fetch's one
        m.submodules.order = order = SyncFIFO(width=1, depth=self.config.dram_outstanding + 1)
        head_is_fetch = order.r_data[0]
        for index, port, is_fetch in ((Owner.LOAD, self.load, 0), (Owner.FETCH, self.fetch, 1)):
            mine = owner == index
            m.d.comb += [port.rdata.eq(axi.rdata), port.rlast.eq(axi.rlast),
                         port.rvalid.eq(axi.rvalid & order.r_rdy & (head_is_fetch == is_fetch)),
                         port.arready.eq(axi.arready & mine & order.w_rdy)]
            with m.If(mine):
                m.d.comb += [axi.araddr.eq(port.araddr), axi.arlen.eq(port.arlen),
                             axi.arvalid.eq(port.arvalid & order.w_rdy)]
        m.d.comb += axi.rready.eq(order.r_rdy & Mux(head_is_fetch, self.fetch.rready, self.load.rready))
        accepted = axi.arvalid & axi.arready
        m.d.comb += [order.w_en.eq(accepted), order.w_data.eq(owner == Owner.FETCH),
                     order.r_en.eq(axi.rvalid & axi.rready & axi.rlast)]

        with m.If(~(axi.arvalid & ~axi.arready)):          # no address waiting for its handshake
            with m.Switch(owner):
                with m.Case(Owner.NONE):
                    with m.If(self.load.arvalid):
                        m.d.sync += owner.eq(Owner.LOAD)
                    with m.Elif(self.fetch.arvalid):
                        m.d.sync += owner.eq(Owner.FETCH)
                with m.Case(Owner.LOAD):
                    with m.If(self.fetch.arvalid):
                        m.d.sync += owner.eq(Owner.FETCH)
                with m.Case(Owner.FETCH):
                    with m.If(self.load.arvalid):
                        m.d.sync += owner.eq(Owner.LOAD)

        for name in WRITE_CHANNELS:
            to_store = name in ("awready", "wready", "bvalid")
            master, slave = (axi, self.store) if to_store else (self.store, axi)
            m.d.comb += getattr(slave, name).eq(getattr(master, name))
        return m
