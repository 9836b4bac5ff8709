"""The instruction-set simulator: runs an encoded NPU program bit-exactly, with a cycle model.

The ISS executes the same program, from the same device-memory image, as the RTL.  Fetch
dispatches instructions in program order into the load, compute and store queues (each
`insn_queue_depth` deep); each unit starts its head instruction once the tokens it pops are
available, runs it for the modelled number of cycles, then pushes its tokens.  Instructions run
functionally in the order of their modelled start times, which is an order the hardware could
take, so a race-free program gives the RTL's memory image.

The cycles of each instruction come from hdl/timing.py, shared with the compiler; FINISH also
waits until every unit is idle.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import deque

import numpy as np

from softnpu.hdl import timing
from softnpu.hdl.asm import format_insn
from softnpu.hdl.config import NPUConfig
from softnpu.hdl.isa import (
    COUNTERS,
    CSR,
    INSN_BYTES,
    TRACE_ENTRY_WORDS,
    Conv,
    ErrorCode,
    Finish,
    IllegalInstruction,
    Insn,
    Marker,
    Queue,
    decode,
)
from softnpu.hdl.timing import dram_bytes, fetch_cycles, insn_cycles
from softnpu.sim.iss_exec import Fault, Machine

__all__ = ["ISS", "NPUFault", "RunStats", "insn_cycles"]

_UNITS = ("load", "compute", "store")
# token channels: (from unit, to unit)
_CHANNELS = {("load", "compute"), ("compute", "load"), ("compute", "store"), ("store", "compute")}


class NPUFault(RuntimeError):
    """A fault the NPU reports: error code, instruction index and its disassembly."""

    def __init__(self, code: ErrorCode, pc: int, insn_text: str, message: str):
        self.code, self.pc, self.insn_text = ErrorCode(code), pc, insn_text
        super().__init__(f"NPU fault {self.code.name} (code {int(self.code)}) at instruction {pc}"
                         f" [{insn_text}]: {message}")


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


_UNIT_OF = {Queue.LOAD: "load", Queue.COMPUTE: "compute", Queue.STORE: "store"}
_PREV = {"load": None, "compute": "load", "store": "compute"}
_NEXT = {"load": "compute", "compute": "store", "store": None}


class ISS:
    """An NPU device in numpy: device memory, scratchpads, CSRs and a cycle model."""

    def __init__(self, config: NPUConfig, dram: np.ndarray | None = None):
        self.config = config
        self.machine = Machine(config, dram)
        self._decoded: dict[bytes, list[Insn]] = {}
        self._csr = {reg: 0 for reg in CSR}
        self.last_stats: RunStats | None = None
        self.last_fault: NPUFault | None = None

    # -- device memory ----------------------------------------------------------------------
    @property
    def dram(self) -> np.ndarray:
        return self.machine.dram

    def write(self, addr: int, data) -> None:
        data = np.frombuffer(bytes(data), np.uint8) if not isinstance(data, np.ndarray) else \
            np.ascontiguousarray(data).view(np.uint8).reshape(-1)
        if addr < 0 or addr + data.size > self.dram.size:
            raise ValueError(f"write of {data.size} bytes at {addr:#x} exceeds device memory "
                             f"({self.dram.size:#x} bytes)")
        self.dram[addr:addr + data.size] = data

    def read(self, addr: int, size: int) -> np.ndarray:
        if addr < 0 or addr + size > self.dram.size:
            raise ValueError(f"read of {size} bytes at {addr:#x} exceeds device memory "
                             f"({self.dram.size:#x} bytes)")
        return self.dram[addr:addr + size].copy()

    def reset(self) -> None:
        self.machine.clear_scratchpads()
        self._csr = {reg: 0 for reg in CSR}
        self.last_stats = self.last_fault = None

    # -- CSRs (the same register map the RTL exposes over AXI4-Lite) --------------------------
    def write_csr(self, offset: int, value: int) -> None:
        reg = CSR(offset)
        if reg == CSR.CTRL:
            if value & 2:
                self._csr[CSR.STATUS] &= ~0b110
                self._csr[CSR.ERROR] = 0
            if value & 1:
                self._start()
            return
        if reg not in (CSR.INSN_ADDR, CSR.INSN_COUNT, CSR.IRQ_ENABLE):
            raise ValueError(f"CSR {reg.name} is read-only")
        self._csr[reg] = value & 0xFFFFFFFF

    def read_csr(self, offset: int) -> int:
        if offset >= CSR.TRACE:
            words = (offset - CSR.TRACE) // 4
            entry, word = divmod(words, TRACE_ENTRY_WORDS)
            trace = self.last_stats.trace[:self.config.trace_depth] if self.last_stats else []
            if entry >= len(trace) or word > len(COUNTERS):
                return 0
            marker, counters = trace[entry]
            return (marker if word == 0 else counters[COUNTERS[word - 1]]) & 0xFFFFFFFF
        if offset >= CSR.COUNTERS:
            index, high = divmod((offset - CSR.COUNTERS) // 4, 2)
            counters = self.last_stats.counters if self.last_stats else {}
            value = counters.get(COUNTERS[index], 0) if index < len(COUNTERS) else 0
            return (value >> (32 * high)) & 0xFFFFFFFF
        if offset == CSR.TRACE_COUNT:
            return min(len(self.last_stats.trace), self.config.trace_depth) if self.last_stats else 0
        return self._csr[CSR(offset)]

    @property
    def irq(self) -> bool:
        return bool(self._csr[CSR.STATUS] & 2) and bool(self._csr[CSR.IRQ_ENABLE] & 1)

    def _start(self):
        try:
            self.run(self._csr[CSR.INSN_ADDR], self._csr[CSR.INSN_COUNT])
            self._csr[CSR.STATUS] = 0b010
        except NPUFault as fault:
            self._csr[CSR.STATUS] = 0b110
            self._csr[CSR.ERROR] = int(fault.code)
            self._csr[CSR.ERROR_PC] = fault.pc

    # -- running programs --------------------------------------------------------------------
    def load_program(self, addr: int, program: bytes) -> int:
        """Write an encoded program to device memory; returns its instruction count."""
        self.write(addr, program)
        return len(program) // INSN_BYTES

    def _decode(self, addr: int, count: int) -> list[Insn]:
        end = addr + count * INSN_BYTES
        if addr % self.config.dram_bus_bytes:
            bus = self.config.dram_bus_bytes
            raise NPUFault(ErrorCode.DRAM_ALIGN, 0, "<fetch>",
                           f"INSN_ADDR={addr:#x} is not a multiple of the {bus}-byte bus")
        if end > self.dram.size:
            raise NPUFault(ErrorCode.DRAM_RANGE, (self.dram.size - addr) // INSN_BYTES, "<fetch>",
                           f"instruction fetch beyond device memory ({end:#x} > {self.dram.size:#x})")
        raw = self.dram[addr:end].tobytes()
        key = hashlib.blake2b(raw, digest_size=16).digest()
        program = self._decoded.get(key)
        if program is None:
            program = []
            for pc in range(count):
                chunk = raw[pc * INSN_BYTES:(pc + 1) * INSN_BYTES]
                try:
                    insn = decode(chunk)
                except IllegalInstruction as exc:
                    raise NPUFault(exc.code, pc, f".word {int.from_bytes(chunk, 'little'):#x}",
                                   str(exc)) from None
                reason = insn.illegal_reason()
                if reason:
                    raise NPUFault(ErrorCode.ILLEGAL_FIELD, pc, format_insn(insn), reason)
                program.append(insn)
            if len(self._decoded) > 64:
                self._decoded.clear()
            self._decoded[key] = program
        return program

    def run(self, addr: int, count: int) -> RunStats:
        """Run `count` instructions fetched from device memory at `addr`."""
        try:
            program = self._decode(addr, count)
            stats = _Schedule(self.config, self.machine, program).run()
        except NPUFault as fault:
            self.last_fault = fault
            raise
        self.last_stats = stats
        return stats

    def run_program(self, program: bytes, addr: int = 0) -> RunStats:
        """Convenience: place `program` at `addr` and run it."""
        return self.run(addr, self.load_program(addr, program))


class _Schedule:
    """The event order and cycle model of one run (see the module docstring)."""

    def __init__(self, config: NPUConfig, machine: Machine, program: list[Insn]):
        self.config, self.machine, self.program = config, machine, program
        self.queues = {unit: deque() for unit in _UNITS}         # (pc, dispatch time)
        self.unit_free = dict.fromkeys(_UNITS, 0)
        self.tokens = {ch: deque() for ch in _CHANNELS}            # times tokens become visible
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.trace: list[tuple[int, dict[str, int]]] = []
        self.next_fetch = 0
        self.fetch_time = 0
        self.starts = {unit: [] for unit in _UNITS}               # start time of each instruction
        self.dispatched = dict.fromkeys(_UNITS, 0)
        self.finished = False
        self.fetch_cost = fetch_cycles(config)

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

    def _fault(self, pc: int, fault: Fault) -> NPUFault:
        return NPUFault(fault.code, pc, format_insn(self.program[pc]), str(fault))

    def run(self) -> RunStats:
        config = self.config
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
                free = max(self.unit_free[unit], dispatched)
                start = max([free] + [self.tokens[ch][0] for ch in pops])
                if isinstance(insn, Finish):
                    start = max([start] + list(self.unit_free.values()))
                if best is None or start < best[0]:
                    best = (start, free, unit, pc, insn, pops)
            if best is None:
                if any(self.queues.values()) or (self.next_fetch < len(self.program)
                                                 and not self.finished):
                    raise self._deadlock()
                break
            start, free, unit, pc, insn, pops = best
            self.queues[unit].popleft()
            self.starts[unit].append(start)
            for ch in pops:
                self.tokens[ch].popleft()
            try:
                self.machine.execute(insn)
            except Fault as fault:
                raise self._fault(pc, fault) from None
            cost = insn_cycles(config, insn)
            end = start + cost
            self.unit_free[unit] = end
            self.counters[f"{unit}_busy"] += cost
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
        return RunStats(config, dict(self.counters), self.trace, len(self.program))

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
        return NPUFault(ErrorCode.DEADLOCK, pc, text,
                        "every unit waits for a token no unit will send: " + "; ".join(waiting))
