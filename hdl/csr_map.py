"""The programmer's model of the NPU's AXI4-Lite slave, declared once: every register with its
offset, access and meaning, and its bit fields.

The HDL's CSR block (hdl/csr.py) decodes it, the RTL device (sim/rtl/device.py) and the host
driver (host/devices/device.py) program the NPU with it, and docs/isa.md is generated from it
(hdl/isa_doc.py).  hdl/isa.py re-exports `CSR`, `COUNTERS` and `TRACE_ENTRY_WORDS` from here.
Imports no Amaranth, so the ISS and the host read it without the HDL.

Registers are 32 bits at byte offsets; an array register (`count` > 1) is `count` consecutive
words.  Access: "W" write-only (reads as 0), "R" read-only (writes are ignored), "RW" both.
"""

from __future__ import annotations

import dataclasses
import enum

__all__ = ["Field", "Register", "REGISTERS", "CSR", "COUNTERS", "TRACE_ENTRY_WORDS", "register",
           "field", "CTRL_START", "CTRL_CLEAR", "STATUS_BUSY", "STATUS_DONE", "STATUS_ERROR",
           "counter_offset", "trace_offset"]

REG_BITS = 32

# The 64-bit performance counters, in register order (two words each, low word first).
COUNTERS = ("cycles", "load_busy", "load_stall", "compute_busy", "compute_stall", "store_busy",
            "store_stall", "mac_active", "dram_read_bytes", "dram_write_bytes")
# A trace entry: the marker id, each counter's low 32 bits, zero padding to a power of two.
TRACE_ENTRY_WORDS = 16
assert 1 + len(COUNTERS) <= TRACE_ENTRY_WORDS


@dataclasses.dataclass(frozen=True)
class Field:
    """Bits [lsb + width - 1 : lsb] of a register."""
    name: str
    lsb: int
    width: int
    doc: str

    def __post_init__(self):
        if not (0 <= self.lsb and self.width >= 1 and self.lsb + self.width <= REG_BITS):
            raise ValueError(f"field {self.name!r}: bits [{self.lsb + self.width - 1}:{self.lsb}] "
                             f"do not fit a {REG_BITS}-bit register")

    @property
    def mask(self) -> int:
        return ((1 << self.width) - 1) << self.lsb

    @property
    def bits(self) -> str:
        """The bit range as the docs print it: `[2]` or `[31:0]`."""
        msb = self.lsb + self.width - 1
        return f"[{msb}]" if msb == self.lsb else f"[{msb}:{self.lsb}]"

    def get(self, word: int) -> int:
        """This field's value in a register word."""
        return (word >> self.lsb) & ((1 << self.width) - 1)

    def put(self, value: int) -> int:
        """A register word holding `value` in this field (other bits zero)."""
        if not 0 <= value < (1 << self.width):
            raise ValueError(f"field {self.name!r} is {self.width} bits wide, got {value}")
        return value << self.lsb


@dataclasses.dataclass(frozen=True)
class Register:
    name: str
    offset: int          # AXI4-Lite byte offset of the (first) word
    access: str          # "R", "W" or "RW"
    doc: str
    fields: tuple[Field, ...]
    count: int = 1       # words: >1 for the counter and trace arrays

    def __post_init__(self):
        if self.access not in ("R", "W", "RW"):
            raise ValueError(f"register {self.name}: access must be R, W or RW, got {self.access!r}")
        if self.offset % 4:
            raise ValueError(f"register {self.name}: offset {self.offset:#x} is not word-aligned")
        used = 0
        for f in self.fields:
            if used & f.mask:
                raise ValueError(f"register {self.name}: field {f.name!r} overlaps another field")
            used |= f.mask

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"register {self.name} has no field {name!r}; fields: "
                       f"{[f.name for f in self.fields]}")

    @property
    def end(self) -> int:
        """The byte offset past the register's last word."""
        return self.offset + 4 * self.count

    @property
    def readable(self) -> bool:
        return "R" in self.access

    @property
    def writable(self) -> bool:
        return "W" in self.access


def _whole(name: str, doc: str, width: int = REG_BITS) -> tuple[Field, ...]:
    return (Field(name, 0, width, doc),)


REGISTERS: tuple[Register, ...] = (
    Register("CTRL", 0x00, "W", "run control; a write acts at once, nothing is stored", (
        Field("start", 0, 1, "start the program at INSN_ADDR: clears every unit, queue, token "
                             "counter, counter and the trace"),
        Field("clear", 1, 1, "clear STATUS.done, STATUS.error, ERROR and so the interrupt"),
    )),
    Register("STATUS", 0x04, "R", "run state", (
        Field("busy", 0, 1, "a program is running"),
        Field("done", 1, 1, "the last program ended (FINISH, nothing left, or a fault)"),
        Field("error", 2, 1, "the last program ended on a fault (see ERROR and ERROR_PC)"),
    )),
    Register("ERROR", 0x08, "R", "the first fault of the last program",
             _whole("code", "ErrorCode of the first fault (0 none; hdl/faults.py)", 4)),
    Register("ERROR_PC", 0x0C, "R", "where the first fault happened",
             _whole("index", "index of the faulting instruction")),
    Register("INSN_ADDR", 0x10, "RW", "where the program is",
             _whole("addr", "DRAM byte address of the program (bus-aligned)")),
    Register("INSN_COUNT", 0x14, "RW", "how long the program is",
             _whole("count", "instructions to run at most")),
    Register("IRQ_ENABLE", 0x18, "RW", "interrupt control",
             (Field("enable", 0, 1, "raise the interrupt line while STATUS.done"),)),
    Register("TRACE_COUNT", 0x1C, "R", "marker trace fill",
             _whole("count", "marker snapshots taken by the last program")),
    Register("ERROR_ADDR", 0x20, "R", "the address of the first fault, low word (DRAM_RANGE and "
             "DRAM_ALIGN, see hdl/faults.py ADDRESSED; 0 for the other codes)",
             _whole("addr", "bits [31:0] of the faulting address")),
    Register("ERROR_ADDR_HI", 0x24, "R", "the address of the first fault, high word",
             _whole("addr", "bits [63:32] of the faulting address")),
    Register("COUNTERS", 0x40, "R", "performance counters: 64 bits each, low word first, in "
             "COUNTERS order", _whole("word", "one 32-bit half of a counter"), count=2 * len(COUNTERS)),
    Register("TRACE", 0x1000, "R", f"trace entries of {TRACE_ENTRY_WORDS} words: marker id, then "
             "each counter's low 32 bits; entries past TRACE_COUNT read 0",
             _whole("word", "one word of an entry")),
)

_BY_NAME = {r.name: r for r in REGISTERS}

# Offsets by name; the ISS, the drivers and the tests address registers with these.
CSR = enum.IntEnum("CSR", [(r.name, r.offset) for r in REGISTERS])
CSR.__doc__ = "CSR byte offsets (AXI4-Lite, 32-bit registers), declared in hdl/csr_map.py REGISTERS."


def register(name: str) -> Register:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"no CSR {name!r}; registers: {list(_BY_NAME)}") from None


def field(reg: str, name: str) -> Field:
    """`field("STATUS", "done")`: a field of a declared register."""
    return register(reg).field(name)


def counter_offset(index: int, high: bool = False) -> int:
    """Byte offset of a counter's low (or high) word."""
    return CSR.COUNTERS + 8 * index + 4 * int(high)


def trace_offset(entry: int, word: int = 0) -> int:
    """Byte offset of word `word` of trace entry `entry`."""
    return CSR.TRACE + 4 * (TRACE_ENTRY_WORDS * entry + word)


CTRL_START = field("CTRL", "start").mask
CTRL_CLEAR = field("CTRL", "clear").mask
STATUS_BUSY = field("STATUS", "busy").mask
STATUS_DONE = field("STATUS", "done").mask
STATUS_ERROR = field("STATUS", "error").mask

# The order of the offsets is what the HDL decodes: everything below COUNTERS is a plain register.
assert [r.offset for r in REGISTERS] == sorted(r.offset for r in REGISTERS)
assert all(a.end <= b.offset for a, b in zip(REGISTERS, REGISTERS[1:], strict=False))
