"""Run control: when a program runs, how it ends, and the interrupt.

A start raises `running` and, through `reset`, clears every unit, queue, token counter and the
arbiter (the top's ResetInserters; the bus drain, hdl/bus_drain.py, finishes the AXI bursts that a
reset cuts off).  The run ends when FINISH retires, when fetch has nothing left and every queue and
unit is idle, or at the first fault: fetch's, a unit's (range/alignment), or a deadlock, a token
wait that can never be satisfied: no unit busy (so no DMA in flight; a compute unit holding FINISH
counts as idle, it only waits for the others), fetch done or blocked on a full queue, an
instruction queued, and every queue either empty or with its head waiting for a token or for room
in a token channel (an instruction still on its way to the head may bring the token).  Nothing can
then send or take a token; the deadlock is reported at the lowest index among the waiting heads.
When several fault in one cycle, fetch wins, then load, compute, store, deadlock.  The end sets
`done` (and `error`, `error_code`, `error_pc`, `error_addr` on a fault, hdl/faults.py); the
interrupt is `done` while enabled.  `ack` (CTRL.clear) drops done, error and the code.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from softnpu.hdl import isa
from softnpu.hdl.faults import ADDR_BITS
from softnpu.hdl.unit import PC_BITS, StatusSignature

__all__ = ["RunControl", "FetchStateSignature", "HeadSignature"]

UNITS = ("load", "compute", "store")


class FetchStateSignature(wiring.Signature):
    """What run control sees of fetch (from fetch's side)."""

    def __init__(self):
        super().__init__({"exhausted": Out(1), "blocked": Out(1), "fault": Out(1), "fault_code": Out(4),
                          "fault_addr": Out(ADDR_BITS), "pc": Out(PC_BITS)})


class HeadSignature(wiring.Signature):
    """One instruction queue as run control sees it (from the queue's side): whether an
    instruction waits at its head, and its index; `empty` when nothing at all is queued."""

    def __init__(self):
        super().__init__({"valid": Out(1), "pc": Out(PC_BITS), "empty": Out(1)})


class RunControl(wiring.Component):
    def __init__(self):
        super().__init__({
            "start": In(1), "ack": In(1), "irq_enable": In(1),      # from the CSR block
            "fetch": In(FetchStateSignature()),
            **{u: In(StatusSignature()) for u in UNITS},
            **{f"{u}_head": In(HeadSignature()) for u in UNITS},
            "finish": In(1),                                         # FINISH retires
            "finishing": In(1),          # FINISH waits for the load and store sides to go idle
            "running": Out(1), "done": Out(1), "error": Out(1),
            "error_code": Out(4), "error_pc": Out(PC_BITS), "error_addr": Out(ADDR_BITS),
            "reset": Out(1),            # clear units, queues, token counters, arbiter
            "starting": Out(1),         # a start while idle: zero the counters and trace
            "irq": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        running, done, error = Signal(), Signal(), Signal()
        error_code, error_pc, error_addr = Signal(4), Signal(PC_BITS), Signal(ADDR_BITS)
        units = [getattr(self, u) for u in UNITS]
        heads = [getattr(self, f"{u}_head") for u in UNITS]
        fetch = self.fetch

        all_idle = ~units[0].busy & ~units[1].busy & ~units[2].busy
        queues_empty = heads[0].empty & heads[1].empty & heads[2].empty
        any_waiting = heads[0].valid | heads[1].valid | heads[2].valid
        all_heads_stuck = 1
        for head, unit in zip(heads, units, strict=True):
            # an entry still on its way to the head (the FIFO's two cycles) may bring the token
            all_heads_stuck = all_heads_stuck & (head.empty | (head.valid & unit.stall))
        # a compute unit holding FINISH waits for the others: it sends no token, so it counts as idle
        none_working = ~units[0].busy & (~units[1].busy | self.finishing) & ~units[2].busy
        deadlock = running & none_working & any_waiting & all_heads_stuck & (fetch.blocked | fetch.exhausted)
        deadlock_pc = Signal(PC_BITS)
        # the lowest index among the waiting heads
        pcs = [Mux(head.valid, head.pc, (1 << PC_BITS) - 1) for head in heads]
        low01 = Mux(pcs[0] < pcs[1], pcs[0], pcs[1])
        m.d.comb += deadlock_pc.eq(Mux(low01 < pcs[2], low01, pcs[2]))

        faults = [(fetch.fault, fetch.fault_code, fetch.pc, fetch.fault_addr)] + \
            [(u.fault, u.fault_code, u.pc, u.fault_addr) for u in units] + \
            [(deadlock, isa.ErrorCode.DEADLOCK, deadlock_pc, 0)]
        any_fault = 0
        for f, *_ in faults:
            any_fault = any_fault | f
        finished = running & (self.finish | (fetch.exhausted & queues_empty & all_idle & ~fetch.blocked))

        m.d.comb += [self.reset.eq(self.start | (running & any_fault)),
                     self.starting.eq(self.start & ~running)]
        with m.If(self.ack):
            m.d.sync += [done.eq(0), error.eq(0), error_code.eq(0)]
        with m.If(self.start & ~running):
            m.d.sync += [running.eq(1), done.eq(0), error.eq(0), error_code.eq(0), error_pc.eq(0),
                         error_addr.eq(0)]
        with m.Elif(running & any_fault):
            m.d.sync += [running.eq(0), done.eq(1), error.eq(1)]
            for f, code, pc, addr in reversed(faults):      # the first listed fault wins
                with m.If(f):
                    m.d.sync += [error_code.eq(code), error_pc.eq(pc), error_addr.eq(addr)]
        with m.Elif(finished):
            m.d.sync += [running.eq(0), done.eq(1)]
        m.d.comb += [self.irq.eq(done & self.irq_enable), self.running.eq(running), self.done.eq(done),
                     self.error.eq(error), self.error_code.eq(error_code), self.error_pc.eq(error_pc),
                     self.error_addr.eq(error_addr)]
        return m
