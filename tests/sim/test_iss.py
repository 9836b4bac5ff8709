"""sim/iss.py: every instruction against an independent numpy computation, faults, tokens, timing."""

import numpy as np
import pytest

from softnpu.hdl import isa, numerics
from softnpu.hdl.config import preset
from softnpu.hdl.isa import CSR, Buffer, ConvMode, ErrorCode
from softnpu.sim.iss import ISS, NPUFault, insn_cycles

CFG = preset("tiny")
B = CFG.cols
PROGRAM_AT = 0x100000


def _run(iss, program):
    return iss.run_program(isa.encode_program(program), PROGRAM_AT)


def _load_inp(dram, blocks, rows, cols, **pads):
    return isa.Load(buffer=Buffer.INP, sram=0, dram=dram, blocks=blocks, rows=rows, cols=cols,
                    row_stride=cols * B, block_stride=rows * cols * B, **pads)


def test_load_pads_with_pad_value_and_places_rows():
    iss = ISS(CFG)
    x = np.arange(2 * 3 * 4 * B, dtype=np.uint8).view(np.int8).reshape(2, 3, 4, B)
    iss.write(0x1000, x)
    _run(iss, [_load_inp(0x1000, 2, 3, 4, pad_top=1, pad_bottom=2, pad_left=3, pad_right=1,
                         pad_value=-7)])
    tile = iss.machine.inp[:2 * 6 * 8].reshape(2, 6, 8, B)
    expected = np.full((2, 6, 8, B), -7, np.int8)
    expected[:, 1:4, 3:7] = x
    np.testing.assert_array_equal(tile, expected)


def test_load_reads_rows_with_stride_subwindow():
    iss = ISS(CFG)
    img = np.random.default_rng(1).integers(-128, 128, (1, 10, 10, B), dtype=np.int8)
    iss.write(0, img)
    # rows 2..5, cols 3..8 of a 10x10 plane
    _run(iss, [isa.Load(buffer=Buffer.INP, sram=5, dram=(2 * 10 + 3) * B, blocks=1, rows=4, cols=6,
                        row_stride=10 * B, block_stride=0)])
    np.testing.assert_array_equal(iss.machine.inp[5:5 + 24].reshape(4, 6, B), img[0, 2:6, 3:9])


def test_store_with_channel_offset_writes_concatenation_in_place():
    iss = ISS(CFG)
    h, w = 3, 2
    out = np.random.default_rng(2).integers(-128, 128, (h * w, B), dtype=np.int8)
    iss.machine.out[:h * w] = out
    iss.write(0x4000, np.full(3 * h * w * B, 99, np.uint8))    # a 3-block tensor
    plane = h * w * B
    _run(iss, [isa.Store(sram=0, dram=0x4000 + 1 * plane, blocks=1, rows=h, cols=w, row_stride=w * B,
                         block_stride=plane)])                  # write channel block 1 only
    tensor = iss.read(0x4000, 3 * plane).view(np.int8).reshape(3, h, w, B)
    np.testing.assert_array_equal(tensor[1], out.reshape(h, w, B))
    assert (tensor[0] == 99).all() and (tensor[2] == 99).all()


def _direct_conv(xp, w, stride, out_h, out_w):
    """xp[ci, H, W, lane] (padded), w[co, ci, i, j, out_lane, in_lane] -> acc[co, oh, ow, out_lane]."""
    co_n, ci_n, kh, kw = w.shape[:4]
    acc = np.zeros((co_n, out_h, out_w, B), np.int64)
    for co in range(co_n):
        for ci in range(ci_n):
            for i in range(kh):
                for j in range(kw):
                    win = xp[ci, i:i + stride * out_h:stride, j:j + stride * out_w:stride].astype(np.int64)
                    acc[co] += win @ w[co, ci, i, j].astype(np.int64).T
    return acc


@pytest.mark.parametrize("stride, kh", [(1, 3), (2, 3), (1, 1), (2, 5)])
def test_conv_mac_matches_direct_convolution(stride, kh):
    rng = np.random.default_rng(stride * 10 + kh)
    iss = ISS(CFG)
    ci_n, co_n, hp = 3, 2, 9
    xp = rng.integers(-128, 128, (ci_n, hp, hp, B), dtype=np.int8)
    w = rng.integers(-128, 128, (co_n, ci_n, kh, kh, B, B), dtype=np.int8)
    out = (hp - kh) // stride + 1
    iss.machine.inp[:xp.size // B] = xp.reshape(-1, B)
    iss.machine.wgt[:w.size // (B * B)] = w.reshape(-1, B, B)
    _run(iss, [isa.Conv(mode=ConvMode.MAC, out_blocks=co_n, in_blocks=ci_n, kh=kh, kw=kh, stride_h=stride,
                        stride_w=stride, out_h=out, out_w=out, acc=3, inp=0, wgt=0, inp_row=hp,
                        inp_block=hp * hp)])
    acc = iss.machine.acc[3:3 + co_n * out * out].reshape(co_n, out, out, B)
    np.testing.assert_array_equal(acc, _direct_conv(xp, w, stride, out, out))


def test_conv_accumulate_splits_the_reduction():
    rng = np.random.default_rng(5)
    xp = rng.integers(-128, 128, (4, 4, 4, B), dtype=np.int8)
    w = rng.integers(-128, 128, (1, 4, 1, 1, B, B), dtype=np.int8)
    whole, split = ISS(CFG), ISS(CFG)
    for iss in (whole, split):
        iss.machine.inp[:64] = xp.reshape(-1, B)
        iss.machine.wgt[:4] = w.reshape(-1, B, B)
    base = dict(mode=ConvMode.MAC, out_blocks=1, kh=1, kw=1, stride_h=1, stride_w=1, out_h=4, out_w=4,
                acc=0, inp_row=4, inp_block=16)
    _run(whole, [isa.Conv(in_blocks=4, inp=0, wgt=0, **base)])
    _run(split, [isa.Conv(in_blocks=3, inp=0, wgt=0, **base),
                 isa.Conv(in_blocks=1, inp=48, wgt=3, accumulate=1, **base)])
    np.testing.assert_array_equal(whole.machine.acc[:16], split.machine.acc[:16])


@pytest.mark.parametrize("mode", [ConvMode.SUM, ConvMode.MAX])
def test_conv_window_modes_reduce_per_lane(mode):
    rng = np.random.default_rng(int(mode))
    iss = ISS(CFG)
    xp = rng.integers(-128, 128, (2, 6, 6, B), dtype=np.int8)
    iss.machine.inp[:72] = xp.reshape(-1, B)
    _run(iss, [isa.Conv(mode=mode, out_blocks=1, in_blocks=2, kh=2, kw=2, stride_h=2, stride_w=2,
                        out_h=3, out_w=3, acc=0, inp=0, inp_row=6, inp_block=36)])
    windows = xp.reshape(2, 3, 2, 3, 2, B).astype(np.int64)
    expected = windows.sum(axis=(2, 4)) if mode == ConvMode.SUM else windows.max(axis=(2, 4))
    np.testing.assert_array_equal(iss.machine.acc[:18].reshape(2, 3, 3, B), expected)


def test_requant_uses_per_block_parameters():
    rng = np.random.default_rng(7)
    iss = ISS(CFG)
    acc = rng.integers(-(1 << 20), 1 << 20, (2 * 5, B), dtype=np.int32)
    bias = rng.integers(-5000, 5000, (2, B))
    mult = rng.integers(1 << 30, (1 << 31) - 1, (2, B))
    shift = rng.integers(-12, 2, (2, B))
    iss.machine.acc[:10] = acc
    iss.machine.param[10:16] = np.stack([bias, mult, shift], axis=1).reshape(6, B)
    _run(iss, [isa.Requant(out=4, acc=0, param=10, blocks=2, count=5, zero_point=-3, act_min=-100,
                           act_max=90)])
    expected = numerics.requantize(acc.reshape(2, 5, B), bias[:, None], mult[:, None], shift[:, None],
                                   -3, -100, 90)
    np.testing.assert_array_equal(iss.machine.out[4:14].reshape(2, 5, B), expected)


def test_narrow_rounds_half_away_from_zero():
    iss = ISS(CFG)
    iss.machine.acc[:2] = np.array([[6, -6, 5, -5], [7, -7, 400, -400]][:2], np.int32)[:, :B]
    _run(iss, [isa.Narrow(out=0, acc=0, blocks=1, count=2, divisor=4, act_min=-90, act_max=90)])
    np.testing.assert_array_equal(iss.machine.out[:2], [[2, -2, 1, -1], [2, -2, 90, -90]])


@pytest.mark.parametrize("b_param", [0, 1])
def test_add_follows_tflite_add(b_param):
    rng = np.random.default_rng(11 + b_param)
    iss = ISS(CFG)
    a = rng.integers(-128, 128, (6, B), dtype=np.int8)
    b = rng.integers(-128, 128, (6, B), dtype=np.int8)
    bconst = rng.integers(-128, 128, (2, B))
    p = numerics.add_params(0.05, 3, 0.08, -10, 0.1)
    iss.machine.inp[:6] = a
    iss.machine.inp[6:12] = b
    iss.machine.param[:8] = np.array([p[k] for k in isa.Add.PARAMS])[:, None]
    iss.machine.param[20:22] = bconst
    _run(iss, [isa.Add(out=0, a=0, b=20 if b_param else 6, b_param=b_param, param=0, blocks=2, count=3,
                       zero_point=-2, act_min=-2, act_max=127)])
    b_op = bconst[:, None, :] if b_param else b.reshape(2, 3, B)
    expected = numerics.add(a.reshape(2, 3, B), b_op, **p, zero_point=-2, act_min=-2, act_max=127)
    np.testing.assert_array_equal(iss.machine.out[:6].reshape(2, 3, B), expected)


def test_mul_by_broadcast_constant():
    rng = np.random.default_rng(13)
    iss = ISS(CFG)
    a = rng.integers(-128, 128, (4, B), dtype=np.int8)
    const = rng.integers(-128, 128, (1, B))
    p = numerics.mul_params(0.05, 3, 0.01, 0, 0.02)
    iss.machine.inp[:4] = a
    iss.machine.param[:4] = np.array([p[k] for k in isa.Mul.PARAMS])[:, None]
    iss.machine.param[4] = const[0]
    _run(iss, [isa.Mul(out=0, a=0, b=4, b_param=1, param=0, blocks=1, count=4, zero_point=5,
                       act_min=-128, act_max=127)])
    expected = numerics.mul(a, const, **p, zero_point=5)
    np.testing.assert_array_equal(iss.machine.out[:4], expected)


# -- faults ------------------------------------------------------------------------------------
def test_zeroed_memory_is_an_illegal_opcode_with_its_index():
    iss = ISS(CFG)
    iss.write(PROGRAM_AT, isa.Finish().encode())
    with pytest.raises(NPUFault) as info:
        iss.run(PROGRAM_AT - isa.INSN_BYTES, 2)
    assert info.value.code == ErrorCode.ILLEGAL_OPCODE and info.value.pc == 0
    assert info.value.insn == ".word 0x0" and info.value.addr is None


def test_illegal_field_reports_disassembly():
    bad = isa.Conv(mode=ConvMode.MAX, out_blocks=2, in_blocks=1, kh=1, kw=1, stride_h=1, stride_w=1,
                   out_h=1, out_w=1)
    with pytest.raises(NPUFault, match=r"ILLEGAL_FIELD.*instruction 1 \[conv mode=max") as info:
        _run(ISS(CFG), [isa.Marker(id=1), bad])
    assert info.value.code == ErrorCode.ILLEGAL_FIELD


def test_dma_beyond_device_memory_is_a_dram_range_fault():
    load = isa.Load(buffer=Buffer.INP, dram=CFG.dram_bytes - B, blocks=1, rows=2, cols=1, row_stride=B)
    with pytest.raises(NPUFault, match=r"DRAM_RANGE.*instruction 0 \[load.*address 0x[0-9a-f]+: a DMA") \
            as info:
        _run(ISS(CFG), [load])
    assert info.value.code == ErrorCode.DRAM_RANGE and info.value.pc == 0
    assert info.value.addr == CFG.dram_bytes + B - 1, "the last byte the DMA would touch"
    assert "beyond the device memory" in info.value.detail


def test_unaligned_dma_is_a_dram_align_fault():
    load = isa.Load(buffer=Buffer.INP, dram=CFG.dram_bus_bytes + 1, blocks=1, rows=1, cols=1)
    with pytest.raises(NPUFault, match="DRAM_ALIGN.*dram=0x5.*address 0x5:") as info:
        _run(ISS(CFG), [load])
    assert info.value.code == ErrorCode.DRAM_ALIGN and info.value.addr == 5


def test_conv_beyond_input_scratchpad_is_an_sram_range_fault():
    conv = isa.Conv(mode=ConvMode.SUM, out_blocks=1, in_blocks=1, kh=1, kw=1, stride_h=1, stride_w=1,
                    out_h=1, out_w=2, inp=CFG.inp_depth - 1, inp_row=1, inp_block=1)
    with pytest.raises(NPUFault, match="SRAM_RANGE.*beyond a scratchpad") as info:
        _run(ISS(CFG), [conv])
    assert info.value.code == ErrorCode.SRAM_RANGE and info.value.addr is None
    assert "inp entries" in info.value.detail


def test_missing_token_is_a_deadlock_naming_the_waiting_unit():
    with pytest.raises(NPUFault, match=r"DEADLOCK.*instruction 0 \[marker id=1 pop_prev\]: a token") as info:
        _run(ISS(CFG), [isa.Marker(id=1, pop_prev=True), isa.Finish()])
    assert info.value.code == ErrorCode.DEADLOCK
    assert "compute waits at instruction 0" in info.value.detail


def test_csr_start_reports_done_or_error():
    iss = ISS(CFG)
    count = iss.load_program(PROGRAM_AT, isa.encode_program([isa.Marker(id=3), isa.Finish()]))
    iss.write_csr(CSR.INSN_ADDR, PROGRAM_AT)
    iss.write_csr(CSR.INSN_COUNT, count)
    iss.write_csr(CSR.IRQ_ENABLE, 1)
    iss.write_csr(CSR.CTRL, 1)
    assert iss.read_csr(CSR.STATUS) == 0b010 and iss.irq
    assert iss.read_csr(CSR.TRACE_COUNT) == 1 and iss.read_csr(CSR.TRACE) == 3
    assert iss.read_csr(CSR.COUNTERS) == iss.last_stats.cycles
    iss.write_csr(CSR.CTRL, 2)
    assert iss.read_csr(CSR.STATUS) == 0
    iss.write_csr(CSR.INSN_ADDR, 0)          # zeroed memory
    iss.write_csr(CSR.CTRL, 1)
    assert iss.read_csr(CSR.STATUS) == 0b110
    assert iss.read_csr(CSR.ERROR) == ErrorCode.ILLEGAL_OPCODE and iss.read_csr(CSR.ERROR_PC) == 0


# -- tokens and timing --------------------------------------------------------------------------
def _tiles(n_tiles, double_buffered):
    """n tiles of load -> conv -> requant -> store; double buffering uses two buffer halves."""
    program = []
    for t in range(n_tiles):
        half = t % 2 if double_buffered else 0
        first_use = t < (2 if double_buffered else 1)
        program.append(isa.Load(buffer=Buffer.INP, sram=half * 256, dram=0x1000, blocks=1, rows=8, cols=8,
                                row_stride=8 * B, pop_next=not first_use, push_next=True))
        program.append(isa.Conv(mode=ConvMode.SUM, out_blocks=1, in_blocks=1, kh=3, kw=3, stride_h=1,
                                stride_w=1, out_h=6, out_w=6, acc=half * 64, inp=half * 256, inp_row=8,
                                inp_block=64, pop_prev=True, push_prev=True,
                                pop_next=not first_use))
        program.append(isa.Narrow(out=half * 64, acc=half * 64, blocks=1, count=36, divisor=9,
                                  act_min=-128, act_max=127, push_next=True))
        program.append(isa.Store(sram=half * 64, dram=0x8000 + t * 36 * B, blocks=1, rows=6, cols=6,
                                 row_stride=6 * B, pop_prev=True, push_prev=True))
    return program + [isa.Finish()]


def test_double_buffering_overlaps_units_and_counters_add_up():
    single = _run(ISS(CFG), _tiles(6, double_buffered=False))
    double = _run(ISS(CFG), _tiles(6, double_buffered=True))
    assert double.cycles < single.cycles
    for stats, program in ((single, _tiles(6, False)), (double, _tiles(6, True))):
        assert stats.counters["mac_active"] == sum(i.array_cycles for i in program if isinstance(i, isa.Conv))
        # the compute unit's busy cycles: its instructions' spans, which overlap where a tile's
        # NARROW runs beside the next tile's CONV (double-buffered: other accumulators)
        spans = sum(insn_cycles(CFG, i) for i in program if i.QUEUE == isa.Queue.COMPUTE)
        if stats is single:
            assert stats.counters["compute_busy"] == spans
        else:
            assert stats.counters["compute_busy"] < spans
        assert stats.counters["dram_write_bytes"] == 6 * 36 * B
        assert stats.cycles >= stats.counters["load_busy"]


def test_results_do_not_depend_on_buffering():
    a, b = ISS(CFG), ISS(CFG)
    image = np.random.default_rng(3).integers(0, 256, 64 * B, dtype=np.uint8)
    for iss in (a, b):
        iss.write(0x1000, image)
    _run(a, _tiles(4, False))
    _run(b, _tiles(4, True))
    np.testing.assert_array_equal(a.read(0x8000, 4 * 36 * B), b.read(0x8000, 4 * 36 * B))


def test_token_queue_full_stalls_instead_of_dropping():
    depth = CFG.token_queue_depth
    loads = [isa.Load(buffer=Buffer.INP, sram=i, dram=0, blocks=1, rows=1, cols=1, push_next=True)
             for i in range(depth + 3)]
    computes = [isa.Marker(id=i, pop_prev=True) for i in range(depth + 3)]
    stats = _run(ISS(CFG), loads + computes + [isa.Finish()])
    assert [m for m, _ in stats.trace] == list(range(depth + 3))


def test_marker_snapshots_are_monotonic():
    stats = _run(ISS(CFG), [isa.Marker(id=1), *_tiles(2, True)[:-1], isa.Marker(id=2), isa.Finish()])
    (_, first), (_, second) = stats.trace
    assert second["cycles"] > first["cycles"] and second["compute_busy"] > first["compute_busy"]
