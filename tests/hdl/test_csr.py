"""hdl/csr.py on Amaranth's simulator: the register map of hdl/csr_map.py over AXI4-Lite —
writable registers read back, CTRL writes as one-cycle start/clear strobes, status and error
inputs, 64-bit counters as two words, the trace memory (one more cycle of latency) and its count."""

from amaranth import Module
from amaranth.sim import Simulator

from softnpu.hdl.csr import CSRBlock
from softnpu.hdl.csr_map import COUNTERS, CSR, TRACE_ENTRY_WORDS
from tests.hdl.bfm import AXILiteMaster, Strobes

TRACE_DEPTH = 8
ENTRY_WORDS = 1 + len(COUNTERS)


class Bench:
    """The CSR block, an AXI4-Lite master, and a trace memory with a synchronous read port (as the
    NPU top wires it: address from the block, data one cycle later)."""

    def __init__(self):
        self.dut = CSRBlock(TRACE_DEPTH)
        self.axil = AXILiteMaster(self.dut.bus)
        self.trace = {e: [(e << 8) | w for w in range(ENTRY_WORDS)] for e in range(TRACE_DEPTH)}
        self.strobes = Strobes(start=self.dut.ctrl.start, clear=self.dut.ctrl.clear)

    def entry(self, e) -> int:
        return sum(word << (32 * i) for i, word in enumerate(self.trace[e]))

    async def trace_memory(self, ctx):
        while True:
            _, _, addr = await ctx.tick().sample(self.dut.trace_addr)
            ctx.set(self.dut.trace_data, self.entry(addr))

    def run(self, body):
        m = Module()
        m.submodules.dut = self.dut
        sim = Simulator(m)
        sim.add_clock(1e-8)
        sim.add_process(self.trace_memory)
        sim.add_process(self.strobes.watch)
        sim.add_testbench(body)
        sim.run()


def test_writable_registers_read_back():
    tb = Bench()
    got = {}

    async def body(ctx):
        for reg, value in ((CSR.INSN_ADDR, 0xDEAD_BEE0), (CSR.INSN_COUNT, 12345), (CSR.IRQ_ENABLE, 1)):
            await tb.axil.write(ctx, reg, value)
            got[reg] = await tb.axil.read(ctx, reg)
        got["ports"] = (ctx.get(tb.dut.insn_addr.addr), ctx.get(tb.dut.insn_count.count),
                       ctx.get(tb.dut.irq_enable.enable))
        await tb.axil.write(ctx, CSR.IRQ_ENABLE, 0xFFFF_FFFE)        # only bit 0 is kept
        got["irq_off"] = await tb.axil.read(ctx, CSR.IRQ_ENABLE)
        got["unknown"] = await tb.axil.read(ctx, 0x3C)

    tb.run(body)
    assert got[CSR.INSN_ADDR] == 0xDEAD_BEE0 and got[CSR.INSN_COUNT] == 12345 and got[CSR.IRQ_ENABLE] == 1
    assert got["ports"] == (0xDEAD_BEE0, 12345, 1)
    assert got["irq_off"] == 0 and got["unknown"] == 0


def test_ctrl_writes_are_one_cycle_strobes():
    tb = Bench()

    async def body(ctx):
        await tb.axil.write(ctx, CSR.CTRL, 0b01)           # start
        await tb.axil.write(ctx, CSR.CTRL, 0b10)           # clear
        await tb.axil.write(ctx, CSR.CTRL, 0b11)           # both
        await tb.axil.write(ctx, CSR.CTRL, 0b00)           # neither
        await tb.axil.write(ctx, CSR.INSN_COUNT, 0b11)     # another register: no strobe
        await tb.axil.write(ctx, CSR.CTRL, 0b01, w_delay=3)   # data after the address: waits for it
        for _ in range(3):
            await ctx.tick()

    tb.run(body)
    starts, clears = tb.strobes.cycles["start"], tb.strobes.cycles["clear"]
    assert len(starts) == 3 and len(clears) == 2, (starts, clears)
    assert clears[1] == starts[1], "a CTRL write of 0b11 gives both strobes in one cycle"


def test_status_error_and_counters_come_from_the_inputs():
    tb = Bench()
    got = {}
    counters = [(0x1234_5678_9ABC_DEF0 + 0x1111 * i) & ((1 << 64) - 1) for i in range(len(COUNTERS))]

    async def body(ctx):
        d = tb.dut
        for running, done, error in ((1, 0, 0), (0, 1, 0), (0, 1, 1)):
            ctx.set(d.status.busy, running)
            ctx.set(d.status.done, done)
            ctx.set(d.status.error, error)
            got[(running, done, error)] = await tb.axil.read(ctx, CSR.STATUS)
        ctx.set(d.error.code, 6)
        ctx.set(d.error_pc.index, 0xABCDE)
        got["error"] = await tb.axil.read(ctx, CSR.ERROR)
        got["error_pc"] = await tb.axil.read(ctx, CSR.ERROR_PC)
        ctx.set(d.counters, sum(v << (64 * i) for i, v in enumerate(counters)))
        got["counters"] = []
        for i in range(len(COUNTERS)):
            low = await tb.axil.read(ctx, CSR.COUNTERS + 8 * i)
            high = await tb.axil.read(ctx, CSR.COUNTERS + 8 * i + 4)
            got["counters"].append(low | high << 32)

    tb.run(body)
    assert got[(1, 0, 0)] == 0b001 and got[(0, 1, 0)] == 0b010 and got[(0, 1, 1)] == 0b110
    assert got["error"] == 6 and got["error_pc"] == 0xABCDE
    assert got["counters"] == counters


def test_trace_reads_entries_below_the_count_and_zero_past_it():
    tb = Bench()
    got = {}

    async def body(ctx):
        ctx.set(tb.dut.trace_count.count, 3)
        got["count"] = await tb.axil.read(ctx, CSR.TRACE_COUNT)
        got["entries"] = {}
        for e in (0, 2, 3, 7):
            for w in (0, 1, ENTRY_WORDS - 1, ENTRY_WORDS, TRACE_ENTRY_WORDS - 1):
                got["entries"][(e, w)] = await tb.axil.read(ctx, CSR.TRACE + 4 * (TRACE_ENTRY_WORDS * e + w))
        # a register read right after a trace read still answers its own register
        got["after"] = await tb.axil.read(ctx, CSR.TRACE_COUNT)

    tb.run(body)
    assert got["count"] == 3 and got["after"] == 3
    for (e, w), value in got["entries"].items():
        want = tb.trace[e][w] if e < 3 and w < ENTRY_WORDS else 0
        assert value == want, f"trace entry {e} word {w}: {value:#x}, want {want:#x}"


def test_every_register_follows_its_declared_access():
    """All ones written to every plain register of the map: a read-write register reads back its
    fields' bits, a read-only one ignores the write (its inputs are 0), a write-only one reads 0."""
    from softnpu.hdl.csr import PLAIN_REGISTERS
    tb = Bench()
    got = {}

    async def body(ctx):
        for reg in PLAIN_REGISTERS:
            if reg.name != "CTRL":             # CTRL would start; its read is checked below
                await tb.axil.write(ctx, reg.offset, 0xFFFF_FFFF)
            got[reg.name] = await tb.axil.read(ctx, reg.offset)

    tb.run(body)
    for reg in PLAIN_REGISTERS:
        mask = sum(f.mask for f in reg.fields)
        want = mask if reg.access == "RW" else 0
        assert got[reg.name] == want, f"{reg.name} ({reg.access}): read {got[reg.name]:#x}, want {want:#x}"
