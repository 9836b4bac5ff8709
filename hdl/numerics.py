"""The int8/int32 arithmetic of the NPU: TensorFlow Lite's integer conventions, vectorised in numpy.

This module is the specification of what the hardware computes.  The ISS and the compiler's
reference executor call it; the Amaranth vector unit mirrors it and is tested against it.  Every
function takes numpy arrays (or scalars) and broadcasts; int32 wrap-around is explicit.

TFLite sources mirrored here: `kernels/internal/common.h` (MultiplyByQuantizedMultiplier,
gemmlowp's SaturatingRoundingDoublingHighMul and RoundingDivideByPOT, QuantizeMultiplier),
`reference/integer_ops/{add,mul,pooling,mean,fully_connected}.h`, `reference/reduce.h`.

One exception to fixed point: LiteRT's *reference* FULLY_CONNECTED kernel (the oracle's
BUILTIN_REF resolver; int8, per-tensor and per-channel weights) rescales its accumulators in double
precision, `round(double(acc) * in_scale * filter_scale / out_scale)`, not with
MultiplyByQuantizedMultiplier; `requantize_double` reproduces it.  CONV_2D's reference kernel uses
MultiplyByQuantizedMultiplier (`requantize`).  Checked bit-exact against ai-edge-litert 2.3.0 by
tests/hdl/test_numerics.py.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "INT32_MIN", "INT32_MAX", "wrap_int32", "add_int32", "saturating_rounding_doubling_high_mul",
    "rounding_divide_by_pot", "multiply_by_quantized_multiplier", "quantize_multiplier",
    "requantize", "requantize_double", "add", "add_params", "mul", "mul_params", "round_divide",
    "pool_output",
    "mean_params", "clamp_int8", "int_matmul", "int_matmul_f32", "accumulate_int32",
]

INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1
# float32 sums of int8 x int8 products are exact while they stay below 2**24:
# K * 128 * 128 <= 2**24  ->  K <= 1024.
_EXACT_F32_K = 1024


def _i64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.int64)


def wrap_int32(x) -> np.ndarray:
    """Two's-complement wrap to int32 range (what 32-bit hardware registers hold), as int64."""
    x = _i64(x) + (1 << 31)
    x &= 0xFFFFFFFF
    x -= 1 << 31
    return x


def add_int32(a, b) -> np.ndarray:
    """a + b wrapped at 32 bits.  int32 arrays add in int32, which wraps (two's complement) by
    itself; anything else adds in int64 and wraps."""
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype == np.int32 and b.dtype == np.int32:
        return np.add(a, b)
    return wrap_int32(_i64(a) + _i64(b))


def saturating_rounding_doubling_high_mul(a, b) -> np.ndarray:
    """gemmlowp SaturatingRoundingDoublingHighMul for int32: round(a*b / 2**31), saturating.

    gemmlowp adds a nudge of 2**30 (ab >= 0) or 1 - 2**30 (ab < 0) and divides by 2**31 truncating
    toward zero; for integers both cases equal floor((ab + 2**30) / 2**31) (for ab < 0, truncation
    is the ceiling, and ceil((ab + 1 - 2**30) / 2**31) = floor((ab + 2**30) / 2**31)), one add and an
    arithmetic shift.  The only overflow is INT32_MIN * INT32_MIN, which saturates to INT32_MAX.
    """
    a, b = _i64(a), _i64(b)
    high = a * b
    high += 1 << 30
    high >>= 31
    if (b == INT32_MIN).any() and (a == INT32_MIN).any():
        high = np.where((a == INT32_MIN) & (b == INT32_MIN), INT32_MAX, high)
    return high


def rounding_divide_by_pot(x, exponent) -> np.ndarray:
    """gemmlowp RoundingDivideByPOT: x / 2**exponent, rounding half away from zero.  0<=exponent<=31.

    gemmlowp compares the remainder x & mask (mask = 2**exponent - 1) with mask/2 (+1 when x < 0);
    equivalently it floors (x + nudge) / 2**exponent with nudge = 2**(exponent-1) for x >= 0 (half
    rounds up), 2**(exponent-1) - 1 for x < 0 (half rounds down), and 0 for exponent 0; `x >> 63`
    is the -1 for x < 0.  Written in place: one temporary the size of x.
    """
    x, exponent = _i64(x), _i64(exponent)
    if ((exponent < 0) | (exponent > 31)).any():
        raise ValueError(f"rounding_divide_by_pot: exponent must be in [0, 31], got "
                         f"{np.unique(exponent[(exponent < 0) | (exponent > 31)])}")
    rounds = exponent > 0
    result = np.broadcast_to(x, np.broadcast_shapes(x.shape, exponent.shape)) >> 63
    if not rounds.all():
        result &= -rounds.astype(np.int64)
    result += x
    result += (np.int64(1) << exponent) >> 1
    result >>= exponent
    return result


def multiply_by_quantized_multiplier(x, multiplier, shift) -> np.ndarray:
    """TFLite MultiplyByQuantizedMultiplier(int32 x, int32 multiplier, int shift).

    shift > 0 scales x up by 2**shift first (wrapping at 32 bits like the hardware), shift <= 0
    divides the high product by 2**-shift with rounding.  Returns int64 holding int32 values.
    """
    shift = _i64(shift)
    left = np.maximum(shift, 0)
    right = np.maximum(-shift, 0)
    x = np.asarray(x)
    # an int32 array shifted by nothing is already the 32-bit value; anything else is wrapped
    scaled = x if x.dtype == np.int32 and not left.any() else wrap_int32(_i64(x) << left)
    return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(scaled, multiplier), right)


def quantize_multiplier(real: float) -> tuple[int, int]:
    """TFLite QuantizeMultiplier: real = multiplier * 2**(shift-31), multiplier in [2**30, 2**31)."""
    if real == 0.0:
        return 0, 0
    if real < 0 or not math.isfinite(real):
        raise ValueError(f"quantize_multiplier: multiplier must be finite and >= 0, got {real}")
    q, shift = math.frexp(real)
    q_fixed = int(_round_half_away(q * (1 << 31)))
    if q_fixed == 1 << 31:
        q_fixed //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    if shift > 30:
        raise ValueError(f"quantize_multiplier: {real} needs shift {shift} > 30")
    return q_fixed, shift


def _round_half_away(x: float) -> float:
    return math.floor(x + 0.5) if x >= 0 else -math.floor(-x + 0.5)


def clamp_int8(x, act_min=-128, act_max=127) -> np.ndarray:
    """Clamp to [act_min, act_max] (within int8) and narrow to int8."""
    return np.minimum(np.maximum(_i64(x), act_min), act_max).astype(np.int8)


def requantize(acc, bias, multiplier, shift, zero_point, act_min=-128, act_max=127) -> np.ndarray:
    """The output stage of CONV_2D / FULLY_CONNECTED / MEAN: int32 accumulators -> int8.

    out = clamp(MBQM(acc + bias, multiplier, shift) + zero_point); bias/multiplier/shift broadcast
    per output channel (last axis).  acc + bias wraps at 32 bits.
    """
    scaled = multiply_by_quantized_multiplier(add_int32(acc, bias), multiplier, shift)
    scaled += _i64(zero_point)
    return clamp_int8(scaled, act_min, act_max)


def requantize_double(acc, bias, real_multiplier, zero_point, act_min=-128, act_max=127) -> np.ndarray:
    """The output stage of LiteRT's reference FULLY_CONNECTED (reference/integer_ops/fully_connected.h).

    out = clamp(int32(round(double(acc + bias) * real_multiplier)) + zero_point), where
    real_multiplier = double(in_scale) * double(filter_scale) / double(out_scale) (per output channel,
    last axis; evaluated left to right in double, as the kernel does).  acc + bias wraps at 32 bits;
    round() is C's (half away from zero); a double outside the int32 range converts to INT32_MIN (the
    x86-64 conversion the kernel's cast compiles to) and adding the zero point wraps at 32 bits.
    """
    total = wrap_int32(_i64(acc) + _i64(bias)).astype(np.float64)
    v = total * np.asarray(real_multiplier, dtype=np.float64)     # IEEE double product, as in C
    t = np.trunc(v)
    frac = v - t                                                  # exact: |v| < 2**52 or v integral
    rounded = t + np.where(np.abs(frac) >= 0.5, np.sign(v), 0.0)
    in_range = (rounded >= INT32_MIN) & (rounded <= INT32_MAX)
    as_int = np.where(in_range, np.where(in_range, rounded, 0.0).astype(np.int64), INT32_MIN)
    return clamp_int8(wrap_int32(as_int + _i64(zero_point)), act_min, act_max)


# ----------------------------------------------------------------------------------------------
# Element-wise ADD and MUL
# ----------------------------------------------------------------------------------------------
ADD_LEFT_SHIFT = 20  # equal to hdl.isa.ADD_LEFT_SHIFT; int8 ADD uses 20 (int16 would use 15)


def add_params(a_scale: float, a_zero_point: int, b_scale: float, b_zero_point: int,
               out_scale: float) -> dict[str, int]:
    """TFLite kernels/add.cc Prepare for int8: offsets, multipliers and shifts."""
    twice_max = 2.0 * max(float(np.float32(a_scale)), float(np.float32(b_scale)))
    a_mult, a_shift = quantize_multiplier(float(np.float32(a_scale)) / twice_max)
    b_mult, b_shift = quantize_multiplier(float(np.float32(b_scale)) / twice_max)
    out_mult, out_shift = quantize_multiplier(
        twice_max / ((1 << ADD_LEFT_SHIFT) * float(np.float32(out_scale))))
    return dict(a_offset=-int(a_zero_point), a_mult=a_mult, a_shift=a_shift,
                b_offset=-int(b_zero_point), b_mult=b_mult, b_shift=b_shift,
                out_mult=out_mult, out_shift=out_shift)


def add(a, b, *, a_offset, a_mult, a_shift, b_offset, b_mult, b_shift, out_mult, out_shift,
        zero_point, act_min=-128, act_max=127) -> np.ndarray:
    """TFLite reference int8 ADD (integer_ops/add.h), element-wise with broadcasting."""
    sa = _add_input_stage(a, a_offset, a_mult, a_shift)
    sb = _add_input_stage(b, b_offset, b_mult, b_shift)
    raw = multiply_by_quantized_multiplier(add_int32(sa, sb), out_mult, out_shift)
    return clamp_int8(raw + zero_point, act_min, act_max)


def _add_input_stage(x, offset, mult, shift) -> np.ndarray:
    """ADD's rescaling of one input, MBQM((x + offset) << ADD_LEFT_SHIFT, mult, shift), as int32.

    It depends on one int8 value: with parameters that are the same for every element (per tensor,
    as TFLite's are) it is computed for the 256 int8 values once and looked up, a table indexed by
    the input's bits."""
    x = np.asarray(x)
    params = [np.asarray(p) for p in (offset, mult, shift)]
    shape = np.broadcast_shapes(x.shape, *(p.shape for p in params))
    if x.dtype == np.int8 and all(p.size == 1 or (p == p.flat[0]).all() for p in params):
        offset, mult, shift = (p.flat[0] for p in params)
        by_bits = np.arange(256, dtype=np.uint8).view(np.int8)
        table = multiply_by_quantized_multiplier((_i64(by_bits) + offset) << ADD_LEFT_SHIFT, mult, shift)
        return np.broadcast_to(table.astype(np.int32)[x.view(np.uint8)], shape)
    stage = multiply_by_quantized_multiplier((_i64(x) + offset) << ADD_LEFT_SHIFT, mult, shift)
    return stage.astype(np.int32)


def mul_params(a_scale: float, a_zero_point: int, b_scale: float, b_zero_point: int,
               out_scale: float) -> dict[str, int]:
    """TFLite kernels/mul.cc Prepare for int8.

    `double real = in1.scale * in2.scale / out.scale` multiplies and divides *floats*: the real
    multiplier is rounded to float32 twice before it is widened to double (unlike ADD and CONV_2D).
    """
    real = float(np.float32(a_scale) * np.float32(b_scale) / np.float32(out_scale))
    out_mult, out_shift = quantize_multiplier(real)
    return dict(a_offset=-int(a_zero_point), b_offset=-int(b_zero_point),
                out_mult=out_mult, out_shift=out_shift)


def mul(a, b, *, a_offset, b_offset, out_mult, out_shift, zero_point, act_min=-128,
        act_max=127) -> np.ndarray:
    """TFLite reference int8 MUL (integer_ops/mul.h)."""
    product = (_i64(a) + a_offset) * (_i64(b) + b_offset)
    raw = multiply_by_quantized_multiplier(product, out_mult, out_shift)
    return clamp_int8(raw + zero_point, act_min, act_max)


# ----------------------------------------------------------------------------------------------
# Pooling and MEAN
# ----------------------------------------------------------------------------------------------
def round_divide(acc, divisor) -> np.ndarray:
    """AVERAGE_POOL_2D's division: C's (acc +- divisor/2) / divisor, i.e. half away from zero."""
    acc, divisor = _i64(acc), _i64(divisor)
    if np.any(divisor <= 0):
        raise ValueError("round_divide: divisor must be positive")
    half = divisor // 2
    num = np.where(acc > 0, acc + half, acc - half)
    quotient = np.abs(num) // divisor
    return np.where(num < 0, -quotient, quotient)


def pool_output(acc, divisor, act_min=-128, act_max=127) -> np.ndarray:
    """Pooling accumulators to int8: clamp(round_divide(acc, divisor)); divisor=1 for max pool."""
    return clamp_int8(round_divide(acc, divisor), act_min, act_max)


def mean_params(in_scale: float, in_zero_point: int, out_scale: float,
                num_elements: int) -> dict[str, int]:
    """MEAN over `num_elements` (reference/reduce.h QuantizedMeanOrSum, integer path).

    Returns bias, multiplier and shift such that
    out = requantize(sum(x), bias, multiplier, shift, out_zero_point).
    """
    multiplier, shift = quantize_multiplier(float(np.float32(in_scale)) / float(np.float32(out_scale)))
    extra = num_elements.bit_length() - 1          # 63 - CountLeadingZeros(num_elements)
    extra = min(extra, 32, 31 + shift)
    multiplier = (multiplier << extra) // num_elements
    return dict(bias=-int(in_zero_point) * num_elements, multiplier=int(multiplier),
                shift=shift - extra)


# ----------------------------------------------------------------------------------------------
# Exact integer matrix product
# ----------------------------------------------------------------------------------------------
def int_matmul(x, w) -> np.ndarray:
    """x[M, K] (int8 range) @ w[K, N] (int8 range) -> int32, exactly (see `int_matmul_f32`)."""
    x = np.asarray(x)
    w = np.asarray(w)
    if x.shape[-1] != w.shape[0]:
        raise ValueError(f"int_matmul: shapes {x.shape} and {w.shape} do not chain")
    return int_matmul_f32(x.astype(np.float32), w.astype(np.float32))


def int_matmul_f32(x: np.ndarray, w: np.ndarray, out: np.ndarray | None = None, accumulate: bool = False,
                   scratch: np.ndarray | None = None) -> np.ndarray:
    """x[M, K] @ w[K, N] -> int32 for float32 arrays that hold int8-range integers, exactly.

    float32 BLAS on chunks of K <= 1024: every product is an integer of magnitude <= 2**14 and
    every partial sum, in whatever order BLAS adds, an integer of magnitude <= 1024 * 2**14 = 2**24,
    which float32 holds exactly; so each chunk's result is exact and converts to int32 exactly.  The
    chunks add in int32, wrapping at 32 bits like the accumulators.

    With `out` (int32, M*N elements in (M, N) order, any shape and strides) the result goes there,
    added to its contents when `accumulate`; `scratch` (float32 [M, N]) holds each chunk's product.
    """
    k = x.shape[-1]
    if k != w.shape[0]:
        raise ValueError(f"int_matmul_f32: shapes {x.shape} and {w.shape} do not chain")
    if out is None:
        out, accumulate = np.empty(x.shape[:-1] + w.shape[1:], np.int32), False
    for start in range(0, k, _EXACT_F32_K):
        chunk = np.matmul(x[..., start:start + _EXACT_F32_K], w[start:start + _EXACT_F32_K], out=scratch)
        chunk = chunk.reshape(out.shape)
        if accumulate or start:
            accumulate_int32(out, chunk.astype(np.int32))
        else:
            np.copyto(out, chunk, casting="unsafe")          # integers below 2**24: exact in int32
    return out


def accumulate_int32(acc: np.ndarray, x: np.ndarray) -> None:
    """acc += x in place for int32 arrays, wrapping at 32 bits (two's complement, as the hardware's
    accumulators do; numpy's int32 addition wraps silently)."""
    np.add(acc, x, out=acc)
