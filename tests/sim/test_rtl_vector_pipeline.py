"""The pipelined vector unit on the RTL (`tiny`): back-to-back vector instructions and a REQUANT whose
output an ADD reads, against hdl/numerics.py and the ISS, and the cycles the cycle model gives.

Vector instructions read the accumulator or input scratchpad and write the output scratchpad, so an
ADD reads a REQUANT's output through DRAM: REQUANT retires -> STORE -> LOAD -> ADD.  The STORE starts
on the token that REQUANT pushes as it retires: it must find every entry written, the last ones
included, which leave the pipeline `vector_latency` cycles after their read.  Between them, an ADD
follows the REQUANT straight on in the compute queue (its parameters must not disturb REQUANT's
entries still in flight).
"""

import numpy as np
import pytest

from softnpu.hdl import isa, numerics
from softnpu.hdl.config import preset
from softnpu.hdl.isa import Buffer, ConvMode, Rounding
from softnpu.hdl.timing import ComputeIssue, insn_cycles
from softnpu.sim.iss import ISS, NPUFault
from softnpu.sim.rtl.jobs import Job, run_jobs
from tests.sim.programs import PROGRAM_AT

CFG = preset("tiny")
B = CFG.rows                   # lanes; an input entry is B int8, a parameter entry B int32
N = 24                         # entries per tensor: more than the pipeline holds
X, P_RQ, P_ADD, Y, Z = 0x1000, 0x2000, 0x3000, 0x4000, 0x5000     # DRAM: inputs, params, outputs
RQ = isa.Requant(out=0, acc=0, param=0, blocks=2, count=N // 2, zero_point=-3, act_min=-100, act_max=110,
                 rounding=Rounding.FIXED)
ADD_Q = dict(zero_point=4, act_min=-128, act_max=127)
# straight after REQUANT: out[N..2N) = inp[0..N) + inp[0..N)
ADD = isa.Add(out=N, a=0, b=0, b_param=0, param=8, blocks=1, count=N, push_next=True, **ADD_Q)


def _program(rng):
    x = rng.integers(-128, 128, (N, B), dtype=np.int8)
    bias = rng.integers(-200, 200, (2, B))
    mult = rng.integers(1 << 30, (1 << 31) - 1, (2, B))
    shift = rng.integers(-3, 5, (2, B))
    rq_params = np.stack([bias, mult, shift], axis=1).astype(np.int32)          # [block][3][lane]
    add_p = numerics.add_params(0.05, -3, 0.04, 2, 0.07)
    add_params = np.repeat(np.array([add_p[k] for k in isa.Add.PARAMS], np.int32)[:, None], B, axis=1)
    load = dict(blocks=1, rows=1, row_stride=0, block_stride=0)
    program = [
        isa.Load(buffer=Buffer.INP, sram=0, dram=X, cols=N, **load),
        isa.Load(buffer=Buffer.PARAM, sram=0, dram=P_RQ, cols=6, **load),
        isa.Load(buffer=Buffer.PARAM, sram=8, dram=P_ADD, cols=8, push_next=True, **load),
        # a long CONV into unused accumulators: meanwhile fetch fills the compute queue, so the
        # vector instructions below run back to back
        isa.Conv(mode=ConvMode.SUM, accumulate=0, out_blocks=1, in_blocks=1, kh=1, kw=1, stride_h=1,
                 stride_w=1, out_h=1, out_w=200, acc=300, inp=0, wgt=0, inp_row=200, inp_block=200,
                 pop_prev=True),
        # acc[0..N) = inp[0..N): a 1x1 SUM window
        isa.Conv(mode=ConvMode.SUM, accumulate=0, out_blocks=1, in_blocks=1, kh=1, kw=1, stride_h=1,
                 stride_w=1, out_h=1, out_w=N, acc=0, inp=0, wgt=0, inp_row=N, inp_block=N),
        isa.Marker(id=2),
        RQ,
        ADD,
        isa.Marker(id=3),
        isa.Store(sram=0, dram=Y, blocks=1, rows=1, cols=2 * N, row_stride=0, block_stride=0, pop_prev=True,
                  push_prev=True),
        isa.Marker(id=1, pop_next=True, push_prev=True),
        # REQUANT's output back as an input: inp[N..2N)
        isa.Load(buffer=Buffer.INP, sram=N, dram=Y, cols=N, pop_next=True, push_next=True, **load),
        isa.Add(out=2 * N, a=N, b=0, b_param=0, param=8, blocks=1, count=N, pop_prev=True, push_next=True,
                **ADD_Q),
        isa.Store(sram=2 * N, dram=Z, blocks=1, rows=1, cols=N, row_stride=0, block_stride=0, pop_prev=True),
        isa.Finish(),
    ]
    image = [(X, x.tobytes()), (P_RQ, rq_params.tobytes()), (P_ADD, add_params.tobytes()),
             (PROGRAM_AT, isa.encode_program(program))]
    requant = np.concatenate([numerics.requantize(x[blk * RQ.count:(blk + 1) * RQ.count].astype(np.int64),
                                                  bias[blk], mult[blk], shift[blk], RQ.zero_point, RQ.act_min,
                                                  RQ.act_max) for blk in range(RQ.blocks)])
    params = {k: add_p[k] for k in isa.Add.PARAMS}
    doubled = numerics.add(x, x, **params, **ADD_Q)
    added = numerics.add(requant, x, **params, **ADD_Q)
    job = Job("requant_then_add", image, PROGRAM_AT, len(program), [(Y, 2 * N * B), (Z, N * B)],
              max_cycles=50_000)
    want = [np.concatenate([requant, doubled]), added]
    return job, [w.astype(np.int8).tobytes() for w in want]


@pytest.fixture(scope="module")
def runs():
    jobs, want = zip(*(_program(np.random.default_rng(seed)) for seed in range(3)), strict=True)
    return list(zip(jobs, want, run_jobs(CFG, list(jobs)), strict=True))


def test_requant_output_read_back_by_add_is_exact(runs):
    for job, want, res in runs:
        assert res.error is None and res.fault is None, f"{job.name}: {res.error or res.fault}"
        iss = ISS(CFG)
        for addr, data in job.image:
            iss.write(addr, data)
        iss.run(job.insn_addr, job.insn_count)
        for (addr, size), got, expected in zip(job.regions, res.regions, want, strict=True):
            assert got == expected, f"RTL at {addr:#x} differs from numerics"
            assert bytes(iss.read(addr, size)) == expected, f"ISS at {addr:#x} differs from numerics"


def test_vector_instructions_take_their_modelled_cycles(runs):
    """Between the markers around REQUANT and the ADD after it (no token waits, the queue full), the
    RTL's cycles are the ISS's, which are the cycle model's."""
    for job, _, res in runs:
        iss = ISS(CFG)
        for addr, data in job.image:
            iss.write(addr, data)
        stats = iss.run(job.insn_addr, job.insn_count)

        def between(trace):
            at = {m: v for m, v in trace}
            return at[3]["cycles"] - at[2]["cycles"]

        # ADD issues in the cycle REQUANT is done, the MARKER in the cycle ADD is done
        compute, start = ComputeIssue(CFG), 0
        for insn in (isa.Marker(id=2), RQ, ADD, isa.Marker(id=3)):
            start = compute.earliest(insn)
            compute.run(insn, start)
        modelled = start
        assert modelled == sum(insn_cycles(CFG, insn) for insn in (isa.Marker(id=2), RQ, ADD)) - 2
        assert between(res.trace) == between(stats.trace) == modelled


BOUNDS = {
    # the compute unit's range checks take their products from the queue head as it issues
    "conv_acc_overrun": isa.Conv(mode=ConvMode.MAC, accumulate=0, out_blocks=2, in_blocks=1, kh=1, kw=1,
                                 stride_h=1, stride_w=1, out_h=2, out_w=3, acc=CFG.acc_depth - 11, inp=0,
                                 wgt=0, inp_row=3, inp_block=6),
    "conv_inp_overrun": isa.Conv(mode=ConvMode.SUM, accumulate=0, out_blocks=1, in_blocks=2, kh=3, kw=3,
                                 stride_h=2, stride_w=1, out_h=2, out_w=2, acc=0, inp=CFG.inp_depth - 30,
                                 wgt=0, inp_row=4, inp_block=15),
    "requant_out_overrun": isa.Requant(out=CFG.out_depth - 5, acc=0, param=0, blocks=2, count=3, zero_point=0,
                                       act_min=-128, act_max=127, rounding=Rounding.FIXED),
    "add_b_overrun": isa.Add(out=0, a=0, b=CFG.inp_depth - 5, b_param=0, param=0, blocks=2, count=3,
                             **ADD_Q),
}


@pytest.mark.parametrize("name", list(BOUNDS))
def test_compute_range_faults_match_the_iss(name):
    program = [isa.Marker(id=1), isa.Marker(id=2), BOUNDS[name], isa.Finish()]
    job = Job(name, [(PROGRAM_AT, isa.encode_program(program))], PROGRAM_AT, len(program), [],
              max_cycles=20_000)
    (res,) = run_jobs(CFG, [job])
    iss = ISS(CFG)
    iss.write(PROGRAM_AT, isa.encode_program(program))
    with pytest.raises(NPUFault) as fault:
        iss.run(PROGRAM_AT, len(program))
    assert res.fault == (isa.ErrorCode.SRAM_RANGE, 2) == (fault.value.code, fault.value.pc)
