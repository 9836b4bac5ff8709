"""hdl/csr_map.py: the declared register map is the programmer's model the drivers were written
against (offsets and bit positions pinned here), its fields are well formed, and its helpers
refuse what does not fit."""

import pytest

from softnpu.hdl import csr_map, isa
from softnpu.hdl.csr_map import CSR, Field, Register

# The map as the ISS, the RTL device and the host driver have always read it: a change here is
# a change of the device's programming model.
PINNED = {"CTRL": 0x00, "STATUS": 0x04, "ERROR": 0x08, "ERROR_PC": 0x0C, "INSN_ADDR": 0x10,
          "INSN_COUNT": 0x14, "IRQ_ENABLE": 0x18, "TRACE_COUNT": 0x1C, "ERROR_ADDR": 0x20,
          "ERROR_ADDR_HI": 0x24, "COUNTERS": 0x40, "TRACE": 0x1000}


def test_offsets_and_bits_are_the_programming_model():
    assert {r.name: r.offset for r in csr_map.REGISTERS} == PINNED
    assert {m.name: int(m) for m in CSR} == PINNED
    assert (csr_map.CTRL_START, csr_map.CTRL_CLEAR) == (0b1, 0b10)
    assert (csr_map.STATUS_BUSY, csr_map.STATUS_DONE, csr_map.STATUS_ERROR) == (0b1, 0b10, 0b100)
    assert csr_map.field("ERROR", "code").width >= max(int(c) for c in isa.ErrorCode).bit_length()


def test_isa_reexports_the_map():
    assert isa.CSR is CSR and isa.COUNTERS is csr_map.COUNTERS
    assert isa.TRACE_ENTRY_WORDS == csr_map.TRACE_ENTRY_WORDS


def test_counter_and_trace_offsets():
    assert csr_map.counter_offset(0) == 0x40 and csr_map.counter_offset(1, high=True) == 0x4C
    assert csr_map.trace_offset(2, 3) == 0x1000 + 4 * (2 * csr_map.TRACE_ENTRY_WORDS + 3)
    counters = csr_map.register("COUNTERS")
    assert counters.end == counters.offset + 8 * len(csr_map.COUNTERS)


@pytest.mark.parametrize("reg, name, word, value", [
    ("STATUS", "done", 0b110, 1), ("STATUS", "busy", 0b110, 0), ("ERROR", "code", 0xFFFF_FFF6, 6),
    ("IRQ_ENABLE", "enable", 0xFFFF_FFFE, 0),
])
def test_field_get(reg, name, word, value):
    assert csr_map.field(reg, name).get(word) == value


def test_field_put_and_range_checks():
    assert csr_map.field("CTRL", "clear").put(1) == 0b10
    with pytest.raises(ValueError, match="'clear' is 1 bits wide, got 2"):
        csr_map.field("CTRL", "clear").put(2)
    with pytest.raises(ValueError, match="do not fit"):
        Field("x", 31, 2, "")
    with pytest.raises(ValueError, match="overlaps"):
        Register("R", 0, "RW", "", (Field("a", 0, 2, ""), Field("b", 1, 1, "")))
    with pytest.raises(ValueError, match="access must be"):
        Register("R", 0, "X", "", ())
    with pytest.raises(ValueError, match="not word-aligned"):
        Register("R", 2, "R", "", ())
    with pytest.raises(KeyError, match="no field 'go'"):
        csr_map.field("CTRL", "go")
    with pytest.raises(KeyError, match="no CSR 'NOPE'"):
        csr_map.register("NOPE")
