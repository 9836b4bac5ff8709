"""DEPTHWISE_CONV_2D (compiler/depthwise.py): the reference kernel against the TFLite interpreter,
the lowering bit-exact on the ISS (tiny and default) and on the RTL (tiny), the diagonal weight
layout, and the MAC utilization the cycle model reports (useful MACs only: at most 1/rows)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from softnpu.compiler import depthwise, reference
from softnpu.compiler.compile import compile_tflite
from softnpu.compiler.emit import Activation
from softnpu.compiler.ir import UnsupportedOp
from softnpu.compiler.tflite_import import load_tflite
from softnpu.hdl.config import preset
from softnpu.host.verify import verify_bundle
from tests import oracle
from tests.compiler.test_lower import assert_bit_exact, kinds

CASES = [
    dict(h=9, w=7, c=6, k=3, stride=2, padding="same", relu="relu6"),
    dict(h=12, w=11, c=20, k=5, stride=1, padding="same", relu=True),
    dict(h=12, w=11, c=33, k=3, stride=2, padding="valid", relu=False),
    dict(h=10, w=10, c=16, k=5, stride=2, padding="same", relu="relu6"),
    dict(h=6, w=9, c=1, k=3, stride=1, padding="valid", relu=True),
]



def _case_id(c) -> str:
    return "{h}x{w}x{c}_k{k}_s{stride}_{padding}_{relu}".format(**c)


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_reference_kernel_matches_the_interpreter(case):
    model = oracle.depthwise_conv2d(**case, seed=case["c"])
    graph = load_tflite(model)
    assert [op.kind for op in graph.ops] == ["DEPTHWISE_CONV_2D"]
    x_t = graph.tensors[graph.inputs[0]]
    for seed in range(3):
        x = np.random.default_rng(seed).integers(-128, 128, x_t.shape, dtype=np.int8)
        x.flat[:2] = (-128, 127)
        np.testing.assert_array_equal(reference.run(graph, x)[0], oracle.run_reference(model, [x])[0])


@pytest.mark.parametrize("config", ["tiny", "default"])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_depthwise_bit_exact_on_iss(case, config):
    bundle = assert_bit_exact(oracle.depthwise_conv2d(**case, seed=case["c"]), config, inputs=2)
    assert kinds(bundle) == ["DEPTHWISE_CONV_2D"]
    rec = bundle.manifest.layers[0]
    oh, ow = bundle.manifest.outputs[0].shape[1:3]
    assert rec["macs"] == oh * ow * case["c"] * case["k"] ** 2
    # the diagonal mapping uses one lane of each row of the array: utilization <= 1/rows
    assert 0 < rec["utilization"] <= 1 / preset(config).rows


@st.composite
def depthwise_layers(draw):
    k = draw(st.sampled_from([1, 2, 3, 5, 7]))
    stride = draw(st.integers(1, 2))
    padding = draw(st.sampled_from(["same", "valid"]))
    h = draw(st.integers(k if padding == "valid" else 1, 16))
    w = draw(st.integers(k if padding == "valid" else 1, 16))
    c = draw(st.sampled_from([1, 3, 4, 7, 16, 21, 48]))
    relu = draw(st.sampled_from([False, True, "relu6"]))
    config = draw(st.sampled_from(["tiny", "default"]))
    return dict(h=h, w=w, c=c, k=k, stride=stride, padding=padding, relu=relu), config


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(depthwise_layers())
def test_depthwise_of_random_shape_bit_exact(case):
    layer, config = case
    assert_bit_exact(oracle.depthwise_conv2d(**layer, seed=layer["h"] * 31 + layer["c"]), config, inputs=1)


def test_depthwise_tiles_across_block_groups_and_rows():
    """Larger than tiny's scratchpads: several channel-block groups (weights reloaded per group into
    alternating halves) and several row tiles per group."""
    cfg = preset("tiny")
    x = Activation(0, 30, 30, 40)
    plan = depthwise.plan_depthwise(cfg, x, 30, 30, 3, 3, 1, (1, 1, 1, 1))
    assert plan.blocks_per_tile < 10 and plan.rows_per_tile < 30
    assert_bit_exact(oracle.depthwise_conv2d(h=30, w=30, c=40, k=3, stride=1, padding="same", relu="relu6"),
                     "tiny", inputs=1, seed=4)


def test_explicit_zero_padding_folds_into_the_depthwise_load():
    """ZeroPadding2D + VALID depthwise stride 2 (as Keras models pad explicitly): the PAD is
    folded into the depthwise layer's load padding."""
    import keras

    x = keras.Input((10, 9, 8), batch_size=1, name="input")
    y = keras.layers.ZeroPadding2D(((1, 1), (2, 0)))(x)     # not SAME: the converter keeps the PAD
    y = keras.layers.DepthwiseConv2D(3, strides=2, padding="valid", activation="relu6", name="dw")(y)
    model = keras.Model(x, y)
    rng = np.random.default_rng(3)
    model.get_layer("dw").set_weights([rng.normal(0, 0.4, (3, 3, 8, 1)).astype(np.float32),
                                       rng.uniform(-0.3, 0.3, 8).astype(np.float32)])
    tflite = oracle.convert_int8(model, oracle.representative([(10, 9, 8)]))
    assert [op.kind for op in load_tflite(tflite).ops] == ["PAD", "DEPTHWISE_CONV_2D"]
    bundle = assert_bit_exact(tflite, "tiny")
    assert kinds(bundle) == ["DEPTHWISE_CONV_2D"]


def test_diagonal_weights_hold_each_channel_on_its_lane():
    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, (1, 3, 5, 7), dtype=np.int8)
    packed = depthwise.pack_depthwise_weights(w, 4)
    assert packed.shape == (2, 3, 5, 4, 4)
    for c in range(8):
        block, lane = divmod(c, 4)
        expect = w[0, :, :, c] if c < 7 else 0
        np.testing.assert_array_equal(packed[block, :, :, lane, lane], expect)
    off_diagonal = packed * (1 - np.eye(4, dtype=np.int8))
    assert not off_diagonal.any()


def test_depth_multiplier_above_one_is_a_clear_error():
    import keras

    x = keras.Input((6, 6, 3), batch_size=1, name="input")
    model = keras.Model(x, keras.layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same")(x))
    tflite = oracle.convert_int8(model, oracle.representative([(6, 6, 3)]))
    with pytest.raises(UnsupportedOp, match="depth multiplier 2"):
        load_tflite(tflite)


def test_depthwise_bit_exact_on_rtl_tiny():
    """The same program on the RTL (cocotb/Verilator, tiny config) as on the interpreter."""
    model = oracle.depthwise_conv2d(h=9, w=8, c=6, k=3, stride=2, padding="same", relu="relu6", seed=6)
    bundle = compile_tflite(model, "tiny", name="depthwise")
    report = verify_bundle(bundle, "rtl", inputs=2, seed=1)
    assert report.equal, [c for c in report.checks if not c.equal]
    model = oracle.depthwise_conv2d(h=7, w=7, c=5, k=5, stride=1, padding="same", relu=False, seed=5)
    report = verify_bundle(compile_tflite(model, "tiny", name="depthwise5"), "rtl", inputs=1, seed=2)
    assert report.equal


WIDE = [
    dict(h=4, w=300, c=5, k=3, stride=1, padding="same", relu="relu6"),
    # 5x5 VALID needs 5 input rows for one output row: 7 rows give two
    dict(h=7, w=300, c=5, k=5, stride=2, padding="valid", relu="relu6"),
    # asymmetric SAME padding at stride 2 (right/bottom only): the last column range pads, the others not
    dict(h=4, w=300, c=5, k=5, stride=2, padding="same", relu="relu6"),
]


@pytest.mark.parametrize("case", WIDE, ids=_case_id)
def test_depthwise_tiles_columns_when_a_band_of_rows_does_not_fit(case):
    """Rows wider than half tiny's input scratchpad: the output is cut into column ranges, each
    loading its own input columns (SAME's left/right padding at the image borders only)."""
    cfg = preset("tiny")
    k, s = case["k"], case["stride"]
    if case["padding"] == "same":
        oh, ow = -(-case["h"] // s), -(-case["w"] // s)
        ph, pw = max((oh - 1) * s + k - case["h"], 0), max((ow - 1) * s + k - case["w"], 0)
        pads = (ph // 2, ph - ph // 2, pw // 2, pw - pw // 2)
    else:
        oh, ow, pads = (case["h"] - k) // s + 1, (case["w"] - k) // s + 1, (0, 0, 0, 0)
    x = Activation(0, case["h"], case["w"], case["c"])
    plan = depthwise.plan_depthwise(cfg, x, oh, ow, k, k, s, pads)
    assert 0 < plan.cols_per_tile < ow
    bundle = assert_bit_exact(oracle.depthwise_conv2d(**case, seed=7), "tiny", inputs=2, seed=3)
    assert kinds(bundle) == ["DEPTHWISE_CONV_2D"]
    assert tuple(bundle.manifest.outputs[0].shape[1:3]) == (oh, ow)


def test_depthwise_too_large_for_any_column_range_is_a_clear_error():
    """A 15x15 kernel's band of one output pixel (15x15 entries) is half tiny's input scratchpad
    or less, but its diagonal weights are not: the error names the scratchpad that does not fit."""
    cfg = preset("tiny")
    x = Activation(0, 20, 600, 5)
    with pytest.raises(depthwise.LoweringError, match="scratchpad"):
        depthwise.plan_depthwise(cfg, x, 6, 586, 15, 15, 1, (0, 0, 0, 0))
