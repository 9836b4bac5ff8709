"""hdl/load_unit.py on Amaranth's simulator, against the LOAD semantics of hdl/isa.py: pad entries
carry pad_value in every lane, 2-D strides pick the DRAM rows and planes, every row is read in
bursts of at most dram_max_burst beats that never cross 4 KiB, entries of several beats are
assembled in order, memory back-pressure changes timing only, tokens are pushed on retiring, and
out-of-range or misaligned loads fault with their ErrorCode before touching memory."""

import numpy as np
import pytest
from amaranth.hdl import Value

from softnpu.hdl import faults, isa
from softnpu.hdl.config import preset
from softnpu.hdl.isa import Buffer, ErrorCode
from softnpu.hdl.load_unit import LoadUnit
from tests.hdl.bfm import (
    STALLY,
    ReadMemory,
    Strobes,
    WriteRecorder,
    all_tokens,
    issue,
    simulate,
    split_bursts,
    wait_idle,
)

# tiny's 4-byte bus and 4x4 array: an input entry is one beat, weight and param entries four
CFG = preset("tiny").replace(name="load-test", dram_bytes=1 << 16, dram_max_burst=4)
DATA = 0x1000                               # random bytes live at [DATA, DATA + 16 KiB)
ENTRY = {Buffer.INP: CFG.cols, Buffer.WGT: CFG.rows * CFG.cols, Buffer.PARAM: 4 * CFG.rows}


def _memory() -> dict[int, int]:
    blob = np.random.default_rng(1).integers(0, 256, 16 * 1024, dtype=np.uint8)
    return {DATA + i: int(b) for i, b in enumerate(blob)}


def expected(insn: isa.Load, mem: dict[int, int]) -> dict[int, int]:
    """Scratchpad entry -> value, from the docstring of hdl/isa.py `Load`."""
    e = ENTRY[insn.buffer]
    rows, cols = insn.padded_rows, insn.padded_cols
    pad = int.from_bytes(bytes([insn.pad_value & 0xFF] * e), "little") if insn.buffer == Buffer.INP else 0
    out = {}
    for b in range(insn.blocks):
        for y in range(rows):
            for x in range(cols):
                addr = insn.sram + (b * rows + y) * cols + x
                dy, dx = y - insn.pad_top, x - insn.pad_left
                if 0 <= dy < insn.rows and 0 <= dx < insn.cols:
                    src = insn.dram + b * insn.block_stride + dy * insn.row_stride + dx * e
                    out[addr] = int.from_bytes(bytes(mem.get(src + i, 0) for i in range(e)), "little")
                else:
                    out[addr] = pad
    return out


def run(insns, *, pattern=(1,), tokens=True, config=CFG, latency=3):
    """Issue `insns` one after the other; return the BFM, the writes per buffer and the strobes."""
    dut = LoadUnit(config)
    memory = ReadMemory(dut.mem, CFG.dram_bus_bytes, _memory(), latency=latency, pattern=pattern)
    writes = {Buffer.INP: WriteRecorder(dut.inp_w), Buffer.WGT: WriteRecorder(dut.wgt_w),
              Buffer.PARAM: WriteRecorder(dut.param_w)}
    strobes = Strobes(fault=dut.status.fault, code=dut.status.fault_code, addr=dut.status.fault_addr,
                      push_next=dut.tokens.push_next,
                      beats=dut.read_beats)

    async def bench(ctx):
        if tokens:
            all_tokens(ctx, dut.tokens)
        for pc, insn in enumerate(insns):
            await issue(ctx, dut, insn, pc)
            await wait_idle(ctx, dut)

    simulate(dut, bench, processes=[memory.serve, strobes.watch] + [w.watch for w in writes.values()])
    return memory, writes, strobes


PADDED = isa.Load(buffer=Buffer.INP, sram=5, dram=DATA + 64, blocks=2, rows=3, cols=5, row_stride=64,
                  block_stride=1024, pad_top=1, pad_bottom=2, pad_left=1, pad_right=2, pad_value=-7,
                  push_next=True)


def test_pad_fill_uses_pad_value():
    memory, writes, strobes = run([PADDED])
    got = writes[Buffer.INP]
    want = expected(PADDED, memory.data)
    assert [a for a, _ in got.writes] == sorted(want), "entries are written once each, in order"
    assert got.entries() == want
    pads = [v for a, v in got.writes if v == 0xF9F9F9F9]
    assert len(pads) == 2 * (6 * 8 - 3 * 5)
    assert not writes[Buffer.WGT].writes and not writes[Buffer.PARAM].writes
    assert strobes.cycles["push_next"] and len(strobes.cycles["push_next"]) == 1
    assert not strobes.cycles["fault"]


@pytest.mark.parametrize("buffer, cols", [(Buffer.WGT, 3), (Buffer.PARAM, 2), (Buffer.INP, 11)])
def test_strides_and_bursts_split_at_max_burst(buffer, cols):
    e = ENTRY[buffer]
    insn = isa.Load(buffer=buffer, sram=3, dram=DATA + 8, blocks=2, rows=3, cols=cols, row_stride=256,
                    block_stride=2048)
    memory, writes, strobes = run([insn])
    assert writes[buffer].entries() == expected(insn, memory.data)
    row_beats = cols * e // CFG.dram_bus_bytes
    want = [burst for b in range(2) for y in range(3)
            for burst in split_bursts(insn.dram + b * 2048 + y * 256, row_beats, CFG.dram_bus_bytes,
                                      CFG.dram_max_burst)]
    assert [(b.addr, b.beats) for b in memory.bursts] == want
    assert len(strobes.cycles["beats"]) == 2 * 3 * row_beats


def test_bursts_never_cross_a_4k_boundary():
    """Rows of 8 beats from 8 bytes below 4 KiB (and the same in the next page): 2 + 4 + 2 beats."""
    insn = isa.Load(buffer=Buffer.WGT, sram=0, dram=0x1000 - 8, blocks=2, rows=1, cols=2, block_stride=0x1000)
    memory, writes, _ = run([insn])
    assert [(b.addr, b.beats) for b in memory.bursts] == [
        (0xFF8, 2), (0x1000, 4), (0x1010, 2), (0x1FF8, 2), (0x2000, 4), (0x2010, 2)]
    assert writes[Buffer.WGT].entries() == expected(insn, memory.data)


@pytest.mark.parametrize("outstanding", [1, 2, 4])
def test_bursts_are_requested_ahead_of_the_data_up_to_dram_outstanding(outstanding):
    """Up to `dram_outstanding` bursts in flight, across rows and pads; the data is the same."""
    memory, writes, _ = run([PADDED], config=CFG.replace(dram_outstanding=outstanding), latency=20)
    assert memory.max_in_flight == outstanding
    assert writes[Buffer.INP].entries() == expected(PADDED, memory.data)


def test_memory_back_pressure_changes_timing_not_data():
    fast, fast_writes, fast_strobes = run([PADDED])
    slow, slow_writes, slow_strobes = run([PADDED], pattern=STALLY)
    assert slow_writes[Buffer.INP].writes == fast_writes[Buffer.INP].writes
    assert slow_strobes.now > fast_strobes.now


def test_waits_for_its_token():
    insn = isa.Load(buffer=Buffer.PARAM, sram=0, dram=DATA, blocks=1, rows=1, cols=1, pop_next=True)
    dut = LoadUnit(CFG)
    memory = ReadMemory(dut.mem, CFG.dram_bus_bytes, _memory())
    strobes = Strobes(stall=dut.status.stall, take=dut.queue.ready, pop=dut.tokens.pop_next)

    async def bench(ctx):
        ctx.set(dut.tokens.can_pop_next, 0)
        ctx.set(Value.cast(dut.queue.payload.insn), insn.encode_int())
        ctx.set(dut.queue.valid, 1)
        for _ in range(10):
            await ctx.tick()
        ctx.set(dut.tokens.can_pop_next, 1)
        await ctx.tick().until(dut.queue.ready)
        ctx.set(dut.queue.valid, 0)
        await wait_idle(ctx, dut)

    simulate(dut, bench, processes=[memory.serve, strobes.watch])
    assert len(strobes.cycles["stall"]) >= 10
    assert strobes.cycles["take"] == strobes.cycles["pop"] and len(strobes.cycles["take"]) == 1
    assert strobes.cycles["take"][0] > max(strobes.cycles["stall"])


LOAD = dict(buffer=Buffer.INP, sram=0, dram=DATA, blocks=1, rows=2, cols=4, row_stride=16)


@pytest.mark.parametrize("fields, code", [
    (dict(sram=CFG.inp_depth - 7), ErrorCode.SRAM_RANGE),                     # 8 entries from depth-7
    (dict(buffer=Buffer.WGT, sram=CFG.wgt_depth - 1, cols=2, rows=1), ErrorCode.SRAM_RANGE),
    (dict(pad_top=2, sram=CFG.inp_depth - 15), ErrorCode.SRAM_RANGE),         # the pads count too
    (dict(dram=DATA + 2), ErrorCode.DRAM_ALIGN),
    (dict(row_stride=18), ErrorCode.DRAM_ALIGN),
    (dict(block_stride=6, blocks=2), ErrorCode.DRAM_ALIGN),
    (dict(dram=CFG.dram_bytes - 16, row_stride=16), ErrorCode.DRAM_RANGE),    # second row past the end
    (dict(dram=CFG.dram_bytes - 32, blocks=2, block_stride=16), ErrorCode.DRAM_RANGE),
])
def test_out_of_range_and_misaligned_loads_fault_with_their_code(fields, code):
    bad = isa.Load(**{**LOAD, **fields})
    memory, writes, strobes = run([bad])
    assert strobes.values["code"] == [code], strobes.values
    assert len(strobes.cycles["fault"]) == 1
    assert strobes.values["addr"] == _fault_address(bad, code), "the address hdl/faults.py defines"
    assert not memory.bursts and not any(w.writes for w in writes.values())
    assert not strobes.cycles["push_next"]


def _fault_address(insn, code) -> list[int]:
    entry = {Buffer.INP: CFG.cols, Buffer.WGT: CFG.rows * CFG.cols, Buffer.PARAM: 4 * CFG.rows}[insn.buffer]
    if code == ErrorCode.DRAM_ALIGN:
        return [faults.dma_align_address(insn, CFG.dram_bus_bytes)]
    if code == ErrorCode.DRAM_RANGE:
        return [faults.dma_last_byte(insn, entry)]
    return []


def test_a_load_ending_at_the_last_byte_is_legal():
    edge = isa.Load(**{**LOAD, "dram": CFG.dram_bytes - 32, "sram": CFG.inp_depth - 8})
    memory, writes, strobes = run([edge])
    assert not strobes.cycles["fault"]
    assert sorted(writes[Buffer.INP].entries()) == list(range(CFG.inp_depth - 8, CFG.inp_depth))
