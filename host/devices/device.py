"""The driver interface every device backend implements, and the in-process ISS backend.

A `Device` is what a kernel driver would expose for a PCIe card: bulk access to device memory,
32-bit CSR reads and writes (the map declared in hdl/csr_map.py), start, wait for the interrupt, reset.
Everything above it (runtime, service) talks only to this interface, so a backend that runs the
RTL in a simulator process reached over a local socket slots in without changing a caller.

Backends:
  iss          `IssDevice`: sim.iss.ISS in this process; `start` runs the program to completion.
  iss-process  the ISS in a child process over a local socket (host/devices/process.py `ProcessDevice`).
  rtl          the RTL simulated by cocotb + Verilator in a child process (host/devices/rtl.py).
"""

from __future__ import annotations

import abc
import threading
import time

import numpy as np

from softnpu.hdl.config import NPUConfig
from softnpu.hdl.csr_map import (
    COUNTERS,
    CSR,
    CTRL_CLEAR,
    CTRL_START,
    STATUS_BUSY,
    STATUS_DONE,
    STATUS_ERROR,
    counter_offset,
    trace_offset,
)
from softnpu.hdl.faults import NPUFault, insn_location
from softnpu.hdl.isa import INSN_BYTES

__all__ = ["Device", "DeviceError", "NPUFault", "DeviceTimeout", "DeviceLost", "IssDevice", "BACKENDS",
           "open_device"]

# CSR bit meanings, from the declared map (re-exported for host/devices/process.py)
__all__ += ["CTRL_START", "CTRL_CLEAR", "STATUS_BUSY", "STATUS_DONE", "STATUS_ERROR"]


# An NPU fault (STATUS.error) is hdl/faults.py's NPUFault on every backend: code, instruction
# index, disassembly and address, in the same words.  DeviceError is its name at this layer.
DeviceError = NPUFault


class DeviceTimeout(RuntimeError):
    """The device did not raise done within the deadline (a hung simulator or program)."""


class DeviceLost(RuntimeError):
    """The device's process died or stopped answering; it was killed and is restarted on next use,
    with empty memory."""


class Device(abc.ABC):
    """One NPU.  Addresses are device byte addresses; CSR offsets are AXI4-Lite byte offsets.

    Not thread-safe by itself: one caller at a time (the runtime holds `lock` around a run)."""

    backend = "abstract"

    def __init__(self, config: NPUConfig):
        if not isinstance(config, NPUConfig):
            raise TypeError(f"config must be an NPUConfig, got {config!r}")
        self.config = config
        self.lock = threading.Lock()
        self.resident = None        # which runtime's program and weights are in device memory

    # -- the driver interface ---------------------------------------------------------------
    @abc.abstractmethod
    def write_memory(self, addr: int, data: bytes | np.ndarray) -> None:
        """Copy `data` (bytes, or any ndarray viewed as its raw bytes) to device memory."""

    @abc.abstractmethod
    def read_memory(self, addr: int, size: int) -> np.ndarray:
        """`size` bytes of device memory as a uint8 array (a copy)."""

    @abc.abstractmethod
    def write_csr(self, offset: int, value: int) -> None:
        """Write a 32-bit CSR."""

    @abc.abstractmethod
    def read_csr(self, offset: int) -> int:
        """Read a 32-bit CSR."""

    def start(self, insn_addr: int, count: int, irq: bool = True) -> None:
        """Point the NPU at `count` instructions at byte address `insn_addr` and start it."""
        self.write_csr(CSR.CTRL, CTRL_CLEAR)
        self.write_csr(CSR.INSN_ADDR, insn_addr)
        self.write_csr(CSR.INSN_COUNT, count)
        self.write_csr(CSR.IRQ_ENABLE, int(irq))
        self.write_csr(CSR.CTRL, CTRL_START)

    def wait(self, timeout_s: float | None = None) -> bool:
        """Wait for done: True when the program finished, False if `timeout_s` passed first.
        Raises NPUFault (DeviceError) when the NPU stopped on a fault."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            status = self.read_csr(CSR.STATUS)
            if status & STATUS_ERROR:
                raise self._fault()
            if status & STATUS_DONE:
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            self._wait_for_irq(deadline)

    @abc.abstractmethod
    def reset(self) -> None:
        """Reset the NPU's state (scratchpads, CSRs); device memory keeps its contents."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the backend's resources (a simulator process, a socket)."""

    def alive(self) -> bool:
        """False when the backend's process died (a supervisor then calls `restart`); an
        in-process backend is always alive."""
        return True

    def restart(self) -> None:  # noqa: B027 - in-process backends have nothing to restart
        """Replace a dead backend process now, with empty device memory."""

    # -- helpers built on the interface -----------------------------------------------------
    def _wait_for_irq(self, deadline: float | None) -> None:
        """Block until the interrupt line may have changed; backends with a real line override."""
        time.sleep(0.0005 if deadline is None else max(0.0, min(0.0005, deadline - time.monotonic())))

    def _fault(self) -> NPUFault:
        """The fault the CSRs report, naming the faulting instruction as device memory holds it."""
        regs = [self.read_csr(r) for r in (CSR.ERROR, CSR.ERROR_PC, CSR.ERROR_ADDR, CSR.ERROR_ADDR_HI)]
        at = insn_location(self.read_csr(CSR.INSN_ADDR), regs[1], self.config.dram_bytes,
                           self.config.dram_bus_bytes)
        word = None if at is None else self.read_memory(at, INSN_BYTES).tobytes()
        return NPUFault.from_registers(*regs, word)

    def run(self, insn_addr: int, count: int, timeout_s: float | None = None) -> None:
        """start + wait; raises DeviceTimeout if the program does not finish in `timeout_s`."""
        self.start(insn_addr, count)
        if not self.wait(timeout_s):
            raise DeviceTimeout(f"{self.backend} device: no done after {timeout_s:.3f} s "
                                f"({count} instructions at {insn_addr:#x})")

    def read_counters(self) -> dict[str, int]:
        """The 64-bit performance counters of the last run (hdl/csr_map.py COUNTERS)."""
        out = {}
        for i, name in enumerate(COUNTERS):
            lo = self.read_csr(counter_offset(i))
            hi = self.read_csr(counter_offset(i, high=True))
            out[name] = lo | (hi << 32)
        return out

    def read_trace(self) -> list[tuple[int, dict[str, int]]]:
        """The marker snapshots of the last run: (marker id, low 32 bits of each counter)."""
        entries = []
        for e in range(self.read_csr(CSR.TRACE_COUNT)):
            marker = self.read_csr(trace_offset(e))
            entries.append((marker, {name: self.read_csr(trace_offset(e, 1 + i))
                                     for i, name in enumerate(COUNTERS)}))
        return entries

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"<{type(self).__name__} {self.backend} config={self.config.name!r}>"


class IssDevice(Device):
    """The instruction-set simulator in this process.  `start` runs the whole program before it
    returns (the ISS is functional), so `wait` finds done or error at once."""

    backend = "iss"

    def __init__(self, config: NPUConfig):
        super().__init__(config)
        from softnpu.sim.iss import ISS
        self.iss = ISS(config)

    def write_memory(self, addr: int, data) -> None:
        self.iss.write(addr, data)

    def read_memory(self, addr: int, size: int) -> np.ndarray:
        return self.iss.read(addr, size)

    def write_csr(self, offset: int, value: int) -> None:
        self.iss.write_csr(offset, value)

    def read_csr(self, offset: int) -> int:
        return self.iss.read_csr(offset)

    def _fault(self) -> NPUFault:
        fault = super()._fault()
        known = self.iss.last_fault
        if fault.same_fault(known):         # the ISS also knows why (which range, which unit waits)
            fault.detail = known.detail
        return fault

    def reset(self) -> None:
        self.iss.reset()

    def close(self) -> None:
        self.iss = None


def _iss_process(config: NPUConfig) -> Device:
    from softnpu.host.devices.process import ProcessDevice
    return ProcessDevice(config, "iss")


# name -> factory(config); "-process" backends run the device in a child process (host/devices/process.py)
def _rtl(config: NPUConfig) -> Device:
    from softnpu.host.devices.rtl import RtlDevice
    return RtlDevice(config)


BACKENDS = {"iss": IssDevice, "iss-process": _iss_process, "rtl": _rtl}


def open_device(backend: str, config: NPUConfig) -> Device:
    """A new device of the named backend for `config`."""
    try:
        factory = BACKENDS[backend]
    except KeyError:
        raise ValueError(f"unknown device backend {backend!r}; available: {sorted(BACKENDS)}") from None
    return factory(config)
