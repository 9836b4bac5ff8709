"""sim/iss_plan.py and the ISS's fast paths: a plan replayed on new data equals a fresh run, faults
replay with their prefix, the float32 GEMM of CONV is exact at the extreme values of every config."""

import numpy as np
import pytest

from softnpu.hdl import isa, numerics
from softnpu.hdl.config import PRESETS, preset
from softnpu.hdl.isa import Buffer, ConvMode
from softnpu.sim.iss import ISS, NPUFault
from tests.sim.programs import PROGRAM_AT, random_program

CFG = preset("tiny")
KINDS = ["conv", "fc", "maxpool", "avgpool", "mean", "add", "mul"]


def _with_other_data(job, seed):
    """The job's memory image with every data byte redrawn (the program bytes kept)."""
    rng = np.random.default_rng(seed)
    image = []
    for addr, data in job.image:
        if addr == PROGRAM_AT:
            image.append((addr, data))
        else:
            image.append((addr, rng.integers(0, 256, len(data), dtype=np.uint8).tobytes()))
    return image


def _run(iss, job, image):
    for addr, data in image:
        iss.write(addr, data)
    stats = iss.run(job.insn_addr, job.insn_count)
    return [bytes(iss.read(a, s)) for a, s in job.regions], stats


@pytest.mark.parametrize("seed", range(12))
def test_replayed_plan_on_new_data_equals_a_fresh_run(seed):
    job = random_program(CFG, 200 + seed, kinds=[KINDS[seed % len(KINDS)]] if seed < 7 else None)
    served = ISS(CFG)
    first, _ = _run(served, job, job.image)
    other = _with_other_data(job, seed)
    replayed, replayed_stats = _run(served, job, other)        # the cached plan, new data
    fresh, fresh_stats = _run(ISS(CFG), job, other)
    assert replayed == fresh
    assert replayed_stats.counters == fresh_stats.counters and replayed_stats.trace == fresh_stats.trace
    assert replayed != first, "new data should give new results (or the test proves nothing)"
    assert len(served._plans) == 1


def test_stats_of_a_cached_plan_are_a_copy():
    job = random_program(CFG, 7, kinds=["conv"])
    iss = ISS(CFG)
    _, stats = _run(iss, job, job.image)
    cycles = stats.cycles
    stats.counters["cycles"] = 0
    _, again = _run(iss, job, job.image)
    assert again.cycles == cycles


def test_a_fault_replays_after_the_same_prefix_of_instructions():
    store = isa.Store(sram=0, dram=0x2000, blocks=1, rows=1, cols=1)
    bad = isa.Load(buffer=Buffer.INP, dram=CFG.dram_bytes - CFG.cols, blocks=1, rows=2, cols=1,
                   row_stride=CFG.cols)
    program = isa.encode_program([store, bad, isa.Finish()])
    iss = ISS(CFG)
    for run in range(2):
        iss.machine.out[0] = run + 1
        with pytest.raises(NPUFault, match="DRAM_RANGE") as info:
            iss.run_program(program, PROGRAM_AT)
        assert info.value.pc == 1 and iss.last_fault is info.value
        assert iss.read(0x2000, CFG.rows).tolist() == [run + 1] * CFG.rows    # the store ran first


def test_new_program_bytes_at_the_same_address_get_a_new_plan():
    iss = ISS(CFG)
    first = iss.run_program(isa.encode_program([isa.Marker(id=1), isa.Finish()]), PROGRAM_AT)
    second = iss.run_program(isa.encode_program([isa.Marker(id=2), isa.Finish()]), PROGRAM_AT)
    assert [m for m, _ in first.trace] == [1] and [m for m, _ in second.trace] == [2]


# -- the exactness of CONV's float32 GEMM -------------------------------------------------------
def _largest_k_conv(config, accumulate=0):
    """A MAC conv over the most weight entries the scratchpad holds: K = wgt_depth * cols terms."""
    taps = config.wgt_depth
    return isa.Conv(mode=ConvMode.MAC, accumulate=accumulate, out_blocks=1, in_blocks=taps, kh=1, kw=1,
                    stride_h=1, stride_w=1, out_h=1, out_w=1, acc=0, inp=0, wgt=0, inp_row=1,
                    inp_block=1)


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("x, w", [(-128, -128), (-128, 127), (127, 127)])
def test_conv_at_extreme_values_over_the_largest_k_is_exact(name, x, w):
    config = preset(name)
    conv = _largest_k_conv(config)
    k = config.wgt_depth * config.cols
    iss = ISS(config.replace(dram_bytes=1 << 20))
    iss.machine.inp[:config.wgt_depth] = x
    iss.machine.wgt[:config.wgt_depth] = w
    iss.run_program(isa.encode_program([conv]), 0)
    # tiny: exactly one float32 chunk, whose sum reaches 2**24; default and large: 16 and 32 chunks
    assert k >= 1024
    assert iss.machine.acc[0].tolist() == [k * x * w] * config.rows


@pytest.mark.parametrize("ci, kh, stride", [(21, 3, 1), (32, 3, 1), (96, 1, 1), (12, 3, 2)])
def test_conv_at_large_values_is_exact(ci, kh, stride):
    """Sums of about 3.5e7 over 1512 to 4608 terms of values near 127 * 127: a float32 sum over more
    than 1024 of them would round (odd values above 2**24).  -128 * -128 everywhere (above) sums
    powers of two, which float32 holds far beyond 2**24, so it can't show this."""
    config = preset("default").replace(dram_bytes=1 << 20)
    rng = np.random.default_rng(ci)
    b = config.cols
    x = rng.integers(100, 128, (ci, kh, kh, b), dtype=np.int8)
    w = rng.integers(100, 128, (1, ci, kh, kh, b, b), dtype=np.int8)
    iss = ISS(config)
    iss.machine.inp[:ci * kh * kh] = x.reshape(-1, b)
    iss.machine.wgt[:ci * kh * kh] = w.reshape(-1, b, b)
    conv = isa.Conv(mode=ConvMode.MAC, out_blocks=1, in_blocks=ci, kh=kh, kw=kh, stride_h=stride,
                    stride_w=stride, out_h=1, out_w=1, acc=0, inp=0, wgt=0, inp_row=kh, inp_block=kh * kh)
    iss.run_program(isa.encode_program([conv]), 0)
    expected = np.einsum("cijl,ocijrl->r", x.astype(np.int64), w.astype(np.int64))
    assert expected.min() > 1 << 24
    np.testing.assert_array_equal(iss.machine.acc[0], expected)


def test_conv_accumulation_wraps_at_32_bits():
    conv = _largest_k_conv(CFG, accumulate=1)
    iss = ISS(CFG)
    iss.machine.inp[:CFG.wgt_depth] = -128
    iss.machine.wgt[:CFG.wgt_depth] = -128
    iss.machine.acc[0] = numerics.INT32_MAX
    iss.run_program(isa.encode_program([conv]), 0)
    expected = numerics.wrap_int32(numerics.INT32_MAX + CFG.wgt_depth * CFG.cols * 128 * 128)
    assert iss.machine.acc[0].tolist() == [int(expected)] * CFG.rows


@pytest.mark.parametrize("k", [1024, 1025, 4096 + 7, 32768])
def test_int_matmul_f32_is_exact_in_chunks(k):
    rng = np.random.default_rng(k)
    x = rng.choice(np.array([-128, 127, -1, 0], np.int8), (5, k))
    w = rng.choice(np.array([-128, 127, 1], np.int8), (k, 3))
    expected = numerics.wrap_int32(x.astype(np.int64) @ w.astype(np.int64))
    got = numerics.int_matmul_f32(x.astype(np.float32), w.astype(np.float32))
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("ci, co, stride, out", [(8, 3, 2, 2), (10, 2, 1, 3), (24, 1, 1, 2), (1, 4, 1, 5)])
def test_conv_mac_over_several_chunks_with_output_blocks_matches_int64(ci, co, stride, out):
    """K = ci*3*3*16 terms (up to four float32 chunks), output blocks, strides 2 and 1, then the same
    conv accumulated on top: against an int64 einsum."""
    config = preset("default").replace(dram_bytes=1 << 20)
    rng = np.random.default_rng(ci * 10 + stride)
    b = config.cols
    kh = 3
    hp = (out - 1) * stride + kh
    iss = ISS(config)
    xp = rng.integers(-128, 128, (ci, hp, hp, b), dtype=np.int8)
    w = rng.integers(-128, 128, (co, ci, kh, kh, b, b), dtype=np.int8)
    iss.machine.inp[:xp.size // b] = xp.reshape(-1, b)
    iss.machine.wgt[:w.size // (b * b)] = w.reshape(-1, b, b)
    fields = dict(mode=ConvMode.MAC, out_blocks=co, in_blocks=ci, kh=kh, kw=kh, stride_h=stride,
                  stride_w=stride, out_h=out, out_w=out, acc=0, inp=0, wgt=0, inp_row=hp, inp_block=hp * hp)
    iss.run_program(isa.encode_program([isa.Conv(**fields), isa.Conv(**fields, accumulate=1)]), 0)
    # win[ci, oh, ow, i, j, lane] = xp[ci, oh*stride + i, ow*stride + j, lane]
    win = np.stack([np.stack([xp[:, i:i + stride * out:stride, j:j + stride * out:stride]
                              for j in range(kh)], axis=3) for i in range(kh)], axis=3)
    once = np.einsum("cyxijl,ocijrl->oyxr", win.astype(np.int64), w.astype(np.int64))
    np.testing.assert_array_equal(iss.machine.acc[:co * out * out].reshape(co, out, out, b), 2 * once)


def test_every_instruction_has_semantics():
    from softnpu.sim.iss_exec import _HANDLERS
    assert set(_HANDLERS) == set(isa.INSTRUCTIONS)


# -- ADD's per-tensor input stage as a 256-entry table -----------------------------------------
@pytest.mark.parametrize("seed", range(6))
def test_add_table_lookup_equals_the_computed_stage(seed):
    """int8 inputs with per-tensor parameters take the table; int16 inputs (same values) and
    per-lane parameters compute MBQM element by element: all three agree, at every int8 value."""
    rng = np.random.default_rng(seed)
    a = np.arange(-128, 128, dtype=np.int8).reshape(16, 16)
    b = rng.permutation(a.reshape(-1)).reshape(16, 16)
    p = numerics.add_params(*rng.uniform(0.01, 0.2, 1), int(rng.integers(-128, 128)),
                            *rng.uniform(0.01, 0.2, 1), int(rng.integers(-128, 128)),
                            float(rng.uniform(0.02, 0.4)))
    table = numerics.add(a, b, **p, zero_point=5)
    computed = numerics.add(a.astype(np.int16), b.astype(np.int16), **p, zero_point=5)
    per_lane = numerics.add(a, b, **{k: np.full(16, v) for k, v in p.items()} | {
        "a_shift": np.r_[np.full(15, p["a_shift"]), p["a_shift"] - 1]}, zero_point=5)
    np.testing.assert_array_equal(table, computed)
    assert table.dtype == np.int8
    lane = numerics.add(a[:, 15], b[:, 15], **p | {"a_shift": p["a_shift"] - 1}, zero_point=5)
    np.testing.assert_array_equal(per_lane[:, :15], table[:, :15])
    np.testing.assert_array_equal(per_lane[:, 15], lane)


@pytest.mark.parametrize("kind, count", [(isa.Add, 300), (isa.Mul, 300), (isa.Add, 256), (isa.Mul, 1024)])
def test_add_and_mul_by_a_constant_equal_numerics_on_the_tile(kind, count):
    """With a per-block constant b and more than 256 entries per block the ISS looks results up in
    tables of the op on the 256 int8 values (per block and lane): the same as the op on the tile."""
    rng = np.random.default_rng(count + (kind is isa.Mul))
    config = preset("default").replace(dram_bytes=1 << 20)
    blocks, b = 3, config.cols
    iss = ISS(config)
    a = rng.integers(-128, 128, (blocks * count, b), dtype=np.int8)
    a[:256, 0] = np.arange(-128, 128)                         # every int8 value in one lane
    const = rng.integers(-128, 128, (blocks, b))
    if kind is isa.Add:
        p = numerics.add_params(0.05, 3, 0.08, -10, 0.1)
    else:
        p = numerics.mul_params(0.05, 3, 0.08, -10, 0.02)
    iss.machine.inp[:blocks * count] = a
    iss.machine.param[:len(kind.PARAMS)] = np.array([p[k] for k in kind.PARAMS])[:, None]
    iss.machine.param[20:20 + blocks] = const
    insn = kind(out=0, a=0, b=20, b_param=1, param=0, blocks=blocks, count=count, zero_point=-2,
                act_min=-120, act_max=127)
    iss.run_program(isa.encode_program([insn]), 0)
    function = numerics.add if kind is isa.Add else numerics.mul
    expected = function(a.reshape(blocks, count, b), const[:, None, :], **p, zero_point=-2, act_min=-120,
                        act_max=127)
    np.testing.assert_array_equal(iss.machine.out[:blocks * count].reshape(blocks, count, b), expected)


def _conv_over(acc: int, inp: int = 0, **flags) -> isa.Conv:
    """A 3x3 MAC conv over 2 input blocks of 4x6 (2x4 pixels) at input entry `inp`, weights at 0."""
    return isa.Conv(mode=ConvMode.MAC, out_blocks=1, in_blocks=2, kh=3, kw=3, stride_h=1, stride_w=1,
                    out_h=2, out_w=4, acc=acc, inp=inp, wgt=0, inp_row=6, inp_block=24, **flags)


def _load_input(dram: int, **flags) -> isa.Load:
    return isa.Load(buffer=Buffer.INP, sram=0, dram=dram, blocks=2, rows=4, cols=6, row_stride=6 * 16,
                    block_stride=24 * 16, **flags)


@pytest.mark.parametrize("case", ["stored_over", "overwritten_rows", "reloaded", "read_by_an_add"])
def test_convs_share_im2col_rows_only_while_their_input_and_the_rows_are_the_same(case):
    """A conv whose input a LOAD brings again with the same fields finds its im2col rows in the
    buffer (the fast ISS writes them once); not when a STORE wrote into what the LOAD reads, nor
    when another conv wrote its rows into that buffer since (one whose input no LOAD wrote: it has no
    key).  An input LOAD that only such convs read is left out; not one that an ADD reads.  The fast
    ISS equals the reference: accumulators, outputs, and the input scratchpad a run leaves."""
    cfg = preset("default").replace(dram_bytes=1 << 20)
    a, b, wgt_at = 0x10000, 0x20000, 0x30000
    wgt = isa.Load(buffer=Buffer.WGT, sram=0, dram=wgt_at, blocks=1, rows=1, cols=18,
                   row_stride=18 * 256, block_stride=18 * 256)
    if case == "stored_over":      # conv 3 reads A after a STORE into A: not conv 1's rows
        program = [wgt, _load_input(a, push_next=True), _conv_over(0, pop_prev=True, push_prev=True),
                   _load_input(a, pop_next=True, push_next=True),
                   _conv_over(8, pop_prev=True, push_next=True),
                   isa.Store(sram=0, dram=a + 64, blocks=1, rows=1, cols=3, row_stride=48, block_stride=48,
                             pop_prev=True, push_prev=True),
                   isa.Marker(id=1, pop_next=True, push_prev=True),
                   _load_input(a, pop_next=True, push_next=True), _conv_over(16, pop_prev=True)]
    elif case == "overwritten_rows":   # conv 2 writes other rows into the buffer between two convs of A
        program = [wgt, _load_input(a, push_next=True), _conv_over(0, pop_prev=True, push_prev=True),
                   _conv_over(8, inp=200),              # input entries no LOAD of the run wrote
                   _load_input(a, pop_next=True, push_next=True), _conv_over(16, pop_prev=True)]
    elif case == "read_by_an_add":     # B loaded over A for an ADD only, then A again for conv 3
        program = [wgt, _load_input(a, push_next=True), _conv_over(0, pop_prev=True, push_prev=True),
                   _load_input(b, pop_next=True, push_next=True),
                   isa.Add(out=0, a=0, b=24, param=0, blocks=1, count=24, act_min=-128, act_max=127,
                           pop_prev=True, push_prev=True),
                   _load_input(a, pop_next=True, push_next=True), _conv_over(16, pop_prev=True)]
    else:                              # A again for conv 2 and conv 3: one set of rows for all three
        program = [wgt, _load_input(a, push_next=True), _conv_over(0, pop_prev=True, push_prev=True),
                   _load_input(a, pop_next=True, push_next=True),
                   _conv_over(8, pop_prev=True, push_prev=True),
                   _load_input(a, pop_next=True, push_next=True), _conv_over(16, pop_prev=True)]
    code = isa.encode_program(program + [isa.Finish()])
    rng = np.random.default_rng(11)
    image = [(a, rng.integers(-128, 128, 48 * 16, dtype=np.int8)),
             (b, rng.integers(-128, 128, 48 * 16, dtype=np.int8)),
             (wgt_at, rng.integers(-128, 128, 18 * 256, dtype=np.int8))]
    out = rng.integers(-128, 128, (3, 16), dtype=np.int8)
    other = rng.integers(-128, 128, (48, 16), dtype=np.int8)
    real = numerics.add_params(0.05, 3, 0.07, -9, 0.1)
    add_params = np.array([[real[name]] * 16 for name in isa.Add.PARAMS], np.int32)
    results, scratchpads = [], []
    for fast in (True, False):
        iss = ISS(cfg, fast=fast)
        for addr, data in image:
            iss.write(addr, data)
        iss.machine.out[:3] = out
        iss.machine.inp[200:248] = other
        iss.machine.param[:8] = add_params
        runs, ends = [], []
        for _ in range(2):           # the second run: A as the first one's STORE left it
            iss.run_program(code, 0x1000)
            runs.append(iss.machine.acc[:24].reshape(3, 8, 16).copy())
            ends.append((iss.machine.inp[:48].copy(), iss.machine.out[:24].copy()))
        results.append(runs)
        scratchpads.append(ends)
    np.testing.assert_array_equal(results[0], results[1])
    for (inp_fast, out_fast), (inp_ref, out_ref) in zip(*scratchpads, strict=True):
        np.testing.assert_array_equal(inp_fast, inp_ref)
        np.testing.assert_array_equal(out_fast, out_ref)
    first = results[1][0]            # the reference's first run: which convs saw the same input
    assert (first[2] == first[0]).all() == (case != "stored_over")
    assert (first[1] == first[0]).all() == (case not in ("overwritten_rows", "read_by_an_add"))


def _mac(acc: int, wgt: int, **flags) -> isa.Conv:
    """A 1x1 MAC conv of 3 input blocks (2x2 pixels at input entry 0) into 2 output blocks."""
    return isa.Conv(mode=ConvMode.MAC, out_blocks=2, in_blocks=3, kh=1, kw=1, stride_h=1, stride_w=1,
                    out_h=2, out_w=2, acc=acc, inp=0, wgt=wgt, inp_row=2, inp_block=4, **flags)


def _load_weights(sram: int, dram: int, entries: int = 6, **flags) -> isa.Load:
    return isa.Load(buffer=Buffer.WGT, sram=sram, dram=dram, blocks=1, rows=1, cols=entries,
                    row_stride=entries * 256, block_stride=entries * 256, **flags)


@pytest.mark.parametrize("case", ["overwritten", "read_by_a_conv_not_watched"])
def test_weight_loads_that_no_conv_needs_are_skipped_and_the_scratchpad_ends_the_same(case):
    """Convs with their packed weights in hand need no weight LOAD whose entries later LOADs
    overwrite; the fast ISS skips those while the weights are clean, and still ends each run with
    the weight scratchpad, accumulators and device memory of the reference, also after a reset
    (scratchpads cleared) and after the host rewrites the weights."""
    cfg = preset("default").replace(dram_bytes=1 << 20)
    first_at, second_at, inp_at = 0x10000, 0x20000, 0x30000
    load_input = isa.Load(buffer=Buffer.INP, sram=0, dram=inp_at, blocks=1, rows=1, cols=12,
                          row_stride=12 * 16, block_stride=12 * 16)
    if case == "overwritten":          # the first LOAD's entries: read by conv 1, overwritten for conv 2
        program = [load_input, _load_weights(0, first_at, push_next=True), _mac(0, 0, pop_prev=True,
                                                                               push_prev=True),
                   _load_weights(0, second_at, pop_next=True, push_next=True), _mac(8, 0, pop_prev=True)]
    else:                              # conv 2 reads entries 0-5 and 6-7, which no LOAD of the run wrote
        program = [load_input, _load_weights(0, first_at, push_next=True), _mac(0, 0, pop_prev=True,
                                                                               push_prev=True),
                   _mac(8, 2), _load_weights(0, second_at, pop_next=True, push_next=True),
                   _mac(16, 0, pop_prev=True)]
    code = isa.encode_program(program + [isa.Finish()])
    rng = np.random.default_rng(3)
    image = [(first_at, rng.integers(-128, 128, 6 * 256, dtype=np.int8)),
             (second_at, rng.integers(-128, 128, 6 * 256, dtype=np.int8)),
             (inp_at, rng.integers(-128, 128, 12 * 16, dtype=np.int8))]
    extra = rng.integers(-128, 128, (2, 16, 16), dtype=np.int8)
    states = []
    for fast in (True, False):
        iss = ISS(cfg, fast=fast)
        for addr, data in image:
            iss.write(addr, data)
        state = []
        for step in ("first", "again", "reset", "rewritten"):
            if step == "reset":
                iss.reset()
            if step == "rewritten":
                iss.write(first_at + 300, extra[0, 0])
            iss.machine.wgt[6:8] = extra
            iss.run_program(code, 0x1000)
            state.append((iss.machine.wgt[:8].copy(), iss.machine.acc[:24].copy()))
        states.append(state)
    for (w_fast, acc_fast), (w_ref, acc_ref) in zip(*states, strict=True):
        np.testing.assert_array_equal(w_fast, w_ref)
        np.testing.assert_array_equal(acc_fast, acc_ref)
