"""Fetch/decode: reads the program from DRAM one instruction (one burst) at a time, checks it
(ILLEGAL_OPCODE, ILLEGAL_FIELD with the rules of hdl/isa.py, via hdl/insn_layout.py) and
dispatches it with its index into the load, compute or store queue, in program order.  It stops
after FINISH or after INSN_COUNT instructions; it waits while the target queue is full."""

from __future__ import annotations

from amaranth import Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from softnpu.hdl import isa
from softnpu.hdl.axi import ReadPortSignature
from softnpu.hdl.config import NPUConfig
from softnpu.hdl.faults import ADDR_BITS
from softnpu.hdl.insn_layout import illegal
from softnpu.hdl.unit import PC_BITS, QueueSignature

__all__ = ["Fetch"]


class Fetch(wiring.Component):
    def __init__(self, config: NPUConfig):
        self.config = config
        super().__init__({
            "mem": Out(ReadPortSignature(data_bytes=config.dram_bus_bytes)),
            "run": In(1),                        # high while the NPU runs (cleared by the top)
            "insn_addr": In(32),
            "insn_count": In(32),
            "load_q": Out(QueueSignature()),
            "compute_q": Out(QueueSignature()),
            "store_q": Out(QueueSignature()),
            "exhausted": Out(1),                 # nothing more to fetch (count reached or FINISH)
            "blocked": Out(1),                   # holding an instruction for a full queue
            "fault": Out(1),
            "fault_code": Out(4),
            "fault_addr": Out(ADDR_BITS),        # INSN_ADDR (DRAM_ALIGN); last byte past the end (DRAM_RANGE)
            "pc": Out(PC_BITS),
        })

    def elaborate(self, platform):
        m = Module()
        c = self.config
        bus = c.dram_bus_bytes
        beats = isa.INSN_BYTES // bus
        pc = Signal(PC_BITS)
        finished = Signal()
        word = Signal(isa.INSN_BITS)
        beat = Signal(range(beats + 1))
        opcode = word[:isa.OPCODE_BITS]
        queue_of = {cls.OPCODE: cls.QUEUE for cls in isa.INSTRUCTIONS}
        known = 0
        bad_field = 0
        for cls in isa.INSTRUCTIONS:
            known = known | (opcode == cls.OPCODE)
            bad_field = Mux(opcode == cls.OPCODE, illegal(cls, word), bad_field)
        target = {q: 0 for q in isa.Queue}
        for op, q in queue_of.items():
            target[q] = target[q] | (opcode == op)
        ports = {isa.Queue.LOAD: self.load_q, isa.Queue.COMPUTE: self.compute_q,
                 isa.Queue.STORE: self.store_q}
        ready = 0
        for q, port in ports.items():
            m.d.comb += [port.payload.insn.eq(word), port.payload.pc.eq(pc)]
            ready = ready | (target[q] & port.ready)

        m.d.comb += [
            self.pc.eq(pc),
            self.mem.araddr.eq(self.insn_addr + (pc << 5)),
            self.mem.arlen.eq(beats - 1),
            self.exhausted.eq(finished | (pc >= self.insn_count)),
        ]
        with m.FSM():
            with m.State("IDLE"):
                m.d.sync += [pc.eq(0), finished.eq(0)]
                with m.If(self.run):
                    m.next = "NEXT"
            with m.State("NEXT"):
                with m.If(~self.run):
                    m.next = "IDLE"
                with m.Elif(finished | (pc >= self.insn_count)):
                    pass
                with m.Elif(self.insn_addr[:(bus - 1).bit_length()] != 0):
                    m.d.comb += [self.fault.eq(1), self.fault_code.eq(isa.ErrorCode.DRAM_ALIGN),
                                 self.fault_addr.eq(self.insn_addr)]
                    m.next = "IDLE"
                with m.Elif(self.insn_addr + ((pc + 1) << 5) > c.dram_bytes):
                    m.d.comb += [self.fault.eq(1), self.fault_code.eq(isa.ErrorCode.DRAM_RANGE),
                                 self.fault_addr.eq(self.insn_addr + ((pc + 1) << 5) - 1)]
                    m.next = "IDLE"
                with m.Else():
                    m.next = "ADDR"
            with m.State("ADDR"):
                m.d.comb += self.mem.arvalid.eq(1)
                with m.If(self.mem.arready):
                    m.d.sync += beat.eq(0)
                    m.next = "BEATS"
            with m.State("BEATS"):
                m.d.comb += self.mem.rready.eq(1)
                with m.If(self.mem.rvalid):
                    m.d.sync += [word.word_select(beat, 8 * bus).eq(self.mem.rdata), beat.eq(beat + 1)]
                    with m.If(beat == beats - 1):
                        m.next = "DECODE"
            with m.State("DECODE"):
                with m.If(~known):
                    m.d.comb += [self.fault.eq(1), self.fault_code.eq(isa.ErrorCode.ILLEGAL_OPCODE)]
                    m.next = "IDLE"
                with m.Elif(bad_field):
                    m.d.comb += [self.fault.eq(1), self.fault_code.eq(isa.ErrorCode.ILLEGAL_FIELD)]
                    m.next = "IDLE"
                with m.Else():
                    m.next = "DISPATCH"
            with m.State("DISPATCH"):
                m.d.comb += self.blocked.eq(~ready)
                for q, port in ports.items():
                    m.d.comb += port.valid.eq(target[q])
                with m.If(ready):
                    m.d.sync += [pc.eq(pc + 1), finished.eq(opcode == isa.Finish.OPCODE)]
                    m.next = "NEXT"
        return m
