"""hdl/fetch.py on Amaranth's simulator: instructions read from DRAM one burst each are dispatched
to the load, compute or store queue by opcode, in program order with their index; fetch stops
after FINISH or INSN_COUNT instructions, waits (blocked) while the target queue is full, and
faults with ILLEGAL_OPCODE / ILLEGAL_FIELD (the rules of hdl/isa.py) at the faulting index, or
with DRAM_ALIGN / DRAM_RANGE for a bad program address."""

import pytest
from amaranth.hdl import Value

from softnpu.hdl import isa
from softnpu.hdl.config import preset
from softnpu.hdl.fetch import Fetch
from softnpu.hdl.isa import Buffer, ConvMode, ErrorCode, Queue
from tests.hdl.bfm import STALLY, ReadMemory, Strobes, simulate

CFG = preset("tiny").replace(name="fetch-test", dram_bytes=1 << 16)
PROGRAM = 0x400
MASK = (1 << isa.INSN_BITS) - 1


class QueueModel:
    """One instruction queue's input stream: takes an entry at every edge where valid and ready are
    high; `ready_at(cycle)` says when it has room."""

    def __init__(self, port, ready_at=lambda cycle: True):
        self.port, self.ready_at = port, ready_at
        self.entries: list[tuple[int, int, int]] = []      # (cycle, pc, word)

    async def serve(self, ctx):
        cycle = 0
        while True:
            ctx.set(self.port.ready, int(self.ready_at(cycle)))
            _, _, valid, ready, data = await ctx.tick().sample(self.port.valid, self.port.ready,
                                                               Value.cast(self.port.payload))
            if valid and ready:
                self.entries.append((cycle, data >> isa.INSN_BITS, data & MASK))
            cycle += 1


def run(words, count=None, *, insn_addr=PROGRAM, ready=None, pattern=(1,), cycles_after=30):
    """Fetch `words` (Insn or raw int) from `insn_addr`; returns queues, memory and strobes.  The run
    ends at a fault (run drops, as the NPU top does) or `cycles_after` cycles after exhaustion."""
    dut = Fetch(CFG)
    memory = ReadMemory(dut.mem, CFG.dram_bus_bytes, latency=2, pattern=pattern)
    for i, w in enumerate(words):
        word = w if isinstance(w, int) else w.encode_int()
        memory.load(insn_addr + i * isa.INSN_BYTES, word.to_bytes(isa.INSN_BYTES, "little"))
    ready = ready or {}
    queues = {q: QueueModel(getattr(dut, f"{q.name.lower()}_q"), ready.get(q, lambda c: True)) for q in Queue}
    strobes = Strobes(fault=dut.fault, code=dut.fault_code, blocked=dut.blocked, arvalid=dut.mem.arvalid)
    outcome = {}

    async def bench(ctx):
        ctx.set(dut.insn_addr, insn_addr)
        ctx.set(dut.insn_count, len(words) if count is None else count)
        ctx.set(dut.run, 1)
        after = None
        for _ in range(5000):
            _, _, fault, code, pc, addr, exhausted = await ctx.tick().sample(
                dut.fault, dut.fault_code, dut.pc, dut.fault_addr, dut.exhausted)
            if fault:
                outcome.update(fault=(ErrorCode(code), pc), fault_addr=addr)
                ctx.set(dut.run, 0)
                return
            if exhausted:
                after = 0 if after is None else after + 1
                if after == cycles_after:
                    outcome.update(exhausted_pc=ctx.get(dut.pc))
                    return
        raise AssertionError("fetch neither finished nor faulted")

    simulate(dut, bench, processes=[memory.serve, strobes.watch] + [q.serve for q in queues.values()])
    return queues, memory, strobes, outcome


LOAD = isa.Load(buffer=Buffer.INP, sram=0, dram=0x100, blocks=1, rows=1, cols=1)
STORE = isa.Store(sram=0, dram=0x100, blocks=1, rows=1, cols=1)
CONV = isa.Conv(mode=ConvMode.MAC, out_blocks=1, in_blocks=1, kh=1, kw=1, stride_h=1, stride_w=1, out_h=1,
                out_w=1)
REQUANT = isa.Requant(out=0, acc=0, param=0, blocks=1, count=1, act_min=-128, act_max=127)
MIXED = [LOAD, CONV, isa.Marker(id=7), STORE, REQUANT, LOAD, STORE, isa.Finish()]


def test_dispatch_by_opcode_in_program_order_with_the_index():
    queues, memory, _, outcome = run(MIXED)
    assert "fault" not in outcome
    for q in Queue:
        want = [(pc, insn.encode_int()) for pc, insn in enumerate(MIXED) if insn.QUEUE == q]
        assert [(pc, word) for _, pc, word in queues[q].entries] == want, q.name
    assert [b.addr for b in memory.bursts] == [PROGRAM + 32 * i for i in range(len(MIXED))]
    assert all(b.beats == isa.INSN_BYTES // CFG.dram_bus_bytes for b in memory.bursts)


def test_memory_back_pressure_changes_timing_not_dispatch():
    fast, *_ = run(MIXED)
    slow, *_ = run(MIXED, pattern=STALLY)
    for q in Queue:
        assert [e[1:] for e in slow[q].entries] == [e[1:] for e in fast[q].entries]
    assert slow[Queue.STORE].entries[-1][0] > fast[Queue.STORE].entries[-1][0]


def test_stops_after_finish():
    program = [isa.Marker(id=1), isa.Finish(), LOAD, STORE, CONV]
    queues, memory, _, outcome = run(program)
    assert len(memory.bursts) == 2, "nothing is fetched after FINISH"
    assert not queues[Queue.LOAD].entries and not queues[Queue.STORE].entries
    assert [pc for _, pc, _ in queues[Queue.COMPUTE].entries] == [0, 1]
    assert outcome["exhausted_pc"] == 2


def test_stops_after_insn_count():
    queues, memory, _, outcome = run(MIXED, count=3)
    assert len(memory.bursts) == 3 and outcome["exhausted_pc"] == 3
    assert sum(len(q.entries) for q in queues.values()) == 3


def test_waits_on_a_full_queue():
    """The compute queue has no room for cycles 0..199: fetch holds CONV (blocked), fetches nothing
    more, and dispatches it and the rest once there is room."""
    queues, memory, strobes, _ = run(MIXED, ready={Queue.COMPUTE: lambda cycle: cycle >= 200})
    blocked = strobes.cycles["blocked"]
    assert blocked and blocked[-1] == 199 and len(blocked) > 100
    assert not [c for c in strobes.cycles["arvalid"] if blocked[0] <= c <= blocked[-1]], \
        "no instruction is fetched while one is held"
    assert len(memory.bursts) == len(MIXED)
    conv_cycle = queues[Queue.COMPUTE].entries[0][0]
    assert conv_cycle == 200
    assert all(cycle > conv_cycle for cycle, pc, _ in queues[Queue.STORE].entries)
    assert [pc for _, pc, _ in queues[Queue.LOAD].entries] == [0, 5]


def _decoder_code(word: int) -> ErrorCode:
    """What hdl/isa.py (and so the ISS) says of a word."""
    try:
        insn = isa.decode(word)
    except isa.IllegalInstruction as exc:
        return exc.code
    return ErrorCode.ILLEGAL_FIELD if insn.illegal_reason() else ErrorCode.NONE


@pytest.mark.parametrize("word, code", [
    (0, ErrorCode.ILLEGAL_OPCODE),                                   # zeroed memory traps
    (0xF, ErrorCode.ILLEGAL_OPCODE),
    (isa.Conv(mode=ConvMode.MAX, out_blocks=2, in_blocks=1, kh=1, kw=1, stride_h=1, stride_w=1, out_h=1,
              out_w=1).encode_int(), ErrorCode.ILLEGAL_FIELD),       # window modes need out_blocks=1
    (CONV.encode_int() | 3 << 8, ErrorCode.ILLEGAL_FIELD),          # mode 3 is no ConvMode
    (isa.Load(buffer=Buffer.INP, sram=0, dram=0, blocks=1, rows=1, cols=1, pop_prev=True).encode_int(),
     ErrorCode.ILLEGAL_FIELD),                                       # a load has no previous unit
    (isa.Store(sram=0, dram=0, blocks=1, rows=1, cols=1, push_next=True).encode_int(),
     ErrorCode.ILLEGAL_FIELD),                                       # a store has no next unit
    (isa.Load(buffer=Buffer.WGT, sram=0, dram=0, blocks=1, rows=1, cols=1, pad_left=1).encode_int(),
     ErrorCode.ILLEGAL_FIELD),                                       # padding only into the input
    (isa.Load(buffer=Buffer.INP, sram=0, dram=0, blocks=0, rows=1, cols=1).encode_int(),
     ErrorCode.ILLEGAL_FIELD),                                       # zero extent
    (isa.Requant(out=0, acc=0, param=0, blocks=1, count=1, act_min=5, act_max=4).encode_int(),
     ErrorCode.ILLEGAL_FIELD),                                       # empty clamp range
    (isa.Finish().encode_int() | 1 << 255, ErrorCode.ILLEGAL_FIELD),  # unused bits set
], ids=["zero", "opcode15", "window-out-blocks", "mode3", "load-pop-prev", "store-push-next",
        "pad-into-wgt", "zero-blocks", "clamp", "unused-bits"])
def test_illegal_instructions_fault_at_their_index(word, code):
    program = [isa.Marker(id=1), LOAD, word, isa.Finish()]
    queues, memory, strobes, outcome = run(program)
    assert outcome["fault"] == (code, 2)
    assert [pc for _, pc, _ in queues[Queue.COMPUTE].entries] == [0]
    assert [pc for _, pc, _ in queues[Queue.LOAD].entries] == [1]
    assert len(memory.bursts) == 3 and strobes.values["code"] == [code]
    assert _decoder_code(word) == code


@pytest.mark.parametrize("insn_addr, code", [
    (PROGRAM + 2, ErrorCode.DRAM_ALIGN),
    (CFG.dram_bytes - 32 * 2, ErrorCode.DRAM_RANGE),          # the third instruction is past the end
])
def test_bad_program_address_faults(insn_addr, code):
    queues, memory, _, outcome = run([isa.Marker(id=1), isa.Marker(id=2), isa.Finish()], insn_addr=insn_addr)
    want_pc = 0 if code == ErrorCode.DRAM_ALIGN else 2
    assert outcome["fault"] == (code, want_pc)
    # INSN_ADDR, or the last byte of the first instruction past the end (hdl/faults.py ADDRESSED)
    assert outcome["fault_addr"] == (insn_addr if code == ErrorCode.DRAM_ALIGN else CFG.dram_bytes + 31)
    assert len(memory.bursts) == want_pc
