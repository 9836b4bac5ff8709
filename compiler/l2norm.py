"""TFLite's int8 L2_NORMALIZATION, bit-exact, in numpy: a host-stage kernel, not an NPU one.

Why it runs on the host: the reference kernel
(tensorflow/lite/kernels/internal/reference/integer_ops/l2normalization.h) scales every pixel by
its own data-dependent multiplier, ``1 / sqrt(sum_c (x_c - zp)^2)``, found by a fixed-point
Newton-Raphson iteration (GetInvSqrtQuantizedMultiplierExp, kernels/internal/common.h).  The NPU's
vector unit requantizes with per-channel multipliers that the compiler fixes at compile time; it has
no reduction over channels into a per-pixel multiplier and no inverse square root, so it cannot
compute this op, bit-exact or otherwise.  The compiler therefore cuts the graph there
(compiler/host_split.py) and the host runs this kernel.

The output is quantized with scale 1/128 and zero point 0 (TFLite's Prepare requires it).
"""

from __future__ import annotations

import numpy as np

from softnpu.hdl import numerics

__all__ = ["inv_sqrt_quantized_multiplier_exp", "l2_normalization", "OUTPUT_SCALE", "OUTPUT_ZERO_POINT"]

OUTPUT_SCALE = 1.0 / 128.0
OUTPUT_ZERO_POINT = 0
_INT32_MAX = (1 << 31) - 1
_INT32_MIN = -(1 << 31)


def _saturating_shift_left(x: np.ndarray, exponent: int) -> np.ndarray:
    """gemmlowp SaturatingRoundingMultiplyByPOT<exponent> for exponent > 0 (int32)."""
    threshold = (1 << (31 - exponent)) - 1
    out = x << exponent
    out = np.where(x > threshold, _INT32_MAX, out)
    return np.where(x < -threshold, _INT32_MIN, out)


def _count_leading_zeros32(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.int64)
    bits = np.zeros_like(x)
    v = x.copy()
    for shift in (16, 8, 4, 2, 1):
        big = v >= (1 << shift)
        bits = np.where(big, bits + shift, bits)
        v = np.where(big, v >> shift, v)
    bits = bits + (v >= 1)          # bit length of x
    return 32 - bits


def inv_sqrt_quantized_multiplier_exp(acc, reverse_shift: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """TFLite GetInvSqrtQuantizedMultiplierExp on an array of int32 sums of squares (>= 0).

    Returns (multiplier, shift) as int64 arrays: 1/sqrt(acc) = multiplier * 2**(shift - 31) with
    ``reverse_shift`` = -1 (the L2 normalization's convention: a left shift is positive)."""
    x = np.asarray(acc, dtype=np.int64)
    if np.any(x < 0) or np.any(x > _INT32_MAX):
        raise ValueError("inv_sqrt_quantized_multiplier_exp: input must be an int32 >= 0")
    small = x <= 1
    x = np.where(small, 4, x)                  # any value > 1; the result is replaced below
    shift = np.full(x.shape, 11, dtype=np.int64)
    while np.any(x >= (1 << 29)):
        big = x >= (1 << 29)
        x = np.where(big, x // 4, x)
        shift = shift + big
    pairs = (_count_leading_zeros32(x) - 1) // 2 - 1
    shift = shift - pairs
    x = x << (2 * pairs)
    srdhm = numerics.saturating_rounding_doubling_high_mul
    # Newton-Raphson for 1/sqrt in gemmlowp FixedPoint<int32, 3> (F3; a product of F_a and F_b is an
    # F_(a+b) with raw value SaturatingRoundingDoublingHighMul; Rescale<3> shifts back, saturating).
    half_input = numerics.rounding_divide_by_pot(x >> 1, 1)
    half_three = (1 << 28) + (1 << 27)
    y = np.full(x.shape, 1 << 28, dtype=np.int64)             # F3 one
    for _ in range(5):
        y3 = _saturating_shift_left(srdhm(srdhm(y, y), y), 6)   # F9 -> F3
        diff = numerics.wrap_int32(srdhm(half_three, y) - srdhm(half_input, y3))  # F6 (wrapping)
        y = _saturating_shift_left(diff, 3)                     # F6 -> F3
    y = srdhm(y, 1518500250)                                    # * sqrt(2)/2 (F0): still F3
    negative = shift < 0
    y = np.where(negative, numerics.wrap_int32(y << np.where(negative, -shift, 0)), y)
    shift = np.where(negative, 0, shift)
    multiplier = np.where(small, _INT32_MAX, y)
    shift = np.where(small, 0, shift) * reverse_shift
    return multiplier.astype(np.int64), shift.astype(np.int64)


def l2_normalization(x: np.ndarray, zero_point: int) -> np.ndarray:
    """int8 [..., C] -> int8 [..., C]: x / ||x||_2 over the last axis, scale 1/128, zero point 0."""
    x = np.asarray(x)
    if x.dtype != np.int8:
        raise TypeError(f"l2_normalization takes int8, got {x.dtype}")
    d = x.astype(np.int64) - int(zero_point)
    acc = (d * d).sum(axis=-1)
    multiplier, shift = inv_sqrt_quantized_multiplier_exp(acc, reverse_shift=-1)
    out = numerics.multiply_by_quantized_multiplier(d, multiplier[..., None], shift[..., None] + 7)
    return np.clip(out, -128, 127).astype(np.int8)
