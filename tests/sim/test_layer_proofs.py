"""Proofs: single quantized layers, lowered by compiler/emit.py to tiled, double-buffered NPU
programs, run on the ISS bit-exactly against the TFLite interpreter (reference kernels)."""

import numpy as np
import pytest

from softnpu.compiler import emit, layout
from softnpu.hdl import isa, numerics
from softnpu.hdl.config import preset
from softnpu.hdl.isa import Add, ConvMode, Mul
from softnpu.sim.iss import ISS
from tests import oracle

X_AT, Y_AT, B_AT, W_AT, P_AT, PROGRAM_AT = 0x10000, 0x80000, 0xC0000, 0x100000, 0x300000, 0x380000


def _same_pads(size, k, s):
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def _pads(op, h, w, kh, kw):
    if op.padding == "SAME":
        sh, sw = op.stride
        return (*_same_pads(h, kh, sh), *_same_pads(w, kw, sw))
    return (0, 0, 0, 0)


def _random_input(tensor, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(-128, 128, tensor.shape, dtype=np.int8)
    x.flat[:2] = (-128, 127)
    return x


def _finish(program):
    return program + [isa.Finish()]


def _run(iss, program, y: emit.Activation, shape):
    stats = iss.run_program(isa.encode_program(_finish(program)), PROGRAM_AT)
    b = iss.config.cols
    raw = iss.read(y.addr, y.nbytes(b)).view(np.int8).reshape(y.blocks(b), y.h, y.w, b)
    return layout.from_blocked(raw, y.c).reshape(shape), stats


def _activation(iss, addr, x_hwc):
    b = iss.config.cols
    iss.write(addr, layout.to_blocked(x_hwc, b))
    h, w, c = x_hwc.shape
    return emit.Activation(addr, h, w, c)


def _conv_on_iss(cfg, op, x):
    """CONV_2D or FULLY_CONNECTED of the oracle's op on input x (TFLite layout)."""
    iss = ISS(cfg)
    b = cfg.cols
    w = op.weights.data
    if op.opcode == "FULLY_CONNECTED":
        w = w.reshape(w.shape[0], 1, 1, w.shape[1])
        x_hwc = x.reshape(1, 1, -1)
        kh = kw = stride = 1
        pads = (0, 0, 0, 0)
        out_shape = op.output.shape
    else:
        x_hwc = x[0]
        kh, kw = op.filter_size
        stride = op.stride[0]
        pads = _pads(op, x_hwc.shape[0], x_hwc.shape[1], kh, kw)
        out_shape = op.output.shape
    zp_in = op.input.zero_point
    bias = op.bias.data.astype(np.int64) if op.bias is not None else np.zeros(w.shape[0], np.int64)
    folded = bias - zp_in * w.reshape(w.shape[0], -1).astype(np.int64).sum(axis=1)
    w_scales = np.broadcast_to(op.weights.scales, (w.shape[0],))
    reals = [float(op.input.scale) * float(s) / float(op.output.scale) for s in w_scales]
    if op.opcode == "FULLY_CONNECTED":     # TFLite's reference FC rescales in double precision
        rounding = isa.Rounding.DOUBLE
        params = layout.pack_requant_params_double(folded, reals, b)
    else:
        rounding = isa.Rounding.FIXED
        mults = [numerics.quantize_multiplier(r) for r in reals]
        params = layout.pack_requant_params(folded, [m for m, _ in mults], [s for _, s in mults], b)
    iss.write(W_AT, layout.pack_conv_weights(w, b))
    iss.write(P_AT, params)
    xa = _activation(iss, X_AT, x_hwc)
    oh, ow = (1, 1) if op.opcode == "FULLY_CONNECTED" else out_shape[1:3]
    y = emit.Activation(Y_AT, oh, ow, w.shape[0])
    program = emit.conv2d(cfg, xa, y, weights=W_AT, params=P_AT, kh=kh, kw=kw, stride=stride, pads=pads,
                          pad_value=zp_in, zero_point=op.output.zero_point, act_min=op.act_min,
                          act_max=op.act_max, rounding=rounding, first=True)
    return _run(iss, program, y, out_shape)


CONFIGS = ["tiny", "default"]


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("stride, padding, cin, cout, relu", [
    (1, "same", 3, 8, True),
    (2, "same", 5, 6, False),
    (1, "valid", 20, 5, True),
    (2, "valid", 6, 20, False),
])
def test_conv2d_3x3_bit_exact(config, stride, padding, cin, cout, relu):
    model = oracle.conv2d(h=11, w=10, cin=cin, cout=cout, k=3, stride=stride, padding=padding, relu=relu,
                          seed=cin * 7 + cout)
    op = oracle.single_op(model, "CONV_2D")
    for seed in range(2):
        x = _random_input(op.input, seed)
        expected = oracle.run_reference(model, [x])[0]
        got, stats = _conv_on_iss(preset(config), op, x)
        np.testing.assert_array_equal(got, expected)
        assert stats.counters["mac_active"] > 0


def test_conv2d_tiles_across_rows_groups_and_input_chunks():
    """A layer bigger than the tiny scratchpads: row tiles, several out-block groups, split K."""
    cfg = preset("tiny")
    model = oracle.conv2d(h=16, w=16, cin=40, cout=36, k=3, stride=1, padding="same", relu=True, seed=3)
    op = oracle.single_op(model, "CONV_2D")
    x = _random_input(op.input, 5)
    got, stats = _conv_on_iss(cfg, op, x)
    np.testing.assert_array_equal(got, oracle.run_reference(model, [x])[0])
    plan = emit.plan_conv(cfg, emit.Activation(0, 16, 16, 40), 16, 16, 36, 3, 3, 1, (1, 1, 1, 1))
    assert plan.rows_per_tile < 16 or plan.in_blocks_per_step < 10 or plan.out_blocks_per_tile < 9


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("k, n, relu", [(37, 10, False), (300, 64, True)])
def test_fully_connected_bit_exact(config, k, n, relu):
    model = oracle.dense(k=k, n=n, relu=relu, seed=4)
    op = oracle.single_op(model, "FULLY_CONNECTED")
    for seed in range(8):
        x = _random_input(op.input, seed)
        got, _ = _conv_on_iss(preset(config), op, x)
        np.testing.assert_array_equal(got, oracle.run_reference(model, [x])[0])


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("relu", [False, True])
def test_residual_add_bit_exact(config, relu):
    cfg = preset(config)
    model = oracle.add(shape=(7, 9, 6), relu=relu, seed=2)
    op = oracle.single_op(model, "ADD")
    xs = [_random_input(t, 10 + i) for i, t in enumerate(op.model_inputs)]
    iss = ISS(cfg)
    a = _activation(iss, X_AT, op.operands(xs)[0][0])
    b = _activation(iss, B_AT, op.operands(xs)[1][0])
    p = numerics.add_params(op.inputs[0].scale, op.inputs[0].zero_point, op.inputs[1].scale,
                            op.inputs[1].zero_point, op.output.scale)
    iss.write(P_AT, layout.pack_lane_params([p[k] for k in Add.PARAMS], cfg.cols))
    y = emit.Activation(Y_AT, a.h, a.w, a.c)
    program = emit.elementwise(cfg, Add, a, y, b=b, params=P_AT, zero_point=op.output.zero_point,
                               act_min=op.act_min, act_max=op.act_max, first=True)
    got, _ = _run(iss, program, y, op.output.shape)
    np.testing.assert_array_equal(got, oracle.run_reference(model, xs)[0])


@pytest.mark.parametrize("config", CONFIGS)
def test_mul_by_per_channel_constant_bit_exact(config):
    cfg = preset(config)
    model = oracle.mul_by_constant(shape=(5, 6, 7), seed=3)
    op = oracle.single_op(model, "MUL")
    x = _random_input(op.model_inputs[0], 4)
    operands = op.operands([x])
    tensor_first = op.inputs[0].data is None
    act, const = (0, 1) if tensor_first else (1, 0)
    iss = ISS(cfg)
    a = _activation(iss, X_AT, operands[act][0])
    c = operands[const].reshape(-1).astype(np.int64)
    blocks = np.zeros((a.blocks(cfg.cols) * cfg.cols,), np.int32)
    blocks[:c.size] = c
    iss.write(B_AT, blocks)
    ta, tc = op.inputs[act], op.inputs[const]
    p = numerics.mul_params(ta.scale, ta.zero_point, tc.scale, tc.zero_point, op.output.scale)
    iss.write(P_AT, layout.pack_lane_params([p[k] for k in Mul.PARAMS], cfg.cols))
    y = emit.Activation(Y_AT, a.h, a.w, a.c)
    program = emit.elementwise(cfg, Mul, a, y, b_const=B_AT, params=P_AT, zero_point=op.output.zero_point,
                               act_min=op.act_min, act_max=op.act_max, first=True)
    got, _ = _run(iss, program, y, op.output.shape)
    np.testing.assert_array_equal(got, oracle.run_reference(model, [x])[0])


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("k, stride, padding", [(2, 2, "valid"), (3, 2, "same"), (3, 1, "same")])
def test_max_pool_bit_exact(config, k, stride, padding):
    cfg = preset(config)
    model = oracle.max_pool(k=k, stride=stride, padding=padding, h=9, w=10, c=6)
    op = oracle.single_op(model, "MAX_POOL_2D")
    x = _random_input(op.input, k)
    iss = ISS(cfg)
    a = _activation(iss, X_AT, x[0])
    y = emit.Activation(Y_AT, op.output.shape[1], op.output.shape[2], a.c)
    program = emit.pool2d(cfg, a, y, mode=ConvMode.MAX, kh=k, kw=k, stride=stride,
                          pads=_pads(op, a.h, a.w, k, k), pad_value=-128, divisor=1, act_min=op.act_min,
                          act_max=op.act_max, first=True)
    got, _ = _run(iss, program, y, op.output.shape)
    np.testing.assert_array_equal(got, oracle.run_reference(model, [x])[0])


@pytest.mark.parametrize("config", CONFIGS)
def test_average_pool_valid_bit_exact(config):
    cfg = preset(config)
    model = oracle.avg_pool(k=2, stride=2, padding="valid", h=8, w=10, c=5)
    op = oracle.single_op(model, "AVERAGE_POOL_2D")
    x = _random_input(op.input, 8)
    iss = ISS(cfg)
    a = _activation(iss, X_AT, x[0])
    y = emit.Activation(Y_AT, op.output.shape[1], op.output.shape[2], a.c)
    program = emit.pool2d(cfg, a, y, mode=ConvMode.SUM, kh=2, kw=2, stride=2, pads=(0, 0, 0, 0), pad_value=0,
                          divisor=4, act_min=op.act_min, act_max=op.act_max, first=True)
    got, _ = _run(iss, program, y, op.output.shape)
    np.testing.assert_array_equal(got, oracle.run_reference(model, [x])[0])


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("h, w", [(6, 5), (17, 16)])
def test_mean_bit_exact(config, h, w):
    cfg = preset(config)
    model = oracle.mean(h=h, w=w, c=9, keep_dims=False, seed=h)
    op = oracle.single_op(model, "MEAN")
    x = _random_input(op.input, h)
    iss = ISS(cfg)
    a = _activation(iss, X_AT, x[0])
    p = numerics.mean_params(op.input.scale, op.input.zero_point, op.output.scale, h * w)
    iss.write(P_AT, layout.pack_lane_params([p["bias"], p["multiplier"], p["shift"]], cfg.cols))
    y = emit.Activation(Y_AT, 1, 1, a.c)
    program = emit.mean(cfg, a, y, params=P_AT, zero_point=op.output.zero_point, act_min=op.act_min,
                        act_max=op.act_max, first=True)
    got, _ = _run(iss, program, y, op.output.shape)
    np.testing.assert_array_equal(got, oracle.run_reference(model, [x])[0])
