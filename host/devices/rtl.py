"""The `rtl` device backend: the NPU's RTL simulated cycle by cycle (cocotb + Verilator) in a
child process per device, reached over a local socket (sim/rtl/client.py).

A run is one request: the simulator starts the NPU through its CSRs and sleeps until the
interrupt, so the host pays one round trip per inference, not one per CSR poll.  A simulator
that misses its deadline or dies is killed (`DeviceLost`) and restarted on next use, with empty
memory (the runtime places its weights again).
"""

from __future__ import annotations

import numpy as np

from softnpu.hdl.config import NPUConfig
from softnpu.host.devices.device import Device, DeviceLost, DeviceTimeout
from softnpu.sim.rtl.client import RTLProcess, RTLRunHang, SimulatorCrashed, SimulatorHung

__all__ = ["RtlDevice"]

DEFAULT_BUDGET_CYCLES = 4_000_000_000


class RtlDevice(Device):
    backend = "rtl"

    def __init__(self, config: NPUConfig, max_cycles: int = DEFAULT_BUDGET_CYCLES):
        super().__init__(config)
        self.max_cycles = max_cycles
        self._proc: RTLProcess | None = None
        self._pending: tuple[int, int] | None = None
        self._last: dict | None = None

    def _device(self) -> RTLProcess:
        if self._proc is not None and not self._proc.alive:
            # died between calls: this call fails (its caller's memory is gone with the process) and
            # the next one starts a new simulator, which the runtime fills again
            self._proc.kill()
            self._proc = None
            self.resident = None
            raise DeviceLost("rtl device: the simulator process died; a new one starts on next use")
        if self._proc is None:
            self.resident = None                     # a new simulator has empty memory
            self._proc = RTLProcess(self.config)
            try:
                self._proc.start()
            except (SimulatorCrashed, SimulatorHung) as exc:
                self._proc = None
                raise DeviceLost(f"rtl device: the simulator did not start: {exc}") from None
        return self._proc

    def alive(self) -> bool:
        return self._proc is not None and self._proc.alive

    def restart(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc = None
        self._device()

    def _call(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (SimulatorCrashed, SimulatorHung) as exc:
            self.resident = None
            if self._proc is not None:              # gone: the next call starts a new simulator
                self._proc.kill()
                self._proc = None
            raise DeviceLost(f"rtl device: {exc}") from None

    # -- the driver interface ---------------------------------------------------------------
    def write_memory(self, addr: int, data) -> None:
        raw = np.ascontiguousarray(data).view(np.uint8).reshape(-1) if isinstance(data, np.ndarray) \
            else np.frombuffer(bytes(data), np.uint8)
        self._call(self._device().write_memory, addr, raw)

    def read_memory(self, addr: int, size: int) -> np.ndarray:
        return np.frombuffer(self._call(self._device().read_memory, addr, size), np.uint8).copy()

    def write_csr(self, offset: int, value: int) -> None:
        self._call(self._device().write_csr, offset, value)

    def read_csr(self, offset: int) -> int:
        return self._call(self._device().read_csr, offset)

    def start(self, insn_addr: int, count: int, irq: bool = True) -> None:
        # the simulator starts the NPU itself when the run request arrives (see wait)
        self._pending = (insn_addr, count)

    def wait(self, timeout_s: float | None = None) -> bool:
        if self._pending is None:
            raise RuntimeError("rtl device: wait() without start()")
        insn_addr, count = self._pending
        self._pending = None
        try:
            self._last = self._call(self._device().run, insn_addr, count, self.max_cycles,
                                    timeout=timeout_s if timeout_s is not None else 24 * 3600.0)
        except RTLRunHang as exc:
            raise DeviceTimeout(f"rtl device: {exc}") from None
        except DeviceLost as exc:
            if timeout_s is not None and "did not answer" in str(exc):
                raise DeviceTimeout(f"rtl device: no done within {timeout_s:.1f} s; the simulator "
                                    "was killed and restarts on next use") from None
            raise
        return True

    def read_counters(self) -> dict[str, int]:
        return dict(self._last["counters"]) if self._last else super().read_counters()

    def read_trace(self) -> list[tuple[int, dict[str, int]]]:
        return list(self._last["trace"]) if self._last else super().read_trace()

    def reset(self) -> None:
        if self._proc is not None and self._proc.alive:
            self._call(self._proc.reset)

    def close(self) -> None:
        if self._proc is not None:
            self._proc.close()
            self._proc = None
