"""The instruction-set simulator: runs an encoded NPU program bit-exactly, with a cycle model.

The ISS executes the same program, from the same device-memory image, as the RTL, behind the
RTL's programming model (device memory, CSRs, interrupt).  A program is decoded, scheduled and
prepared once (sim/iss_plan.py: the order of execution, the counters and the trace do not depend on
data) and the plan is cached by the program's bytes; every run replays its ops, the instruction
semantics of sim/iss_exec.py on numpy views, so a served model pays for decoding and for its
cycles once.  By default the ops are the compiled kernels and int8 GEMM of sim/iss_kernels.py;
`ISS(config, fast=False)` runs the numpy reference ops (same bits).  One device computes on one
thread.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
from collections import OrderedDict

import numpy as np

from softnpu.hdl.asm import format_insn
from softnpu.hdl.config import NPUConfig
from softnpu.hdl.faults import NOT_FETCHED, NPUFault, insn_text
from softnpu.hdl.isa import (
    COUNTERS,
    CSR,
    INSN_BYTES,
    TRACE_ENTRY_WORDS,
    ErrorCode,
    IllegalInstruction,
    Insn,
    decode,
)
from softnpu.hdl.timing import insn_cycles
from softnpu.sim.iss_exec import Machine
from softnpu.sim.iss_plan import Plan, RunStats, build_plan

__all__ = ["ISS", "NPUFault", "RunStats", "insn_cycles"]

# programs whose plans one ISS keeps (a plan holds a few hundred bytes per instruction)
PLAN_CACHE = 8


@functools.cache
def _blas_controller():
    try:
        from threadpoolctl import ThreadpoolController  # scikit-learn's dependency, and pinned
    except ImportError:
        return None
    return ThreadpoolController()


def _one_blas_thread():
    """A context in which BLAS runs on one thread.  The ISS's matrix products are tile-sized and a
    device is one worker of a server; OpenBLAS's own threads spin against whatever else the host
    runs (a ResNet-50 image took 10x longer on a loaded 2-core host with them)."""
    controller = _blas_controller()
    return controller.limit(limits=1, user_api="blas") if controller else contextlib.nullcontext()


class ISS:
    """An NPU device in numpy: device memory, scratchpads, CSRs and a cycle model."""

    def __init__(self, config: NPUConfig, dram: np.ndarray | None = None, fast: bool = True):
        self.config = config
        self.machine = Machine(config, dram, fast=fast)      # fast=False: the numpy reference ops
        self._plans: OrderedDict[bytes, Plan] = OrderedDict()
        self._csr = {reg: 0 for reg in CSR}
        self.last_stats: RunStats | None = None
        self.last_fault: NPUFault | None = None

    # -- device memory ----------------------------------------------------------------------
    @property
    def dram(self) -> np.ndarray:
        """Device memory, read-only: write it with `write` (the ops that cache packed weights learn
        of writes there, sim/iss_exec.py WeightWatch)."""
        view = self.machine.dram.view()
        view.flags.writeable = False
        return view

    def write(self, addr: int, data) -> None:
        data = np.frombuffer(data, np.uint8) if not isinstance(data, np.ndarray) else \
            np.ascontiguousarray(data).view(np.uint8).reshape(-1)
        if addr < 0 or addr + data.size > self.dram.size:
            raise ValueError(f"write of {data.size} bytes at {addr:#x} exceeds device memory "
                             f"({self.dram.size:#x} bytes)")
        self.machine.write_dram(addr, data)

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
        for reg in (CSR.ERROR, CSR.ERROR_PC, CSR.ERROR_ADDR, CSR.ERROR_ADDR_HI):   # as the RTL's start
            self._csr[reg] = 0
        try:
            self.run(self._csr[CSR.INSN_ADDR], self._csr[CSR.INSN_COUNT])
            self._csr[CSR.STATUS] = 0b010
        except NPUFault as fault:
            self._csr[CSR.STATUS] = 0b110
            self._csr[CSR.ERROR] = int(fault.code)
            self._csr[CSR.ERROR_PC] = fault.pc
            addr = fault.addr or 0
            self._csr[CSR.ERROR_ADDR], self._csr[CSR.ERROR_ADDR_HI] = addr & 0xFFFFFFFF, addr >> 32

    # -- running programs --------------------------------------------------------------------
    def load_program(self, addr: int, program: bytes) -> int:
        """Write an encoded program to device memory; returns its instruction count."""
        self.write(addr, program)
        return len(program) // INSN_BYTES

    def _plan(self, addr: int, count: int) -> Plan:
        """The plan of the `count` instructions at `addr`: from the cache if these bytes ran before.
        Instructions fetch cannot read (INSN_ADDR misaligned, past the device memory) or decode end
        the program with the fault fetch meets there (sim/iss_plan.py)."""
        bus, size = self.config.dram_bus_bytes, self.dram.size
        fetchable = 0 if addr % bus else max(0, min(count, (size - addr) // INSN_BYTES))
        raw = self.dram[addr:addr + fetchable * INSN_BYTES].tobytes()
        key = hashlib.blake2b(raw + addr.to_bytes(8, "little") + count.to_bytes(8, "little"),
                              digest_size=16).digest()
        plan = self._plans.get(key)
        if plan is None:
            program, fault = _decode(raw, fetchable)
            if fault is None and fetchable < count:
                if addr % bus:
                    fault = NPUFault(ErrorCode.DRAM_ALIGN, 0, NOT_FETCHED, addr,
                                     f"INSN_ADDR={addr:#x} is not a multiple of the {bus}-byte bus")
                else:
                    end = addr + (fetchable + 1) * INSN_BYTES
                    fault = NPUFault(ErrorCode.DRAM_RANGE, fetchable, NOT_FETCHED, end - 1,
                                     f"instruction fetch beyond device memory ({end:#x} > {size:#x})")
            plan = build_plan(self.config, self.machine, program, fault)
            while len(self._plans) >= PLAN_CACHE:
                self._plans.popitem(last=False)
            self._plans[key] = plan
        self._plans.move_to_end(key)
        return plan

    def run(self, addr: int, count: int) -> RunStats:
        """Run `count` instructions fetched from device memory at `addr`."""
        try:
            with _one_blas_thread():
                stats = self._plan(addr, count).run()
        except NPUFault as fault:
            self.last_fault = fault
            raise
        self.last_stats = stats
        return stats

    def run_program(self, program: bytes, addr: int = 0) -> RunStats:
        """Convenience: place `program` at `addr` and run it."""
        return self.run(addr, self.load_program(addr, program))


def _decode(raw: bytes, count: int) -> tuple[list[Insn], NPUFault | None]:
    """Decode and check instructions up to the first illegal one: (the legal ones before it, its
    fault at its index, or None)."""
    program = []
    for pc in range(count):
        chunk = raw[pc * INSN_BYTES:(pc + 1) * INSN_BYTES]
        try:
            insn = decode(chunk)
        except IllegalInstruction as exc:
            return program, NPUFault(exc.code, pc, insn_text(chunk), None, str(exc))
        reason = insn.illegal_reason()
        if reason:
            return program, NPUFault(ErrorCode.ILLEGAL_FIELD, pc, format_insn(insn), None, reason)
        program.append(insn)
    return program, None
