"""Compiled kernels of the ISS's fast path: the vector unit's int8 arithmetic over whole tiles, the
im2col and epilogue of CONV, and an int8 x int8 -> int32 matrix product.

hdl/numerics.py is the specification of the NPU's arithmetic, and sim/iss_exec.py's reference ops
apply it to numpy tiles.  These kernels compute the same functions element by element in numba
(one pass over a tile, no int64 temporaries) and are held to them: tests/sim/test_iss_kernels.py
compares every kernel with numerics on random tiles and at the extreme values of every operand,
and tests/sim/test_iss_plan.py runs random programs on a fast and a reference machine.  Each
scalar step below names the numerics function it restates.

The matrix product is MLAS's u8 x s8 GEMM (onnxruntime's MatMulInteger, VNNI where the CPU has it)
on the input shifted to uint8 (x + 128, one XOR) with an A zero point of 128: MLAS computes
sum(a * b) - 128 * sum(b) in int32, which is exact: each product a * b lies in [-32640, 32385], so
every partial sum of at most MAX_GEMM_K = 2**16 terms lies within int32 (a conv over more terms,
more than any preset's wgt_depth * cols, multiplies in float32).  The engine is checked on its
first use at the extreme operands (a kernel that saturated pairs of products in int16, as some
AVX2 kernels do, fails the check); if it does not match, or onnxruntime is missing, the ISS
multiplies in float32 (numerics.int_matmul_f32, exact, slower).
"""

from __future__ import annotations

import functools
import threading

import numba
import numpy as np

__all__ = ["bind", "DMA_LOAD", "DMA_STORE", "DMA_FIELDS", "DMA_SKIPPABLE", "dma", "copy_runs", "load_tile",
           "requantize", "add", "mul", "binary_tables", "BINARY_TABLES", "narrow", "window_reduce", "words",
           "im2col_u8", "pack_weights", "scatter_acc", "gemv_u8s8", "Int8Gemm", "int8_gemm",
           "MAX_GEMM_K"]

INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1
ADD_LEFT_SHIFT = 20           # numerics.ADD_LEFT_SHIFT
SHIFT_MIN, SHIFT_MAX = -31, 30
# |sum of K products (x + 128) * w| <= K * 255 * 128 stays below 2**31 for K up to 2**16
MAX_GEMM_K = 1 << 16

_jit = functools.partial(numba.njit, cache=True, nogil=True)


def bind(kernel, *args):
    """`kernel(*args)` as a callable that enters the compiled code for these arguments' types directly.
    An op's arguments are fixed when it is prepared; numba's dispatch by type costs about as much
    again as the call itself (0.2-0.3 of ~0.5 us, on ResNet-50's ~6,600 kernel calls a run)."""
    key = (kernel, *map(_type_key, args))
    entry = _entries.get(key)
    if entry is None:       # compiled, or from numba's cache
        entry = _entries[key] = kernel.compile(tuple(numba.typeof(a) for a in args))
    return functools.partial(entry, *args)


# A program prepares tens of thousands of ops, and numba.typeof of an array costs ~15 us: the compiled
# entry by kernel and by what determines each argument's numba type (an array's dtype, dimensions,
# layout and flags; a scalar's type; an int's, unless it needs more than 64 bits).
_entries: dict = {}
_INT64_RANGE = range(-(1 << 63), 1 << 63)


def _type_key(a):
    if isinstance(a, np.ndarray):
        flags = a.flags
        return a.dtype, a.ndim, flags.c_contiguous, flags.f_contiguous, flags.writeable, flags.aligned
    if type(a) is int and a not in _INT64_RANGE:
        return int, a
    if isinstance(a, np.generic):
        return a.dtype
    return type(a)


# -- numerics, one int64 value at a time ------------------------------------------------------
@_jit(inline="always")
def _wrap32(x):
    """numerics.wrap_int32."""
    return ((x + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


@_jit(inline="always")
def _high_mul(scaled, multiplier):
    """numerics.saturating_rounding_doubling_high_mul of two int32 values (as int64) without a test of
    the operands: the one product that saturates, INT32_MIN * INT32_MIN, is the one whose rounded high
    half (2**31) exceeds INT32_MAX.  A conditional expression, which LLVM turns into a select: with
    min() it left ADD's lane loop scalar."""
    high = (scaled * multiplier + (1 << 30)) >> 31
    return np.int64(INT32_MAX) if high > INT32_MAX else high


@_jit(inline="always")
def _divide_pot(x, right, negative, half):
    """numerics.rounding_divide_by_pot of an int64 `x` by 2**right, branch-free, for a lane whose
    `right` is fixed: `negative` is -1 when right > 0 and 0 when right == 0 (numerics' `rounds`),
    `half` is (1 << right) >> 1; both from _rounding, once per lane."""
    return (x + ((x >> 63) & negative) + half) >> right


@_jit(inline="always")
def _rounding(right):
    """The (negative, half) of _divide_pot by 2**right."""
    return -np.int64(right > 0), (np.int64(1) << right) >> 1


@_jit(inline="always")
def _mbqm(x, multiplier, left, right):
    """numerics.multiply_by_quantized_multiplier of an int64 `x` (left = max(shift, 0), right =
    max(-shift, 0)): wrap_int32(x << left), saturating_rounding_doubling_high_mul by the multiplier,
    rounding_divide_by_pot by `right` (the test of `right` is if-converted: the lane loops of ADD and
    MUL vectorize)."""
    high = _high_mul(_wrap32(x << left), multiplier)
    if right > 0:
        high = (high + (high >> 63) + ((np.int64(1) << right) >> 1)) >> right
    return high


@_jit(inline="always")
def _clamp(x, act_min, act_max):
    """numerics.clamp_int8."""
    return min(max(x, act_min), act_max)


@_jit(inline="always")
def _shifts(shift):
    """A parameter lane's shift clamped to the vector unit's range, as (left, right)."""
    s = min(max(np.int64(shift), SHIFT_MIN), SHIFT_MAX)
    return max(s, 0), max(-s, 0)


# -- vector unit ---------------------------------------------------------------------------------
@_jit
def requantize(acc, params, out, zero_point, act_min, act_max):
    """numerics.requantize of a REQUANT tile: acc and out (blocks, count, lanes), params
    (blocks, 3, lanes) = bias, multiplier, shift per block and lane.  Lanes innermost, branch-free,
    the parameters hoisted into int32 lanes (the product of two sign-extended int32 is one vector
    multiply, vpmuldq): LLVM vectorizes the lane loop (0.4 ns an element, from 0.65)."""
    blocks, count, lanes = acc.shape
    bias = np.empty(lanes, np.int32)
    mult = np.empty(lanes, np.int32)
    left = np.empty(lanes, np.int32)
    right = np.empty(lanes, np.int32)
    negative = np.empty(lanes, np.int32)
    half = np.empty(lanes, np.int32)
    zp, lo, hi = np.int64(zero_point), np.int64(act_min), np.int64(act_max)
    for b in range(blocks):
        for lane in range(lanes):
            bias[lane] = params[b, 0, lane]
            mult[lane] = params[b, 1, lane]
            left[lane], right[lane] = _shifts(params[b, 2, lane])
            negative[lane], half[lane] = _rounding(right[lane])
        src, dst = acc[b], out[b]
        for i in range(count):
            a, o = src[i], dst[i]
            for lane in range(lanes):
                total = _wrap32(np.int64(a[lane]) + np.int64(bias[lane]))          # add_int32
                high = _high_mul(_wrap32(total << np.int64(left[lane])), np.int64(mult[lane]))
                value = _divide_pot(high, np.int64(right[lane]), np.int64(negative[lane]),
                                    np.int64(half[lane]))
                o[lane] = _clamp(value + zp, lo, hi)


@_jit(inline="always")
def _add_params(params):
    """ADD's parameter lanes (hdl/isa.Add.PARAMS: a_offset, a_mult, a_shift, b_offset, b_mult,
    b_shift, out_mult, out_shift) as int64 rows, each shift as (left, right)."""
    lanes = params.shape[1]
    p = np.empty((11, lanes), np.int64)
    for lane in range(lanes):
        p[0, lane] = params[0, lane]
        p[1, lane] = params[1, lane]
        p[2, lane], p[3, lane] = _shifts(params[2, lane])
        p[4, lane] = params[3, lane]
        p[5, lane] = params[4, lane]
        p[6, lane], p[7, lane] = _shifts(params[5, lane])
        p[8, lane] = params[6, lane]
        p[9, lane], p[10, lane] = _shifts(params[7, lane])
    return p


@_jit(inline="always")
def _add_one(a, b, p, lane, zero_point, act_min, act_max):
    """numerics.add of one a and b: numerics._add_input_stage of each, add_int32, the output stage."""
    sa = _mbqm((a + p[0, lane]) << ADD_LEFT_SHIFT, p[1, lane], p[2, lane], p[3, lane])
    sb = _mbqm((b + p[4, lane]) << ADD_LEFT_SHIFT, p[5, lane], p[6, lane], p[7, lane])
    raw = _mbqm(_wrap32(_wrap32(sa) + _wrap32(sb)), p[8, lane], p[9, lane], p[10, lane])
    return _clamp(raw + zero_point, act_min, act_max)


@_jit(inline="always")
def _mul_params(params):
    """MUL's parameter lanes (hdl/isa.Mul.PARAMS: a_offset, b_offset, out_mult, out_shift)."""
    lanes = params.shape[1]
    p = np.empty((5, lanes), np.int64)
    for lane in range(lanes):
        p[0, lane] = params[0, lane]
        p[1, lane] = params[1, lane]
        p[2, lane] = params[2, lane]
        p[3, lane], p[4, lane] = _shifts(params[3, lane])
    return p


@_jit(inline="always")
def _mul_one(a, b, p, lane, zero_point, act_min, act_max):
    """numerics.mul of one a and b."""
    raw = _mbqm((a + p[0, lane]) * (b + p[1, lane]), p[2, lane], p[3, lane], p[4, lane])
    return _clamp(raw + zero_point, act_min, act_max)


# ADD and MUL of two int8 tiles whose parameters are the same in every lane (TFLite's per-tensor
# quantization, the usual case): the output is a function of the two int8 inputs alone, a 256 x 256
# int8 table built with _add_one / _mul_one (so the arithmetic is written once) and looked up per
# element.  A machine keeps the last BINARY_TABLES tables by their parameters (`binary_tables`), so
# a served model builds each of its tables once.
BINARY_TABLES = 64
_ADD, _MUL = 1, 2
_KEY = 5 + 11          # valid, kind, zero point, act_min, act_max, the parameter rows of lane 0


def binary_tables(slots: int = BINARY_TABLES) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An empty cache of ADD/MUL tables for `add` and `mul`: (keys, tables, next slot to replace)."""
    return (np.zeros((slots, _KEY), np.int64), np.zeros((slots, 256, 256), np.int8),
            np.zeros(1, np.int64))


@_jit(inline="always")
def _uniform(p):
    """Whether every lane of the parameter table holds the same values."""
    for row in range(p.shape[0]):
        for lane in range(1, p.shape[1]):
            if p[row, lane] != p[row, 0]:
                return False
    return True


@_jit(inline="always")
def _binary_table(one, kind, p, zero_point, act_min, act_max, cache):
    """The table out[a_bits, b_bits] of `one` with lane 0's parameters, from `cache` or built into it
    (replacing the oldest entry when it is full)."""
    keys, tables, hand = cache
    key = np.zeros(_KEY, np.int64)
    key[0], key[1], key[2], key[3], key[4] = 1, kind, zero_point, act_min, act_max
    for row in range(p.shape[0]):
        key[5 + row] = p[row, 0]
    for slot in range(keys.shape[0]):
        same = True
        for i in range(_KEY):
            if keys[slot, i] != key[i]:
                same = False
                break
        if same:
            return tables[slot]
    slot = hand[0]
    hand[0] = (slot + 1) % keys.shape[0]
    table = tables[slot]
    for x in range(256):
        a = np.int64(x - 256 if x >= 128 else x)         # the int8 of bits x
        for y in range(256):
            b = np.int64(y - 256 if y >= 128 else y)
            table[x, y] = one(a, b, p, 0, zero_point, act_min, act_max)
    keys[slot] = key
    return table


@_jit(inline="always")
def _binary(one, kind, a, b, b_per_block, p, out, zero_point, act_min, act_max, cache):
    """out = one(a, b) lane-wise.  With the same parameters in every lane and b a tile, by a 256 x 256
    table (_binary_table).  With b one entry per block and more than 256 entries, each block and
    lane's output is a function of the 256 values of a: computed once as a table, then looked up
    (sim/iss_exec.py's reference does the same)."""
    blocks, count, lanes = a.shape
    if not b_per_block and _uniform(p):
        table = _binary_table(one, kind, p, zero_point, act_min, act_max, cache).reshape(-1)
        x, y, o = a.reshape(-1).view(np.uint8), b.reshape(-1).view(np.uint8), out.reshape(-1)
        for i in range(x.size):
            o[i] = table[(np.int64(x[i]) << 8) | y[i]]
        return
    if b_per_block and count > 256:
        table = np.empty((256, lanes), np.int8)
        for blk in range(blocks):
            for v in range(256):
                for lane in range(lanes):
                    table[v, lane] = one(np.int64(v - 256 if v >= 128 else v), np.int64(b[blk, 0, lane]), p,
                                         lane, zero_point, act_min, act_max)
            bits = a[blk].view(np.uint8)
            for i in range(count):
                for lane in range(lanes):
                    out[blk, i, lane] = table[bits[i, lane], lane]
        return
    for blk in range(blocks):
        for i in range(count):
            j = 0 if b_per_block else i
            for lane in range(lanes):
                out[blk, i, lane] = one(np.int64(a[blk, i, lane]), np.int64(b[blk, j, lane]), p, lane,
                                        zero_point, act_min, act_max)


@_jit
def add(a, b, b_per_block, params, out, zero_point, act_min, act_max, cache):
    """numerics.add lane-wise on a tile: a and out (blocks, count, lanes) int8; b the same shape
    (int8), or (blocks, 1, lanes) int32 parameter entries when `b_per_block`; params (8, lanes);
    `cache` from binary_tables()."""
    _binary(_add_one, _ADD, a, b, b_per_block, _add_params(params), out, zero_point, act_min, act_max,
            cache)


@_jit
def mul(a, b, b_per_block, params, out, zero_point, act_min, act_max, cache):
    """numerics.mul lane-wise on a tile (operands as in `add`); params (4, lanes)."""
    _binary(_mul_one, _MUL, a, b, b_per_block, _mul_params(params), out, zero_point, act_min, act_max,
            cache)


@_jit
def narrow(acc, divisor, out, act_min, act_max):
    """numerics.pool_output: out = clamp(round_divide(acc, divisor)) over (n, lanes) tiles;
    divisor > 0 (round_divide: C's (acc +- divisor/2) / divisor)."""
    d = np.int64(divisor)
    half = d // 2
    n, lanes = acc.shape
    for i in range(n):
        for lane in range(lanes):
            a = np.int64(acc[i, lane])
            num = a + half if a > 0 else a - half
            quotient = abs(num) // d
            out[i, lane] = _clamp(-quotient if num < 0 else quotient, act_min, act_max)


@_jit
def window_reduce(inp, first, in_blocks, out_h, out_w, kh, kw, stride_h, stride_w, inp_row, inp_block,
                  acc, is_max, accumulate):
    """CONV in SUM or MAX mode: per input block, output pixel and lane, the sum (int64, then wrapped
    to 32 bits, added to the accumulator first when `accumulate`) or the max (with the accumulator's
    when `accumulate`) of the kh x kw window; acc is (in_blocks*out_h*out_w, lanes) int32."""
    lanes = inp.shape[1]
    reduced = np.empty(lanes, np.int64)
    for ci in range(in_blocks):
        for oh in range(out_h):
            for ow in range(out_w):
                for lane in range(lanes):
                    reduced[lane] = -128 if is_max else 0
                for i in range(kh):
                    base = first + ci * inp_block + (oh * stride_h + i) * inp_row + ow * stride_w
                    for j in range(kw):
                        row = inp[base + j]
                        for lane in range(lanes):
                            v = np.int64(row[lane])
                            if is_max:
                                reduced[lane] = max(reduced[lane], v)
                            else:
                                reduced[lane] += v
                dst = acc[(ci * out_h + oh) * out_w + ow]
                for lane in range(lanes):
                    if is_max:
                        dst[lane] = max(np.int64(dst[lane]), reduced[lane]) if accumulate else reduced[lane]
                    else:
                        dst[lane] = _wrap32(reduced[lane] + (np.int64(dst[lane]) if accumulate else 0))


# -- DMA -----------------------------------------------------------------------------------------
# Loops below copy through views sliced at the start of a run and index them from 0: numba then
# knows the index is not negative (no wrap-around check) and LLVM vectorizes the copy.
@_jit(inline="always")
def _copy(src, s, dst, d, n):
    a = src[s:s + n]
    b = dst[d:d + n]
    for i in range(n):
        b[i] = a[i]


@_jit(inline="always")
def _fill(dst, d, n, value):
    b = dst[d:d + n]
    for i in range(n):
        b[i] = value


@_jit
def copy_runs(src, src_start, src_block, src_row, dst, dst_start, dst_block, dst_row, blocks, rows, run):
    """A DMA's data: blocks x rows runs of `run` consecutive bytes from src to dst (1-D uint8)."""
    for b in range(blocks):
        for r in range(rows):
            _copy(src, src_start + b * src_block + r * src_row, dst, dst_start + b * dst_block + r * dst_row,
                  run)


@_jit
def load_tile(dram, src, block_stride, row_stride, sram, first, blocks, rows, cols, p, q, entry,
              pad_top, pad_left, pad):
    """LOAD: the tile of `blocks` x p x q entries of `entry` bytes at byte `first` of the scratchpad
    `sram` (1-D uint8) gets the DRAM rows at [pad_top, pad_top + rows) x [pad_left, pad_left + cols)
    and the byte `pad` around them."""
    value = np.uint8(pad)
    run = cols * entry
    line = q * entry
    left = pad_left * entry
    for b in range(blocks):
        for y in range(p):
            d = first + (b * p + y) * line
            if y < pad_top or y >= pad_top + rows:
                _fill(sram, d, line, value)
                continue
            _fill(sram, d, left, value)
            _fill(sram, d + left + run, line - left - run, value)
            _copy(dram, src + b * block_stride + (y - pad_top) * row_stride, sram, d + left, run)


# A DMA as one row of int64 fields, so that a run of DMAs is one kernel call (`dma`):
#   LOAD:  DMA_LOAD, buffer (0 inp, 1 wgt, 2 param), dram, block_stride, row_stride, first byte,
#          blocks, rows, cols, padded rows, padded cols, entry bytes, pad_top, pad_left, pad byte
#   STORE: DMA_STORE, first byte of out, block bytes of out, row bytes of out, dram, block_stride,
#          row_stride, blocks, rows, run bytes, then zeros
# and last, DMA_SKIPPABLE: 1 for a DMA that need not run when `skip[0]` (a weight LOAD whose entries
# only convs with packed weights in hand read before other LOADs overwrite them, sim/iss_plan.py).
DMA_LOAD, DMA_STORE = 0, 1
DMA_FIELDS = 16
DMA_SKIPPABLE = 15


@_jit
def dma(dram, inp, wgt, param, out, table, skip):
    """Perform the DMAs of `table` (rows as above) in order, but the skippable ones when `skip[0]`;
    scratchpads and dram as 1-D uint8."""
    for k in range(table.shape[0]):
        d = table[k]
        if d[DMA_SKIPPABLE] and skip[0]:
            continue
        if d[0] == DMA_LOAD:
            sram = inp if d[1] == 0 else (wgt if d[1] == 1 else param)
            load_tile(dram, d[2], d[3], d[4], sram, d[5], d[6], d[7], d[8], d[9], d[10], d[11], d[12], d[13],
                      d[14])
        else:
            copy_runs(out, d[1], d[2], d[3], dram, d[4], d[5], d[6], d[7], d[8], d[9])


# -- CONV ----------------------------------------------------------------------------------------
def words(a: np.ndarray, bytes_per_row: int) -> np.ndarray:
    """A contiguous array's bytes as a 1-D array of the widest unsigned words (8, 4, 2 or 1 bytes)
    that divide `bytes_per_row`, so that kernels copy rows a word at a time."""
    size = next(s for s in (8, 4, 2, 1) if bytes_per_row % s == 0)
    return a.reshape(-1).view(np.uint8).view(f"u{size}")


@_jit(inline="always")
def _copy_flipped(a, b, n, flip):
    for q in range(n):
        b[q] = a[q] ^ flip


@_jit
def im2col_u8(inp, words, first, in_blocks, out_h, out_w, kh, kw, stride_h, stride_w, inp_row,
              inp_block, x, row_words, col0, flip):
    """The MAC conv's im2col rows, shifted to uint8: x[(oh, ow), (ci, i, j, lane)] =
    inp[first + ci*inp_block + (oh*stride_h + i)*inp_row + ow*stride_w + j, lane] + 128.
    `inp` is the input scratchpad's bytes and `x` the (out_h*out_w, K) uint8 rows, both as words
    (`words` per scratchpad entry, `row_words` per row of x, this conv's columns from word `col0`:
    the convs of an accumulation chain share the rows); the j and lane of one window row are
    consecutive bytes, copied a word at a time, each byte XOR 0x80 (`flip`): int8 x + 128 as uint8.

    Window rows of 6 words (3 taps of 16 lanes: the 3x3 convs, most of a ResNet's im2col bytes) are
    written pixel by pixel, each row of x in one pass (1.7x the bytes per second of the order below
    for them); the others window row by window row (faster for 1x1 and 4x4 windows)."""
    run = kw * words
    if run == 6:
        span = in_blocks * kh * run
        for oh in range(out_h):
            for ow in range(out_w):
                dst = (oh * out_w + ow) * row_words + col0
                b = x[dst:dst + span]
                k = 0
                for ci in range(in_blocks):
                    for i in range(kh):
                        src = (first + ci * inp_block + (oh * stride_h + i) * inp_row + ow * stride_w) * words
                        _copy_flipped(inp[src:src + 6], b[k:k + 6], 6, flip)
                        k += 6
        return
    for ci in range(in_blocks):
        for i in range(kh):
            col = col0 + (ci * kh + i) * run
            for oh in range(out_h):
                src_row = (first + ci * inp_block + (oh * stride_h + i) * inp_row) * words
                for ow in range(out_w):
                    src = src_row + ow * stride_w * words
                    dst = (oh * out_w + ow) * row_words + col
                    a = inp[src:src + run]
                    b = x[dst:dst + run]
                    if run == 2:                  # one 16-lane entry of 8-byte words: unrolled
                        b[0] = a[0] ^ flip
                        b[1] = a[1] ^ flip
                    else:
                        _copy_flipped(a, b, run, flip)


@_jit
def pack_weights(wgt, first, out_blocks, taps, current, seen, valid, w, unchanged):
    """The MAC conv's weight matrix: w[(tap, c), (co, r)] = wgt[first + co*taps + tap, r, c]
    (int8, K = taps*cols rows, N = out_blocks*rows columns).  Packed only if the weight entries
    (`current`, as words) differ from `seen`, those this op packed last time (`valid[0]` once it
    has): a served model's weights stream through the scratchpad unchanged from run to run, and
    comparing them costs a fraction of packing them.  Not even compared when `unchanged[0]`: the
    machine knows they are the entries of last time (sim/iss_exec.py, WeightWatch)."""
    _, rows, cols = wgt.shape
    if valid[0] and unchanged[0]:
        return
    if valid[0]:
        same = True
        for start in range(0, current.size, 512):          # chunks of OR-ed XORs: vectorized
            a = current[start:start + 512]
            b = seen[start:start + 512]
            diff = current.dtype.type(0)
            for i in range(a.size):
                diff |= a[i] ^ b[i]
            if diff:
                same = False
                break
        if same:
            return
    _copy(current, 0, seen, 0, current.size)
    valid[0] = True
    for co in range(out_blocks):
        for t in range(taps):
            block = wgt[first + co * taps + t]
            for c in range(cols):
                dst = w[t * cols + c, co * rows:(co + 1) * rows]
                for r in range(rows):
                    dst[r] = block[r, c]


@_jit
def scatter_acc(y, acc, accumulate):
    """acc[co, p, r] (+)= y[p, co*rows + r], wrapping at 32 bits (acc (co, m, rows) int32)."""
    blocks, m, rows = acc.shape
    for co in range(blocks):
        for p in range(m):
            src = y[p, co * rows:(co + 1) * rows]
            dst = acc[co, p]
            if accumulate:
                for r in range(rows):
                    dst[r] += src[r]            # int32 + int32 wraps in LLVM, like the accumulators
            else:
                for r in range(rows):
                    dst[r] = src[r]


# -- int8 GEMM -------------------------------------------------------------------------------------
@_jit
def gemv_u8s8(x, w, y):
    """y = (x - 128) @ w for one row (x (1, k) uint8, w (k, n) int8, y (1, n) int32): the product of
    a conv of one output pixel (a FULLY_CONNECTED).  Exact for k <= MAX_GEMM_K, as Int8Gemm.  MLAS
    packs all of w on every call, most of the time of a one-row product (3x this loop's on
    ResNet-50's classifier)."""
    k, n = w.shape
    acc = y[0]
    for j in range(n):
        acc[j] = 0
    for i in range(k):
        xv = np.int32(x[0, i]) - np.int32(128)
        row = w[i]
        for j in range(n):
            acc[j] += np.int32(xv * np.int32(row[j]))


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, value) -> bytes:
    """One protobuf field: a varint for an int, length-delimited for bytes or str."""
    if isinstance(value, int):
        return _varint(number << 3) + _varint(value)
    data = value.encode() if isinstance(value, str) else value
    return _varint(number << 3 | 2) + _varint(len(data)) + data


# onnx.proto's TensorProto.DataType values
_UINT8, _INT8, _INT32 = 2, 3, 6


def _value_info(name: str, elem_type: int, shape: tuple[int, ...]) -> bytes:
    dims = b"".join(_field(1, _field(1, d)) for d in shape)              # Dimension.dim_value
    tensor_type = _field(1, elem_type) + _field(2, dims)                   # TypeProto.Tensor
    return _field(1, name) + _field(2, _field(1, tensor_type))            # ValueInfoProto


def matmul_integer_model(m: int, k: int, n: int) -> bytes:
    """An ONNX model of one MatMulInteger node: Y[m, n] int32 = (A[m, k] uint8 - 128) @ B[k, n] int8,
    as serialized onnx.ModelProto bytes (written by hand: onnxruntime needs no onnx package)."""
    zero_point = _field(2, _UINT8) + _field(8, "a_zero_point") + _field(9, bytes([128]))  # TensorProto
    node = _field(1, "A") + _field(1, "B") + _field(1, "a_zero_point") + _field(2, "Y") + \
        _field(4, "MatMulInteger")
    graph = (_field(1, node) + _field(2, "int8_gemm") + _field(5, zero_point)
             + _field(11, _value_info("A", _UINT8, (m, k))) + _field(11, _value_info("B", _INT8, (k, n)))
             + _field(12, _value_info("Y", _INT32, (m, n))))
    opset = _field(1, "") + _field(2, 13)                                  # OperatorSetIdProto
    return _field(1, 8) + _field(7, graph) + _field(8, opset)            # ir_version 8


class Int8Gemm:
    """Y = (X - 128) @ W for one shape: X (m, k) uint8, W (k, n) int8, Y (m, n) int32, on buffers
    bound once (`bind`), one onnxruntime session per shape shared by every op of that shape."""

    _sessions: dict[tuple[int, int, int], object] = {}
    _lock = threading.Lock()

    def __init__(self, m: int, k: int, n: int):
        self.shape = (m, k, n)
        with self._lock:
            session = self._sessions.get(self.shape)
            if session is None:
                session = self._sessions[self.shape] = _session(matmul_integer_model(m, k, n))
        self.session = session

    def bind(self, x: np.ndarray, w: np.ndarray, y: np.ndarray):
        """A callable computing y from x and w (contiguous arrays of this shape; their memory is
        read and written in place on every call)."""
        m, k, n = self.shape
        if x.shape != (m, k) or w.shape != (k, n) or y.shape != (m, n):
            raise ValueError(f"Int8Gemm{self.shape}: operands {x.shape} {w.shape} {y.shape}")
        if not all(a.flags.c_contiguous for a in (x, w, y)):
            raise ValueError("Int8Gemm operands must be C-contiguous")
        binding = self.session.io_binding()
        binding.bind_input("A", "cpu", 0, np.uint8, [m, k], x.ctypes.data)
        binding.bind_input("B", "cpu", 0, np.int8, [k, n], w.ctypes.data)
        binding.bind_output("Y", "cpu", 0, np.int32, [m, n], y.ctypes.data)
        # the session's C++ run, without the Python wrapper's checks (a few microseconds of a conv's
        # ~20): onnxruntime's own attributes, so the public method where they are missing
        inner, inner_binding = getattr(self.session, "_sess", None), getattr(binding, "_iobinding", None)
        if inner_binding is not None and hasattr(inner, "run_with_iobinding"):
            run = functools.partial(inner.run_with_iobinding, inner_binding, None)
        else:
            run = functools.partial(self.session.run_with_iobinding, binding)
        run.operands = (x, w, y, binding)       # the bound memory lives as long as the callable
        return run


def _session(model: bytes):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1          # one ISS device is one thread (see sim/iss.py)
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])


@functools.cache
def int8_gemm() -> type[Int8Gemm] | None:
    """Int8Gemm if onnxruntime's product is exact on this CPU, else None (then the ISS multiplies in
    float32).  The check: a = 255 and b = +-127/-128 in the patterns that overflow an int16 pair sum,
    over a K beyond one block of the kernels, against int64."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return None
    k = 1040
    a = np.full((4, k), 255, np.uint8)
    a[1] = 0
    a[2, ::2] = 0
    a[3] = np.arange(k) % 256
    b = np.empty((k, 32), np.int8)
    b[:, :16] = -128
    b[:, 16:] = 127
    b[::3, 8:24] = -b[::3, 8:24].clip(-127)
    y = np.empty((4, 32), np.int32)
    Int8Gemm(4, k, 32).bind(a, b, y)()
    expected = (a.astype(np.int64) - 128) @ b.astype(np.int64)
    return Int8Gemm if np.array_equal(y, expected) else None
