"""sim/iss_kernels.py against hdl/numerics.py (the specification) and the fast ISS against the
reference ISS (`ISS(config, fast=False)`): the same bits on random programs, random tiles and the
extreme values of every operand."""

import numba
import numpy as np
import pytest

from softnpu.hdl import isa, numerics
from softnpu.hdl.config import preset
from softnpu.hdl.isa import Buffer
from softnpu.sim import iss_kernels
from softnpu.sim.iss import ISS
from tests.sim.programs import random_program

I32 = [numerics.INT32_MIN, numerics.INT32_MIN + 1, -(1 << 30), -1, 0, 1, 1 << 30, numerics.INT32_MAX]
SHIFTS = [-40, -31, -30, -17, -1, 0, 1, 7, 30, 31, 40]        # beyond [-31, 30]: clamped by the unit


def _lanes(rng, values, shape):
    """int32 lanes mixing the given extreme values and random ones."""
    out = rng.integers(numerics.INT32_MIN, numerics.INT32_MAX, shape, dtype=np.int64, endpoint=True)
    pick = rng.random(shape) < 0.5
    out[pick] = rng.choice(np.array(values, np.int64), int(pick.sum()))
    return out.astype(np.int32)


@pytest.mark.parametrize("seed", range(4))
def test_requantize_kernel_equals_numerics(seed):
    rng = np.random.default_rng(seed)
    blocks, count, lanes = 3, 40, 16
    acc = _lanes(rng, I32, (blocks, count, lanes))
    params = np.stack([_lanes(rng, I32, (blocks, lanes)), _lanes(rng, I32, (blocks, lanes)),
                       rng.choice(SHIFTS, (blocks, lanes)).astype(np.int32)], axis=1)
    # the one product that saturates: INT32_MIN * INT32_MIN (lane 0 of block 0)
    params[0, :, 0] = [0, numerics.INT32_MIN, 0]
    acc[0, :3, 0] = [numerics.INT32_MIN, numerics.INT32_MIN + 1, numerics.INT32_MAX]
    zero_point, act_min, act_max = int(rng.integers(-128, 128)), -128 + seed * 10, 127 - seed * 20
    out = np.empty(acc.shape, np.int8)
    iss_kernels.requantize(acc, params, out, zero_point, act_min, act_max)
    p = params[:, :, None, :]
    expected = numerics.requantize(acc, p[:, 0], p[:, 1], np.clip(p[:, 2], -31, 30), zero_point, act_min,
                                   act_max)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("b_param", [False, True])
@pytest.mark.parametrize("kind", ["add", "mul"])
@pytest.mark.parametrize("seed", range(3))
def test_add_and_mul_kernels_equal_numerics(kind, b_param, seed):
    rng = np.random.default_rng(seed)
    blocks, count, lanes = 8, 300, 8     # large: input stages by table; b_param: output by table
    a = rng.integers(-128, 128, (blocks, count, lanes), dtype=np.int8)
    a[0, :4] = [[-128], [127], [0], [-1]]
    if b_param:
        b = _lanes(rng, I32 + list(range(-130, 130, 7)), (blocks, 1, lanes))
    else:
        b = rng.integers(-128, 128, a.shape, dtype=np.int8)
    names = isa.Add.PARAMS if kind == "add" else isa.Mul.PARAMS
    offsets = [-255, -128, 0, 127, 255] + I32
    params = np.stack([rng.choice(SHIFTS, lanes).astype(np.int32) if name.endswith("_shift") else
                       _lanes(rng, offsets if name.endswith("_offset") else I32, lanes) for name in names])
    if seed == 0:          # TFLite's own parameters too: realistic multipliers and shifts
        real = (numerics.add_params if kind == "add" else numerics.mul_params)(0.05, 3, 0.07, -9, 0.1)
        params[:, :lanes // 2] = np.array([real[name] for name in names], np.int32)[:, None]
    if kind == "mul" and b_param:     # (-128 + 0) * (2**24 + 0) = INT32_MIN, times INT32_MIN: saturates
        params[:, 0] = [0, 0, numerics.INT32_MIN, 0]
        a[0, 0, 0], b[0, 0, 0] = -128, 1 << 24
    zero_point, act_min, act_max = -7, -128, 100
    out = np.empty(a.shape, np.int8)
    kernel = iss_kernels.add if kind == "add" else iss_kernels.mul
    kernel(a, b, b_param, params, out, zero_point, act_min, act_max, iss_kernels.binary_tables())
    p = {name: np.clip(v, -31, 30) if name.endswith("_shift") else v
         for name, v in zip(names, params.astype(np.int64), strict=True)}
    function = numerics.add if kind == "add" else numerics.mul
    expected = function(a, b, **p, zero_point=zero_point, act_min=act_min, act_max=act_max)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("kind", ["add", "mul"])
@pytest.mark.parametrize("seed", range(6))
def test_add_and_mul_with_per_tensor_parameters_equal_numerics_on_every_pair(kind, seed):
    """The same parameters in every lane: the kernel looks the output up in a 256 x 256 table of
    (a, b).  All 65536 pairs, the parameters TFLite derives (seed 0) or random and extreme ones."""
    rng = np.random.default_rng(seed)
    names = isa.Add.PARAMS if kind == "add" else isa.Mul.PARAMS
    if seed == 0:
        real = (numerics.add_params if kind == "add" else numerics.mul_params)(0.05, 3, 0.07, -9, 0.1)
        lane = np.array([real[name] for name in names], np.int64)
    else:
        offsets = [-255, -128, 0, 127, 255] + I32
        lane = np.array([rng.choice(SHIFTS) if name.endswith("_shift") else
                         rng.choice(offsets if name.endswith("_offset") else I32) for name in names],
                        np.int64)
    if kind == "mul" and seed == 1:      # (-128) * (-128) << 17 wraps to INT32_MIN, times INT32_MIN
        lane[:] = [0, 0, numerics.INT32_MIN, 17]
    lanes = 16
    params = np.repeat(lane.astype(np.int32)[:, None], lanes, axis=1)
    bits = np.arange(65536)
    a = (bits >> 8).astype(np.uint8).view(np.int8).reshape(4096, 1, lanes)
    b = (bits & 0xFF).astype(np.uint8).view(np.int8).reshape(4096, 1, lanes)
    zero_point, act_min, act_max = int(rng.integers(-128, 128)), -128 + seed, 127 - 3 * seed
    cache = iss_kernels.binary_tables(2)
    kernel = iss_kernels.add if kind == "add" else iss_kernels.mul
    p = {name: np.clip(v, -31, 30) if name.endswith("_shift") else v
         for name, v in zip(names, params.astype(np.int64), strict=True)}
    function = numerics.add if kind == "add" else numerics.mul
    expected = function(a, b, **p, zero_point=zero_point, act_min=act_min, act_max=act_max)
    for _ in range(2):                   # built, then found in the cache
        out = np.empty(a.shape, np.int8)
        kernel(a, b, False, params, out, zero_point, act_min, act_max, cache)
        np.testing.assert_array_equal(out, expected)
    assert cache[0][:, 0].sum() == 1, "the second run builds no second table"


def test_binary_tables_are_kept_by_their_parameters():
    """Tables cached by parameters: another zero point, clamp or multiplier is another table; a full
    cache replaces its oldest one; a lane that differs takes the computed path, not a table."""
    names = isa.Add.PARAMS
    real = [numerics.add_params(0.05, 3, 0.07 + k / 100, -9, 0.1) for k in range(3)]
    rng = np.random.default_rng(3)
    a = rng.integers(-128, 128, (2, 64, 16), dtype=np.int8)
    b = rng.integers(-128, 128, a.shape, dtype=np.int8)
    cache = iss_kernels.binary_tables(2)

    def run(params, zero_point=-7, act_min=-128, act_max=127):
        out = np.empty(a.shape, np.int8)
        iss_kernels.add(a, b, False, params, out, zero_point, act_min, act_max, cache)
        p = {name: np.clip(v, -31, 30) if name.endswith("_shift") else v
             for name, v in zip(names, params.astype(np.int64), strict=True)}
        np.testing.assert_array_equal(out, numerics.add(a, b, **p, zero_point=zero_point, act_min=act_min,
                                                        act_max=act_max))

    params = [np.repeat(np.array([r[name] for name in names], np.int32)[:, None], 16, axis=1) for r in real]
    for p, zero_point, act_max in [(params[0], -7, 127), (params[0], 5, 127), (params[0], 5, 100),
                                   (params[1], -7, 127), (params[2], -7, 127), (params[0], -7, 127)]:
        run(p, zero_point, act_max=act_max)
    mixed = params[0].copy()
    mixed[:, 3] = params[1][:, 3]
    tables = cache[1].copy()
    run(mixed)
    np.testing.assert_array_equal(cache[1], tables)


@pytest.mark.parametrize("window", [(1, 1, 1), (1, 1, 2), (3, 3, 1), (3, 3, 2), (4, 4, 1), (2, 2, 2),
                                    (1, 3, 1)])
@pytest.mark.parametrize("lanes", [16, 8])
def test_im2col_rows_are_the_windows_shifted_to_uint8(window, lanes):
    """im2col_u8 against a strided view of the scratchpad (the reference conv's windows), + 128, in
    the columns from col0 of wider rows (a conv in an accumulation chain); 3x3 windows of 16 lanes
    take the pixel-by-pixel order, the others the row-by-row one."""
    kh, kw, stride = window
    rng = np.random.default_rng(kh * 10 + kw + stride + lanes)
    in_blocks, out_h, out_w = 3, 5, 6
    inp_row = (out_w - 1) * stride + kw + 1
    inp_block = ((out_h - 1) * stride + kh) * inp_row
    first = 7
    inp = rng.integers(-128, 128, (first + in_blocks * inp_block, lanes), dtype=np.int8)
    windows = np.lib.stride_tricks.as_strided(
        inp[first:], shape=(in_blocks, out_h, out_w, kh, kw, lanes),
        strides=(inp_block * lanes, stride * inp_row * lanes, stride * lanes, inp_row * lanes, lanes, 1))
    expected = windows.transpose(1, 2, 0, 3, 4, 5).reshape(out_h * out_w, -1).view(np.uint8) ^ 0x80
    k = expected.shape[1]
    col0 = 2 * lanes
    x = np.zeros((out_h * out_w, col0 + k + lanes), np.uint8)
    words, x_words = iss_kernels.words(inp, lanes), iss_kernels.words(x, lanes)
    flip = x_words.dtype.type(int("80" * x_words.itemsize, 16))
    per = words.size // inp.shape[0]
    iss_kernels.im2col_u8(words, per, first, in_blocks, out_h, out_w, kh, kw, stride, stride, inp_row,
                          inp_block, x_words, x_words.size // x.shape[0], col0 // x_words.itemsize, flip)
    np.testing.assert_array_equal(x[:, col0:col0 + k], expected)
    assert not x[:, :col0].any() and not x[:, col0 + k:].any()


def test_int8_gemm_is_exact_at_the_extremes_over_the_largest_k():
    """(x + 128) in {0, 255} times w in {-128, 127}, over K = the most terms a conv of the large
    preset can sum (wgt_depth * cols), and beyond: against int64."""
    gemm = iss_kernels.int8_gemm()
    assert gemm is not None, "onnxruntime's int8 GEMM failed its exactness check on this CPU"
    k = preset("large").wgt_depth * preset("large").cols
    rng = np.random.default_rng(0)
    x = np.full((3, k), 0, np.uint8)                 # x = -128 everywhere in row 0
    x[1] = 255                                        # x = 127
    x[2] = rng.choice(np.array([0, 255], np.uint8), k)
    w = np.full((k, 16), -128, np.int8)
    w[:, 8:] = 127
    w[::2, 12:] = -128
    y = np.empty((3, 16), np.int32)
    gemm(3, k, 16).bind(x, w, y)()
    expected = (x.astype(np.int64) - 128) @ w.astype(np.int64)
    assert expected[0, 0] == k * 128 * 128
    np.testing.assert_array_equal(y, expected)


@pytest.mark.parametrize("k", [1, 100, iss_kernels.MAX_GEMM_K])
def test_one_row_product_is_exact_at_the_extremes(k):
    """gemv_u8s8 (the product of a one-pixel conv) against int64: (x + 128) in {0, 255} times w in
    {-128, 127}, sums up to the largest K of the int8 path, and random values."""
    rng = np.random.default_rng(k)
    w = np.full((k, 48), -128, np.int8)
    w[:, 16:32] = 127
    w[:, 32:] = rng.integers(-128, 128, (k, 16), dtype=np.int8)
    for x in (np.zeros((1, k), np.uint8), np.full((1, k), 255, np.uint8),
              rng.integers(0, 256, (1, k), dtype=np.uint8)):
        y = np.full((1, 48), 7, np.int32)
        iss_kernels.gemv_u8s8(x, w, y)
        np.testing.assert_array_equal(y, (x.astype(np.int64) - 128) @ w.astype(np.int64))


@pytest.mark.parametrize("config", ["tiny", "default"])
@pytest.mark.parametrize("seed", range(8))
def test_fast_iss_equals_the_reference_iss_on_random_programs(config, seed):
    cfg = preset(config)
    kinds = [["conv"], ["fc"], ["add"], ["mul"], ["conv", "add"], ["mean"], ["maxpool", "avgpool"],
             None][seed]
    job = random_program(cfg, 900 + seed, kinds=kinds)
    results, names = [], []
    for fast in (True, False):
        iss = ISS(cfg, fast=fast)
        for addr, data in job.image:
            iss.write(addr, data)
        stats = iss.run(job.insn_addr, job.insn_count)
        names.append({op.__name__ for op in next(iter(iss._plans.values())).ops})
        results.append(([bytes(iss.read(a, s)) for a, s in job.regions], stats.counters))
    if "conv_mac" in names[1]:          # the fast ISS took the int8 GEMM, not the float32 path
        assert "conv_mac" not in names[0] and any(name.startswith("conv_mac_int8") for name in names[0])
    assert results[0] == results[1]
    assert any(any(region) for region in results[0][0]), "all-zero outputs would prove nothing"


def test_fast_conv_repacks_weights_that_change_between_runs():
    """A conv op caches its packed weights while the scratchpad holds the same entries: new weights
    (same program) must be packed again."""
    cfg = preset("default").replace(dram_bytes=1 << 20)
    conv = isa.Conv(mode=isa.ConvMode.MAC, out_blocks=2, in_blocks=3, kh=1, kw=1, stride_h=1, stride_w=1,
                    out_h=2, out_w=2, acc=0, inp=0, wgt=0, inp_row=2, inp_block=4)
    rng = np.random.default_rng(5)
    program = isa.encode_program([conv, isa.Finish()])
    fast, reference = ISS(cfg), ISS(cfg, fast=False)
    weights = [rng.integers(-128, 128, (6, 16, 16), dtype=np.int8) for _ in range(2)]
    for w in (weights[0], weights[0], weights[1]):            # the same weights twice, then new ones
        x = rng.integers(-128, 128, (12, 16), dtype=np.int8)
        for iss in (fast, reference):
            iss.machine.inp[:12] = x
            iss.machine.wgt[:6] = w
            iss.run_program(program, 0x1000)
        np.testing.assert_array_equal(fast.machine.acc[:8], reference.machine.acc[:8])


def _weights_program(cfg, wgt_at: int, inp_at: int, entries: int, store_at: int | None = None) -> bytes:
    """LOAD weights and input from device memory, a MAC CONV of 2 output blocks over 3 input blocks
    (1x1, 2x2 pixels) into acc[0:8], then, if `store_at`, a STORE of out[0:2] to device memory."""
    conv = isa.Conv(mode=isa.ConvMode.MAC, out_blocks=2, in_blocks=3, kh=1, kw=1, stride_h=1, stride_w=1,
                    out_h=2, out_w=2, acc=0, inp=0, wgt=0, inp_row=2, inp_block=4, pop_prev=True)
    wgt_bytes = cfg.entry_bytes("wgt")
    program = [isa.Load(buffer=Buffer.WGT, sram=0, dram=wgt_at, blocks=1, rows=1, cols=entries,
                        row_stride=entries * wgt_bytes, block_stride=entries * wgt_bytes),
               isa.Load(buffer=Buffer.INP, sram=0, dram=inp_at, blocks=1, rows=1, cols=12, row_stride=12 * 16,
                        block_stride=12 * 16, push_next=True), conv]
    if store_at is not None:
        program.append(isa.Store(sram=0, dram=store_at, blocks=1, rows=1, cols=2, row_stride=32,
                                 block_stride=32))
    return isa.encode_program(program + [isa.Finish()])


def test_fast_conv_repacks_weights_loaded_from_memory_that_anything_rewrote():
    """A conv whose weights a LOAD brings from device memory skips even comparing them while nothing
    wrote there since its last run; a host write, another program's STORE, or its own program's
    STORE into those bytes, and it computes with the new ones."""
    cfg = preset("default").replace(dram_bytes=1 << 20)
    wgt_at, inp_at = 0x10000, 0x20000
    entries = 6
    rng = np.random.default_rng(7)
    fast, reference = ISS(cfg), ISS(cfg, fast=False)
    program = _weights_program(cfg, wgt_at, inp_at, entries)
    rewrite_own = _weights_program(cfg, wgt_at, inp_at, entries, store_at=wgt_at + 64)
    # another program: a STORE of out[0:2] over the weights
    other = isa.encode_program([isa.Store(sram=0, dram=wgt_at + 256, blocks=1, rows=1, cols=2, row_stride=32,
                                          block_stride=32), isa.Finish()])

    def run(code, at):
        for iss in (fast, reference):
            iss.run_program(code, at)
        np.testing.assert_array_equal(fast.machine.acc[:8], reference.machine.acc[:8])

    weights = rng.integers(-128, 128, entries * cfg.entry_bytes("wgt"), dtype=np.int8)
    x = rng.integers(-128, 128, 12 * 16, dtype=np.int8)
    for iss in (fast, reference):
        iss.write(wgt_at, weights)
        iss.write(inp_at, x)
    run(program, 0x1000)
    run(program, 0x1000)
    watches = list(fast.machine._weight_watches)
    assert watches and all(w.clean[0] for w in watches)
    assert any(len(w.starts) for w in watches), "the conv's weights are watched"
    for step in ("host", "other", "own"):
        new = rng.integers(-128, 128, 32, dtype=np.int8)
        for iss in (fast, reference):
            iss.machine.out[:2] = new.reshape(2, 16)
            if step == "host":
                iss.write(wgt_at + 100, new)
            elif step == "other":
                iss.run_program(other, 0x2000)
        if step == "own":                 # stores into its weights after loading them, for the next run
            run(rewrite_own, 0x3000)
        run(program if step != "own" else rewrite_own, 0x1000 if step != "own" else 0x3000)
        assert fast.machine.acc[:8].any()


def test_matmul_integer_model_is_a_model_onnxruntime_loads():
    """The hand-written ONNX bytes: a session of the named shape whose result is exact."""
    gemm = iss_kernels.Int8Gemm(2, 5, 3)
    inputs = {i.name: (i.type, i.shape) for i in gemm.session.get_inputs()}
    assert inputs == {"A": ("tensor(uint8)", [2, 5]), "B": ("tensor(int8)", [5, 3])}
    x = np.arange(10, dtype=np.uint8).reshape(2, 5) * 25
    w = np.arange(-7, 8, dtype=np.int8).reshape(5, 3)
    y = np.empty((2, 3), np.int32)
    gemm.bind(x, w, y)()
    np.testing.assert_array_equal(y, (x.astype(np.int64) - 128) @ w)


@pytest.mark.parametrize("divisor", [1, 2, 3, 9, 49, 1 << 20, numerics.INT32_MAX])
def test_narrow_kernel_equals_numerics(divisor):
    rng = np.random.default_rng(divisor % 1000)
    acc = _lanes(rng, I32 + [divisor // 2, -(divisor // 2), divisor, -divisor, 3 * divisor // 2], (50, 16))
    out = np.empty(acc.shape, np.int8)
    iss_kernels.narrow(acc, divisor, out, -100, 120)
    np.testing.assert_array_equal(out, numerics.pool_output(acc, divisor, -100, 120))


@pytest.mark.parametrize("mode", [isa.ConvMode.SUM, isa.ConvMode.MAX])
@pytest.mark.parametrize("accumulate", [0, 1])
def test_window_kernels_equal_the_reference(mode, accumulate):
    """SUM and MAX windows (stride 2, 3x3, two blocks) on the fast and reference ISS, on top of
    accumulators at the int32 extremes (SUM wraps)."""
    cfg = preset("tiny")
    rng = np.random.default_rng(int(mode) * 2 + accumulate)
    conv = isa.Conv(mode=mode, accumulate=accumulate, out_blocks=1, in_blocks=2, kh=3, kw=3, stride_h=2,
                    stride_w=2, out_h=3, out_w=3, acc=5, inp=3, wgt=0, inp_row=7, inp_block=49)
    inp = rng.integers(-128, 128, (120, cfg.cols), dtype=np.int8)
    inp[3:10] = -128
    acc = _lanes(rng, I32, (40, cfg.rows))
    results = []
    for fast in (True, False):
        iss = ISS(cfg, fast=fast)
        iss.machine.inp[:120] = inp
        iss.machine.acc[:40] = acc
        iss.run_program(isa.encode_program([conv, isa.Finish()]), 0x1000)
        results.append(iss.machine.acc[:40].copy())
    np.testing.assert_array_equal(results[0], results[1])
    assert not np.array_equal(results[0], acc)


def test_without_an_exact_int8_gemm_the_fast_iss_multiplies_in_float32(monkeypatch):
    """onnxruntime missing, or inexact on this CPU: CONV takes numerics.int_matmul_f32, same bits."""
    monkeypatch.setattr(iss_kernels, "int8_gemm", lambda: None)
    cfg = preset("default")
    job = random_program(cfg, 905, kinds=["conv"])
    results, names = [], []
    for fast in (True, False):
        iss = ISS(cfg, fast=fast)
        for addr, data in job.image:
            iss.write(addr, data)
        iss.run(job.insn_addr, job.insn_count)
        names.append({op.__name__ for op in next(iter(iss._plans.values())).ops})
        results.append([bytes(iss.read(a, s)) for a, s in job.regions])
    assert "conv_mac" in names[0] and not any(name.startswith("conv_mac_int8") for name in names[0])
    assert results[0] == results[1]


def test_accumulation_chains_join_into_one_gemm_and_equal_the_reference():
    """Convs into the same accumulators join into one GEMM up to an op that reads them (REQUANT), with
    LOADs between members overwriting the inputs and weights an earlier member read, and a second
    chain open at the same time: the same accumulators and outputs as the reference ISS."""
    cfg = preset("default").replace(dram_bytes=1 << 20)
    conv = dict(mode=isa.ConvMode.MAC, out_blocks=2, in_blocks=2, kh=1, kw=1, stride_h=1, stride_w=1, out_h=2,
                out_w=2, inp=0, wgt=0, inp_row=2, inp_block=4)
    other = dict(conv, out_blocks=1, in_blocks=3, inp=16, wgt=16, inp_block=4)
    a = [isa.Conv(**conv, acc=0, accumulate=int(i > 0), push_prev=int(i == 0), pop_prev=int(i == 1))
         for i in range(5)]
    b = [isa.Conv(**other, acc=100, accumulate=i) for i in range(2)]
    loads = [isa.Load(buffer=isa.Buffer.INP, sram=0, dram=0x10000, blocks=1, rows=1, cols=8, pop_next=1),
             isa.Load(buffer=isa.Buffer.WGT, sram=0, dram=0x20000, blocks=1, rows=1, cols=4, push_next=1)]
    requant = isa.Requant(out=0, acc=0, param=0, blocks=2, count=4, zero_point=3, act_min=-128, act_max=127)
    program = isa.encode_program([a[0], *loads, a[1], b[0], a[2], b[1], requant, a[3], a[4], isa.Finish()])
    rng = np.random.default_rng(11)
    dram = {0x10000: rng.integers(0, 256, 8 * 16, dtype=np.uint8),
            0x20000: rng.integers(0, 256, 4 * 256, dtype=np.uint8)}
    inp = rng.integers(-128, 128, (40, 16), dtype=np.int8)
    wgt = rng.integers(-128, 128, (40, 16, 16), dtype=np.int8)
    params = np.stack([rng.integers(-1000, 1000, (2, 16)), rng.integers(1 << 30, 1 << 31, (2, 16)),
                       rng.integers(-12, -6, (2, 16))], axis=1).astype(np.int32).reshape(6, 16)
    results, names = [], []
    for fast in (True, False):
        iss = ISS(cfg, fast=fast)
        for addr, data in dram.items():
            iss.write(addr, data)
        iss.machine.inp[:40], iss.machine.wgt[:40], iss.machine.param[:6] = inp, wgt, params
        for _ in range(2):             # the second run: the cached packed weights of every member
            iss.run_program(program, 0x1000)
        names.append([op.__name__ for op in next(iter(iss._plans.values())).ops])
        results.append((iss.machine.acc[:104].copy(), iss.machine.out[:8].copy()))
    # chains [a0 a1 a2], [b0 b1], [a3 a4]: four members copy operands, three multiply
    assert names[0].count("conv_mac_int8_part") == 4
    assert names[0].count("conv_mac_int8") + names[0].count("conv_mac_int8_direct") == 3
    for fast, reference in zip(*results, strict=True):
        np.testing.assert_array_equal(fast, reference)


def test_bind_enters_the_entry_numba_would_dispatch_to():
    """bind caches compiled entries by what decides each argument's numba type: arrays that differ in
    layout, writeability or dtype, and scalars of other types, get the entry numba's own dispatch picks."""
    base = np.arange(24, dtype=np.int32).reshape(4, 6)
    readonly = base.copy()
    readonly.flags.writeable = False
    variants = [base, base.T, base[:, ::2], readonly, base.astype(np.int64), base[0]]
    for a in variants:
        for n in (3, np.int16(3), 2.5, True):
            call = iss_kernels.bind(_probe, a, n)
            expected = _probe.compile((numba.typeof(a), numba.typeof(n)))
            assert call.func is expected, (a.flags, type(n))
            assert call() == _probe.py_func(a, n)


@numba.njit(cache=False)
def _probe(a, n):
    return a.sum() + n
