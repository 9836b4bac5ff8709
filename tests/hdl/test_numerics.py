"""hdl/numerics.py is bit-exact with TFLite's int8 reference kernels.

Each layer kind is recomputed from the model's own quantized tensors with `hdl.numerics` only and
compared with the TFLite interpreter running reference kernels, on seeded random inputs plus the
extremes (-128 / 127).  Quantization parameters the converter would not pick are reached by
patching the flatbuffer (random scales and zero points, an active ReLU clamp, a MUL multiplier whose
float32 rounding matters).  The fixed-point primitives are pinned by hand-computed values and, with
hypothesis, against independent big-integer/Fraction formulations of the gemmlowp definitions.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from softnpu.hdl import numerics as N
from tests import oracle as O

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1


# ----------------------------------------------------------------------------------------------
# Helpers: inputs, comparison, windows
# ----------------------------------------------------------------------------------------------
def int8_input_sets(shapes, seed: int, n_random: int = 4) -> list[list[np.ndarray]]:
    """Seeded random int8 inputs, all -128, all 127, a ramp through every int8 value, random
    -128/127 mixes, small values and (several inputs) opposite extremes."""
    rng = np.random.default_rng(seed)
    sets = [[rng.integers(-128, 128, s).astype(np.int8) for s in shapes] for _ in range(n_random)]
    sets.append([np.full(s, -128, np.int8) for s in shapes])
    sets.append([np.full(s, 127, np.int8) for s in shapes])
    sets.append([((np.arange(math.prod(s)) * (2 * i + 1) + 37 * i) % 256 - 128).astype(np.int8).reshape(s)
                 for i, s in enumerate(shapes)])
    sets.append([rng.choice(np.array([-128, 127], np.int8), s) for s in shapes])
    sets.append([rng.integers(-6, 7, s).astype(np.int8) for s in shapes])
    if len(shapes) > 1:
        sets.append([np.full(s, 127 if i == 0 else -128, np.int8) for i, s in enumerate(shapes)])
    return sets


def assert_bit_exact(ref: np.ndarray, got: np.ndarray, what: str) -> None:
    got = np.asarray(got)
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != interpreter {ref.shape}"
    assert got.dtype == np.int8, f"{what}: dtype {got.dtype}"
    bad = np.argwhere(ref != got)
    assert bad.size == 0, (f"{what}: {len(bad)}/{ref.size} elements differ; first "
                           + ", ".join(f"{tuple(i)}: tflite {ref[tuple(i)]} numerics {got[tuple(i)]}"
                                       for i in bad[:6]))


def check_model(tflite: bytes, compute, seed: int, what: str, n_random: int = 4) -> int:
    """Run every input set through the interpreter and `compute(op, model_inputs)`; return #sets."""
    op = O.single_op(tflite)
    shapes = [t.shape for t in op.model_inputs]
    sets = int8_input_sets(shapes, seed, n_random)
    for i, inputs in enumerate(sets):
        (ref,) = O.run_reference(tflite, inputs)
        assert_bit_exact(ref, compute(op, inputs), f"{what} input set {i}")
    return len(sets)


def out_size_and_pad(size: int, k: int, stride: int, padding: str) -> tuple[int, int]:
    """TFLite's output size and leading padding (ComputePaddingHeightWidth, dilation 1)."""
    if padding == "SAME":
        out = -(-size // stride)
        total = max((out - 1) * stride + k - size, 0)
        return out, total // 2
    assert padding == "VALID"
    return (size - k) // stride + 1, 0


def windows(x: np.ndarray, kh: int, kw: int, sh: int, sw: int, padding: str):
    """x (H, W, C) -> patches (OH, OW, kh, kw, C) as int64 and in-bounds mask (OH, OW, kh, kw)."""
    h, w, _ = x.shape
    oh, pt = out_size_and_pad(h, kh, sh, padding)
    ow, pl = out_size_and_pad(w, kw, sw, padding)
    ys = np.arange(oh)[:, None] * sh - pt + np.arange(kh)[None, :]
    xs = np.arange(ow)[:, None] * sw - pl + np.arange(kw)[None, :]
    vy, vx = (ys >= 0) & (ys < h), (xs >= 0) & (xs < w)
    patches = x.astype(np.int64)[np.clip(ys, 0, h - 1)[:, None, :, None],
                                 np.clip(xs, 0, w - 1)[None, :, None, :]]
    valid = vy[:, None, :, None] & vx[None, :, None, :]
    return patches, valid


def multipliers(in_scale: float, filter_scales: np.ndarray, out_scale: float):
    """kernel_util.cc PopulateConvolutionQuantizationParams: per channel, in double."""
    pairs = [N.quantize_multiplier(float(in_scale) * float(fs) / float(out_scale)) for fs in filter_scales]
    return np.array([m for m, _ in pairs], np.int64), np.array([s for _, s in pairs], np.int64)


# ----------------------------------------------------------------------------------------------
# Each layer kind with hdl.numerics only
# ----------------------------------------------------------------------------------------------
def numerics_conv2d(op: O.SingleOp, inputs) -> np.ndarray:
    (x,) = inputs
    w, bias = op.weights, op.bias
    assert op.options["dilation_h_factor"] == op.options["dilation_w_factor"] == 1
    assert not np.any(w.zero_points) and w.quantized_dimension == 0
    cout, kh, kw, cin = w.shape
    zp_in = op.input.zero_point
    patches, valid = windows(x[0], kh, kw, *op.stride, op.padding)
    # padded taps hold the input zero point: they contribute (zp - zp) * w = 0, as TFLite skips them
    patches = np.where(valid[..., None], patches, zp_in)
    oh, ow = patches.shape[:2]
    cols = patches.reshape(oh * ow, kh * kw * cin).astype(np.int8)
    wmat = w.data.reshape(cout, kh * kw * cin)
    acc = N.int_matmul(cols, wmat.T)
    # sum((x - zp) * w) + b == sum(x * w) + (b - zp * sum(w)): the zero point folds into the bias
    bias_eff = bias.data.astype(np.int64) - zp_in * wmat.astype(np.int64).sum(axis=1)
    scales = np.broadcast_to(w.scales, (cout,))
    mult, shift = multipliers(op.input.scale, scales, op.output.scale)
    out = N.requantize(acc, bias_eff, mult, shift, op.output.zero_point, op.act_min, op.act_max)
    return out.reshape(1, oh, ow, cout)


def dense_acc(op: O.SingleOp, x: np.ndarray):
    """FULLY_CONNECTED accumulators, the input zero point folded into the bias."""
    w, bias = op.weights, op.bias
    assert not np.any(w.zero_points)
    n, k = w.shape
    acc = N.int_matmul(x.reshape(-1, k), w.data.T)
    bias_eff = bias.data.astype(np.int64) - op.input.zero_point * w.data.astype(np.int64).sum(axis=1)
    return acc, bias_eff


def numerics_dense(op: O.SingleOp, inputs) -> np.ndarray:
    """LiteRT's reference FULLY_CONNECTED rescales in double (not MultiplyByQuantizedMultiplier)."""
    (x,) = inputs
    acc, bias_eff = dense_acc(op, x)
    n = op.weights.shape[0]
    real = [float(op.input.scale) * float(fs) / float(op.output.scale)
            for fs in np.broadcast_to(op.weights.scales, (n,))]
    out = N.requantize_double(acc, bias_eff, np.array(real), op.output.zero_point, op.act_min, op.act_max)
    return out.reshape(op.output.shape)


def dense_fixed_point(op: O.SingleOp, x: np.ndarray) -> np.ndarray:
    """FULLY_CONNECTED the way CONV_2D requantizes (and TFLite's optimized FC kernels intend to)."""
    acc, bias_eff = dense_acc(op, x)
    n = op.weights.shape[0]
    mult, shift = multipliers(op.input.scale, np.broadcast_to(op.weights.scales, (n,)), op.output.scale)
    out = N.requantize(acc, bias_eff, mult, shift, op.output.zero_point, op.act_min, op.act_max)
    return out.reshape(op.output.shape)


def numerics_add(op: O.SingleOp, inputs) -> np.ndarray:
    a_t, b_t = op.inputs
    a, b = op.operands(inputs)
    params = N.add_params(a_t.scale, a_t.zero_point, b_t.scale, b_t.zero_point, op.output.scale)
    return N.add(a, b, **params, zero_point=op.output.zero_point, act_min=op.act_min, act_max=op.act_max)


def numerics_mul(op: O.SingleOp, inputs) -> np.ndarray:
    a_t, b_t = op.inputs
    a, b = op.operands(inputs)
    params = N.mul_params(a_t.scale, a_t.zero_point, b_t.scale, b_t.zero_point, op.output.scale)
    return N.mul(a, b, **params, zero_point=op.output.zero_point, act_min=op.act_min, act_max=op.act_max)


def _same_pool_quantization(op: O.SingleOp) -> None:
    assert op.input.scale == op.output.scale and op.input.zero_point == op.output.zero_point


def numerics_max_pool(op: O.SingleOp, inputs) -> np.ndarray:
    (x,) = inputs
    _same_pool_quantization(op)
    patches, valid = windows(x[0], *op.filter_size, *op.stride, op.padding)
    acc = np.where(valid[..., None], patches, -(1 << 40)).max(axis=(2, 3))
    return N.pool_output(acc, 1, op.act_min, op.act_max)[None]


def numerics_avg_pool(op: O.SingleOp, inputs) -> np.ndarray:
    (x,) = inputs
    _same_pool_quantization(op)
    patches, valid = windows(x[0], *op.filter_size, *op.stride, op.padding)
    acc = np.where(valid[..., None], patches, 0).sum(axis=(2, 3))
    count = valid.sum(axis=(2, 3))[..., None]          # in-bounds elements only
    return N.pool_output(acc, count, op.act_min, op.act_max)[None]


def numerics_mean(op: O.SingleOp, inputs) -> np.ndarray:
    (x,) = inputs
    assert sorted(op.inputs[1].data.tolist()) == [1, 2]
    _, h, w, _ = x.shape
    acc = x.astype(np.int64).sum(axis=(1, 2))
    p = N.mean_params(op.input.scale, op.input.zero_point, op.output.scale, h * w)
    out = N.requantize(acc, p["bias"], p["multiplier"], p["shift"], op.output.zero_point)
    return out.reshape(op.output.shape)


# ----------------------------------------------------------------------------------------------
# Against the interpreter: converter-made models
# ----------------------------------------------------------------------------------------------
CONV_CASES = [
    # h, w, cin, cout, k, stride, padding, relu
    (8, 8, 3, 4, 3, 1, "same", False),
    (8, 8, 5, 6, 3, 2, "same", False),        # even input, stride 2: asymmetric SAME padding
    (9, 9, 20, 5, 3, 2, "same", True),
    (9, 9, 20, 5, 3, 1, "valid", False),
    (8, 8, 3, 4, 3, 2, "valid", "relu6"),
    (12, 12, 5, 3, 3, 1, "same", "relu6"),
    (6, 6, 20, 7, 1, 1, "valid", False),      # 1x1
]


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "h{}w{}cin{}cout{}k{}s{}{}-{}".format(*c))
def test_conv2d_matches_interpreter(case):
    h, w, cin, cout, k, stride, padding, relu = case
    tfl = O.conv2d(h, w, cin, cout, k, stride, padding, relu, seed=cin + k)
    op = O.single_op(tfl, "CONV_2D")
    assert op.weights.per_channel and op.weights.shape == (cout, k, k, cin)
    assert np.all(op.bias.data != 0)
    assert op.options["fused_activation_function"] == {False: "NONE", True: "RELU", "relu6": "RELU6"}[relu]
    check_model(tfl, numerics_conv2d, seed=h * 100 + cin, what=f"conv {case}")


@pytest.mark.parametrize("relu", [False, True])
def test_dense_matches_interpreter(relu):
    tfl = O.dense(37, 6, relu, seed=3)
    op = O.single_op(tfl, "FULLY_CONNECTED")
    assert op.weights.shape == (6, 37) and np.all(op.bias.data != 0)
    check_model(tfl, numerics_dense, seed=5, what=f"dense relu={relu}", n_random=6)


def test_dense_reference_kernel_is_not_fixed_point():
    """Why numerics_dense uses requantize_double: MultiplyByQuantizedMultiplier disagrees (rarely)."""
    tfl = O.dense(37, 64, False, seed=4)
    op = O.single_op(tfl, "FULLY_CONNECTED")
    rng = np.random.default_rng(31)
    n_fixed_point_diff = 0
    for _ in range(300):
        x = rng.integers(-128, 128, (1, 37)).astype(np.int8)
        (ref,) = O.run_reference(tfl, [x])
        assert_bit_exact(ref, numerics_dense(op, [x]), "dense, many inputs")
        n_fixed_point_diff += int(np.sum(dense_fixed_point(op, x) != ref))
    assert n_fixed_point_diff > 0


@pytest.mark.parametrize("seed", range(4))
def test_dense_random_output_quantization(seed):
    base = O.dense(37, 6, False, seed=3)
    op = O.single_op(base)
    rng = np.random.default_rng(300 + seed)
    tfl = O.patch_tensor(base, op.output.index, scales=_f32(op.output.scale * 2 ** rng.uniform(-3, 3)),
                         zero_points=int(rng.integers(-100, 101)))
    tfl = O.patch_tensor(tfl, op.input.index, zero_points=int(rng.integers(-128, 128)))
    check_model(tfl, numerics_dense, seed=seed, what=f"dense patched {seed}", n_random=6)


def test_dense_per_tensor_weights():
    base = O.dense(37, 6, True, seed=3)
    op = O.single_op(base)
    s_w = _f32(float(op.weights.scales.max()))
    tfl = O.patch_tensor(base, op.weights.index, scales=[s_w], zero_points=[0])
    tfl = O.patch_tensor(tfl, op.bias.index, scales=[_f32(op.input.scale * s_w)], zero_points=[0])
    patched = O.single_op(tfl)
    assert not patched.weights.per_channel
    check_model(tfl, numerics_dense, seed=37, what="dense per-tensor", n_random=6)


@pytest.mark.parametrize("zero_point", [0, -5])
def test_dense_out_of_int32_range_conversion(zero_point):
    """real multiplier 2**40: the kernel's double -> int32 cast yields INT32_MIN, + zp wraps."""
    base = O.dense(37, 6, False, seed=3)
    op = O.single_op(base)
    s_out = _f32(op.input.scale * float(op.weights.scales.min()) / 2.0 ** 40)
    tfl = O.patch_tensor(base, op.output.index, scales=s_out, zero_points=zero_point)
    x = np.random.default_rng(41).integers(-128, 128, (1, 37)).astype(np.int8)
    (ref,) = O.run_reference(tfl, [x])
    assert_bit_exact(ref, numerics_dense(O.single_op(tfl), [x]), "dense, huge multiplier")
    assert np.all(ref == (-128 if zero_point == 0 else 127))


@pytest.mark.parametrize("relu", [False, True])
def test_add_matches_interpreter(relu):
    tfl = O.add((6, 6, 4), relu)
    op = O.single_op(tfl, "ADD")
    assert op.inputs[0].scale != op.inputs[1].scale
    check_model(tfl, numerics_add, seed=7, what=f"add relu={relu}", n_random=8)


def test_mul_by_constant_matches_interpreter():
    tfl = O.mul_by_constant((6, 6, 4))
    op = O.single_op(tfl, "MUL")
    assert op.inputs[1].data is not None and op.inputs[1].shape == (4,)
    check_model(tfl, numerics_mul, seed=11, what="mul", n_random=8)


@pytest.mark.parametrize("k,stride,padding", [(2, 2, "valid"), (3, 2, "same"), (3, 1, "same")])
def test_max_pool_matches_interpreter(k, stride, padding):
    tfl = O.max_pool(k, stride, padding, h=9, w=8, c=3)
    O.single_op(tfl, "MAX_POOL_2D")
    check_model(tfl, numerics_max_pool, seed=13, what=f"max_pool {k} {stride} {padding}")


@pytest.mark.parametrize("k,stride,padding,h,w", [(2, 2, "valid", 8, 8), (3, 1, "same", 8, 8),
                                                  (3, 2, "same", 9, 8), (2, 2, "same", 7, 7)])
def test_avg_pool_matches_interpreter(k, stride, padding, h, w):
    tfl = O.avg_pool(k, stride, padding, h=h, w=w, c=4)
    op = O.single_op(tfl, "AVERAGE_POOL_2D")
    if padding == "same":
        # edge windows are really smaller: SAME padding here pads something
        _, valid = windows(np.zeros((h, w, 1), np.int8), k, k, stride, stride, "SAME")
        assert valid.sum(axis=(2, 3)).min() < k * k
    check_model(tfl, numerics_avg_pool, seed=17, what=f"avg_pool {k} {stride} {padding}", n_random=8)
    assert op.filter_size == (k, k)


@pytest.mark.parametrize("h,w,keep_dims", [(6, 6, False), (6, 6, True), (8, 8, False), (7, 5, True)])
def test_mean_matches_interpreter(h, w, keep_dims):
    tfl = O.mean(h, w, 4, keep_dims)
    op = O.single_op(tfl, "MEAN")
    assert op.options["keep_dims"] == keep_dims
    check_model(tfl, numerics_mean, seed=19, what=f"mean {h}x{w} keep_dims={keep_dims}", n_random=8)


def test_oracle_reads_what_the_interpreter_runs():
    """The oracle's view of a model (tensor indices, constants, shapes) is the interpreter's."""
    tfl = O.conv2d(8, 8, 3, 4, 3, 1, "same", False, seed=6)
    op = O.single_op(tfl, "CONV_2D")
    x = int8_input_sets([op.input.shape], 43)[0]
    tensors = O.run_reference_tensors(tfl, x)
    assert np.array_equal(tensors[op.input.index], x[0])
    assert np.array_equal(tensors[op.weights.index], op.weights.data)
    assert np.array_equal(tensors[op.bias.index], op.bias.data)
    assert np.array_equal(tensors[op.output.index], O.run_reference(tfl, x)[0])
    assert (op.padding, op.stride, op.filter_size) == ("SAME", (1, 1), (3, 3))
    ins, outs = O.model_io(tfl)
    assert [t.index for t in ins] == [op.input.index] and [t.index for t in outs] == [op.output.index]
    with pytest.raises(ValueError):
        O.run_reference(tfl, [x[0].astype(np.int16)])


# ----------------------------------------------------------------------------------------------
# Against the interpreter: patched quantization parameters
# ----------------------------------------------------------------------------------------------
def _f32(v: float) -> float:
    return float(np.float32(v))


@pytest.mark.parametrize("seed", range(6))
def test_conv2d_random_output_quantization(seed):
    base = O.conv2d(8, 8, 5, 6, 3, 2, "same", False, seed=5 + 3)
    op = O.single_op(base)
    rng = np.random.default_rng(seed)
    tfl = O.patch_tensor(base, op.output.index, scales=_f32(op.output.scale * 2 ** rng.uniform(-3, 3)),
                         zero_points=int(rng.integers(-100, 101)))
    tfl = O.patch_tensor(tfl, op.input.index, zero_points=int(rng.integers(-128, 128)))
    check_model(tfl, numerics_conv2d, seed=seed, what=f"conv patched {seed}", n_random=2)


@pytest.mark.parametrize("case", ["conv_relu", "add_relu", "dense_relu", "conv_relu6"])
def test_fused_activation_clamp_active(case):
    """Quantization moved so the fused activation's clamp bites (calibration alone makes the ReLU
    bound coincide with -128): act_min/act_max from kernel_util's rule, applied at both ends."""
    if case == "conv_relu6":
        base = O.conv2d(8, 8, 3, 4, 3, 1, "same", "relu6", seed=6)
        op = O.single_op(base)
        # real outputs x16 (weights and bias scales, exact powers of two) so values pass 6.0
        tfl = O.patch_tensor(base, op.weights.index, scales=op.weights.scales * 16)
        tfl = O.patch_tensor(tfl, op.bias.index, scales=op.bias.scales * 16)
        tfl = O.patch_tensor(tfl, op.output.index, scales=0.125, zero_points=-10)
        expected = (-10, -10 + 48)                                  # 0 and 6.0 / 0.125
        compute = numerics_conv2d
    else:
        base = {"conv_relu": lambda: O.conv2d(8, 8, 3, 4, 3, 1, "same", True, seed=6),
                "add_relu": lambda: O.add((6, 6, 4), True),
                "dense_relu": lambda: O.dense(37, 6, True, seed=3)}[case]()
        op = O.single_op(base)
        tfl = O.patch_tensor(base, op.output.index, zero_points=0)
        expected = (0, 127)
        compute = {"conv_relu": numerics_conv2d, "add_relu": numerics_add, "dense_relu": numerics_dense}[case]
    patched = O.single_op(tfl)
    assert (patched.act_min, patched.act_max) == expected
    check_model(tfl, compute, seed=23, what=f"{case} clamp", n_random=3)
    shapes = [t.shape for t in patched.model_inputs]
    refs = [O.run_reference(tfl, xs)[0] for xs in int8_input_sets(shapes, 1)]
    assert min(r.min() for r in refs) == expected[0]               # the clamp really bit
    if case == "conv_relu6":
        assert max(r.max() for r in refs) == expected[1]


@pytest.mark.parametrize("seed", range(8))
def test_add_random_quantization(seed):
    base = O.add((6, 6, 4), False)
    op = O.single_op(base)
    rng = np.random.default_rng(100 + seed)
    sa, sb = (_f32(math.exp(rng.uniform(math.log(1e-3), math.log(1e-1)))) for _ in range(2))
    so = _f32(max(sa, sb) * 2 ** rng.uniform(-2, 3))
    tfl = base
    for t, s in ((op.inputs[0], sa), (op.inputs[1], sb), (op.output, so)):
        tfl = O.patch_tensor(tfl, t.index, scales=s, zero_points=int(rng.integers(-128, 128)))
    check_model(tfl, numerics_add, seed=seed, what=f"add patched {seed}", n_random=4)


@pytest.mark.parametrize("seed", range(6))
def test_mul_random_quantization(seed):
    base = O.mul_by_constant((6, 6, 4))
    op = O.single_op(base)
    rng = np.random.default_rng(200 + seed)
    sa, sb = (_f32(math.exp(rng.uniform(math.log(1e-3), math.log(1e-1)))) for _ in range(2))
    so = _f32(sa * sb * 2 ** rng.uniform(-2, 12))
    tfl = base
    for t, s in ((op.inputs[0], sa), (op.inputs[1], sb), (op.output, so)):
        tfl = O.patch_tensor(tfl, t.index, scales=s, zero_points=int(rng.integers(-128, 128)))
    check_model(tfl, numerics_mul, seed=seed, what=f"mul patched {seed}", n_random=4)


def _find_float32_sensitive_mul(consts: np.ndarray):
    """Scales where MUL's real multiplier s_a*s_b/s_out evaluated in float32 (as mul.cc does: the
    scales are floats) and in double give different outputs for some x * c, x in int8, zero points 0."""
    rng = np.random.default_rng(12345)
    prods = np.arange(-128, 128)[:, None] * consts[None, :].astype(np.int64)
    for _ in range(20000):
        sa, sb = np.float32(rng.uniform(0.004, 0.02)), np.float32(rng.uniform(0.004, 0.02))
        so = np.float32(float(sa) * float(sb) * 16384 / 120 * rng.uniform(0.9, 1.1))
        real_f32 = float(np.float32(sa * sb) / so)
        real_f64 = float(sa) * float(sb) / float(so)
        qf, qd = N.quantize_multiplier(real_f32), N.quantize_multiplier(real_f64)
        if qf == qd:
            continue
        of = N.multiply_by_quantized_multiplier(prods, *qf)
        od = N.multiply_by_quantized_multiplier(prods, *qd)
        diff = (of != od) & (np.abs(of) <= 127) & (np.abs(od) <= 127)
        if diff.any():
            return float(sa), float(sb), float(so), int(diff.sum())
    raise AssertionError("no float32-sensitive MUL scales found")


def test_mul_multiplier_rounds_scales_product_in_float32():
    """mul.cc: `double real = in1.scale * in2.scale / out.scale` is float arithmetic, then widened."""
    base = O.mul_by_constant((16, 16, 8))
    op = O.single_op(base)
    consts = np.array([127, -128, 113, -97, 89, -71, 61, 53], np.int8)
    sa, sb, so, n_diff = _find_float32_sensitive_mul(consts)
    tfl = O.patch_tensor(base, op.inputs[0].index, scales=sa, zero_points=0)
    tfl = O.patch_tensor(tfl, op.inputs[1].index, scales=sb, zero_points=0, data=consts)
    tfl = O.patch_tensor(tfl, op.output.index, scales=so, zero_points=0)
    x = np.broadcast_to(np.arange(-128, 128).reshape(1, 16, 16, 1), (1, 16, 16, 8)).astype(np.int8)
    (ref,) = O.run_reference(tfl, [x])
    patched = O.single_op(tfl)
    assert_bit_exact(ref, numerics_mul(patched, [x]), f"mul float32-sensitive ({n_diff} sensitive products)")
    # the double-precision multiplier would have produced a different tensor
    real_f64 = sa * sb / so
    mult, shift = N.quantize_multiplier(real_f64)
    wrong = N.clamp_int8(N.multiply_by_quantized_multiplier(x.astype(np.int64) * consts, mult, shift))
    assert not np.array_equal(wrong, ref)


@pytest.mark.parametrize("ratio_log2", [0.0, -3.3, 2.7, 6.5, -12.0, -27.5, -33.0])
@pytest.mark.parametrize("keep_dims", [False, True])
def test_mean_random_quantization(ratio_log2, keep_dims):
    """MEAN over 8x8 (power of two) and 7x5 with in/out scale ratios from 2**-33 to 2**6.5."""
    rng = np.random.default_rng(int(abs(ratio_log2) * 10) + keep_dims)
    for h, w in ((8, 8), (7, 5)):
        base = O.mean(h, w, 4, keep_dims)
        op = O.single_op(base)
        s_in = _f32(math.exp(rng.uniform(math.log(1e-3), math.log(1e-1))))
        s_out = _f32(s_in / 2 ** ratio_log2)
        zp_in = int(rng.integers(-128, 128))
        zp_out = zp_in if ratio_log2 == 0 else int(rng.integers(-128, 128))
        tfl = O.patch_tensor(base, op.input.index, scales=s_in, zero_points=zp_in)
        tfl = O.patch_tensor(tfl, op.output.index, scales=s_out, zero_points=zp_out)
        check_model(tfl, numerics_mean, seed=h + w, what=f"mean {h}x{w} ratio 2**{ratio_log2}", n_random=3)


def test_mean_identical_quantization_divides_like_the_interpreter():
    """in/out quantization identical: older TFLite took a plain integer-division path here."""
    base = O.mean(6, 6, 4, False)
    op = O.single_op(base)
    tfl = O.patch_tensor(base, op.output.index, scales=op.input.scale, zero_points=op.input.zero_point)
    # every residue of the sum modulo 36, both signs: tie and truncation behaviour show up
    x = np.zeros((1, 6, 6, 4), np.int8)
    x[..., 0] = np.arange(-18, 18).reshape(6, 6)
    x[..., 1] = -np.arange(-18, 18).reshape(6, 6) - 1
    x[..., 2] = 127
    x[..., 3] = -128
    for shift in range(0, 36, 5):
        xi = x.copy()
        xi[0, 0, 0, :2] += shift
        (ref,) = O.run_reference(tfl, [xi])
        assert_bit_exact(ref, numerics_mean(O.single_op(tfl), [xi]), f"mean identity shift {shift}")
    check_model(tfl, numerics_mean, seed=29, what="mean identical quantization", n_random=6)


# ----------------------------------------------------------------------------------------------
# Hand-computed edge cases of the fixed-point primitives
# ----------------------------------------------------------------------------------------------
def test_srdhm_hand_values():
    f = N.saturating_rounding_doubling_high_mul
    assert f(INT32_MIN, INT32_MIN) == INT32_MAX                  # the one overflow: saturates
    assert f(INT32_MIN, INT32_MAX) == -2147483647
    assert f(INT32_MAX, INT32_MAX) == 2147483646
    assert f(1 << 30, 1 << 30) == 1 << 29
    assert f(1, 1 << 30) == 1                                     # +0.5 -> 1
    assert f(-1, 1 << 30) == 0                                    # -0.5 -> 0 (ties toward +inf)
    assert f(3, 1 << 30) == 2                                     # +1.5 -> 2
    assert f(-3, 1 << 30) == -1                                   # -1.5 -> -1
    assert f(0, INT32_MIN) == 0
    assert list(f(np.array([INT32_MIN, 5]), np.array([INT32_MIN, 1 << 30]))) == [INT32_MAX, 3]


def test_rounding_divide_by_pot_hand_values():
    f = N.rounding_divide_by_pot
    cases = [(5, 1, 3), (-5, 1, -3), (3, 1, 2), (-3, 1, -2), (7, 2, 2), (6, 2, 2), (-6, 2, -2),
             (2, 2, 1), (-2, 2, -1), (1, 2, 0), (-1, 2, 0), (-7, 2, -2), (-10, 2, -3), (-9, 2, -2),
             # exponent 0: identity, even at the int32 ends
             (INT32_MIN, 0, INT32_MIN), (INT32_MAX, 0, INT32_MAX), (-1, 0, -1),
             # exponent 31
             (INT32_MAX, 31, 1), (INT32_MIN, 31, -1), (1 << 30, 31, 1), (-(1 << 30), 31, -1),
             ((1 << 30) - 1, 31, 0), (-(1 << 30) + 1, 31, 0), (0, 31, 0)]
    for x, e, want in cases:
        assert f(x, e) == want, (x, e)
    xs, es, wants = (np.array(c) for c in zip(*cases, strict=True))
    assert np.array_equal(f(xs, es), wants)
    for bad in (-1, 32):
        with pytest.raises(ValueError):
            f(1, bad)


def test_round_divide_hand_values():
    f = N.round_divide
    cases = [(5, 2, 3), (-5, 2, -3), (3, 2, 2), (-3, 2, -2), (4, 3, 1), (-4, 3, -1), (5, 3, 2),
             (-5, 3, -2), (0, 4, 0), (1, 3, 0), (-1, 3, 0), (2, 4, 1), (-2, 4, -1), (7, 4, 2),
             (-6, 4, -2), (-4, 9, 0), (-5, 9, -1), (4, 9, 0), (5, 9, 1), (127 * 9, 9, 127),
             (-128 * 4, 4, -128), (-254, 4, -64), (-253, 4, -63), (1, 1, 1), (-128, 1, -128)]
    for acc, d, want in cases:
        assert f(acc, d) == want, (acc, d)
    accs, ds, wants = (np.array(c) for c in zip(*cases, strict=True))
    assert np.array_equal(f(accs, ds), wants)
    with pytest.raises(ValueError):
        f(1, 0)
    assert np.array_equal(N.pool_output(np.array([1000, -1000, 10]), np.array([2, 2, 4])), [127, -128, 3])


def test_mbqm_hand_values():
    f = N.multiply_by_quantized_multiplier
    # shift -31: everything but the rounding is shifted out
    assert f(INT32_MAX, INT32_MAX, -31) == 1
    assert f(INT32_MIN, 1 << 30, -31) == -1                       # -0.5 -> -1 (away from zero)
    assert f(1 << 30, 1 << 30, -31) == 0                          # 0.25
    assert f(INT32_MIN, INT32_MIN, -31) == 1                      # saturated SRDHM, then /2**31
    # shift +30 (QuantizeMultiplier's largest)
    assert f(1, 1 << 30, 30) == 1 << 29
    assert f(-1, 1 << 30, 30) == -(1 << 29)
    assert f(2, 1 << 30, 30) == -(1 << 30)                        # 2 << 30 wraps to INT32_MIN
    # negative values and TFLite's double rounding (SRDHM rounds, then RDBP rounds again)
    assert f(-3, 1 << 30, -1) == -1                               # -0.75
    assert f(3, 1 << 30, -1) == 1                                 # 0.75
    assert f(5, 1 << 30, -1) == 2                                 # 1.25 -> 2.5 -> 3 -> 1.5 -> 2
    assert f(-5, 1 << 30, -1) == -1                               # -1.25 -> -2.5 -> -2 -> -1
    # 100 * sqrt(1/2) / 2 = 35.36, but 70.71 -> 71 -> 35.5 -> 36: double rounding again
    assert f(100, 1518500250, -1) == 36
    assert f(-100, 1518500250, -1) == -36
    assert f(7, 0, 0) == 0


def test_requantize_wraps_acc_plus_bias():
    assert N.wrap_int32(1 << 31) == INT32_MIN
    assert N.wrap_int32(INT32_MIN - 1) == INT32_MAX
    assert N.wrap_int32((1 << 32) + 5) == 5
    # INT32_MAX + 1 wraps to INT32_MIN; * 0.5 * 2**-24 = -64
    assert N.requantize(INT32_MAX, 1, 1 << 30, -24, 0) == -64
    assert N.requantize(INT32_MIN, -1, 1 << 30, -24, 0) == 64
    assert N.requantize(INT32_MAX, 0, 1 << 30, -24, 0) == 64
    out = N.requantize(np.array([[1000, -1000]]), np.array([24, -24]), np.array([1 << 30, 1 << 30]),
                       np.array([-3, -4]), -5, act_min=-20, act_max=100)
    assert out.dtype == np.int8 and out.tolist() == [[59, -20]]   # 1024/16 - 5 ; -1024/32 - 5 -> clamp


def test_requantize_double_hand_values():
    f = N.requantize_double
    assert f(1, 0, 0.5, 0) == 1                                    # 0.5 -> 1 (half away from zero)
    assert f(-1, 0, 0.5, 0) == -1
    assert f(3, 0, 0.5, 0) == 2 and f(-3, 0, 0.5, 0) == -2          # 1.5 -> 2, -1.5 -> -2
    assert f(5, 0, 0.5, 0) == 3                                    # 2.5 -> 3 (not banker's 2)
    assert f(1, 0, 0.49999999999999994, 0) == 0                    # floor(v + 0.5) would give 1
    assert f(-1, 0, 0.49999999999999994, 0) == 0
    assert f(INT32_MAX, 1, 2.0 ** -24, 0) == -128                  # acc + bias wraps to INT32_MIN
    assert f(1, 0, 2.0 ** 40, 0) == -128                           # out of int32 -> INT32_MIN
    assert f(1, 0, 2.0 ** 40, -5) == 127                           # INT32_MIN - 5 wraps
    assert f(-1, 0, 2.0 ** 40, 3) == -128
    out = f(np.array([[100, -100]]), np.array([7, -7]), np.array([0.1, 0.25]), -3, act_min=-20)
    assert out.dtype == np.int8 and out.tolist() == [[8, -20]]     # 10.7 -> 11 - 3; -26.75 -> -27 - 3


def test_quantize_multiplier_hand_values():
    q = N.quantize_multiplier
    assert q(0.0) == (0, 0)
    assert q(1.0) == (1 << 30, 1)
    assert q(0.5) == (1 << 30, 0)
    assert q(0.25) == (1 << 30, -1)
    assert q(0.75) == (1610612736, 0)
    assert q(2.0 ** -31) == (1 << 30, -30)
    assert q(2.0 ** -32) == (1 << 30, -31)
    assert q(2.0 ** -33) == (0, 0)                                 # flushed to zero below 2**-32
    assert q(2.0 ** 29) == (1 << 30, 30)
    assert q(1 - 2.0 ** -31) == (INT32_MAX, 0)                     # largest significand
    assert q(1 - 2.0 ** -32) == (1 << 30, 1)                       # .5 rounds away, to 2**31 -> renormalised
    assert q(1 - 2.0 ** -33) == (1 << 30, 1)
    assert q(0.5 + 2.0 ** -32) == ((1 << 30) + 1, 0)               # tie rounds away from zero
    assert q(0.5 + 2.0 ** -33) == (1 << 30, 0)
    with pytest.raises(ValueError):
        q(-0.5)


def test_mean_params_hand_values():
    assert N.mean_params(1.0, 0, 1.0, 1) == dict(bias=0, multiplier=1 << 30, shift=1)
    assert N.mean_params(1.0, 0, 1.0, 4) == dict(bias=0, multiplier=1 << 30, shift=-1)
    # 2**35 // 36 = 954437176; shift 0 - 5
    assert N.mean_params(0.5, 3, 1.0, 36) == dict(bias=-108, multiplier=954437176, shift=-5)
    # 31 + shift limits the extra bits: 2**-28 -> (2**30, -27); extra min(6, 32, 4) = 4
    assert N.mean_params(2.0 ** -28, -7, 1.0, 64) == dict(bias=448, multiplier=1 << 28, shift=-31)


def test_add_and_mul_params_hand_values():
    p = N.add_params(0.5, 3, 0.25, -4, 1.0)
    # twice_max = 1.0: a 0.5 -> (2**30, 0); b 0.25 -> (2**30, -1); out 1/2**20 -> (2**30, -19)
    assert p == dict(a_offset=-3, a_mult=1 << 30, a_shift=0, b_offset=4, b_mult=1 << 30, b_shift=-1,
                     out_mult=1 << 30, out_shift=-19)
    # (10-3)*0.5 + (-8+4)*0.25 = 2.5 -> ADD's integer path: 7*2**20*0.5 + (-4)*2**20*0.25 = 2.5*2**20
    assert N.add(10, -8, **p, zero_point=1) == 4                   # round(2.5) = 3, + 1
    m = N.mul_params(0.5, 1, 0.25, -2, 0.5)
    assert m == dict(a_offset=-1, b_offset=2, out_mult=1 << 30, out_shift=-1)
    assert N.mul(np.array([5, -3]), 2, **m, zero_point=0).tolist() == [4, -4]    # 16/4, -16/4


# ----------------------------------------------------------------------------------------------
# hypothesis: against independent Fraction / big-integer formulations
# ----------------------------------------------------------------------------------------------
def _round_half_up(v: Fraction) -> int:
    return math.floor(v + Fraction(1, 2))


def _round_half_away(v: Fraction) -> int:
    return int(math.copysign(math.floor(abs(v) + Fraction(1, 2)), v)) if v else 0


def ref_srdhm(a: int, b: int) -> int:
    """gemmlowp: round(a*b / 2**31) with the nudge (1<<30 / 1-(1<<30)) and C truncation, i.e.
    ties toward +infinity; the single overflow INT32_MIN*INT32_MIN saturates."""
    if a == b == INT32_MIN:
        return INT32_MAX
    return _round_half_up(Fraction(a * b, 1 << 31))


def ref_mbqm(x: int, m: int, shift: int) -> int:
    left, right = max(shift, 0), max(-shift, 0)
    xs = ((x << left) + (1 << 31)) % (1 << 32) - (1 << 31)        # int32 wrap of x * 2**left
    return _round_half_away(Fraction(ref_srdhm(xs, m), 1 << right))


int32s = st.integers(INT32_MIN, INT32_MAX)


@settings(max_examples=250, deadline=None)
@given(a=int32s, b=int32s)
@example(a=INT32_MIN, b=INT32_MIN).via("saturation")
@example(a=INT32_MIN, b=INT32_MAX).via("extreme")
def test_srdhm_against_fraction(a, b):
    assert N.saturating_rounding_doubling_high_mul(a, b) == ref_srdhm(a, b)


@settings(max_examples=400, deadline=None)
@given(x=int32s, m=st.one_of(st.integers(1 << 30, INT32_MAX), st.integers(0, INT32_MAX)),
       shift=st.integers(-31, 30))
@example(x=INT32_MIN, m=INT32_MAX, shift=-31).via("bottom of range")
@example(x=INT32_MAX, m=INT32_MAX, shift=30).via("top of range")
def test_mbqm_against_big_int(x, m, shift):
    assert N.multiply_by_quantized_multiplier(x, m, shift) == ref_mbqm(x, m, shift)


@settings(max_examples=120, deadline=None)
@given(xs=st.lists(int32s, min_size=1, max_size=40), m=st.integers(1 << 30, INT32_MAX),
       shift=st.integers(-31, 30))
def test_mbqm_vectorised_matches_scalar(xs, m, shift):
    got = N.multiply_by_quantized_multiplier(np.array(xs, np.int64), m, shift)
    assert got.tolist() == [ref_mbqm(x, m, shift) for x in xs]


@settings(max_examples=250, deadline=None)
@given(x=int32s, e=st.integers(0, 31))
def test_rounding_divide_by_pot_against_fraction(x, e):
    assert N.rounding_divide_by_pot(x, e) == _round_half_away(Fraction(x, 1 << e))


@settings(max_examples=250, deadline=None)
@given(acc=int32s, bias=st.integers(-(1 << 20), 1 << 20),
       real=st.one_of(st.floats(2.0 ** -40, 2.0 ** 4), st.sampled_from([0.5, 0.25, 0.49999999999999994])),
       zp=st.integers(-128, 127))
def test_requantize_double_against_fraction(acc, bias, real, zp):
    total = ((acc + bias + (1 << 31)) % (1 << 32)) - (1 << 31)
    v = float(total) * real                                        # the C double product
    r = _round_half_away(Fraction(v))
    r = r if INT32_MIN <= r <= INT32_MAX else INT32_MIN
    want = min(max(((r + zp + (1 << 31)) % (1 << 32)) - (1 << 31), -128), 127)
    assert N.requantize_double(acc, bias, real, zp) == want


@settings(max_examples=250, deadline=None)
@given(acc=st.integers(-(1 << 24), 1 << 24), d=st.integers(1, 4096))
def test_round_divide_against_fraction(acc, d):
    assert N.round_divide(acc, d) == _round_half_away(Fraction(acc, d))


@settings(max_examples=250, deadline=None)
@given(real=st.floats(2.0 ** -32, 2.0 ** 29 * 1.5, allow_nan=False))
def test_quantize_multiplier_is_nearest(real):
    m, shift = N.quantize_multiplier(real)
    assert (1 << 30) <= m <= INT32_MAX and -31 <= shift <= 30
    # m * 2**(shift-31) is real rounded to 31 significant bits, ties away from zero
    exact = Fraction(real) * 2 ** (31 - shift)
    assert m == _round_half_away(exact) or (m == 1 << 30 and _round_half_away(exact) == 1 << 31)


@settings(max_examples=60, deadline=None)
@given(m=st.integers(1, 6), k=st.integers(1, 3000), n=st.integers(1, 5), seed=st.integers(0, 2**32 - 1))
def test_int_matmul_exact(m, k, n, seed):
    rng = np.random.default_rng(seed)
    x = rng.choice(np.array([-128, 127, -127, 0], np.int8), (m, k)) if seed % 2 else \
        rng.integers(-128, 128, (m, k)).astype(np.int8)
    w = rng.choice(np.array([-128, 127], np.int8), (k, n)) if seed % 3 == 0 else \
        rng.integers(-128, 128, (k, n)).astype(np.int8)
    want = x.astype(np.int64) @ w.astype(np.int64)
    got = N.int_matmul(x, w)
    assert got.dtype == np.int32 and np.array_equal(got, want)


def test_int_matmul_worst_case_k():
    k = 5000
    x = np.full((2, k), -128, np.int8)
    w = np.full((k, 3), -128, np.int8)
    assert np.all(N.int_matmul(x, w) == 16384 * k)
    with pytest.raises(ValueError):
        N.int_matmul(x, w[:10])
