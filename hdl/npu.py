"""The NPU top: wires fetch, the three instruction queues (hdl/insn_queue.py), the load, compute
and store units, the scratchpads and the dependency-token channels (hdl/tokens.py) to the shell:
the CSR block (hdl/csr.py), run control with fault and deadlock detection (hdl/run_control.py),
the performance counters and trace (hdl/perf.py) and the memory arbiter in front of the AXI4
master (hdl/arbiter.py), behind the bus drain that completes the bursts a fault cut off
(hdl/bus_drain.py).

Ports: an AXI4 master to memory, an AXI4-Lite slave for the CSRs (hdl/csr_map.py), an interrupt
line, and `debug` (each unit's state and the marker strobe, for waveforms and hang reports).
"""

from __future__ import annotations

from amaranth import Module, ResetInserter
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

from softnpu.hdl.arbiter import MemoryArbiter
from softnpu.hdl.axi import AXI4LiteSignature, AXI4Signature
from softnpu.hdl.bus_drain import BusDrain
from softnpu.hdl.compute_unit import ComputeUnit
from softnpu.hdl.config import NPUConfig
from softnpu.hdl.csr import CSRBlock
from softnpu.hdl.fetch import Fetch
from softnpu.hdl.insn_queue import InsnQueue
from softnpu.hdl.load_unit import LoadUnit
from softnpu.hdl.perf import PerfCounters
from softnpu.hdl.run_control import FetchStateSignature, RunControl
from softnpu.hdl.store_unit import StoreUnit
from softnpu.hdl.tokens import TokenChannel
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

        # -- the shell: CSRs, run control, counters and trace, the memory arbiter ------------------
        m.submodules.csr = csr = CSRBlock(c.trace_depth)
        wiring.connect(m, wiring.flipped(self.s_axil), csr.bus)
        m.submodules.run_control = run = RunControl()
        clear = run.reset                  # resets units, queues, token counters and the arbiter
        m.submodules.perf = perf = PerfCounters(c)
        arbiter = MemoryArbiter(c)
        m.submodules.arbiter = ResetInserter(clear)(arbiter)
        # AXI has no abort: the drain completes what a fault cut off, so the next run finds the bus idle
        m.submodules.bus_drain = drain = BusDrain(c)
        wiring.connect(m, arbiter.bus, drain.inner)
        wiring.connect(m, drain.outer, wiring.flipped(self.m_axi))
        m.d.comb += drain.abort.eq(clear)

        units = {"load": LoadUnit(c), "compute": ComputeUnit(c), "store": StoreUnit(c)}
        fetch = Fetch(c)
        m.submodules.fetch = ResetInserter(clear)(fetch)
        for name, unit in units.items():
            m.submodules[name] = ResetInserter(clear)(unit)
        load, compute, store = units["load"], units["compute"], units["store"]
        wiring.connect(m, load.mem, arbiter.load)
        wiring.connect(m, fetch.mem, arbiter.fetch)
        wiring.connect(m, store.mem, arbiter.store)

        # -- instruction queues: fetch -> queue -> unit, streams of QueueEntry ----------------------
        queues = {}
        for name, port in (("load", fetch.load_q), ("compute", fetch.compute_q), ("store", fetch.store_q)):
            q = InsnQueue(c.insn_queue_depth)
            m.submodules[f"{name}_queue"] = ResetInserter(clear)(q)
            queues[name] = q
            wiring.connect(m, port, q.i)
            wiring.connect(m, q.o, units[name].queue)
            head = getattr(run, f"{name}_head")
            m.d.comb += [head.valid.eq(q.o.valid), head.pc.eq(q.o.payload.pc),
                         head.empty.eq(~q.o.valid & (q.level == 0))]

        # -- dependency tokens: one channel per direction -----------------------------------------
        def channel(name, producer, push, room, consumer, pop, available):
            ch = TokenChannel(c.token_queue_depth)
            m.submodules[f"tokens_{name}"] = ResetInserter(clear)(ch)
            m.d.comb += [ch.push.eq(getattr(producer.tokens, push)),
                         ch.pop.eq(getattr(consumer.tokens, pop)),
                         getattr(producer.tokens, room).eq(ch.room),
                         getattr(consumer.tokens, available).eq(ch.available)]

        channel("load_compute", load, "push_next", "room_next", compute, "pop_prev", "can_pop_prev")
        channel("compute_load", compute, "push_prev", "room_prev", load, "pop_next", "can_pop_next")
        channel("compute_store", compute, "push_next", "room_next", store, "pop_prev", "can_pop_prev")
        channel("store_compute", store, "push_prev", "room_prev", compute, "pop_next", "can_pop_next")
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
        scratchpad("acc", c.acc_depth, 32 * r, compute.acc_w, [compute.acc_r, compute.acc_rv])
        scratchpad("out", c.out_depth, 8 * r, compute.out_w, [store.out_r])

        # -- run control ----------------------------------------------------------------------
        ctrl, status = csr.fields("CTRL"), csr.fields("STATUS")
        m.d.comb += [run.start.eq(ctrl.start), run.ack.eq(ctrl.clear),
                     run.irq_enable.eq(csr.fields("IRQ_ENABLE").enable), run.finish.eq(compute.finish),
                     run.finishing.eq(compute.finishing)]
        for name in FetchStateSignature().members:
            m.d.comb += getattr(run.fetch, name).eq(getattr(fetch, name))
        for name, unit in units.items():
            wiring.connect(m, unit.status, getattr(run, name))
        m.d.comb += [fetch.run.eq(run.running), fetch.insn_addr.eq(csr.fields("INSN_ADDR").addr),
                     fetch.insn_count.eq(csr.fields("INSN_COUNT").count),
                     compute.others_idle.eq(~load.status.busy & ~store.status.busy
                                            & (queues["load"].level == 0) & (queues["store"].level == 0)),
                     status.busy.eq(run.running), status.done.eq(run.done), status.error.eq(run.error),
                     csr.fields("ERROR").code.eq(run.error_code),
                     csr.fields("ERROR_PC").index.eq(run.error_pc),
                     csr.fields("ERROR_ADDR").addr.eq(run.error_addr[:32]),
                     csr.fields("ERROR_ADDR_HI").addr.eq(run.error_addr[32:]),
                     self.irq.eq(run.irq)]

        # -- performance counters and trace ----------------------------------------------------
        running, axi = run.running, self.m_axi
        events = {
            "cycles": running,
            "load_busy": load.status.busy, "load_stall": load.status.stall & ~load.status.busy,
            "compute_busy": compute.status.busy,
            "compute_stall": compute.status.stall & ~compute.status.busy,
            "store_busy": store.status.busy, "store_stall": store.status.stall & ~store.status.busy,
            "mac_active": compute.mac_active,
            "dram_read_bytes": axi.rvalid & axi.rready,
            "dram_write_bytes": axi.wvalid & axi.wready,
        }
        m.d.comb += [getattr(perf.events, name).eq(event) for name, event in events.items()]
        m.d.comb += [perf.clear.eq(run.starting), perf.running.eq(running), perf.marker.eq(compute.marker),
                     perf.marker_id.eq(compute.marker_id), perf.trace_addr.eq(csr.trace_addr),
                     csr.trace_data.eq(perf.trace_data), csr.counters.eq(perf.counters),
                     csr.fields("TRACE_COUNT").count.eq(perf.trace_count)]

        for name, unit in units.items():
            m.d.comb += [getattr(self.debug, f"{name}_busy").eq(unit.status.busy),
                         getattr(self.debug, f"{name}_stall").eq(unit.status.stall),
                         getattr(self.debug, f"{name}_pc").eq(unit.status.pc)]
        m.d.comb += [self.debug.fetch_pc.eq(fetch.pc), self.debug.running.eq(running),
                     self.debug.marker.eq(running & compute.marker),
                     self.debug.marker_id.eq(compute.marker_id)]
        return m
