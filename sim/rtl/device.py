"""The device API of the RTL simulation, used from cocotb coroutines inside the simulator process:
load a memory image, write/read memory (bulk, through the DPI array), write/read CSRs (AXI4-Lite),
start, run until the interrupt with a cycle budget, reset.  A run that ends on a fault raises
`NPUFault` (hdl/faults.py), read from the fault CSRs and the faulting instruction in memory;
`irq_at_end` tells whether the interrupt line was up when the run ended.

The clock runs in the simulator (the harness top makes it, sim/rtl/harness.py); a run sleeps
until the interrupt or the budget, so Python is never woken per cycle.  Exceeding the budget
raises `CycleBudgetExceeded`, which names each unit's state (busy or waiting for a token) and the
instruction it holds.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from cocotb.triggers import ClockCycles, First, ReadOnly, RisingEdge, Timer

from softnpu.hdl.config import NPUConfig
from softnpu.hdl.csr_map import (
    COUNTERS,
    CSR,
    CTRL_CLEAR,
    CTRL_START,
    STATUS_ERROR,
    counter_offset,
    trace_offset,
)
from softnpu.hdl.faults import NPUFault, insn_location
from softnpu.hdl.isa import INSN_BYTES
from softnpu.sim.rtl.dpi_mem import DpiMemory

__all__ = ["RTLDevice", "CycleBudgetExceeded", "RTLRun"]

CLOCK_NS = 10


class CycleBudgetExceeded(RuntimeError):
    """A run did not raise the interrupt within its cycle budget (a hang, not a fault)."""


@dataclasses.dataclass
class RTLRun:
    counters: dict[str, int]
    trace: list[tuple[int, dict[str, int]]]

    @property
    def cycles(self) -> int:
        return self.counters["cycles"]


class RTLDevice:
    """One simulated NPU: the harness top `npu_sim_top` (sim/rtl/harness.py) and its memory."""

    def __init__(self, dut, config: NPUConfig):
        self.dut, self.config = dut, config
        self.memory = DpiMemory()
        self.irq_at_end = False         # the interrupt line when the last run ended (done or fault)

    # -- reset and memory ------------------------------------------------------------------
    async def reset(self, backpressure: bool = False) -> None:
        """Reset the NPU and the memory model; `backpressure` makes the memory stall at random."""
        dut = self.dut
        dut.backpressure.value = int(backpressure)
        for name in ("awvalid", "wvalid", "arvalid", "bready", "rready"):
            getattr(dut, f"s_axil_{name}").value = 0
        self.arm_waves(None)
        dut.rst.value = 1
        await ClockCycles(dut.clk, 3)
        dut.rst.value = 0
        await RisingEdge(dut.clk)

    def arm_waves(self, window) -> None:
        """Record `window` (a sim.waves.Window) of the following runs in a waves build's trace
        file; None records nothing.  The harness opens and closes the window by itself."""
        dut = self.dut
        dut.trace_arm.value = int(window is not None)
        if window is not None:
            dut.trace_by_marker.value = int(window.marker is not None)
            dut.trace_marker.value = window.marker or 0
            dut.trace_start.value = window.start
            dut.trace_length.value = window.length or 0

    def write_memory(self, addr: int, data) -> None:
        data = np.frombuffer(bytes(data), np.uint8) if not isinstance(data, np.ndarray) else \
            np.ascontiguousarray(data).view(np.uint8).reshape(-1)
        self.memory.view[addr:addr + data.size] = data

    def read_memory(self, addr: int, size: int) -> np.ndarray:
        return self.memory.view[addr:addr + size].copy()

    def load_image(self, chunks) -> None:
        """Write (address, bytes) pairs: a memory image."""
        for addr, data in chunks:
            self.write_memory(addr, data)

    # -- CSRs ------------------------------------------------------------------------------
    async def _handshake(self, ready: str):
        """Wait for the clock edge at which `ready` is high (sampled before the edge, where the
        AXI4-Lite handshake takes place)."""
        dut = self.dut
        while True:
            await ReadOnly()
            accepted = bool(getattr(dut, ready).value)
            data = dut.s_axil_rdata.value.to_unsigned()
            await RisingEdge(dut.clk)
            if accepted:
                return data

    async def write_csr(self, offset: int, value: int) -> None:
        dut = self.dut
        dut.s_axil_awaddr.value = offset
        dut.s_axil_wdata.value = value & 0xFFFFFFFF
        dut.s_axil_awvalid.value = 1
        dut.s_axil_wvalid.value = 1
        dut.s_axil_bready.value = 1
        await self._handshake("s_axil_awready")
        dut.s_axil_awvalid.value = 0
        dut.s_axil_wvalid.value = 0
        await self._handshake("s_axil_bvalid")
        dut.s_axil_bready.value = 0

    async def read_csr(self, offset: int) -> int:
        dut = self.dut
        dut.s_axil_araddr.value = offset
        dut.s_axil_arvalid.value = 1
        dut.s_axil_rready.value = 1
        await self._handshake("s_axil_arready")
        dut.s_axil_arvalid.value = 0
        data = await self._handshake("s_axil_rvalid")
        dut.s_axil_rready.value = 0
        return data

    async def counters(self) -> dict[str, int]:
        out = {}
        for i, name in enumerate(COUNTERS):
            low = await self.read_csr(counter_offset(i))
            high = await self.read_csr(counter_offset(i, high=True))
            out[name] = low | (high << 32)
        return out

    async def trace(self) -> list[tuple[int, dict[str, int]]]:
        entries = []
        for e in range(await self.read_csr(CSR.TRACE_COUNT)):
            marker = await self.read_csr(trace_offset(e))
            values = {name: await self.read_csr(trace_offset(e, 1 + i)) for i, name in enumerate(COUNTERS)}
            entries.append((marker, values))
        return entries

    # -- running ---------------------------------------------------------------------------
    def _state(self) -> str:
        dut = self.dut
        parts = []
        for unit in ("load", "compute", "store"):
            busy = bool(getattr(dut, f"debug_{unit}_busy").value)
            stall = bool(getattr(dut, f"debug_{unit}_stall").value)
            pc = getattr(dut, f"debug_{unit}_pc").value.to_unsigned()
            state = "busy" if busy else ("waiting for a token" if stall else "idle")
            parts.append(f"{unit} {state} (instruction {pc})")
        parts.append(f"fetch at instruction {dut.debug_fetch_pc.value.to_unsigned()}")
        return "; ".join(parts)

    async def start(self, insn_addr: int, insn_count: int) -> None:
        await self.write_csr(CSR.INSN_ADDR, insn_addr)
        await self.write_csr(CSR.INSN_COUNT, insn_count)
        await self.write_csr(CSR.IRQ_ENABLE, 1)
        await self.write_csr(CSR.CTRL, CTRL_CLEAR | CTRL_START)     # clear the last run's done, start

    async def wait(self, max_cycles: int) -> RTLRun:
        """Sleep until the interrupt; raise NPUFault on a fault, CycleBudgetExceeded on a hang."""
        dut = self.dut
        if not dut.irq.value:
            timeout = Timer(max_cycles * CLOCK_NS, unit="ns")
            fired = await First(RisingEdge(dut.irq), timeout)
            if fired is timeout:
                raise CycleBudgetExceeded(f"no interrupt within {max_cycles} cycles: {self._state()}")
        await RisingEdge(dut.clk)
        self.irq_at_end = bool(dut.irq.value)
        status = await self.read_csr(CSR.STATUS)
        counters = await self.counters()
        trace = await self.trace()
        if status & STATUS_ERROR:
            raise await self.read_fault()
        await self.write_csr(CSR.CTRL, CTRL_CLEAR)    # acknowledge: drop done and the interrupt
        return RTLRun(counters, trace)

    async def read_fault(self) -> NPUFault:
        """The fault the CSRs report, naming the faulting instruction as device memory holds it."""
        regs = [await self.read_csr(r) for r in (CSR.ERROR, CSR.ERROR_PC, CSR.ERROR_ADDR, CSR.ERROR_ADDR_HI,
                                                CSR.INSN_ADDR)]
        at = insn_location(regs[4], regs[1], min(self.config.dram_bytes, self.memory.size),
                           self.config.dram_bus_bytes)
        word = None if at is None else bytes(self.read_memory(at, INSN_BYTES))
        return NPUFault.from_registers(*regs[:4], word)

    async def run(self, insn_addr: int, insn_count: int, max_cycles: int = 10_000_000) -> RTLRun:
        await self.start(insn_addr, insn_count)
        return await self.wait(max_cycles)
