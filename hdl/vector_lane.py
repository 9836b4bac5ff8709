"""One lane of the vector unit: hdl/numerics.py's arithmetic as Amaranth logic.

Each function adds combinational logic to module `m` and returns a Signal; it mirrors the numpy
function of the same name bit for bit (tests/hdl/test_vector_lane.py checks them against each
other on edge cases and random values).  Intermediate results are Signals, not nested
expressions, so that the netlist stays linear in the number of operations.  The compute unit
instantiates `rows` lanes.
"""

from __future__ import annotations

from amaranth import Cat, Mux, Signal, signed, unsigned
from amaranth.hdl import Value

from softnpu.hdl.isa import ADD_LEFT_SHIFT

__all__ = ["wrap32", "saturating_rounding_doubling_high_mul", "rounding_divide_by_pot",
           "multiply_by_quantized_multiplier", "clamp_shift", "clamp", "requantize", "requantize_double",
           "round_divide", "round_divide_by_reciprocal", "pool_output", "add", "mul"]

INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1


def wrap32(x) -> Value:
    """The low 32 bits as a signed value (two's-complement wrap, as the registers hold)."""
    return Value.cast(x).as_unsigned()[:32].as_signed()


def _sig(m, shape, expr, name) -> Signal:
    s = Signal(shape, name=name)
    m.d.comb += s.eq(expr)
    return s


def saturating_rounding_doubling_high_mul(m, a, b) -> Signal:
    ab = _sig(m, signed(64), a.as_signed() * b.as_signed(), "srdhm_ab")
    # |ab| <= 2**62: every intermediate fits 64 bits, which Verilator keeps in native integers
    total = _sig(m, signed(64), ab + Mux(ab >= 0, 1 << 30, 1 - (1 << 30)), "srdhm_total")
    # C's truncating division by 2**31: bias negative values before the arithmetic shift
    biased = _sig(m, signed(64), total + Mux(total < 0, (1 << 31) - 1, 0), "srdhm_biased")
    high = biased >> 31
    overflow = (a == INT32_MIN) & (b == INT32_MIN)
    return _sig(m, signed(32), Mux(overflow, INT32_MAX, wrap32(high)), "srdhm")


def rounding_divide_by_pot(m, x, exponent) -> Signal:
    """exponent: unsigned, 0..31."""
    x = _sig(m, signed(32), x, "rdbpot_x")
    e = exponent.as_unsigned()
    mask = _sig(m, unsigned(32), ((1 << e) - 1)[:32], "rdbpot_mask")
    remainder = x.as_unsigned() & mask
    threshold = (mask >> 1) + (x < 0)
    return _sig(m, signed(32), wrap32((x >> e) + (remainder > threshold)), "rdbpot")


def clamp_shift(m, shift) -> Signal:
    """Parameter lanes holding a shift are clamped to [-31, 30] (hdl/isa.py)."""
    s = shift.as_signed()
    return _sig(m, signed(6), Mux(s < -31, -31, Mux(s > 30, 30, s)), "shift")


def multiply_by_quantized_multiplier(m, x, multiplier, shift) -> Signal:
    """shift: signed, already in [-31, 30]."""
    s = shift.as_signed()
    left = Mux(s > 0, s, 0).as_unsigned()[:5]
    right = Mux(s > 0, 0, -s).as_unsigned()[:5]
    scaled = _sig(m, signed(32), wrap32(x.as_unsigned()[:32] << left), "mbqm_scaled")
    high = saturating_rounding_doubling_high_mul(m, scaled, multiplier)
    return rounding_divide_by_pot(m, high, right)


def clamp(m, x, lo, hi) -> Signal:
    """Clamp to [lo, hi]; the result is an int8 (lo, hi are int8)."""
    x = x.as_signed()
    return _sig(m, signed(8), Mux(x < lo.as_signed(), lo, Mux(x > hi.as_signed(), hi, x)), "clamp")


def requantize(m, acc, bias, multiplier, shift, zero_point, lo, hi) -> Signal:
    total = _sig(m, signed(32), wrap32(acc.as_signed() + bias.as_signed()), "rq_total")
    scaled = multiply_by_quantized_multiplier(m, total, multiplier, clamp_shift(m, shift))
    return clamp(m, scaled + zero_point.as_signed(), lo, hi)


def requantize_double(m, acc, bias, multiplier_lo, multiplier_hi, zero_point, lo, hi) -> Signal:
    """numerics.requantize_double in integers: the multiplier arrives as the two 32-bit halves of
    an IEEE double; the product is rounded to 53 bits (nearest, ties to even) as a double multiply
    would, then to an integer half away from zero; out of int32 range gives INT32_MIN."""
    total = _sig(m, signed(32), wrap32(acc.as_signed() + bias.as_signed()), "rqd_total")
    bits = Cat(multiplier_lo.as_unsigned()[:32], multiplier_hi.as_unsigned()[:32])
    exp_bits = bits[52:63]
    mant = _sig(m, unsigned(53), Cat(bits[:52], 1), "rqd_mant")
    exp = _sig(m, signed(13), exp_bits - 1075, "rqd_exp")
    neg = total < 0
    magnitude = _sig(m, unsigned(32), Mux(neg, -total, total).as_unsigned()[:32], "rqd_mag")
    q = _sig(m, unsigned(85), magnitude * mant, "rqd_q")
    n = Signal(range(86), name="rqd_n")                 # bit length of q
    for i in range(85):                                  # flat priority encoder: highest set bit wins
        with m.If(q[i]):
            m.d.comb += n.eq(i + 1)
    k = _sig(m, unsigned(6), Mux(n > 53, n - 53, 0), "rqd_k")
    shifted = _sig(m, unsigned(54), q >> k, "rqd_shifted")
    lower = _sig(m, unsigned(85), q & ((1 << k) - 1)[:85], "rqd_lower")
    half = _sig(m, unsigned(85), Mux(k > 0, (1 << (k - 1).as_unsigned()[:6])[:85], 0), "rqd_half")
    up = (k > 0) & ((lower > half) | ((lower == half) & shifted[0]))
    q1 = _sig(m, unsigned(55), shifted + up, "rqd_q1")
    t = _sig(m, signed(14), exp + k, "rqd_t")
    left = Mux(t > 40, 40, Mux(t < 0, 0, t)).as_unsigned()[:6]
    right = Mux(t < 0, Mux(-t > 63, 63, -t), 0).as_unsigned()[:6]
    big = _sig(m, unsigned(96), q1 << left, "rqd_big")
    half_ulp = Mux(right > 0, (1 << (right - 1).as_unsigned()[:6])[:56], 0)
    small = _sig(m, unsigned(56), (q1 + half_ulp) >> right, "rqd_small")
    r = _sig(m, unsigned(96), Mux(t >= 0, big, small), "rqd_r")
    limit = Mux(neg, 1 << 31, (1 << 31) - 1)
    zero = exp_bits == 0                                 # zero or subnormal multiplier
    value = Mux(zero, 0, Mux(r > limit, INT32_MIN, Mux(neg, -r, r)))
    result = _sig(m, signed(32), wrap32(value), "rqd_result")
    return clamp(m, wrap32(result + zero_point.as_signed()), lo, hi)


def round_divide(m, acc, divisor) -> Signal:
    """(acc +- divisor/2) / divisor with C truncation: AVERAGE_POOL_2D's rounding."""
    acc = acc.as_signed()
    half = (divisor.as_unsigned() >> 1).as_signed()
    num = _sig(m, signed(34), Mux(acc > 0, acc + half, acc - half), "rd_num")
    magnitude = Mux(num < 0, -num, num).as_unsigned()
    quotient = _sig(m, signed(35), (magnitude // divisor.as_unsigned()).as_signed(), "rd_q")
    return _sig(m, signed(35), Mux(num < 0, -quotient, quotient), "rd")


def round_divide_by_reciprocal(m, acc, divisor, reciprocal) -> Signal:
    """round_divide without a divider: `reciprocal` = floor(2**31 / divisor) (made once per
    instruction).  The magnitude (< 2**32) times the reciprocal fits 64 bits and underestimates
    the quotient by at most 2; four compare-and-subtract steps correct it."""
    acc = acc.as_signed()
    d = divisor.as_unsigned()
    half = (d >> 1).as_signed()
    num = _sig(m, signed(34), Mux(acc > 0, acc + half, acc - half), "rdr_num")
    # |num| <= 2**31 + 2**15 < 2**32: a 32 x 32-bit product, native in the simulator
    magnitude = _sig(m, unsigned(32), Mux(num < 0, -num, num).as_unsigned()[:32], "rdr_mag")
    product = _sig(m, unsigned(64), magnitude * reciprocal.as_unsigned()[:32], "rdr_product")
    q = _sig(m, unsigned(34), product >> 31, "rdr_q0")
    r = _sig(m, signed(36), magnitude - q * d, "rdr_r0")
    for step in range(4):
        up = r >= d
        q = _sig(m, unsigned(34), q + up, f"rdr_q{step + 1}")
        r = _sig(m, signed(36), r - Mux(up, d, 0), f"rdr_r{step + 1}")
    return _sig(m, signed(35), Mux(num < 0, -q.as_signed(), q.as_signed()), "rdr")


def pool_output(m, acc, divisor, lo, hi) -> Signal:
    return clamp(m, round_divide(m, acc, divisor), lo, hi)


def add(m, a, b, a_offset, a_mult, a_shift, b_offset, b_mult, b_shift, out_mult, out_shift, zero_point, lo,
        hi) -> Signal:
    """TFLite int8 ADD for one lane (numerics.add)."""
    sa = multiply_by_quantized_multiplier(
        m, wrap32((a.as_signed() + a_offset.as_signed()) << ADD_LEFT_SHIFT), a_mult, clamp_shift(m, a_shift))
    sb = multiply_by_quantized_multiplier(
        m, wrap32((b.as_signed() + b_offset.as_signed()) << ADD_LEFT_SHIFT), b_mult, clamp_shift(m, b_shift))
    raw = multiply_by_quantized_multiplier(m, wrap32(sa + sb), out_mult, clamp_shift(m, out_shift))
    return clamp(m, raw + zero_point.as_signed(), lo, hi)


def mul(m, a, b, a_offset, b_offset, out_mult, out_shift, zero_point, lo, hi) -> Signal:
    """TFLite int8 MUL for one lane (numerics.mul)."""
    # wrap32(x * y) == wrap32(wrap32(x) * wrap32(y)): a 32 x 32-bit product, native in the simulator
    product = wrap32(a.as_signed() + a_offset.as_signed()) * wrap32(b.as_signed() + b_offset.as_signed())
    raw = multiply_by_quantized_multiplier(m, wrap32(product), out_mult, clamp_shift(m, out_shift))
    return clamp(m, raw + zero_point.as_signed(), lo, hi)
