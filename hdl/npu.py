"""The NPU top: fetch, the three instruction queues, the load, compute and store units, the
scratchpads, the dependency-token counters, the CSR block, the performance counters and trace, an
AXI4 master to memory, an AXI4-Lite slave and an interrupt line.

Run control: a CTRL.start write clears every unit, queue, token counter, counter and the trace,
and raises `running`.  The run ends when FINISH retires, when fetch has nothing left and every
queue and unit is idle, or at the first fault (a unit's range/alignment check, fetch's decode, or
a deadlock: no unit busy, fetch stuck, and every waiting head lacking a token).  The end sets
STATUS.done (and STATUS.error with ERROR/ERROR_PC on a fault) and, if enabled, the interrupt.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, ResetInserter, Signal
from amaranth.lib import fifo, memory, wiring
from amaranth.lib.wiring import In, Out

from softnpu.hdl import isa
from softnpu.hdl.axi import AXI4LiteSignature, AXI4Signature
from softnpu.hdl.compute_unit import ComputeUnit
from softnpu.hdl.config import NPUConfig
from softnpu.hdl.csr import CSRBlock
from softnpu.hdl.fetch import Fetch
from softnpu.hdl.load_unit import LoadUnit
from softnpu.hdl.store_unit import StoreUnit
from softnpu.hdl.unit import PC_BITS

__all__ = ["NPU"]


class NPU(wiring.Component):
    def __init__(self, config: NPUConfig):
        self.config = config
        super().__init__({
            "m_axi": Out(AXI4Signature(data_bytes=config.dram_bus_bytes)),
            "s_axil": In(AXI4LiteSignature()),
            "irq": Out(1),
            "debug": Out(wiring.Signature({
                **{f"{u}_{k}": Out(1) for u in ("load", "compute", "store") for k in ("busy", "stall")},
                **{f"{u}_pc": Out(PC_BITS) for u in ("fetch", "load", "compute", "store")},
                "running": Out(1),
                "marker": Out(1),                 # a MARKER retires this cycle (a layer starts)
                "marker_id": Out(16),
            })),
        })

    def elaborate(self, platform):
        m = Module()
        c = self.config
        bus = c.dram_bus_bytes

        # -- run control ----------------------------------------------------------------------
        running, done, error = Signal(), Signal(), Signal()
        error_code, error_pc = Signal(4), Signal(PC_BITS)
        clear = Signal()              # resets units, queues and token counters
        m.submodules.csr = csr = CSRBlock(c.trace_depth)
        wiring.connect(m, wiring.flipped(self.s_axil), csr.bus)

        units = {"load": LoadUnit(c), "compute": ComputeUnit(c), "store": StoreUnit(c)}
        fetch = Fetch(c)
        m.submodules.fetch = ResetInserter(clear)(fetch)
        for name, unit in units.items():
            m.submodules[name] = ResetInserter(clear)(unit)
        load, compute, store = units["load"], units["compute"], units["store"]

        # -- instruction queues ---------------------------------------------------------------
        queues = {}
        for name, port in (("load", fetch.load_q), ("compute", fetch.compute_q), ("store", fetch.store_q)):
            q = fifo.SyncFIFOBuffered(width=isa.INSN_BITS + PC_BITS, depth=c.insn_queue_depth)
            m.submodules[f"{name}_queue"] = ResetInserter(clear)(q)
            queues[name] = q
            unit = units[name]
            m.d.comb += [q.w_data.eq(port.data), q.w_en.eq(port.en), port.ready.eq(q.w_rdy),
                         unit.queue.valid.eq(q.r_rdy), unit.queue.insn.eq(q.r_data[:isa.INSN_BITS]),
                         unit.queue.pc.eq(q.r_data[isa.INSN_BITS:]), q.r_en.eq(unit.queue.take)]

        # -- dependency tokens: one counter per direction ---------------------------------------
        def channel(name, producer, push, consumer, pop, room, can_pop):
            count = Signal(range(c.token_queue_depth + 1), name=f"tokens_{name}")
            m.d.comb += [getattr(producer.tokens, room).eq(count < c.token_queue_depth),
                         getattr(consumer.tokens, can_pop).eq(count > 0)]
            inc, dec = getattr(producer.tokens, push), getattr(consumer.tokens, pop)
            with m.If(clear):
                m.d.sync += count.eq(0)
            with m.Elif(inc & ~dec):
                m.d.sync += count.eq(count + 1)
            with m.Elif(dec & ~inc):
                m.d.sync += count.eq(count - 1)

        channel("load_compute", load, "push_next", compute, "pop_prev", "room_next", "can_pop_prev")
        channel("compute_load", compute, "push_prev", load, "pop_next", "room_prev", "can_pop_next")
        channel("compute_store", compute, "push_next", store, "pop_prev", "room_next", "can_pop_prev")
        channel("store_compute", store, "push_prev", compute, "pop_next", "room_prev", "can_pop_next")
        m.d.comb += [load.tokens.can_pop_prev.eq(0), load.tokens.room_prev.eq(0),
                     store.tokens.can_pop_next.eq(0), store.tokens.room_next.eq(0)]

        # -- scratchpads ----------------------------------------------------------------------
        def scratchpad(name, depth, width, writer, readers):
            mem = memory.Memory(shape=width, depth=depth, init=[])
            m.submodules[name] = mem
            wp = mem.write_port()
            m.d.comb += [wp.addr.eq(writer.addr), wp.data.eq(writer.data), wp.en.eq(writer.en)]
            for reader in readers:
                rp = mem.read_port()
                m.d.comb += [rp.addr.eq(reader.addr), rp.en.eq(reader.en), reader.data.eq(rp.data)]

        r, k = c.rows, c.cols
        scratchpad("inp", c.inp_depth, 8 * k, load.inp_w, [compute.inp_a, compute.inp_b])
        scratchpad("wgt", c.wgt_depth, 8 * r * k, load.wgt_w, [compute.wgt_r])
        scratchpad("param", c.param_depth, 32 * r, load.param_w, [compute.param_r])
        scratchpad("acc", c.acc_depth, 32 * r, compute.acc_w, [compute.acc_r])
        scratchpad("out", c.out_depth, 8 * r, compute.out_w, [store.out_r])

        # -- memory port: fetch and load share the read channels, one burst at a time ----------
        # A requester owns the channels from its address request to its burst's last beat, so
        # the address stays stable until the handshake, as AXI requires.
        axi = self.m_axi
        owner = Signal(2)            # 0 none, 1 load, 2 fetch
        readers = {1: load.mem, 2: fetch.mem}
        for index, port in readers.items():
            mine = owner == index
            m.d.comb += [port.rdata.eq(axi.rdata), port.rlast.eq(axi.rlast),
                         port.rvalid.eq(axi.rvalid & mine), port.arready.eq(axi.arready & mine)]
            with m.If(mine):
                m.d.comb += [axi.araddr.eq(port.araddr), axi.arlen.eq(port.arlen),
                             axi.arvalid.eq(port.arvalid), axi.rready.eq(port.rready)]
        with m.If(clear):
            m.d.sync += owner.eq(0)
        with m.Elif(owner == 0):
            with m.If(load.mem.arvalid):
                m.d.sync += owner.eq(1)
            with m.Elif(fetch.mem.arvalid):
                m.d.sync += owner.eq(2)
        with m.Elif(axi.rvalid & axi.rready & axi.rlast):
            m.d.sync += owner.eq(0)
        for name in ("awaddr", "awlen", "awvalid", "wdata", "wstrb", "wlast", "wvalid", "bready"):
            m.d.comb += getattr(axi, name).eq(getattr(store.mem, name))
        for name in ("awready", "wready", "bvalid"):
            m.d.comb += getattr(store.mem, name).eq(getattr(axi, name))

        # -- run state, faults, deadlock ---------------------------------------------------------
        m.d.comb += [fetch.run.eq(running), fetch.insn_addr.eq(csr.insn_addr),
                     fetch.insn_count.eq(csr.insn_count)]
        all_idle = ~load.status.busy & ~compute.status.busy & ~store.status.busy
        queues_empty = ~queues["load"].r_rdy & ~queues["compute"].r_rdy & ~queues["store"].r_rdy & \
            (queues["load"].level == 0) & (queues["compute"].level == 0) & (queues["store"].level == 0)
        m.d.comb += compute.others_idle.eq(
            ~load.status.busy & ~store.status.busy & (queues["load"].level == 0)
            & (queues["store"].level == 0))
        heads = [(queues[n].r_rdy, units[n].status.stall, queues[n].r_data[isa.INSN_BITS:])
                 for n in ("load", "compute", "store")]
        any_waiting = heads[0][0] | heads[1][0] | heads[2][0]
        all_heads_stuck = 1
        for valid, stall, _ in heads:
            all_heads_stuck = all_heads_stuck & (~valid | stall)
        deadlock = running & all_idle & any_waiting & all_heads_stuck & (fetch.blocked | fetch.exhausted)
        deadlock_pc = Signal(PC_BITS)
        # the lowest index among the waiting heads
        pcs = [Mux(valid, pc, (1 << PC_BITS) - 1) for valid, _, pc in heads]
        low01 = Mux(pcs[0] < pcs[1], pcs[0], pcs[1])
        m.d.comb += deadlock_pc.eq(Mux(low01 < pcs[2], low01, pcs[2]))

        faults = [(fetch.fault, fetch.fault_code, fetch.pc)] + \
            [(u.status.fault, u.status.fault_code, u.status.pc) for u in units.values()] + \
            [(deadlock, isa.ErrorCode.DEADLOCK, deadlock_pc)]
        any_fault = 0
        for f, _, _ in faults:
            any_fault = any_fault | f
        finished = running & (compute.finish | (fetch.exhausted & queues_empty & all_idle & ~fetch.blocked))

        m.d.comb += clear.eq(csr.start | (running & any_fault))
        with m.If(csr.clear):
            m.d.sync += [done.eq(0), error.eq(0), error_code.eq(0)]
        with m.If(csr.start & ~running):
            m.d.sync += [running.eq(1), done.eq(0), error.eq(0), error_code.eq(0), error_pc.eq(0)]
        with m.Elif(running & any_fault):
            m.d.sync += [running.eq(0), done.eq(1), error.eq(1)]
            for f, code, pc in reversed(faults):      # the first listed fault wins
                with m.If(f):
                    m.d.sync += [error_code.eq(code), error_pc.eq(pc)]
        with m.Elif(finished):
            m.d.sync += [running.eq(0), done.eq(1)]
        m.d.comb += self.irq.eq(done & csr.irq_enable)

        # -- performance counters and trace ----------------------------------------------------
        counters = {name: Signal(64, name=f"count_{name}") for name in isa.COUNTERS}
        increments = {
            "cycles": running,
            "load_busy": load.status.busy, "load_stall": load.status.stall & ~load.status.busy,
            "compute_busy": compute.status.busy,
            "compute_stall": compute.status.stall & ~compute.status.busy,
            "store_busy": store.status.busy, "store_stall": store.status.stall & ~store.status.busy,
            "mac_active": compute.mac_active,
            "dram_read_bytes": Mux(axi.rvalid & axi.rready, bus, 0),
            "dram_write_bytes": Mux(axi.wvalid & axi.wready, bus, 0),
        }
        for name, counter in counters.items():
            with m.If(csr.start & ~running):
                m.d.sync += counter.eq(0)
            with m.Elif(running):
                m.d.sync += counter.eq(counter + increments[name])
        m.d.comb += csr.counters.eq(Cat(*(counters[n] for n in isa.COUNTERS)))

        trace = memory.Memory(shape=32 * (1 + len(isa.COUNTERS)), depth=c.trace_depth, init=[])
        m.submodules.trace = trace
        trace_w = trace.write_port()
        trace_r = trace.read_port()
        trace_count = Signal(32)
        m.d.comb += [trace_r.addr.eq(csr.trace_addr), trace_r.en.eq(1), csr.trace_data.eq(trace_r.data),
                     csr.trace_count.eq(trace_count),
                     trace_w.addr.eq(trace_count),
                     trace_w.data.eq(Cat(compute.marker_id, Const(0, 16),
                                         *(counters[n][:32] for n in isa.COUNTERS)))]
        with m.If(csr.start & ~running):
            m.d.sync += trace_count.eq(0)
        with m.Elif(running & compute.marker & (trace_count < c.trace_depth)):
            m.d.comb += trace_w.en.eq(1)
            m.d.sync += trace_count.eq(trace_count + 1)

        for name, unit in units.items():
            m.d.comb += [getattr(self.debug, f"{name}_busy").eq(unit.status.busy),
                         getattr(self.debug, f"{name}_stall").eq(unit.status.stall),
                         getattr(self.debug, f"{name}_pc").eq(unit.status.pc)]
        m.d.comb += [self.debug.fetch_pc.eq(fetch.pc), self.debug.running.eq(running),
                     self.debug.marker.eq(running & compute.marker),
                     self.debug.marker_id.eq(compute.marker_id)]
        m.d.comb += [csr.running.eq(running), csr.done.eq(done), csr.error.eq(error),
                     csr.error_code.eq(error_code), csr.error_pc.eq(error_pc)]
        return m
