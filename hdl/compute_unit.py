"""The compute unit: takes the compute queue's instructions and runs them, CONV on the conv engine
(hdl/conv_engine.py), REQUANT, NARROW, ADD and MUL on the vector unit (hdl/vector_unit.py), MARKER
and FINISH itself (hdl/isa.py).

An instruction issues under the token protocol of hdl/unit.py and spends one cycle in DECODE (the
engine's range check: SRAM_RANGE instead of a start).  A vector op is then handed to the vector unit
(its instruction word kept in `vec_insn`) and the unit returns to issue: the vector op retires, and
pushes its tokens, at the vector unit's `done`.  Meanwhile a CONV may issue and start beside it when
the vector op reads only accumulators (REQUANT, NARROW) and none of those the CONV writes or reads:
the next tile's CONVs accumulate while the last tile is requantized.  A CONV that conflicts waits
in HOLD for the vector op's `done`; every other instruction issues only once the vector unit is
free (ADD and MUL use the input port the conv engine reads).  A CONV runs until the conv engine's
`done`, the cycle it retires in, unless it pushes a token while the vector op still runs: then it
retires the cycle after the vector op's `done` (RETIRE), so tokens on a channel keep program order
(a load that pops the vector op's token may overwrite parameters it is still reading).  MARKER
retires in DECODE with the `marker` strobe (the counter snapshot); FINISH waits until the load and
store sides are idle.  hdl/timing.py's `ComputeIssue` is the cycle model of these rules.
"""

from __future__ import annotations

from amaranth import Cat, Module, Signal
from amaranth.lib.wiring import In, Out

from softnpu.hdl import isa
from softnpu.hdl.config import NPUConfig
from softnpu.hdl.conv_engine import ConvEngine
from softnpu.hdl.insn_layout import view
from softnpu.hdl.load_unit import ScratchpadWriteSignature
from softnpu.hdl.store_unit import ScratchpadReadSignature
from softnpu.hdl.unit import Unit, isa_flags
from softnpu.hdl.vector_unit import VECTOR_OPS, VectorUnit

__all__ = ["ComputeUnit", "share_read_port"]


def share_read_port(m: Module, port, *clients) -> None:
    """Join `clients` (read-port signatures of engines that never read in the same cycle and
    drive 0 while idle) onto one scratchpad read `port`: addresses and enables OR-ed, data to all."""
    addr, en = 0, 0
    for client in clients:
        addr, en = addr | client.addr, en | client.en
        m.d.comb += client.data.eq(port.data)
    m.d.comb += [port.addr.eq(addr), port.en.eq(en)]


class ComputeUnit(Unit):
    def __init__(self, config: NPUConfig):
        if not isinstance(config, NPUConfig):
            raise TypeError(f"config must be an NPUConfig, got {config!r}")
        self.config = config
        c = config
        super().__init__({
            "inp_a": Out(ScratchpadReadSignature(c.inp_depth, 8 * c.cols)),
            "inp_b": Out(ScratchpadReadSignature(c.inp_depth, 8 * c.cols)),
            "wgt_r": Out(ScratchpadReadSignature(c.wgt_depth, 8 * c.rows * c.cols)),
            "param_r": Out(ScratchpadReadSignature(c.param_depth, 32 * c.rows)),
            "acc_r": Out(ScratchpadReadSignature(c.acc_depth, 32 * c.rows)),     # the conv engine's
            "acc_rv": Out(ScratchpadReadSignature(c.acc_depth, 32 * c.rows)),    # the vector unit's
            "acc_w": Out(ScratchpadWriteSignature(c.acc_depth, 32 * c.rows)),
            "out_w": Out(ScratchpadWriteSignature(c.out_depth, 8 * c.rows)),
            "mac_active": Out(1),          # a CONV tap issued this cycle
            "marker": Out(1),              # MARKER: snapshot the counters now
            "marker_id": Out(16),
            "finish": Out(1),              # FINISH retired: the run is done
            "finishing": Out(1),           # FINISH waits for the load and store sides
            "others_idle": In(1),          # load and store queues empty and units idle
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.conv = conv = ConvEngine(self.config)
        m.submodules.vector = vector = VectorUnit(self.config)
        word = self.cur
        opcode = word[:isa.OPCODE_BITS]
        head_opcode = self.head[:isa.OPCODE_BITS]
        # the vector unit's instruction: taken at issue, held until its `done` while the unit goes on
        vec_insn = Signal(isa.INSN_BITS)
        vec_running = Signal()
        vec_reads_acc = Signal()
        vec_acc_first, vec_acc_end = Signal(16), Signal(33)
        vec_free = ~vec_running | vector.done
        m.d.comb += [self.status.pc.eq(self.cur_pc), conv.insn.eq(word), vector.insn.eq(vec_insn),
                     conv.head.eq(self.head), vector.head.eq(self.head),
                     self.marker_id.eq(view(isa.Marker, word).id), self.mac_active.eq(conv.mac_active)]

        # scratchpad ports: the conv engine owns the weights and the accumulator writes, the
        # vector unit the parameters, the second input port, its own accumulator read port and the
        # output writes; the first input port is the conv engine's, or ADD/MUL's (never both)
        share_read_port(m, self.inp_a, conv.inp, vector.inp_a)
        for port, engine_port in ((self.wgt_r, conv.wgt), (self.inp_b, vector.inp_b),
                                  (self.param_r, vector.param_r), (self.acc_r, conv.acc_r),
                                  (self.acc_rv, vector.acc_r)):
            m.d.comb += [port.addr.eq(engine_port.addr), port.en.eq(engine_port.en),
                         engine_port.data.eq(port.data)]
        for port, engine_port in ((self.acc_w, conv.acc_w), (self.out_w, vector.out_w)):
            m.d.comb += [port.addr.eq(engine_port.addr), port.data.eq(engine_port.data),
                         port.en.eq(engine_port.en)]

        # token pushes: the vector op's at its `done`, the others' when the unit retires them; a
        # CONV that ends while a vector op runs retires after it, so pushes keep program order
        fsm_push = Signal(2)
        vec_flags = isa_flags(vec_insn)
        with m.If(vector.done):
            m.d.sync += vec_running.eq(0)
        m.d.comb += [
            self.tokens.push_prev.eq(fsm_push[0] | (vector.done & vec_flags["push_prev"])),
            self.tokens.push_next.eq(fsm_push[1] | (vector.done & vec_flags["push_next"]))]

        cur_flags = isa_flags(word)

        def retire():
            m.d.comb += fsm_push.eq(Cat(cur_flags["push_prev"], cur_flags["push_next"]))
            m.next = "IDLE"

        cur_pushes = cur_flags["push_prev"] | cur_flags["push_next"]
        # a CONV may start beside a REQUANT or NARROW that reads none of its accumulators
        disjoint = (conv.acc_end <= vec_acc_first) | (view(isa.Conv, word).acc >= vec_acc_end)
        hazard = vec_running & ~vector.done & ~(vec_reads_acc & disjoint)

        with m.FSM() as fsm:
            with m.State("IDLE"):
                # a CONV issues whatever the vector unit does, the others once it is free
                head_is_conv = head_opcode == isa.Conv.OPCODE
                issued = self.issue(m, "DECODE", extra_ready=head_is_conv | vec_free)
                with m.If(issued & ~head_is_conv):
                    m.d.sync += vec_insn.eq(self.head)
            with m.State("DECODE"):
                with m.Switch(opcode):
                    with m.Case(isa.Conv.OPCODE):
                        with m.If(conv.range_bad):
                            self.fault(m, isa.ErrorCode.SRAM_RANGE)
                        with m.Elif(hazard):
                            m.next = "HOLD"
                        with m.Else():
                            m.d.comb += conv.start.eq(1)
                            m.next = "CONV"
                    with m.Case(*(cls.OPCODE for cls in VECTOR_OPS)):
                        with m.If(vector.range_bad):
                            self.fault(m, isa.ErrorCode.SRAM_RANGE)
                        with m.Else():
                            m.d.comb += vector.start.eq(1)
                            m.d.sync += [vec_running.eq(1), vec_reads_acc.eq(vector.reads_acc),
                                         vec_acc_first.eq(vector.src_first), vec_acc_end.eq(vector.src_end)]
                            m.next = "IDLE"
                    with m.Case(isa.Marker.OPCODE):
                        m.d.comb += self.marker.eq(1)
                        retire()
                    with m.Case(isa.Finish.OPCODE):
                        m.next = "FINISH"
                    with m.Default():
                        self.fault(m, isa.ErrorCode.ILLEGAL_OPCODE)
            with m.State("HOLD"):
                # a CONV behind a vector op it conflicts with: starts at that op's done
                with m.If(vec_free):
                    m.d.comb += conv.start.eq(1)
                    m.next = "CONV"
            with m.State("CONV"):
                with m.If(conv.done):
                    with m.If(cur_pushes & vec_running):
                        m.next = "RETIRE"
                    with m.Else():
                        retire()
            with m.State("RETIRE"):
                with m.If(~vec_running):
                    retire()
            with m.State("FINISH"):
                with m.If(self.others_idle):
                    m.d.comb += self.finish.eq(1)
                    retire()

        m.d.comb += [self.status.busy.eq(~fsm.ongoing("IDLE") | vec_running),
                     self.finishing.eq(fsm.ongoing("FINISH"))]
        return m
