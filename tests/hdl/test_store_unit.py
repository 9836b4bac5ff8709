"""hdl/store_unit.py on Amaranth's simulator, against the STORE semantics of hdl/isa.py: output
entries go to DRAM rows and planes by their strides (a channel offset writes in place), every row
in bursts of at most dram_max_burst beats that never cross 4 KiB, with wlast on each burst's last
beat, up to dram_outstanding bursts in flight, memory back-pressure changes timing only, and
out-of-range or misaligned stores fault with their ErrorCode before writing."""

import numpy as np
import pytest

from softnpu.hdl import faults, isa
from softnpu.hdl.config import preset
from softnpu.hdl.isa import ErrorCode
from softnpu.hdl.store_unit import StoreUnit
from tests.hdl.bfm import (
    STALLY,
    Strobes,
    SyncReadPort,
    WriteMemory,
    all_tokens,
    issue,
    simulate,
    split_bursts,
    wait_idle,
)

CFG = preset("tiny").replace(name="store-test", dram_bytes=1 << 16, dram_max_burst=4)
E = CFG.rows                                # bytes of an output entry (one int8 per lane)
OUT = 0x2000


def _entries() -> dict[int, int]:
    rng = np.random.default_rng(2)
    return {a: int(v) for a, v in enumerate(rng.integers(0, 1 << (8 * E), CFG.out_depth, dtype=np.uint64))}


def expected(insn: isa.Store, entries: dict[int, int]) -> dict[int, int]:
    """DRAM byte -> value, from the docstring of hdl/isa.py `Store`."""
    out = {}
    for b in range(insn.blocks):
        for y in range(insn.rows):
            for x in range(insn.cols):
                value = entries[insn.sram + (b * insn.rows + y) * insn.cols + x]
                base = insn.dram + b * insn.block_stride + y * insn.row_stride + x * E
                for i in range(E):
                    out[base + i] = (value >> (8 * i)) & 0xFF
    return out


def run(insns, *, pattern=(1,), config=CFG, latency=2):
    dut = StoreUnit(config)
    entries = _entries()
    memory = WriteMemory(dut.mem, CFG.dram_bus_bytes, latency=latency, pattern=pattern)
    scratchpad = SyncReadPort(dut.out_r, entries)
    strobes = Strobes(fault=dut.status.fault, code=dut.status.fault_code, addr=dut.status.fault_addr,
                      push_prev=dut.tokens.push_prev,
                      beats=dut.write_beats, awvalid=dut.mem.awvalid, bvalid=dut.mem.bvalid)

    async def bench(ctx):
        all_tokens(ctx, dut.tokens)
        for pc, insn in enumerate(insns):
            await issue(ctx, dut, insn, pc)
            await wait_idle(ctx, dut)

    simulate(dut, bench, processes=[memory.serve, scratchpad.serve, strobes.watch])
    return entries, memory, strobes


TILE = isa.Store(sram=7, dram=OUT + 16, blocks=2, rows=3, cols=5, row_stride=64, block_stride=512,
                 push_prev=True)


@pytest.mark.parametrize("pattern", [(1,), STALLY], ids=["ready", "back-pressure"])
def test_entries_land_at_their_strides_in_bursts_of_at_most_max_burst(pattern):
    entries, memory, strobes = run([TILE], pattern=pattern)
    assert memory.data == expected(TILE, entries)
    assert not memory.wlast_errors, memory.wlast_errors
    want = [burst for b in range(2) for y in range(3)
            for burst in split_bursts(TILE.dram + b * 512 + y * 64, 5 * E // CFG.dram_bus_bytes,
                                      CFG.dram_bus_bytes, CFG.dram_max_burst)]
    assert [(b.addr, b.beats) for b in memory.bursts] == want
    assert len(strobes.cycles["beats"]) == sum(beats for _, beats in want)
    assert len(strobes.cycles["push_prev"]) == 1 and not strobes.cycles["fault"]


def test_bursts_never_cross_a_4k_boundary():
    """A row of 10 beats from 12 bytes below 4 KiB: 3 + 4 + 3 beats."""
    insn = isa.Store(sram=0, dram=0x1000 - 12, blocks=1, rows=1, cols=10, row_stride=0)
    entries, memory, _ = run([insn])
    assert [(b.addr, b.beats) for b in memory.bursts] == [(0xFF4, 3), (0x1000, 4), (0x1010, 3)]
    assert memory.data == expected(insn, entries) and not memory.wlast_errors


def test_channel_offset_writes_in_place_and_leaves_the_rest():
    """Two stores into the channel blocks 0 and 1 of one two-block tensor (a concatenation)."""
    h, w = 2, 3
    plane = h * w * E
    first = isa.Store(sram=0, dram=OUT, blocks=1, rows=h, cols=w, row_stride=w * E, block_stride=plane)
    second = isa.Store(sram=20, dram=OUT + plane, blocks=1, rows=h, cols=w, row_stride=w * E,
                       block_stride=plane)
    entries, memory, _ = run([first, second])
    assert memory.data == {**expected(first, entries), **expected(second, entries)}
    assert sorted(memory.data) == list(range(OUT, OUT + 2 * plane))


@pytest.mark.parametrize("outstanding", [1, 2, 4])
def test_addresses_run_ahead_of_the_responses_up_to_dram_outstanding(outstanding):
    """Up to `dram_outstanding` bursts in flight, across rows; the token is pushed after the last
    response."""
    _, memory, strobes = run([TILE], config=CFG.replace(dram_outstanding=outstanding), latency=20)
    assert memory.max_in_flight == outstanding
    assert len(strobes.cycles["push_prev"]) == 1
    assert strobes.cycles["push_prev"][0] > max(strobes.cycles["bvalid"])


STORE = dict(sram=0, dram=OUT, blocks=1, rows=2, cols=4, row_stride=16)


@pytest.mark.parametrize("fields, code", [
    (dict(sram=CFG.out_depth - 7), ErrorCode.SRAM_RANGE),
    (dict(blocks=3, sram=CFG.out_depth - 23), ErrorCode.SRAM_RANGE),
    (dict(dram=OUT + 1), ErrorCode.DRAM_ALIGN),
    (dict(row_stride=6), ErrorCode.DRAM_ALIGN),
    (dict(blocks=2, block_stride=34), ErrorCode.DRAM_ALIGN),
    (dict(dram=CFG.dram_bytes - 16), ErrorCode.DRAM_RANGE),
    (dict(dram=CFG.dram_bytes - 48, blocks=2, block_stride=32), ErrorCode.DRAM_RANGE),
])
def test_out_of_range_and_misaligned_stores_fault_with_their_code(fields, code):
    bad = isa.Store(**{**STORE, **fields})
    _, memory, strobes = run([bad])
    assert strobes.values["code"] == [code], strobes.values
    want = {ErrorCode.DRAM_ALIGN: [faults.dma_align_address(bad, CFG.dram_bus_bytes)],
            ErrorCode.DRAM_RANGE: [faults.dma_last_byte(bad, CFG.rows)]}.get(code, [])
    assert strobes.values["addr"] == want, "the address hdl/faults.py defines"
    assert not memory.bursts and not memory.data
    assert not strobes.cycles["push_prev"]


def test_a_store_ending_at_the_last_byte_is_legal():
    edge = isa.Store(**{**STORE, "dram": CFG.dram_bytes - 32, "sram": CFG.out_depth - 8})
    entries, memory, strobes = run([edge])
    assert not strobes.cycles["fault"]
    assert memory.data == expected(edge, entries)
