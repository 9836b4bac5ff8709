"""NPU faults, declared once: the fault codes the ERROR CSR holds, what each means and which carry
an address (ERROR_ADDR), and `NPUFault`, the one exception every backend raises for them.

The HDL reports a fault in the CSRs (STATUS.error, ERROR, ERROR_PC, ERROR_ADDR/ERROR_ADDR_HI) and
raises the interrupt; the ISS reports the same code, instruction index and address for the same
program.  `NPUFault`'s message is built only from what the CSRs and device memory hold (code,
index, the instruction's disassembly, address), so a fault reads the same from the ISS in this
process, the ISS in a child process and the RTL simulation; a backend may add `detail` (the ISS
knows which range was exceeded), which the message leaves out.

Imports nothing of softnpu at module level: hdl/isa.py imports `ErrorCode` from here.
"""

from __future__ import annotations

import enum

__all__ = ["ErrorCode", "NPUFault", "MEANING", "ADDRESSED", "NOT_FETCHED", "insn_text", "insn_location",
           "dma_align_address", "dma_last_byte", "ADDR_BITS"]

# ERROR_ADDR/ERROR_ADDR_HI: a DMA's furthest byte can lie past 2**32 (32-bit base and strides)
ADDR_BITS = 64


class ErrorCode(enum.IntEnum):
    """Value of the ERROR CSR (4 bits)."""
    NONE = 0
    ILLEGAL_OPCODE = 1
    ILLEGAL_FIELD = 2
    DRAM_RANGE = 3
    SRAM_RANGE = 4
    DEADLOCK = 5
    DRAM_ALIGN = 6


MEANING: dict[ErrorCode, str] = {
    ErrorCode.NONE: "no fault",
    ErrorCode.ILLEGAL_OPCODE: "opcode not in the instruction table",
    ErrorCode.ILLEGAL_FIELD: "a field outside its legal range (zero extent, bad enum, bad token flag, "
                             "unused bits set)",
    ErrorCode.DRAM_RANGE: "a DMA or instruction fetch beyond the device memory",
    ErrorCode.SRAM_RANGE: "an access beyond a scratchpad's depth",
    ErrorCode.DEADLOCK: "a token wait that can never be satisfied (no unit busy, fetch done or blocked "
                        "on a full queue, every non-empty queue's head waiting for a token or for room)",
    ErrorCode.DRAM_ALIGN: "a DMA address or stride, or INSN_ADDR, not a multiple of the bus width",
}

# What ERROR_ADDR holds for the codes that have an address (0 for the others).
ADDRESSED: dict[ErrorCode, str] = {
    ErrorCode.DRAM_RANGE: "the last DRAM byte the access would touch: dram + (blocks-1)*block_stride + "
                          "(rows-1)*row_stride + cols*entry_bytes - 1 for a DMA, the last byte of "
                          "the first instruction past the end for a fetch",
    ErrorCode.DRAM_ALIGN: "the first misaligned DRAM address: dram, else dram + row_stride, else "
                          "dram + block_stride for a DMA; INSN_ADDR for a fetch",
}
assert set(MEANING) == set(ErrorCode)

# The disassembly of an instruction that was never fetched (INSN_ADDR misaligned, or past the end).
NOT_FETCHED = "<not fetched>"


def dma_align_address(insn, bus_bytes: int) -> int | None:
    """The DRAM_ALIGN address of a LOAD or STORE (ADDRESSED), None if it is aligned."""
    for addr in (insn.dram, insn.dram + insn.row_stride, insn.dram + insn.block_stride):
        if addr % bus_bytes:
            return addr
    return None


def dma_last_byte(insn, entry_bytes: int) -> int:
    """The last DRAM byte a LOAD or STORE of `entry_bytes`-byte entries touches; past the device
    memory, its DRAM_RANGE address (ADDRESSED)."""
    return (insn.dram + (insn.blocks - 1) * insn.block_stride + (insn.rows - 1) * insn.row_stride
            + insn.cols * entry_bytes - 1)


def insn_location(insn_addr: int, pc: int, dram_bytes: int, bus_bytes: int) -> int | None:
    """Byte address of instruction `pc` of a program at `insn_addr`, or None where fetch cannot
    read it (INSN_ADDR misaligned, or the instruction not wholly inside device memory)."""
    from softnpu.hdl.isa import INSN_BYTES
    addr = insn_addr + pc * INSN_BYTES
    if insn_addr % bus_bytes or pc < 0 or addr + INSN_BYTES > dram_bytes:
        return None
    return addr


def insn_text(word: bytes | None) -> str:
    """The disassembly a fault names: the instruction, `.word 0x...` for one that does not decode,
    NOT_FETCHED for None."""
    if word is None:
        return NOT_FETCHED
    from softnpu.hdl.asm import format_insn
    from softnpu.hdl.isa import IllegalInstruction, decode
    try:
        return format_insn(decode(bytes(word)))
    except IllegalInstruction:
        return f".word {int.from_bytes(bytes(word), 'little'):#x}"


class NPUFault(RuntimeError):
    """The NPU stopped on a fault: `code` (ErrorCode; an int if the CSR holds an unknown value),
    `pc` (instruction index), `insn` (its disassembly), `addr` (for the codes in ADDRESSED, else
    None) and `detail` (what the backend adds; not in the message).

    The ISS's instruction semantics raise it before the instruction is placed (`pc` None); its
    scheduler then `place`s it."""

    def __init__(self, code: ErrorCode | int, pc: int | None, insn: str | None, addr: int | None = None,
                 detail: str = ""):
        try:
            self.code = ErrorCode(code)
            self.code_name = self.code.name
            meaning = MEANING[self.code]
        except ValueError:
            self.code, self.code_name, meaning = int(code), f"UNKNOWN_{int(code)}", "an undefined fault code"
        self.pc, self.insn, self.addr, self.detail = pc, insn, addr, detail
        where = f"at instruction {pc} [{insn}]" if pc is not None else "(instruction not placed yet)"
        address = f", address {addr:#x}" if addr is not None else ""
        super().__init__(f"NPU fault {self.code_name} (code {int(self.code)}) {where}{address}: {meaning}")

    @classmethod
    def unplaced(cls, code: ErrorCode, detail: str, addr: int | None = None) -> NPUFault:
        """A fault found in an instruction before its index is known (the ISS's semantics)."""
        return cls(code, None, None, addr, detail)

    def place(self, pc: int, insn: str) -> NPUFault:
        """This fault at instruction `pc`, whose disassembly is `insn`."""
        return NPUFault(self.code, pc, insn, self.addr, self.detail)

    @classmethod
    def from_registers(cls, error: int, error_pc: int, addr_lo: int, addr_hi: int, word: bytes | None,
                       detail: str = "") -> NPUFault:
        """The fault the CSRs report (ERROR, ERROR_PC, ERROR_ADDR, ERROR_ADDR_HI) with the faulting
        instruction's bytes as read from device memory (None: not fetched, see insn_location)."""
        code = error & 0xF
        has_addr = code in {int(c) for c in ADDRESSED}
        return cls(code, error_pc, insn_text(word), (addr_hi << 32 | addr_lo) if has_addr else None, detail)

    def __reduce__(self):          # pickles across the device processes with every field
        return NPUFault, (int(self.code), self.pc, self.insn, self.addr, self.detail)

    def same_fault(self, other) -> bool:
        """The same code, instruction, disassembly and address (whatever the backends' details)."""
        return isinstance(other, NPUFault) and self.__reduce__()[1][:4] == other.__reduce__()[1][:4]
