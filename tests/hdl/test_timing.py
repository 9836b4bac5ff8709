"""hdl/timing.py's DMA model: a DMA pays dram_latency once and then streams a beat per cycle when
dram_outstanding bursts in flight cover a burst's time in flight; with one burst in flight every
burst pays the latency (what the RTL measured before dram_outstanding); in between, one wait per
dram_outstanding bursts.  The constants are the RTL's (tests/sim/test_rtl.py holds the whole
programs to it)."""

import pytest

from softnpu.hdl import isa, timing
from softnpu.hdl.config import preset

DEFAULT = preset("default")


def test_streaming_pays_the_latency_once():
    rows, row_bytes = 16, 16 * DEFAULT.dram_bus_bytes * DEFAULT.dram_max_burst     # 16 rows of 256 beats
    beats = rows * row_bytes // DEFAULT.dram_bus_bytes
    cycles = timing.dma_cycles(DEFAULT, rows, row_bytes)
    assert beats + DEFAULT.dram_latency <= cycles <= beats + DEFAULT.dram_latency + 8


def test_one_burst_in_flight_pays_the_latency_per_burst():
    one = DEFAULT.replace(dram_outstanding=1)
    bursts, beats = 64, 64 * DEFAULT.dram_max_burst
    cycles = timing.dma_cycles(one, 4, beats // 4 * DEFAULT.dram_bus_bytes)
    assert cycles >= beats + bursts * DEFAULT.dram_latency


@pytest.mark.parametrize("write", [False, True])
def test_more_bursts_in_flight_never_cost_more(write):
    costs = [timing.dma_cycles(DEFAULT.replace(dram_outstanding=n), 8, 1000 * DEFAULT.dram_bus_bytes, write)
             for n in (1, 2, 3, 4, 8)]
    assert costs == sorted(costs, reverse=True)
    assert costs[-1] == costs[-2], "4 bursts of 16 beats already cover 32 cycles of latency"


# -- the compute unit: a CONV beside a REQUANT (hdl/compute_unit.py) ------------------------------
def _conv(acc, out_w=8, **flags):
    return isa.Conv(mode=isa.ConvMode.MAC, out_blocks=1, in_blocks=1, kh=1, kw=1, stride_h=1, stride_w=1,
                    out_h=1, out_w=out_w, acc=acc, inp=0, wgt=0, inp_row=out_w, inp_block=out_w, **flags)


def _requant(acc, count=64, **flags):
    return isa.Requant(out=0, acc=acc, param=0, blocks=2, count=count, zero_point=0, act_min=-128,
                       act_max=127, **flags)


def _schedule(program):
    compute, spans = timing.ComputeIssue(DEFAULT), []
    for insn in program:
        start = compute.earliest(insn)
        spans.append((start, compute.run(insn, start)))
    return spans


def test_a_conv_on_other_accumulators_starts_beside_the_requant():
    (rq_start, rq_end), (conv_start, conv_end) = _schedule([_requant(0), _conv(128)])
    assert conv_start == rq_start + timing.ISSUE
    assert conv_end == conv_start + timing.insn_cycles(DEFAULT, _conv(128)) < rq_end


def test_a_conv_into_the_accumulators_the_requant_reads_waits_for_its_done():
    (_, rq_end), (conv_start, conv_end) = _schedule([_requant(0), _conv(100)])
    assert conv_start < rq_end                    # issued, then held in decode
    assert conv_end == rq_end - 2 + timing.insn_cycles(DEFAULT, _conv(100))


def test_add_and_mul_never_overlap_a_conv():
    add = isa.Add(out=0, a=0, b=64, b_param=0, param=0, blocks=1, count=64, zero_point=0, act_min=-128,
                  act_max=127)
    assert not timing.overlaps_conv(add, _conv(500))
    (_, add_end), (_, conv_end) = _schedule([add, _conv(500)])
    assert conv_end == add_end - 2 + timing.insn_cycles(DEFAULT, _conv(500))


def test_a_conv_that_pushes_a_token_retires_after_the_requant():
    (_, rq_end), (_, conv_end) = _schedule([_requant(0, push_prev=True), _conv(128, push_prev=True)])
    assert conv_end == rq_end + 1
    (_, rq_end), (_, conv_end) = _schedule([_requant(0), _conv(128)])
    assert conv_end < rq_end


def test_other_instructions_issue_once_the_vector_unit_is_done():
    (_, rq_end), (marker_start, _) = _schedule([_requant(0), isa.Marker(id=1)])
    assert marker_start == rq_end - 1
