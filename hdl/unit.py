"""What the load, compute and store units share: the ports to their instruction queue (a stream of
`QueueEntry`: instruction word and index), to the dependency-token counters and to the top's status
logic, and the issue/retire protocol.

A unit idles until its queue's head instruction can start: every token it pops is available and
every token channel it pushes into has room.  It then pops, takes the instruction, executes it and,
on retiring, pushes its tokens.  Head waiting on tokens = a stall cycle; executing = a busy cycle.
The top resets a unit (ResetInserter) on start and on any fault, so no state outlives a run.
"""

from __future__ import annotations

from amaranth import Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from softnpu.hdl import isa
from softnpu.hdl.faults import ADDR_BITS
from softnpu.hdl.insn_layout import InsnLayout

__all__ = ["QueueEntry", "QueueSignature", "TokenSignature", "StatusSignature", "Unit", "PC_BITS",
           "dma_fault_addresses", "dma_spans"]

PC_BITS = 32
# What fetch dispatches and a unit takes: the instruction word and its index in the program.
QueueEntry = data.StructLayout({"insn": InsnLayout, "pc": unsigned(PC_BITS)})


def QueueSignature() -> stream.Signature:
    """An instruction queue's stream, from the producer's side (fetch, the queue's output)."""
    return stream.Signature(QueueEntry)


class TokenSignature(wiring.Signature):
    """The unit's side of the token counters to its previous and next unit."""

    def __init__(self):
        super().__init__({
            "can_pop_prev": In(1), "can_pop_next": In(1), "room_prev": In(1), "room_next": In(1),
            "pop_prev": Out(1), "pop_next": Out(1), "push_prev": Out(1), "push_next": Out(1),
        })


class StatusSignature(wiring.Signature):
    """Busy/stall for the performance counters; a fault with its ErrorCode, instruction index and
    address (hdl/faults.py ADDRESSED; 0 for the codes without one)."""

    def __init__(self):
        super().__init__({
            "busy": Out(1), "stall": Out(1), "fault": Out(1), "fault_code": Out(4),
            "fault_addr": Out(ADDR_BITS), "pc": Out(PC_BITS),
        })


class Unit(wiring.Component):
    """Base of the three units: `issue()` and `retire()` build the protocol inside the unit's FSM."""

    def __init__(self, signature_members: dict | None = None):
        super().__init__({"queue": In(QueueSignature()), "tokens": Out(TokenSignature()),
                          "status": Out(StatusSignature()), **(signature_members or {})})
        self.cur = Signal(isa.INSN_BITS)      # the instruction being executed
        self.cur_pc = Signal(PC_BITS)

    def issue(self, m, next_state: str, extra_ready=1) -> Signal:
        """Call inside the FSM's idle state: starts the head instruction when it can start."""
        q, t = self.queue, self.tokens
        head = isa_flags(q.payload.insn.as_value())
        ready = (q.valid & (~head["pop_prev"] | t.can_pop_prev) & (~head["pop_next"] | t.can_pop_next)
                 & (~head["push_prev"] | t.room_prev) & (~head["push_next"] | t.room_next) & extra_ready)
        start = Signal()
        m.d.comb += [start.eq(ready), self.status.stall.eq(q.valid & ~ready)]
        with m.If(ready):
            m.d.comb += [q.ready.eq(1), t.pop_prev.eq(head["pop_prev"]), t.pop_next.eq(head["pop_next"])]
            m.d.sync += [self.cur.eq(q.payload.insn), self.cur_pc.eq(q.payload.pc)]
            m.next = next_state
        return start

    @property
    def head(self):
        """The queue's head instruction word (valid with `queue.valid`)."""
        return self.queue.payload.insn.as_value()

    def early(self, m, shape, value, name: str) -> Signal:
        """`value`, a function of `head`, registered: in the state after the issue it is the value of
        `cur` (the head taken in the issue cycle).  A check splits its arithmetic here: products of
        the instruction's fields early, sums and comparisons in the checking state, so no path
        chains two multipliers into the fault logic."""
        s = Signal(shape, name=name)
        m.d.sync += s.eq(value)
        return s

    def retire(self, m):
        """Call in the cycle an instruction completes: pushes its tokens and returns to idle."""
        flags = isa_flags(self.cur)
        m.d.comb += [self.tokens.push_prev.eq(flags["push_prev"]),
                     self.tokens.push_next.eq(flags["push_next"])]
        m.next = "IDLE"

    def fault(self, m, code: isa.ErrorCode, addr=0):
        """Report a fault of the current instruction, with its address if the code has one (the top
        halts and resets every unit)."""
        m.d.comb += [self.status.fault.eq(1), self.status.fault_code.eq(int(code)),
                     self.status.fault_addr.eq(addr)]
        m.next = "IDLE"


def dma_spans(insn, entry_bytes) -> tuple:
    """The products in a DMA's extent: bytes spanned by the planes and by the rows before the last,
    bytes of one row (what `dma_fault_addresses` adds up; `Unit.early` registers them)."""
    return ((insn.blocks - 1) * insn.block_stride, (insn.rows - 1) * insn.row_stride, insn.cols * entry_bytes)


def dma_fault_addresses(insn, entry_bytes, bus_bytes: int, spans=None):
    """The DRAM checks of a LOAD or STORE: (misaligned, the first misaligned address, end), `end` one
    past the last byte the DMA touches; hdl/faults.py ADDRESSED defines the DRAM_ALIGN and
    DRAM_RANGE addresses from them.  `spans`: `dma_spans` of the instruction, registered early."""
    low = (bus_bytes - 1).bit_length()
    bad_dram, bad_row = insn.dram[:low] != 0, insn.row_stride[:low] != 0
    misaligned = (insn.dram | insn.row_stride | insn.block_stride)[:low] != 0
    align_addr = Mux(bad_dram, insn.dram, Mux(bad_row, insn.dram + insn.row_stride,
                                               insn.dram + insn.block_stride))
    blocks_span, rows_span, row_bytes = dma_spans(insn, entry_bytes) if spans is None else spans
    end = insn.dram + blocks_span + rows_span + row_bytes
    return misaligned, align_addr, end


def isa_flags(word) -> dict:
    return {name: word[isa.OPCODE_BITS + i] for i, name in enumerate(isa.TOKEN_FLAGS)}
