"""One lane of the vector unit: hdl/numerics.py's arithmetic as Amaranth logic.

Each function adds logic to module `m` and returns a Signal; it mirrors the numpy function of the
same name bit for bit (tests/hdl/test_vector_lane.py checks them against each other on edge cases
and random values, combinational and pipelined).  Intermediate results are Signals, not nested
expressions, so that the netlist stays linear in the number of operations.  The vector unit
instantiates `rows` lanes.

Pipelining: a function that takes `cut` says with it where its stages end, each stage at most one
multiply or one wide add (a compare, a shift around it).  `cut` is how a value crosses a stage
boundary: `comb` (the default: a wire, the whole function one combinational cloud, as the tests
hold it against numerics) or `register` (a flip-flop: the vector unit's pipeline).  The result is
combinational in the last stage (the caller registers it).  Operands called static (multipliers,
shifts, divisor, reciprocal, zero point, clamp bounds) must stay put while the pipeline holds
work; only the values that flow are carried from stage to stage.
"""

from __future__ import annotations

from amaranth import Cat, Mux, Signal, signed, unsigned
from amaranth.hdl import Value

from softnpu.hdl.isa import ADD_LEFT_SHIFT

__all__ = ["wrap32", "comb", "register", "saturating_rounding_doubling_high_mul", "rounding_divide_by_pot",
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


def comb(m, shape, value, name) -> Signal:
    """A stage boundary that is a wire: the function is one combinational cloud."""
    return _sig(m, shape, value, name)


def register(m, shape, value, name) -> Signal:
    """A stage boundary that is a flip-flop (domain `sync`, no enable: the pipeline never stalls)."""
    s = Signal(shape, name=name)
    m.d.sync += s.eq(value)
    return s


def saturating_rounding_doubling_high_mul(m, a, b, cut=comb) -> Signal:
    """Two stages: the 32 x 32-bit multiply | the rounding shift.  `a` arrives with its stage, `b` is
    static.  As numerics does it: gemmlowp's nudge and truncating division by 2**31 come to
    floor((ab + 2**30) / 2**31) for either sign, which reads only the product's bits from 30 up: the
    stage carries those 34 bits and the next adds one and halves them."""
    # |ab| <= 2**62: the product fits 64 bits, which Verilator keeps in native integers
    ab_high = cut(m, signed(34), (a.as_signed() * b.as_signed()) >> 30, "srdhm_ab")
    overflow = cut(m, 1, (a == INT32_MIN) & (b == INT32_MIN), "srdhm_overflow")
    high = _sig(m, signed(34), (ab_high + 1) >> 1, "srdhm_high")
    return _sig(m, signed(32), Mux(overflow, INT32_MAX, wrap32(high)), "srdhm")


def rounding_divide_by_pot(m, x, exponent, static=comb) -> Signal:
    """exponent: unsigned, 0..31, static.  gemmlowp's remainder test as numerics does it: one add
    and a shift, floor((x + nudge) / 2**exponent), the nudge 2**(exponent-1) for x >= 0, one less
    for x < 0, 0 for exponent 0 (both nudges made from the exponent alone)."""
    x = _sig(m, signed(32), x, "rdbpot_x")
    e = exponent.as_unsigned()
    half = static(m, unsigned(31), ((1 << e) >> 1)[:31], "rdbpot_half")
    half_neg = static(m, unsigned(31), (((1 << e) >> 1) - (e != 0))[:31], "rdbpot_half_neg")
    # |x + nudge| < 2**32 and, shifted by at least 1 when the nudge is not 0, fits 32 bits again
    total = _sig(m, signed(33), x + Mux(x < 0, half_neg, half), "rdbpot_total")
    return _sig(m, signed(32), wrap32(total >> e), "rdbpot")


def clamp_shift(m, shift) -> Signal:
    """Parameter lanes holding a shift are clamped to [-31, 30] (hdl/isa.py)."""
    s = shift.as_signed()
    return _sig(m, signed(6), Mux(s < -31, -31, Mux(s > 30, 30, s)), "shift")


def multiply_by_quantized_multiplier(m, x, multiplier, shift, cut=comb, static=comb) -> Signal:
    """Four stages: the left shift | the multiply | the nudge | the rounding right shift.
    shift: signed, already in [-31, 30]; multiplier and shift static.  `static` is how the shift
    amounts made from `shift` are held: `register` takes them off the entries' path (the shift must
    then be in place a cycle before the first entry's first stage)."""
    s = shift.as_signed()
    left = static(m, unsigned(5), Mux(s > 0, s, 0).as_unsigned()[:5], "mbqm_left")
    right = static(m, unsigned(5), Mux(s > 0, 0, -s).as_unsigned()[:5], "mbqm_right")
    scaled = cut(m, signed(32), wrap32(x.as_unsigned()[:32] << left), "mbqm_scaled")
    high = cut(m, signed(32), saturating_rounding_doubling_high_mul(m, scaled, multiplier, cut), "mbqm_high")
    return rounding_divide_by_pot(m, high, right, static)


def clamp(m, x, lo, hi) -> Signal:
    """Clamp to [lo, hi]; the result is an int8 (lo, hi are int8)."""
    x = x.as_signed()
    return _sig(m, signed(8), Mux(x < lo.as_signed(), lo, Mux(x > hi.as_signed(), hi, x)), "clamp")


def requantize(m, acc, bias, multiplier, shift, zero_point, lo, hi, cut=comb) -> Signal:
    """Five stages: the bias add and left shift, the multiply-by-quantized-multiplier's other three,
    the zero point and clamp."""
    total = _sig(m, signed(32), wrap32(acc.as_signed() + bias.as_signed()), "rq_total")
    scaled = multiply_by_quantized_multiplier(m, total, multiplier, clamp_shift(m, shift), cut)
    scaled = cut(m, signed(32), scaled, "rq_scaled")
    return clamp(m, scaled + zero_point.as_signed(), lo, hi)


def _bit_length(value: Value) -> Value:
    """The number of bits up to the highest set one (0 for 0): a balanced tree of halves, log2(width)
    muxes deep (a flat priority encoder is a chain as long as the value is wide)."""
    width = len(value)
    if width == 1:
        return value[0]
    low = 1 << ((width - 1).bit_length() - 1)         # the largest power of two below width
    return Mux(value[low:] != 0, _bit_length(value[low:]) + low, _bit_length(value[:low]))


def requantize_double(m, acc, bias, multiplier_lo, multiplier_hi, zero_point, lo, hi, cut=comb) -> Signal:
    """numerics.requantize_double in integers: the multiplier arrives as the two 32-bit halves of
    an IEEE double; the product is rounded to 53 bits (nearest, ties to even) as a double multiply
    would, then to an integer half away from zero; out of int32 range gives INT32_MIN.

    Nine stages (eight cuts); acc, bias and the multiplier arrive with their stage (the vector unit
    feeds one lane per cycle), zero_point, lo and hi are static."""
    def carry(**values):        # cut every value that a later stage still reads
        return {k: cut(m, v.shape(), v, f"rqd_{k}") for k, v in values.items()}

    # 1: the bias; the multiplier's fields
    total = _sig(m, signed(32), wrap32(acc.as_signed() + bias.as_signed()), "rqd_total")
    bits = Cat(multiplier_lo.as_unsigned()[:32], multiplier_hi.as_unsigned()[:32])
    exp_bits = bits[52:63]
    v = carry(total=total, mant=_sig(m, unsigned(53), Cat(bits[:52], 1), "rqd_mant"),
              exp=_sig(m, signed(13), exp_bits - 1075, "rqd_exp"),
              zero=_sig(m, 1, exp_bits == 0, "rqd_zero"))          # zero or subnormal multiplier
    # 2: the magnitude
    neg = _sig(m, 1, v["total"] < 0, "rqd_neg")
    magnitude = _sig(m, unsigned(32), Mux(neg, -v["total"], v["total"]).as_unsigned()[:32], "rqd_mag")
    v = carry(magnitude=magnitude, neg=neg, mant=v["mant"], exp=v["exp"], zero=v["zero"])
    # 3: the 32 x 53-bit multiply
    v = carry(q=_sig(m, unsigned(85), v["magnitude"] * v["mant"], "rqd_q"), neg=v["neg"], exp=v["exp"],
              zero=v["zero"])
    # 4: the bit length of q, the bits to drop
    q = v["q"]
    n = _sig(m, range(86), _bit_length(q), "rqd_n")
    k = _sig(m, unsigned(6), Mux(n > 53, n - 53, 0), "rqd_k")
    v = carry(q=q, k=k, neg=v["neg"], exp=v["exp"], zero=v["zero"])
    # 5: q split at bit k
    q, k = v["q"], v["k"]
    shifted = _sig(m, unsigned(54), q >> k, "rqd_shifted")
    lower = _sig(m, unsigned(85), q & ((1 << k) - 1)[:85], "rqd_lower")
    half = _sig(m, unsigned(85), Mux(k > 0, (1 << (k - 1).as_unsigned()[:6])[:85], 0), "rqd_half")
    v = carry(shifted=shifted, lower=lower, half=half, k=k, neg=v["neg"], exp=v["exp"], zero=v["zero"])
    # 6: round to 53 bits, nearest, ties to even; the binary exponent of the result
    shifted, lower, half = v["shifted"], v["lower"], v["half"]
    up = (v["k"] > 0) & ((lower > half) | ((lower == half) & shifted[0]))
    t = _sig(m, signed(14), v["exp"] + v["k"], "rqd_t")
    v = carry(q1=_sig(m, unsigned(55), shifted + up, "rqd_q1"),
              left=_sig(m, unsigned(6), Mux(t > 40, 40, Mux(t < 0, 0, t)).as_unsigned()[:6], "rqd_left"),
              right=_sig(m, unsigned(6), Mux(t < 0, Mux(-t > 63, 63, -t), 0).as_unsigned()[:6], "rqd_right"),
              whole=_sig(m, 1, t >= 0, "rqd_whole"), neg=v["neg"], zero=v["zero"])
    # 7: to an integer, half away from zero
    q1, right = v["q1"], v["right"]
    big = _sig(m, unsigned(96), q1 << v["left"], "rqd_big")
    half_ulp = Mux(right > 0, (1 << (right - 1).as_unsigned()[:6])[:56], 0)
    small = _sig(m, unsigned(56), (q1 + half_ulp) >> right, "rqd_small")
    v = carry(r=_sig(m, unsigned(96), Mux(v["whole"], big, small), "rqd_r"), neg=v["neg"], zero=v["zero"])
    # 8: the sign, int32 overflow
    r, neg = v["r"], v["neg"]
    limit = Mux(neg, 1 << 31, (1 << 31) - 1)
    value = Mux(v["zero"], 0, Mux(r > limit, INT32_MIN, Mux(neg, -r, r)))
    result = cut(m, signed(32), wrap32(value), "rqd_result")
    # 9: the zero point and clamp
    return clamp(m, wrap32(result + zero_point.as_signed()), lo, hi)


def round_divide(m, acc, divisor) -> Signal:
    """(acc +- divisor/2) / divisor with C truncation: AVERAGE_POOL_2D's rounding."""
    acc = acc.as_signed()
    half = (divisor.as_unsigned() >> 1).as_signed()
    num = _sig(m, signed(34), Mux(acc > 0, acc + half, acc - half), "rd_num")
    magnitude = Mux(num < 0, -num, num).as_unsigned()
    quotient = _sig(m, signed(35), (magnitude // divisor.as_unsigned()).as_signed(), "rd_q")
    return _sig(m, signed(35), Mux(num < 0, -quotient, quotient), "rd")


def round_divide_by_reciprocal(m, acc, divisor, reciprocal, cut=comb, static=comb) -> Signal:
    """round_divide without a divider: `reciprocal` = floor(2**31 / divisor) (made once per
    instruction).  The magnitude (< 2**32) times the reciprocal fits 64 bits and underestimates
    the quotient by at most 2; it is corrected by comparing the remainder with 1..4 divisors
    at once (as four compare-and-subtract steps would).

    Six stages (five cuts): the magnitude | the reciprocal multiply | the remainder's multiply |
    its subtraction | the correction | the sign.  divisor and reciprocal are static."""
    acc = acc.as_signed()
    d = divisor.as_unsigned()
    half = (d >> 1).as_signed()
    # acc > 0: num = acc + half > 0; else num = acc - half <= 0 and |num| = half - acc (a quotient of 0
    # when num = 0, whatever its sign).  |num| <= 2**31 + 2**15 < 2**32.
    neg = cut(m, 1, acc <= 0, "rdr_neg")
    magnitude = cut(m, unsigned(32), Mux(acc > 0, acc + half, half - acc).as_unsigned()[:32], "rdr_mag")
    # a 32 x 32-bit product, native in the simulator; the stage carries the bits the quotient reads
    q0 = cut(m, unsigned(33), (magnitude * reciprocal.as_unsigned()[:32]) >> 31, "rdr_product")
    neg, magnitude = cut(m, 1, neg, "rdr_neg"), cut(m, unsigned(32), magnitude, "rdr_mag")
    qd = cut(m, unsigned(50), q0 * d, "rdr_qd")
    q0, neg, magnitude = cut(m, unsigned(34), q0, "rdr_q0"), cut(m, 1, neg, "rdr_neg"), \
        cut(m, unsigned(32), magnitude, "rdr_mag")
    r0 = cut(m, signed(36), magnitude - qd, "rdr_r0")
    q0, neg = cut(m, unsigned(34), q0, "rdr_q0"), cut(m, 1, neg, "rdr_neg")
    multiples = [static(m, unsigned(18), k, f"rdr_divisor_x{i + 1}")      # shifts and an add
                 for i, k in enumerate((d, d << 1, d + (d << 1), d << 2))]
    steps = sum((r0 >= k).as_unsigned() for k in multiples)
    q = cut(m, unsigned(34), q0 + steps, "rdr_q")
    neg = cut(m, 1, neg, "rdr_neg")
    return _sig(m, signed(35), Mux(neg, -q.as_signed(), q.as_signed()), "rdr")


def pool_output(m, acc, divisor, lo, hi) -> Signal:
    return clamp(m, round_divide(m, acc, divisor), lo, hi)


def add(m, a, b, a_offset, a_mult, a_shift, b_offset, b_mult, b_shift, out_mult, out_shift, zero_point, lo,
        hi, cut=comb) -> Signal:
    """TFLite int8 ADD for one lane (numerics.add).  Nine stages: both inputs' multiply-by-quantized-
    multiplier (4), the sum's (4), the zero point and clamp."""
    mbqm = multiply_by_quantized_multiplier
    sa = mbqm(m, wrap32((a.as_signed() + a_offset.as_signed()) << ADD_LEFT_SHIFT), a_mult,
              clamp_shift(m, a_shift), cut)
    sb = mbqm(m, wrap32((b.as_signed() + b_offset.as_signed()) << ADD_LEFT_SHIFT), b_mult,
              clamp_shift(m, b_shift), cut)
    total = wrap32(cut(m, signed(32), sa, "add_sa") + cut(m, signed(32), sb, "add_sb"))
    raw = cut(m, signed(32), mbqm(m, total, out_mult, clamp_shift(m, out_shift), cut), "add_raw")
    return clamp(m, raw + zero_point.as_signed(), lo, hi)


def mul(m, a, b, a_offset, b_offset, out_mult, out_shift, zero_point, lo, hi, cut=comb) -> Signal:
    """TFLite int8 MUL for one lane (numerics.mul).  Seven stages: the offsets, the product, the
    multiply-by-quantized-multiplier (4), the zero point and clamp."""
    x = cut(m, signed(32), wrap32(a.as_signed() + a_offset.as_signed()), "mul_a")
    y = cut(m, signed(32), wrap32(b.as_signed() + b_offset.as_signed()), "mul_b")
    # wrap32(x * y) == wrap32(wrap32(x) * wrap32(y)): a 32 x 32-bit product, native in the simulator
    product = cut(m, signed(32), wrap32(x * y), "mul_product")
    raw = multiply_by_quantized_multiplier(m, product, out_mult, clamp_shift(m, out_shift), cut)
    raw = cut(m, signed(32), raw, "mul_raw")
    return clamp(m, raw + zero_point.as_signed(), lo, hi)
