"""A program's plan: the order the NPU's units run its instructions in, the cycles that costs, and
each instruction prepared as an Op on the machine; computed once per program, replayed per run.

Fetch dispatches instructions in program order into the load, compute and store queues (each
`insn_queue_depth` deep); each unit starts its head instruction once the tokens it pops are
available, runs it for the modelled number of cycles, then pushes its tokens.  Instructions run
functionally in the order of their modelled start times, which is an order the hardware could
take, so a race-free program gives the RTL's memory image.

Nothing here depends on data: the cycles of an instruction (hdl/timing.py) follow from its fields,
and so do the scratchpad and DRAM ranges it touches.  So the order, the counters, the marker trace
and any fault (its instruction, and which instructions ran before it) are properties of the
program, and `build_plan` computes them once.  A fault of fetch (an illegal instruction, or one past
the device memory) is taken when fetch reaches it, as on the RTL: after FINISH, behind a full
queue or after an earlier unit's fault, it is never reached.

The same property lets the plan leave out work whose result it knows (the fast ops only; what a
program can observe, device memory and scratchpads at the end of a run, stays the same):
- accumulation chains of convs multiply once (`_chain_convs`);
- a conv whose input tiles LOADs bring again unchanged finds its im2col rows in its buffer
  (`_im2col_reuse`), and the input LOADs only such convs read are left out (`_dead_input_loads`);
- convs whose weights LOADs of the run bring from device memory keep their packed weights while
  nothing writes there, and the weight LOADs only they read are skipped then (`_watch_weights`).
"""

from __future__ import annotations

import dataclasses
from collections import deque

import numpy as np

from softnpu.hdl import timing
from softnpu.hdl.asm import format_insn
from softnpu.hdl.config import NPUConfig
from softnpu.hdl.faults import NPUFault
from softnpu.hdl.isa import (
    COUNTERS,
    INSN_BYTES,
    Add,
    Buffer,
    Conv,
    ConvMode,
    ErrorCode,
    Finish,
    Insn,
    Load,
    Marker,
    Mul,
    Narrow,
    Queue,
    Requant,
    Store,
    acc_footprint,
    inp_window,
    load_footprint,
)
from softnpu.hdl.timing import dram_bytes, fetch_cycles, insn_cycles
from softnpu.sim import iss_kernels
from softnpu.sim.iss_exec import Machine, Op, WeightWatch, dram_extent, merge_ranges
from softnpu.sim.iss_kernels import MAX_GEMM_K

__all__ = ["NPUFault", "Plan", "RunStats", "build_plan"]

_UNITS = ("load", "compute", "store")
# token channels: (from unit, to unit)
_CHANNELS = {("load", "compute"), ("compute", "load"), ("compute", "store"), ("store", "compute")}
_UNIT_OF = {Queue.LOAD: "load", Queue.COMPUTE: "compute", Queue.STORE: "store"}
_PREV = {"load": None, "compute": "load", "store": "compute"}
_NEXT = {"load": "compute", "compute": "store", "store": None}


@dataclasses.dataclass
class RunStats:
    """What one program run costs on the modelled hardware."""
    config: NPUConfig
    counters: dict[str, int]
    trace: list[tuple[int, dict[str, int]]]        # (marker id, counters at the marker)
    instructions: int

    @property
    def cycles(self) -> int:
        return self.counters["cycles"]

    @property
    def seconds(self) -> float:
        return self.config.cycles_to_seconds(self.cycles)

    def utilization(self) -> dict[str, float]:
        """Fraction of cycles each unit was busy, and the MAC array's fraction of active cycles."""
        cycles = max(self.cycles, 1)
        util = {unit: self.counters[f"{unit}_busy"] / cycles for unit in _UNITS}
        util["mac"] = self.counters["mac_active"] / cycles
        return util

    def copy(self) -> RunStats:
        return RunStats(self.config, dict(self.counters), [(m, dict(c)) for m, c in self.trace],
                        self.instructions)


@dataclasses.dataclass
class Plan:
    """One program on one machine: `ops` in execution order, then either `stats` or `fault`."""
    ops: list[Op]
    stats: RunStats | None
    fault: NPUFault | None

    def run(self) -> RunStats:
        """Perform the program on the machine; returns its stats or raises its fault."""
        for op in self.ops:
            op()
        if self.fault is not None:
            fault = self.fault
            raise NPUFault(fault.code, fault.pc, fault.insn, fault.addr, fault.detail)
        return self.stats.copy()


def _gemm_k(config: NPUConfig, conv: Conv) -> int:
    return conv.in_blocks * conv.kh * conv.kw * config.cols


def build_plan(config: NPUConfig, machine: Machine, program: list[Insn],
               fetch_fault: NPUFault | None = None) -> Plan:
    """Schedule `program` (decoded and checked instruction by instruction) and prepare its ops;
    `fetch_fault`, at index len(program), is what fetch meets after the last of them."""
    return _Schedule(config, machine, program, fetch_fault).run()


class _Schedule:
    """The event order and cycle model of one run (see the module docstring)."""

    def __init__(self, config: NPUConfig, machine: Machine, program: list[Insn],
                 fetch_fault: NPUFault | None = None):
        self.config, self.machine, self.program = config, machine, program
        self.fetch_fault = fetch_fault
        self.fetch_fault_time: int | None = None        # when fetch decodes it, once reached
        self.queues = {unit: deque() for unit in _UNITS}         # (pc, dispatch time)
        self.unit_free = dict.fromkeys(_UNITS, 0)
        self.busy_until = dict.fromkeys(_UNITS, 0)
        self.compute = timing.ComputeIssue(config)     # the compute unit's two engines
        self.tokens = {ch: deque() for ch in _CHANNELS}            # times tokens become visible
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.trace: list[tuple[int, dict[str, int]]] = []
        self.next_fetch = 0
        self.fetch_time = 0
        self.starts = {unit: [] for unit in _UNITS}               # start time of each instruction
        self.dispatched = dict.fromkeys(_UNITS, 0)
        self.finished = False
        self.fetch_cost = fetch_cycles(config)
        self.weights_clean: np.ndarray | None = None      # the plan's WeightWatch flag (_watch_weights)

    def _dispatch(self):
        depth = self.config.insn_queue_depth
        while self.next_fetch < len(self.program) and not self.finished:
            insn = self.program[self.next_fetch]
            unit = _UNIT_OF[insn.QUEUE]
            if len(self.queues[unit]) >= depth:
                return
            ready = self.fetch_time + self.fetch_cost
            k = self.dispatched[unit]
            if k >= depth:   # the slot frees when instruction k-depth of this unit starts
                ready = max(ready, self.starts[unit][k - depth])
            self.dispatched[unit] = k + 1
            self.fetch_time = ready
            self.counters["dram_read_bytes"] += INSN_BYTES
            self.queues[unit].append((self.next_fetch, ready + timing.QUEUE))
            self.next_fetch += 1
            if isinstance(insn, Finish):
                self.finished = True
        if self.fetch_fault is not None and not self.finished and self.fetch_fault_time is None:
            self.fetch_fault_time = self.fetch_time + self.fetch_cost

    def _waits(self, unit: str, insn: Insn) -> list[tuple[str, str]] | None:
        """Channels the head instruction pops, or None if a token or a push slot is missing."""
        pops = []
        if insn.pop_prev:
            pops.append((_PREV[unit], unit))
        if insn.pop_next:
            pops.append((_NEXT[unit], unit))
        for ch in pops:
            if not self.tokens[ch]:
                return None
        for flag, peer in (("push_prev", _PREV[unit]), ("push_next", _NEXT[unit])):
            if getattr(insn, flag) and len(self.tokens[(unit, peer)]) >= self.config.token_queue_depth:
                return None
        return pops

    def _fault(self, pc: int, fault: NPUFault) -> NPUFault:
        return fault.place(pc, format_insn(self.program[pc]))

    def run(self) -> Plan:
        config = self.config
        ops: list[Op] = []
        insns: list[Insn] = []
        while True:
            self._dispatch()
            best = None
            for unit in _UNITS:
                if not self.queues[unit]:
                    continue
                pc, dispatched = self.queues[unit][0]
                insn = self.program[pc]
                if isinstance(insn, Finish) and (self.queues["load"] or self.queues["store"]):
                    continue
                pops = self._waits(unit, insn)
                if pops is None:
                    continue
                own = self.compute.earliest(insn) if unit == "compute" else self.unit_free[unit]
                free = max(own, dispatched)
                start = max([free] + [self.tokens[ch][0] for ch in pops])
                if isinstance(insn, Finish):
                    start = max([start] + list(self.unit_free.values()))
                if best is None or start < best[0]:
                    best = (start, free, unit, pc, insn, pops)
            if self.fetch_fault_time is not None and (best is None or best[0] >= self.fetch_fault_time):
                return Plan(ops, None, self.fetch_fault)        # fetch faults first (first on a tie)
            if best is None:
                if any(self.queues.values()) or (self.next_fetch < len(self.program)
                                                 and not self.finished):
                    return Plan(ops, None, self._deadlock())
                break
            start, free, unit, pc, insn, pops = best
            self.queues[unit].popleft()
            self.starts[unit].append(start)
            for ch in pops:
                self.tokens[ch].popleft()
            try:
                ops.append(self.machine.prepare(insn))
                insns.append(insn)
            except NPUFault as fault:
                return Plan(ops, None, self._fault(pc, fault))
            end = self.compute.run(insn, start) if unit == "compute" else start + insn_cycles(config, insn)
            self.unit_free[unit] = max(self.unit_free[unit], end)
            # busy: the union of the instructions' spans (a vector op runs beside CONVs)
            self.counters[f"{unit}_busy"] += max(0, end - max(start, self.busy_until[unit]))
            self.busy_until[unit] = max(self.busy_until[unit], end)
            self.counters[f"{unit}_stall"] += start - free
            if isinstance(insn, Conv):
                self.counters["mac_active"] += insn.array_cycles
            read, written = dram_bytes(config, insn)
            self.counters["dram_read_bytes"] += read
            self.counters["dram_write_bytes"] += written
            if insn.push_prev:
                self.tokens[(unit, _PREV[unit])].append(end + timing.TOKEN)
            if insn.push_next:
                self.tokens[(unit, _NEXT[unit])].append(end + timing.TOKEN)
            if isinstance(insn, Marker):
                snapshot = dict(self.counters, cycles=start)
                self.trace.append((insn.id, snapshot))
        self.counters["cycles"] = max(self.unit_free.values()) + 1
        ops = self._join_dmas(self._chain_convs(insns, ops))
        return Plan(ops, RunStats(config, dict(self.counters), self.trace, len(self.program)), None)

    def _chain_convs(self, insns: list[Insn], ops: list[Op]) -> list[Op]:
        """Join accumulation chains of fast int8 convs into one GEMM each (Machine.int8_conv_chain).

        A chain: MAC convs into the same accumulator entries, every one after the first accumulating,
        with no op between them that reads or writes those entries (a REQUANT, NARROW or another
        conv); whatever else runs between them (the loads of the next input and weights) runs in
        place, as each conv copies its operands where it stands.  The chain's product is added where
        its last conv stands, before anything else touches the entries.  Chains that are open at the
        same time get distinct im2col buffers."""
        chains: list[list[int]] = []
        open_chains: dict[tuple[int, int], list[int]] = {}

        def close_overlapping(lo: int, hi: int):
            for key in [key for key in open_chains if key[0] < hi and lo < key[1]]:
                chains.append(open_chains.pop(key))

        for i, (insn, op) in enumerate(zip(insns, ops, strict=True)):
            footprint = acc_footprint(insn)
            if footprint is None:
                continue
            chain = open_chains.get(footprint)
            if hasattr(op, "conv") and chain is not None and insn.accumulate:
                head = insns[chain[0]]
                k = sum(_gemm_k(self.config, insns[j]) for j in chain) + _gemm_k(self.config, insn)
                if ((head.out_blocks, head.out_h, head.out_w) == (insn.out_blocks, insn.out_h, insn.out_w)
                        and k <= MAX_GEMM_K):
                    chain.append(i)
                    continue
            close_overlapping(*footprint)
            if hasattr(op, "conv"):
                open_chains[footprint] = [i]
        chains += open_chains.values()
        joined = list(ops)
        watch, watched, bracket = self._watch_weights(insns, ops)
        unchanged = {i: watch.clean for i in watched}
        busy_until: list[int] = []                  # per im2col buffer: the last op of its chain
        buffers = []
        for chain in sorted(chains, key=lambda c: c[0]):
            head = insns[chain[0]]
            shape = (head.out_h * head.out_w, sum(_gemm_k(self.config, insns[j]) for j in chain))
            if len(chain) == 1:                     # the buffer int8_conv_chain takes by default
                buffers.append((chain, self.machine._workspace(0, shape, np.uint8)))
                continue
            slot = next((b for b, end in enumerate(busy_until) if end < chain[0]), len(busy_until))
            busy_until[slot:slot + 1] = [chain[-1]]
            buffers.append((chain, self.machine._workspace(10 + slot, shape, np.uint8)))
        fresh = self._im2col_reuse(insns, ops, buffers)
        for chain, x in buffers:
            for j, op in zip(chain, self.machine.int8_conv_chain([ops[j].conv for j in chain], x,
                                                                 [unchanged.get(j) for j in chain],
                                                                 [fresh[j] for j in chain]),
                             strict=True):
                joined[j] = op
        dead = self._dead_input_loads(insns, ops, fresh)
        return [bracket[0]] + [op for i, op in enumerate(joined) if i not in dead] + [bracket[1]]

    def _dead_input_loads(self, insns: list[Insn], ops: list[Op], fresh: dict[int, bool]) -> set[int]:
        """The fast LOADs into the input scratchpad whose entries nothing reads before later LOADs
        overwrite them: the convs after them find their im2col rows in their buffer (`fresh` False,
        _im2col_reuse) and read no entry.  Leaving them out changes nothing a program can see: the
        run ends with the entries of the LOADs that write them last, which stay."""
        writer = np.full(self.config.inp_depth, -1, np.int64)    # the LOAD that last wrote each entry
        loads: set[int] = set()
        needed: set[int] = set()

        def read(first: int, end: int):
            needed.update(int(w) for w in np.unique(writer[first:end]) if w >= 0)

        for i, (insn, op) in enumerate(zip(insns, ops, strict=True)):
            if isinstance(insn, Load) and insn.buffer == Buffer.INP:
                writer[slice(*load_footprint(insn))] = i
                if hasattr(op, "dma"):
                    loads.add(i)
            elif isinstance(insn, Conv):
                if fresh.get(i, True):
                    read(*inp_window(insn))
            elif isinstance(insn, (Add, Mul)):
                read(insn.a, insn.a + insn.blocks * insn.count)
                if not insn.b_param:
                    read(insn.b, insn.b + insn.blocks * insn.count)
            elif not isinstance(insn, (Load, Store, Requant, Narrow, Marker, Finish)):
                read(0, writer.size)              # an instruction this pass does not know
        read(0, writer.size)                      # the entries the run leaves
        return loads - needed

    def _im2col_sources(self, insns: list[Insn], ops: list[Op]) -> dict[int, tuple]:
        """What the im2col rows of each fast MAC conv hold, as a key equal for two convs exactly when
        their rows are equal: the conv's window fields and, for every input entry it reads, which
        LOAD wrote it.  Two LOADs with the same fields write the same entries with the same bytes
        unless a STORE between them wrote into what they read (only LOADs write the input
        scratchpad).  A conv reading an entry that no LOAD of the run wrote has no key."""
        config = self.config
        entry = config.entry_bytes("inp")
        writer = np.full(config.inp_depth, -1, np.int64)        # token of the LOAD that wrote each entry
        tokens: dict[tuple, tuple[int, int]] = {}   # LOAD fields -> (token, STOREs before it)
        stores: list[tuple[int, int]] = []
        keys: dict[int, tuple] = {}
        for i, (insn, op) in enumerate(zip(insns, ops, strict=True)):
            if isinstance(insn, Load) and insn.buffer == Buffer.INP:
                fields = tuple(getattr(insn, f.name) for f in insn.FIELDS)
                start, end = (a[0] for a in dram_extent([insn], entry))
                known = tokens.get(fields)
                if known is None or any(lo < end and start < hi for lo, hi in stores[known[1]:]):
                    known = tokens[fields] = (i, len(stores))      # i: a token no other LOAD has
                writer[slice(*load_footprint(insn))] = known[0]
            elif isinstance(insn, Store):
                stores.append(tuple(a[0] for a in dram_extent([insn], config.rows)))
            elif isinstance(insn, Conv) and hasattr(op, "conv"):
                window = (insn.inp, insn.in_blocks, insn.kh, insn.kw, insn.stride_h, insn.stride_w,
                          insn.out_h, insn.out_w, insn.inp_row, insn.inp_block)
                read = writer[slice(*inp_window(insn))]
                if (read >= 0).all():
                    keys[i] = (window, read.tobytes())
        return keys

    def _im2col_reuse(self, insns: list[Insn], ops: list[Op],
                      buffers: list[tuple[list[int], np.ndarray]]) -> dict[int, bool]:
        """Whether each fast MAC conv must write its im2col rows (`fresh`), or finds them in its buffer
        already: the last conv that wrote those columns of that buffer (same shape) wrote the same
        rows (_im2col_sources), and no conv wrote over them since.  A layer's convs for each block of
        output channels read the same input tiles, LOADed again for each: their rows are written
        once."""
        keys = self._im2col_sources(insns, ops)
        place = {}
        for chain, x in buffers:
            k0 = 0
            for j in chain:
                k = _gemm_k(self.config, insns[j])
                place[j] = (x.ctypes.data, x.shape, k0, k)
                k0 += k
        held: dict[int, tuple[tuple[int, int], dict[tuple[int, int], tuple]]] = {}
        fresh = {}
        for j in sorted(place):                    # in the order the convs run
            address, shape, k0, k = place[j]
            key = keys.get(j)
            held_shape, columns = held.get(address, (None, {}))
            if held_shape != shape:
                columns = {}
                held[address] = (shape, columns)
            if key is not None and columns.get((k0, k)) == key:
                fresh[j] = False
                continue
            fresh[j] = True
            for c in [c for c in columns if c[0] < k0 + k and k0 < c[0] + c[1]]:
                del columns[c]
            if key is not None:
                columns[(k0, k)] = key
        return fresh

    def _watch_weights(self, insns: list[Insn], ops: list[Op]
                       ) -> tuple[WeightWatch, set[int], tuple[Op, Op]]:
        """The fast MAC convs whose weight entries were all written by LOADs earlier in the run, the
        WeightWatch over the device memory those LOADs read, and the ops that open and close a run:
        the first tells the machine of this program's STOREs (another plan's watch may cover what
        they write), the last marks the watch clean (sim/iss_exec.py, WeightWatch).  Nothing is
        watched if this program STOREs into what it LOADs weights from.

        A weight LOAD whose entries are read only by watched convs, and overwritten by later LOADs
        before the run ends, need not run while the watch is clean: those convs have their packed
        weights in hand and read no entry, and the run leaves the scratchpad as it would.  Its
        DMA row is marked skippable (iss_kernels.dma, with `weights_clean` as the flag)."""
        machine, config = self.machine, self.config
        writer = np.full(config.wgt_depth, -1, np.int64)       # the LOAD that last wrote each entry
        loads: list[Insn] = []
        load_ops: list[Op] = []
        needed: set[int] = set()                  # LOADs that a conv which is not watched reads
        sources: dict[int, np.ndarray] = {}
        for i, (insn, op) in enumerate(zip(insns, ops, strict=True)):
            if isinstance(insn, Load) and insn.buffer == Buffer.WGT:
                writer[slice(*load_footprint(insn))] = len(loads)
                loads.append(insn)
                load_ops.append(op)
            elif isinstance(insn, Conv) and insn.mode == ConvMode.MAC:
                taps = insn.in_blocks * insn.kh * insn.kw
                entries = writer[insn.wgt:insn.wgt + insn.out_blocks * taps]
                if hasattr(op, "conv") and (entries >= 0).all():
                    sources[i] = np.unique(entries)
                else:
                    needed.update(int(e) for e in np.unique(entries) if e >= 0)
        needed.update(int(e) for e in np.unique(writer) if e >= 0)      # they leave the final entries
        starts, ends = dram_extent(loads, config.entry_bytes("wgt"))
        used = np.unique(np.concatenate(list(sources.values()))) if sources else np.zeros(0, np.int64)
        watch = machine.watch_weights(starts[used], ends[used])
        stores = merge_ranges(*dram_extent([insn for insn in insns if isinstance(insn, Store)], config.rows))
        if watch.overlaps(*stores):
            sources, needed = {}, set(range(len(loads)))
            watch = machine.watch_weights(np.zeros(0, np.int64), np.zeros(0, np.int64))
        for k, op in enumerate(load_ops):
            if k not in needed and hasattr(op, "dma"):
                op.dma[0, iss_kernels.DMA_SKIPPABLE] = 1
        self.weights_clean = watch.clean

        def stores_written():
            machine.dram_written(*stores, by=watch)

        def weights_clean():
            watch.clean[0] = True
        return watch, set(sources), (stores_written, weights_clean)

    def _join_dmas(self, ops: list[Op]) -> list[Op]:
        """Consecutive fast-path LOAD/STORE ops (those with a `dma` row) as one op of their rows, in
        order: the same copies, one call; the rows marked skippable (_watch_weights) skipped while
        the plan's weights are clean."""
        joined: list[Op] = []
        run: list[Op] = []
        for op in ops + [None]:
            if op is not None and hasattr(op, "dma"):
                run.append(op)
                continue
            if run:
                joined.append(self.machine.dma_batch(np.concatenate([r.dma for r in run]),
                                                     self.weights_clean))
            run = []
            if op is not None:
                joined.append(op)
        return joined

    def _deadlock(self) -> NPUFault:
        waiting = []
        first_pc = None
        for unit in _UNITS:
            if self.queues[unit]:
                pc, _ = self.queues[unit][0]
                first_pc = pc if first_pc is None else min(first_pc, pc)
                waiting.append(f"{unit} waits at instruction {pc} [{format_insn(self.program[pc])}]")
        if self.next_fetch < len(self.program):
            waiting.append(f"fetch holds instruction {self.next_fetch} for a full queue")
        pc = first_pc if first_pc is not None else self.next_fetch
        text = format_insn(self.program[pc]) if pc < len(self.program) else "<end>"
        return NPUFault(ErrorCode.DEADLOCK, pc, text, None,
                        "every unit waits for a token no unit will send: " + "; ".join(waiting))
