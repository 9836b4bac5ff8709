"""The NPU RTL under cocotb/Verilator (the `tiny` config unless asked otherwise) against the ISS:
every instruction kind, dependency tokens, memory back-pressure, seeded random programs (identical
memory images; a third of them also under back-pressure), error paths (codes and interrupt, never
a hang), and the cycle model's deviation per program.

All jobs run in one simulator process (sim/rtl/jobs.py); the build is cached by its hash.
SOFTNPU_RTL_PROGRAMS sets how many random programs run (default 24; `nox -s rtl_regress` runs more),
SOFTNPU_RTL_CONFIG the NPU preset (default `tiny`; `nox -s rtl_regress` also runs `default`).
"""

import os

import numpy as np
import pytest

from softnpu.hdl import isa
from softnpu.hdl.config import preset
from softnpu.hdl.isa import Buffer, ErrorCode
from softnpu.sim.iss import ISS, NPUFault
from softnpu.sim.rtl.jobs import Job, run_jobs
from tests.sim.programs import PROGRAM_AT, random_program

CFG = preset(os.environ.get("SOFTNPU_RTL_CONFIG", "tiny"))
KINDS = ["conv", "fc", "maxpool", "avgpool", "mean", "add", "mul"]
N_RANDOM = int(os.environ.get("SOFTNPU_RTL_PROGRAMS", "24"))


def _error_job(name, program, image=()):
    data = isa.encode_program(program)
    return Job(name, [*image, (PROGRAM_AT, data)], PROGRAM_AT, len(program), [], max_cycles=20_000)


BAD_CONV = isa.Conv(mode=isa.ConvMode.MAX, out_blocks=2, in_blocks=1, kh=1, kw=1, stride_h=1, stride_w=1,
                    out_h=1, out_w=1)        # window modes need out_blocks=1: ILLEGAL_FIELD


def _error_jobs():
    b = CFG.cols
    load = dict(buffer=Buffer.INP, sram=0, blocks=1, rows=1, cols=1)
    return [
        Job("illegal_opcode", [(PROGRAM_AT, isa.Marker(id=1).encode() + bytes(32) + isa.Finish().encode())],
            PROGRAM_AT, 3, [], max_cycles=20_000),
        _error_job("illegal_field", [isa.Marker(id=1), BAD_CONV, isa.Finish()]),
        _error_job("dram_range", [isa.Load(dram=CFG.dram_bytes - b, **{**load, "rows": 2}, row_stride=b),
                                  isa.Finish()]),
        _error_job("dram_align", [isa.Load(dram=b + 1, **load), isa.Finish()]),
        _error_job("sram_range", [isa.Load(dram=0, **{**load, "sram": CFG.inp_depth - 1, "cols": 2}),
                                  isa.Finish()]),
        _error_job("store_sram_range", [isa.Store(sram=CFG.out_depth - 1, dram=0x1000, blocks=1, rows=1,
                                                  cols=2, row_stride=0), isa.Finish()]),
        _error_job("deadlock", [isa.Marker(id=1, pop_prev=True), isa.Finish()]),
    ]


def _overlap_jobs():
    """Hand-written programs of the compute unit's overlap (hdl/compute_unit.py): a CONV beside a
    REQUANT into the accumulators that REQUANT still reads (it must wait), one into others (it runs
    beside it) that also pushes a token on the channel the REQUANT pushes on while ending first (its
    push must come second: the load that pops the first token overwrites the parameters of the
    REQUANT's second block), and a NARROW beside a CONV."""
    rng = np.random.default_rng(7)
    b, r = CFG.cols, CFG.rows
    n, short = 96, 6                     # a long REQUANT, a short CONV beside it
    x = rng.integers(-128, 128, (n, b), dtype=np.int8)
    w = rng.integers(-127, 128, (3, r, b), dtype=np.int8)
    def block_params():        # bias, multiplier, shift of one block
        return [rng.integers(-500, 500, r), rng.integers(1 << 30, (1 << 31) - 1, r), rng.integers(-10, 0, r)]
    params = np.array([p for _ in range(3) for p in block_params()], np.int32)
    X, W, P, OUT = 0x10000, 0x20000, 0x30000, 0x40000
    image = [(X, x.tobytes()), (W, w.tobytes()), (P, params.tobytes())]
    conv = dict(mode=isa.ConvMode.MAC, out_blocks=1, in_blocks=1, kh=1, kw=1, stride_h=1, stride_w=1,
                out_h=1, inp=0, inp_row=n, inp_block=n)
    rq = dict(param=0, blocks=1, zero_point=3, act_min=-128, act_max=127)
    program = [
        isa.Load(buffer=Buffer.INP, sram=0, dram=X, blocks=1, rows=1, cols=n),
        isa.Load(buffer=Buffer.WGT, sram=0, dram=W, blocks=1, rows=1, cols=3),
        isa.Load(buffer=Buffer.PARAM, sram=0, dram=P, blocks=1, rows=1, cols=6, push_next=True),
        isa.Conv(**conv, out_w=n, acc=0, wgt=0, pop_prev=True),
        isa.Requant(**rq, out=0, acc=0, count=n),
        isa.Conv(**conv, out_w=n, acc=0, wgt=1),                  # overwrites what the REQUANT reads
        isa.Requant(**{**rq, "blocks": 2}, out=n, acc=0, count=n // 2, push_prev=True),
        isa.Conv(**conv, out_w=short, acc=n, wgt=2, push_prev=True),     # beside it, ends first
        isa.Narrow(out=2 * n, acc=0, blocks=1, count=n, divisor=3, act_min=-128, act_max=127),
        isa.Conv(**{**conv, "mode": isa.ConvMode.MAX}, out_w=short, acc=2 * n, wgt=0),
        isa.Requant(**rq, out=3 * n, acc=n, count=short, push_next=True),
        isa.Load(buffer=Buffer.PARAM, sram=3, dram=P + 6 * 4 * r, blocks=1, rows=1, cols=3, pop_next=True),
        isa.Load(buffer=Buffer.INP, sram=n, dram=X, blocks=1, rows=1, cols=1, pop_next=True),
        isa.Store(sram=0, dram=OUT, blocks=1, rows=1, cols=3 * n + short, row_stride=0, pop_prev=True),
        isa.Finish(),
    ]
    data = isa.encode_program(program)
    out = (OUT, (3 * n + short) * r)
    return [Job("overlap", [*image, (PROGRAM_AT, data)], PROGRAM_AT, len(program), [out])]


def _iss_run(job: Job):
    iss = ISS(CFG)
    for addr, data in job.image:
        iss.write(addr, data)
    return iss, iss.run(job.insn_addr, job.insn_count)


def _iss(job: Job):
    try:
        iss, stats = _iss_run(job)
    except NPUFault as fault:
        return None, (int(fault.code), fault.pc), None
    return [bytes(iss.read(a, s)) for a, s in job.regions], None, stats


@pytest.fixture(scope="module")
def results():
    jobs = {}
    for i, kind in enumerate(KINDS):
        jobs[f"kind:{kind}"] = random_program(CFG, 1000 + i, kinds=[kind])
        jobs[f"backpressure:{kind}"] = random_program(CFG, 1000 + i, kinds=[kind], backpressure=True)
    for seed in range(N_RANDOM):
        jobs[f"random:{seed}"] = random_program(CFG, seed)
    for seed in range(0, N_RANDOM, 3):      # a third of them again with a stalling memory
        jobs[f"random-backpressure:{seed}"] = random_program(CFG, seed, backpressure=True)
    for job in _error_jobs():
        jobs[f"error:{job.name}"] = job
    for job in _overlap_jobs():
        jobs[f"overlap:{job.name}"] = job
    rtl = run_jobs(CFG, list(jobs.values()))
    return {key: (job, _iss(job), res) for (key, job), res in zip(jobs.items(), rtl, strict=True)}


def _report(results, prefix):
    rows = []
    for key, (job, (_, _, stats), res) in results.items():
        if key.startswith(prefix) and stats is not None and res.counters:
            dev = res.counters["cycles"] / stats.cycles - 1
            rows.append((key, job.name, res.counters["cycles"], stats.cycles, dev))
    print(f"\n{'job':24s} {'program':34s} {'RTL cycles':>10s} {'ISS model':>10s} {'deviation':>9s}")
    for key, name, rtl, iss, dev in rows:
        print(f"{key:24s} {name[:34]:34s} {rtl:10d} {iss:10d} {dev:+9.1%}")
    return rows


def _assert_same(results, prefix):
    checked = 0
    for key, (job, (regions, fault, _), res) in results.items():
        if not key.startswith(prefix):
            continue
        assert res.error is None, f"{key} ({job.name}) hung: {res.error}"
        assert res.fault is None and fault is None, f"{key}: RTL fault {res.fault}, ISS fault {fault}"
        for (addr, size), got, want in zip(job.regions, res.regions, regions, strict=True):
            if got != want:
                a, e = np.frombuffer(got, np.int8), np.frombuffer(want, np.int8)
                bad = np.flatnonzero(a != e)
                pytest.fail(f"{key} ({job.name}): {bad.size} of {size} bytes differ at {addr:#x}+{bad[:8]}: "
                            f"RTL {a[bad[:8]]} ISS {e[bad[:8]]}")
        checked += 1
    assert checked > 0


def test_every_instruction_kind_matches_the_iss(results):
    _assert_same(results, "kind:")
    _report(results, "kind:")


def test_conv_beside_requant_keeps_program_order(results):
    """The compute unit runs a CONV beside a REQUANT or NARROW only on other accumulators, and
    keeps token pushes in program order: the RTL's output equals the ISS's (which runs the program
    in order) and both count the same instructions' time."""
    _assert_same(results, "overlap:")
    (_, (_, _, stats), res), = [v for k, v in results.items() if k.startswith("overlap:")]
    assert abs(res.counters["cycles"] / stats.cycles - 1) < 0.02, (res.counters["cycles"], stats.cycles)


def test_memory_back_pressure_changes_timing_not_results(results):
    _assert_same(results, "backpressure:")
    for kind in KINDS:
        plain = results[f"kind:{kind}"][2].counters["cycles"]
        stalled = results[f"backpressure:{kind}"][2].counters["cycles"]
        assert stalled > plain, f"{kind}: back-pressure did not slow the run ({stalled} <= {plain})"


def test_random_programs_match_the_iss(results):
    _assert_same(results, "random:")
    rows = _report(results, "random:")
    deviations = [abs(dev) for *_, dev in rows]
    print(f"cycle model deviation over {len(rows)} random programs: median {np.median(deviations):.1%}, "
          f"max {max(deviations):.1%}")


def test_random_programs_under_memory_back_pressure_match_the_iss(results):
    """The memory model withholds beats, drops wready and delays addresses at random while several
    bursts are in flight per direction."""
    _assert_same(results, "random-backpressure:")


def test_counters_agree_with_the_iss_where_they_are_exact(results):
    for key, (_, (_, _, stats), res) in results.items():
        if key.startswith(("kind:", "random:")):
            for name in ("mac_active", "dram_read_bytes", "dram_write_bytes"):
                assert res.counters[name] == stats.counters[name], f"{key} {name}"
            assert [m for m, _ in res.trace] == [m for m, _ in stats.trace], key


@pytest.mark.parametrize("name, code", [
    ("illegal_opcode", ErrorCode.ILLEGAL_OPCODE), ("illegal_field", ErrorCode.ILLEGAL_FIELD),
    ("dram_range", ErrorCode.DRAM_RANGE), ("dram_align", ErrorCode.DRAM_ALIGN),
    ("sram_range", ErrorCode.SRAM_RANGE), ("store_sram_range", ErrorCode.SRAM_RANGE),
    ("deadlock", ErrorCode.DEADLOCK),
])
def test_errors_are_codes_with_interrupt_not_hangs(results, name, code):
    job, (_, iss_fault, _), res = results[f"error:{name}"]
    assert res.error is None, f"{name} hung: {res.error}"
    assert res.fault is not None, f"{name}: the RTL reported no fault"
    assert res.fault[0] == code and iss_fault[0] == code
    assert res.fault[1] == iss_fault[1], f"{name}: RTL pc {res.fault[1]}, ISS pc {iss_fault[1]}"
    assert res.irq, f"{name}: the interrupt did not rise"
    with pytest.raises(NPUFault) as iss:
        _iss_run(job)
    assert str(res.npu_fault) == str(iss.value), "the same code, instruction, disassembly and address"
