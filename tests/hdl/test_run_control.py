"""hdl/run_control.py on Amaranth's simulator: a start runs and resets, FINISH or an idle machine
with nothing left to fetch ends the run (done, the interrupt when enabled, acknowledged by CTRL
clear), the first listed fault wins when several fault at once (with its address), and a deadlock
is reported at the lowest waiting instruction, also while the compute unit holds FINISH."""

import pytest

from softnpu.hdl.isa import ErrorCode
from softnpu.hdl.run_control import UNITS, RunControl
from tests.hdl.bfm import simulate


def _outputs(ctx, dut) -> dict:
    names = ("running", "done", "error", "error_code", "error_pc", "error_addr", "irq")
    return {n: ctx.get(getattr(dut, n)) for n in names}


async def _start(ctx, dut):
    ctx.set(dut.irq_enable, 1)
    ctx.set(dut.start, 1)
    got = {"reset": ctx.get(dut.reset), "starting": ctx.get(dut.starting)}
    await ctx.tick()
    ctx.set(dut.start, 0)
    return got


def test_start_runs_finish_ends_and_ack_clears():
    dut = RunControl()
    got = {}

    async def bench(ctx):
        got["strobes"] = await _start(ctx, dut)
        got["running"] = _outputs(ctx, dut)
        ctx.set(dut.finish, 1)
        await ctx.tick()
        ctx.set(dut.finish, 0)
        got["done"] = _outputs(ctx, dut)
        ctx.set(dut.irq_enable, 0)
        got["irq_masked"] = ctx.get(dut.irq)
        ctx.set(dut.ack, 1)
        await ctx.tick()
        got["acked"] = _outputs(ctx, dut)

    simulate(dut, bench)
    assert got["strobes"] == {"reset": 1, "starting": 1}
    assert got["running"] == dict(running=1, done=0, error=0, error_code=0, error_pc=0, error_addr=0, irq=0)
    assert got["done"] == dict(running=0, done=1, error=0, error_code=0, error_pc=0, error_addr=0, irq=1)
    assert got["irq_masked"] == 0
    assert got["acked"]["done"] == 0 and got["acked"]["irq"] == 0


@pytest.mark.parametrize("blocked, busy_unit, queued, ends", [
    (0, None, False, True),          # exhausted, all idle, queues empty: done
    (1, None, False, False),         # fetch still holds an instruction
    (0, "store", False, False),      # a unit still busy
    (0, None, True, False),          # an instruction still queued
])
def test_an_idle_machine_with_nothing_to_fetch_ends(blocked, busy_unit, queued, ends):
    dut = RunControl()
    got = {}

    async def bench(ctx):
        await _start(ctx, dut)
        for u in UNITS:
            ctx.set(getattr(dut, f"{u}_head").empty, not (queued and u == "load"))
        ctx.set(dut.fetch.exhausted, 1)
        ctx.set(dut.fetch.blocked, blocked)
        if busy_unit:
            ctx.set(getattr(dut, busy_unit).busy, 1)
        await ctx.tick()
        got.update(_outputs(ctx, dut))

    simulate(dut, bench)
    assert got["done"] == ends and got["running"] == (not ends) and got["error"] == 0


@pytest.mark.parametrize("faulting, code, pc, addr", [
    (["store"], ErrorCode.SRAM_RANGE, 30, 0),
    (["compute", "store"], ErrorCode.ILLEGAL_OPCODE, 20, 0),
    (["fetch", "load", "compute"], ErrorCode.DRAM_RANGE, 5, 0x1_0000_001F),
    (["load", "store"], ErrorCode.DRAM_ALIGN, 10, 0x123),
])
def test_the_first_listed_fault_wins(faulting, code, pc, addr):
    dut = RunControl()
    codes = {"fetch": (ErrorCode.DRAM_RANGE, 5, 0x1_0000_001F), "load": (ErrorCode.DRAM_ALIGN, 10, 0x123),
             "compute": (ErrorCode.ILLEGAL_OPCODE, 20, 0), "store": (ErrorCode.SRAM_RANGE, 30, 0)}
    got = {}

    async def bench(ctx):
        await _start(ctx, dut)
        for name in faulting:
            port = getattr(dut, name)
            ctx.set(port.fault, 1)
            ctx.set(port.fault_code, codes[name][0])
            ctx.set(port.pc, codes[name][1])
            ctx.set(port.fault_addr, codes[name][2])
        got["reset"] = ctx.get(dut.reset)
        await ctx.tick()
        got.update(_outputs(ctx, dut))

    simulate(dut, bench)
    assert got["reset"] == 1, "a fault resets the units at once"
    assert (got["running"], got["done"], got["error"]) == (0, 1, 1)
    assert (got["error_code"], got["error_pc"], got["error_addr"]) == (code, pc, addr)


@pytest.mark.parametrize("waiting, stalled, busy, finishing, deadlock", [
    ({"load": 7, "compute": 4, "store": 9}, UNITS, None, False, True),
    ({"compute": 12, "store": 3}, ("compute", "store"), None, False, True),
    ({"compute": 12, "store": 3}, ("compute",), None, False, False),       # store's head can start
    ({"compute": 12}, ("compute",), "load", False, False),                 # a unit is still working
    ({"load": 0}, ("load",), "compute", True, True),       # FINISH waits for a load that waits for it
    ({"load": 0}, ("load",), "compute", False, False),     # compute busy with a real instruction
    ({"load": 0}, (), "compute", True, False),             # the load can start: FINISH just waits
    ({"compute": 4, "store": None}, ("compute",), None, False, False),   # the store is still on its way
])
def test_deadlock_is_reported_at_the_lowest_waiting_instruction(waiting, stalled, busy, finishing, deadlock):
    dut = RunControl()
    got = {}

    async def bench(ctx):
        await _start(ctx, dut)
        ctx.set(dut.fetch.exhausted, 1)
        for u in UNITS:
            head = getattr(dut, f"{u}_head")           # pc None: queued, not yet at the head
            ctx.set(head.valid, waiting.get(u) is not None)
            ctx.set(head.pc, waiting.get(u) or 0)
            ctx.set(head.empty, u not in waiting)
            ctx.set(getattr(dut, u).stall, u in stalled)
        if busy:
            ctx.set(getattr(dut, busy).busy, 1)
        ctx.set(dut.finishing, finishing)
        await ctx.tick()
        got.update(_outputs(ctx, dut))

    simulate(dut, bench)
    if deadlock:
        want = (1, ErrorCode.DEADLOCK, min(pc for pc in waiting.values() if pc is not None))
        assert (got["error"], got["error_code"], got["error_pc"]) == want
    else:
        assert got["running"] == 1 and got["error"] == 0
