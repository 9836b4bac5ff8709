"""Bus-functional models for the component tests on Amaranth's simulator: an AXI4 read memory
(the read port of fetch and the load unit), an AXI4 write memory (the store unit), a synchronous
scratchpad read port, an AXI4-Lite master (the CSR block), an instruction-queue feeder and a
token model.  Each is a set of `async` testbench functions over the component's ports; stalls
come from `itertools.cycle` patterns so tests cross back-pressure with data.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools

from amaranth.hdl import Value

from softnpu.hdl import isa

ALWAYS = (1,)
STALLY = (1, 1, 0, 1, 0, 0, 1)          # 1: ready/valid this cycle


async def edge_where(ctx, condition, *exprs):
    """Wait for the next rising edge at which `condition` holds; the values of `exprs` there.

    A loop of one-shot waits rather than `tick().until()`: BFM processes are abandoned mid-wait
    when the testbench ends, and an abandoned multi-shot wait complains as it is collected."""
    while True:
        _, _, done, *values = await ctx.tick().sample(condition, *exprs)
        if done:
            return values


@dataclasses.dataclass
class Burst:
    addr: int
    beats: int


class ReadMemory:
    """A pipelined, in-order AXI4 read slave over a sparse byte memory: it accepts addresses (on
    the cycles `accept` allows, up to `depth` bursts held) while it serves earlier bursts; a
    burst's first beat is ready `latency` cycles after its address handshake, beats go out on the
    cycles `pattern` allows, in address order.  Records every burst, and the most bursts that were
    ever accepted and not finished (`max_in_flight`)."""

    def __init__(self, port, bus_bytes: int, data: dict[int, int] | None = None, latency: int = 2,
                 pattern=ALWAYS, accept=ALWAYS, depth: int = 16):
        self.port, self.bus, self.latency, self.depth = port, bus_bytes, latency, depth
        self.data = data if data is not None else {}
        self.pattern, self.accept = pattern, accept
        self.bursts: list[Burst] = []
        self.max_in_flight = 0

    def beat(self, addr: int) -> int:
        return int.from_bytes(bytes(self.data.get(addr + i, 0) for i in range(self.bus)), "little")

    def load(self, addr: int, blob: bytes) -> None:
        for i, b in enumerate(blob):
            self.data[addr + i] = b

    async def serve(self, ctx):
        p = self.port
        accept = itertools.cycle(self.accept)
        valid = itertools.cycle(self.pattern)
        queue: collections.deque[list[int]] = collections.deque()     # [addr, beats, due, sent]
        now, presenting = 0, False
        while True:
            ready = next(accept) if len(queue) < self.depth else 0
            ctx.set(p.arready, ready)
            if not presenting:
                if queue and queue[0][2] <= now and next(valid):
                    addr, beats, _, sent = queue[0]
                    ctx.set(p.rdata, self.beat(addr + sent * self.bus))
                    ctx.set(p.rlast, sent == beats - 1)
                    ctx.set(p.rvalid, 1)
                    presenting = True
                else:
                    ctx.set(p.rvalid, 0)
                    ctx.set(p.rlast, 0)
            _, _, arvalid, addr, arlen, rready = await ctx.tick().sample(p.arvalid, p.araddr, p.arlen,
                                                                         p.rready)
            now += 1
            if presenting and rready:
                presenting = False
                queue[0][3] += 1
                if queue[0][3] == queue[0][1]:
                    queue.popleft()
            if arvalid and ready:
                self.bursts.append(Burst(addr, arlen + 1))
                queue.append([addr, arlen + 1, now + self.latency, 0])
                self.max_in_flight = max(self.max_in_flight, len(queue))


class WriteMemory:
    """A pipelined, in-order AXI4 write slave: accepts addresses (up to `depth` bursts held) while
    it takes the beats of earlier ones, in address order, on the cycles `pattern` allows; answers
    each burst with bvalid `latency` cycles after its last beat.  Records bursts, bytes written,
    every beat's wlast and the most bursts ever accepted and not answered (`max_in_flight`)."""

    def __init__(self, port, bus_bytes: int, latency: int = 2, pattern=ALWAYS, depth: int = 16):
        self.port, self.bus, self.latency, self.pattern, self.depth = port, bus_bytes, latency, pattern, depth
        self.data: dict[int, int] = {}
        self.bursts: list[Burst] = []
        self.wlast_errors: list[str] = []
        self.max_in_flight = 0

    async def serve(self, ctx):
        p = self.port
        ready = itertools.cycle(self.pattern)
        bursts: collections.deque[list[int]] = collections.deque()    # [addr, beats, sent]
        responses: collections.deque[int] = collections.deque()       # due cycles
        now, answering = 0, False
        while True:
            in_flight = len(bursts) + len(responses)
            awready = int(in_flight < self.depth)
            ctx.set(p.awready, awready)
            wready = next(ready) if bursts else 0
            ctx.set(p.wready, wready)
            if not answering and responses and responses[0] <= now:
                answering = True
            ctx.set(p.bvalid, int(answering))
            _, _, awvalid, awaddr, awlen, wvalid, wdata, wstrb, wlast, bready = await ctx.tick().sample(
                p.awvalid, p.awaddr, p.awlen, p.wvalid, p.wdata, p.wstrb, p.wlast, p.bready)
            now += 1
            if answering and bready:
                answering = False
                responses.popleft()
            if wready and wvalid:
                addr, beats, i = bursts[0]
                for b in range(self.bus):
                    if wstrb >> b & 1:
                        self.data[addr + i * self.bus + b] = (wdata >> (8 * b)) & 0xFF
                if bool(wlast) != (i == beats - 1):
                    self.wlast_errors.append(f"burst at {addr:#x}: beat {i} of {beats} has wlast={wlast}")
                bursts[0][2] += 1
                if i == beats - 1:
                    bursts.popleft()
                    responses.append(now + self.latency)
            if awvalid and awready:
                self.bursts.append(Burst(awaddr, awlen + 1))
                bursts.append([awaddr, awlen + 1, 0])
            self.max_in_flight = max(self.max_in_flight, len(bursts) + len(responses))

    def read(self, addr: int, size: int) -> bytes:
        return bytes(self.data.get(addr + i, 0) for i in range(size))


class SyncReadPort:
    """A scratchpad's synchronous read port: `data` holds the entry at the address of the last
    rising edge where `en` was high (as amaranth.lib.memory with a transparent-free read port)."""

    def __init__(self, port, entries: dict[int, int]):
        self.port, self.entries = port, entries
        self.data = Value.cast(port.data)        # entries are ints, whatever the port's layout

    async def serve(self, ctx):
        while True:
            _, _, en, addr = await ctx.tick().sample(self.port.en, self.port.addr)
            if en:
                ctx.set(self.data, self.entries.get(addr, 0))


class WriteRecorder:
    """Every write of a scratchpad write port (addr, data, en), in order."""

    def __init__(self, port):
        self.port = port
        self.writes: list[tuple[int, int]] = []

    async def watch(self, ctx):
        while True:
            _, _, en, addr, data = await ctx.tick().sample(self.port.en, self.port.addr,
                                                           Value.cast(self.port.data))
            if en:
                self.writes.append((addr, data))

    def entries(self) -> dict[int, int]:
        return dict(self.writes)


class Strobes:
    """The cycles (counted from 0) in which 1-bit signals were high, sampled at each rising edge."""

    def __init__(self, **signals):
        self.signals = signals
        self.cycles: dict[str, list[int]] = {name: [] for name in signals}
        self.values: dict[str, list[int]] = {name: [] for name in signals}
        self.now = 0

    async def watch(self, ctx):
        names = list(self.signals)
        while True:
            _, _, *values = await ctx.tick().sample(*self.signals.values())
            for name, value in zip(names, values, strict=True):
                if value:
                    self.cycles[name].append(self.now)
                    self.values[name].append(value)
            self.now += 1


def all_tokens(ctx, tokens) -> None:
    """Every token is available and every channel has room: a unit never waits."""
    for name in ("can_pop_prev", "can_pop_next", "room_prev", "room_next"):
        ctx.set(getattr(tokens, name), 1)


async def issue(ctx, unit, insn: isa.Insn | int, pc: int = 0, max_cycles: int = 20_000) -> None:
    """Put one instruction at the head of a unit's queue until the unit takes it."""
    q = unit.queue
    ctx.set(Value.cast(q.payload.insn), insn if isinstance(insn, int) else insn.encode_int())
    ctx.set(q.payload.pc, pc)
    ctx.set(q.valid, 1)
    for _ in range(max_cycles):
        _, _, take = await ctx.tick().sample(q.ready)
        if take:
            ctx.set(q.valid, 0)
            return
    raise AssertionError(f"the unit did not take {insn!r} within {max_cycles} cycles")


async def wait_idle(ctx, unit, max_cycles: int = 20_000) -> int:
    """Cycles until the unit is idle again (busy low); fails on a hang."""
    for n in range(max_cycles):
        _, _, busy = await ctx.tick().sample(unit.status.busy)
        if not busy:
            return n
    raise AssertionError(f"the unit is still busy after {max_cycles} cycles")


class AXILiteMaster:
    """Writes and reads of 32-bit registers over AXI4-Lite, address and data offered together (or
    the data `w_delay` cycles after the address)."""

    def __init__(self, bus):
        self.bus = bus

    async def write(self, ctx, addr: int, value: int, w_delay: int = 0) -> None:
        b = self.bus
        ctx.set(b.awaddr, addr)
        ctx.set(b.awvalid, 1)
        ctx.set(b.wdata, value & 0xFFFFFFFF)
        ctx.set(b.bready, 1)
        for _ in range(w_delay):
            _, _, awready = await ctx.tick().sample(b.awready)
            assert not awready, "the address was taken before its data"
        ctx.set(b.wvalid, 1)
        await ctx.tick().until(b.awready & b.wready)
        ctx.set(b.awvalid, 0)
        ctx.set(b.wvalid, 0)
        await ctx.tick().until(b.bvalid)
        ctx.set(b.bready, 0)

    async def read(self, ctx, addr: int) -> int:
        b = self.bus
        ctx.set(b.araddr, addr)
        ctx.set(b.arvalid, 1)
        ctx.set(b.rready, 1)
        await ctx.tick().until(b.arready)
        ctx.set(b.arvalid, 0)
        (data,) = await ctx.tick().sample(b.rdata).until(b.rvalid)
        ctx.set(b.rready, 0)
        return data


def simulate(dut, testbench, *, processes=(), background=(), vcd: str | None = None) -> None:
    """Run `testbench` on `dut` with a clock, beside `processes` (BFMs and monitors, which run as
    long as the testbench does) and `background` testbenches; `vcd` writes a waveform."""
    from amaranth.sim import Simulator

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for process in processes:
        sim.add_process(process)
    for bench in background:
        sim.add_testbench(bench, background=True)
    sim.add_testbench(testbench)
    if vcd:
        with sim.write_vcd(vcd):
            sim.run()
    else:
        sim.run()


def split_bursts(addr: int, beats: int, bus_bytes: int, max_burst: int) -> list[tuple[int, int]]:
    """The (address, beats) bursts of one contiguous run: at most `max_burst` beats each, none
    across a 4 KiB boundary (AXI4 forbids it)."""
    out = []
    while beats:
        n = min(beats, max_burst, (4096 - addr % 4096) // bus_bytes)
        out.append((addr, n))
        addr, beats = addr + n * bus_bytes, beats - n
    return out
