"""Python side of the DPI-C bulk memory (sim/rtl/dpi_mem.cpp): the device DRAM as a numpy array.

Only usable inside a cocotb test, i.e. inside the simulator process, where ``ctypes.CDLL(None)``
finds the memory's exported symbols (the executable is linked with ``-rdynamic``). Copies are plain
numpy/memcpy: no simulator events, no per-word VPI writes. Python code runs while the simulation is
stopped at a callback, so it never races the HDL.
"""

from __future__ import annotations

import ctypes

import numpy as np

__all__ = ["DpiMemory", "MemoryFault"]


class MemoryFault(RuntimeError):
    """The HDL accessed the DPI memory misaligned or out of range: a bug of the HDL or the harness,
    which the harness's self-checks look for.  Not a fault of a program: the NPU reports those
    (hdl/faults.py `NPUFault`) before it touches memory."""


class DpiMemory:
    """The simulator's DPI memory, viewed as a flat little-endian byte array.

    Byte addresses throughout. ``view`` is a writable ``np.uint8`` array over the C storage.
    """

    def __init__(self) -> None:
        lib = ctypes.CDLL(None)
        try:
            ptr = lib.softnpu_mem_ptr
        except AttributeError:
            raise RuntimeError(
                "softnpu_mem_ptr not found in this process: not inside a simulator built by "
                "sim.rtl_build (which compiles sim/rtl/dpi_mem.cpp and links with -rdynamic)"
            ) from None
        ptr.restype = ctypes.POINTER(ctypes.c_uint8)
        u64 = ctypes.c_uint64
        self._size = lib.softnpu_mem_size
        self._faults = lib.softnpu_mem_faults
        self._first_fault = lib.softnpu_mem_first_fault_addr
        self._lanes_read = lib.softnpu_mem_lanes_read
        self._lanes_written = lib.softnpu_mem_lanes_written
        for fn in (self._size, self._faults, self._first_fault, self._lanes_read, self._lanes_written):
            fn.restype = u64
            fn.argtypes = []
        self._clear_stats = lib.softnpu_mem_clear_stats
        self._clear_stats.restype = None
        size = int(self._size())
        self.view: np.ndarray = np.ctypeslib.as_array(ptr(), shape=(size,))

    @property
    def size(self) -> int:
        """Capacity in bytes (SOFTNPU_MEM_BYTES in the simulator's environment, default 64 MiB)."""
        return self.view.size

    def _span(self, addr: int, nbytes: int) -> slice:
        if addr < 0 or nbytes < 0 or addr + nbytes > self.size:
            raise ValueError(
                f"DPI memory access [{addr:#x}, {addr + nbytes:#x}) outside [0, {self.size:#x})"
            )
        return slice(addr, addr + nbytes)

    def write(self, addr: int, data: np.ndarray | bytes) -> None:
        """Copy ``data`` (any numpy array, taken as its raw bytes, or bytes) to byte address ``addr``."""
        raw = np.frombuffer(data, np.uint8) if isinstance(data, bytes | bytearray | memoryview) else (
            np.ascontiguousarray(data).reshape(-1).view(np.uint8)
        )
        self.view[self._span(addr, raw.size)] = raw

    def read(self, addr: int, nbytes: int, out: np.ndarray | None = None) -> np.ndarray:
        """A copy of ``nbytes`` bytes at byte address ``addr`` (``.view(dtype)`` to reinterpret),
        into ``out`` (a contiguous ``np.uint8`` array of ``nbytes``) if given."""
        span = self.view[self._span(addr, nbytes)]
        if out is None:
            return span.copy()
        np.copyto(out, span)
        return out

    def fill(self, value: int = 0, addr: int = 0, nbytes: int | None = None) -> None:
        """Set ``nbytes`` bytes (default: to the end) from ``addr`` to ``value``."""
        nbytes = self.size - addr if nbytes is None else nbytes
        self.view[self._span(addr, nbytes)] = value

    @property
    def faults(self) -> int:
        """Misaligned or out-of-range HDL accesses since the last :meth:`clear_stats`."""
        return int(self._faults())

    @property
    def lanes_read(self) -> int:
        """64-bit lanes the HDL has read since the last :meth:`clear_stats`."""
        return int(self._lanes_read())

    @property
    def lanes_written(self) -> int:
        """64-bit lanes the HDL has written since the last :meth:`clear_stats`."""
        return int(self._lanes_written())

    def check(self) -> None:
        """Raise :class:`MemoryFault` naming the first bad address if the HDL faulted."""
        if n := self.faults:
            raise MemoryFault(
                f"{n} faulting DPI memory access(es); first at byte address {int(self._first_fault()):#x} "
                f"(memory is {self.size:#x} bytes, accesses must be 8-byte aligned)"
            )

    def clear_stats(self) -> None:
        self._clear_stats()
