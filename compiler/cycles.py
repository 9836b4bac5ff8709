"""Static cycle estimate of a whole NPU program: the cycle model of hdl/timing.py scheduled under
the program's dependency tokens, without executing anything.

The compiler's programs push every token before (in program order) the instruction that pops it
(see compiler/emit.py), so one pass in program order knows, for each instruction, when its unit is
free, when its tokens arrive (`timing.TOKEN` after the push) and when fetch dispatched it (one
instruction per `fetch_cycles`, stalled while the unit's queue of `insn_queue_depth` is full; it
reaches the unit `timing.QUEUE` later).  This is the ISS's schedule without
the functional part, so the estimate is what the ISS reports, modulo token-queue back-pressure.
"""

from __future__ import annotations

import dataclasses
from collections import deque

from softnpu.hdl import timing
from softnpu.hdl.config import NPUConfig
from softnpu.hdl.isa import INSN_BYTES, Conv, Finish, Insn, Marker, Queue
from softnpu.hdl.timing import dram_bytes, fetch_cycles, insn_cycles

__all__ = ["Estimate", "Span", "estimate"]

_UNIT = {Queue.LOAD: 0, Queue.COMPUTE: 1, Queue.STORE: 2}


@dataclasses.dataclass(frozen=True)
class Span:
    """One instruction in the modelled schedule (cycles): fetched over [fetch_start, fetch_end),
    ready at its unit at `ready`, run over [start, end); start - ready is the time it waited for
    its unit or for a dependency token."""
    pc: int
    unit: int                               # 0 load, 1 compute, 2 store
    fetch_start: int
    fetch_end: int
    ready: int
    start: int
    end: int


@dataclasses.dataclass
class Estimate:
    cycles: int                             # the whole program, start to done
    markers: list[tuple[int, int]]          # (marker id, start cycle) in program order
    busy: tuple[int, int, int]              # load, compute, store busy cycles
    mac_active: int
    dram_read_bytes: int
    dram_write_bytes: int
    spans: list[Span] | None = None         # per instruction, with estimate(..., spans=True)

    def layer_cycles(self) -> dict[int, int]:
        """Cycles from each marker to the next (the first one: from the start; the last one: to the
        end), by marker id, summed over the markers a layer repeats (a relayout's per-pixel programs);
        they add up to `cycles`."""
        starts = [0] + [t for _, t in self.markers[1:]]
        ends = starts[1:] + [self.cycles]
        cycles: dict[int, int] = {}
        for (mid, _), t, end in zip(self.markers, starts, ends, strict=True):
            cycles[mid] = cycles.get(mid, 0) + end - t
        return cycles


def estimate(config: NPUConfig, program: list[Insn], spans: bool = False) -> Estimate:
    """Modelled cycles of `program` (instructions in program order); `spans`: also record each
    instruction's schedule (for timelines)."""
    depth = config.insn_queue_depth
    fetch_cost = fetch_cycles(config)
    free = [0, 0, 0]
    busy = [0, 0, 0]
    busy_until = [0, 0, 0]
    compute = timing.ComputeIssue(config)
    starts: list[list[int]] = [[], [], []]
    # tokens[(from, to)]: times at which pushed tokens become visible
    tokens = {(0, 1): deque(), (1, 0): deque(), (1, 2): deque(), (2, 1): deque()}
    fetch = 0
    queue, token = getattr(timing, "QUEUE", 0), getattr(timing, "TOKEN", 0)
    markers = []
    mac = read = written = 0
    recorded: list[Span] | None = [] if spans else None
    for pc, insn in enumerate(program):
        fetched = fetch
        unit = _UNIT[insn.QUEUE]
        ready = fetch + fetch_cost
        k = len(starts[unit])
        if k >= depth:
            ready = max(ready, starts[unit][k - depth])
        fetch = ready
        arrival = ready + queue
        unit_free = compute.earliest(insn) if unit == 1 else free[unit]
        start = max(arrival, unit_free)
        for flag, peer in (("pop_prev", unit - 1), ("pop_next", unit + 1)):
            if getattr(insn, flag):
                channel = tokens[(peer, unit)]
                if not channel:
                    raise ValueError(f"instruction {pc} ({insn!r}) pops a token that no earlier "
                                     "instruction pushed: the program is not in compiler order")
                start = max(start, channel.popleft())
        if isinstance(insn, Finish):
            start = max([start] + free)
        end = compute.run(insn, start) if unit == 1 else start + insn_cycles(config, insn)
        if recorded is not None:
            recorded.append(Span(pc, unit, fetched, ready, max(arrival, unit_free), start, end))
        starts[unit].append(start)
        free[unit] = max(free[unit], end)
        busy[unit] += max(0, end - max(start, busy_until[unit]))       # a union: vector ops overlap
        busy_until[unit] = max(busy_until[unit], end)
        if insn.push_prev:
            tokens[(unit, unit - 1)].append(end + token)
        if insn.push_next:
            tokens[(unit, unit + 1)].append(end + token)
        if isinstance(insn, Marker):
            markers.append((insn.id, start))
        elif isinstance(insn, Conv):
            mac += insn.array_cycles
        r, w = dram_bytes(config, insn)
        read, written = read + r + INSN_BYTES, written + w
    return Estimate(max(free) + 1, markers, tuple(busy), mac, read, written, recorded)
