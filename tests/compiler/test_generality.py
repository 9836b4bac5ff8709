"""Compiler generality: shapes outside the zoo networks' habits, each bit-exact with the TFLite
interpreter (reference kernels) on the ISS: unequal stride pairs, dilated convolutions, kernels
larger than one CONV, concatenations at any channel offset, SAME average pooling (a divisor per
window), slices and crops (STRIDED_SLICE, SLICE), standalone activations, and clear errors for what
the NPU cannot run."""

from __future__ import annotations

import pytest

from softnpu.compiler.emit import LoweringError, tap_groups
from softnpu.compiler.ir import UnsupportedOp
from softnpu.compiler.lower import lower
from softnpu.compiler.tflite_import import load_tflite
from softnpu.hdl.config import preset
from tests.compiler.test_lower import _keras_model, assert_bit_exact, kinds


# ----------------------------------------------------------------------------------------------
# The acceptance models: small, also run on the RTL (tests/compiler/test_generality_rtl.py)
# ----------------------------------------------------------------------------------------------
def stride_1x3_model():
    def build(layers, x):
        x = layers.Conv2D(6, (3, 3), strides=(1, 3), padding="same", activation="relu", name="conv13")(x)
        return layers.Conv2D(5, (2, 1), strides=(3, 1), padding="valid", name="conv31")(x)
    return _keras_model(build, (9, 11, 3), seed=1)


def dilated_model():
    def build(layers, x):
        x = layers.Conv2D(7, 3, dilation_rate=2, padding="same", activation="relu", name="dil2")(x)
        return layers.Conv2D(4, 3, dilation_rate=(1, 2), padding="valid", name="dil12")(x)
    return _keras_model(build, (9, 8, 5), seed=2)


def unaligned_concat_model():
    def build(layers, x):
        a = layers.Conv2D(5, 1, activation="relu", name="a")(x)
        b = layers.Conv2D(7, 3, padding="same", name="b")(x)
        c = layers.Conv2D(3, 1, name="c")(x)
        cat = layers.Concatenate(name="cat")([a, b, c])                   # offsets 0, 5, 12
        return layers.Conv2D(6, 1, name="after")(layers.Concatenate(name="cat2")([cat, x]))
    return _keras_model(build, (5, 6, 3), seed=3)


def same_avg_pool_model():
    def build(layers, x):
        x = layers.AveragePooling2D(3, strides=1, padding="same", name="pool1")(x)
        return layers.AveragePooling2D(3, strides=2, padding="same", name="pool2")(x)
    return _keras_model(build, (7, 6, 5), seed=4)


def slice_model():
    """Keras Cropping2D (NASNet's) and strided slices of rows, columns and a channel range (STRIDED_SLICE
    and SLICE): one-hot CONVs on the NPU."""
    def build(layers, x):
        x = layers.Conv2D(20, 3, padding="same", activation="relu", name="conv")(x)
        crop = layers.Cropping2D(((1, 2), (3, 0)), name="crop")(x)
        sub = layers.Lambda(lambda t: t[:, 2::3, 1:-1:2, 3:17:2], name="strided")(x)
        part = layers.Lambda(lambda t: t[:, 4:9, :5, 16:], name="part")(x)
        return layers.Concatenate(name="cat")([layers.Conv2D(4, 1, name="c1")(crop)[:, :5, :5],
                                               layers.Conv2D(3, 1, name="c2")(sub)[:, :5, :5],
                                               part])
    return _keras_model(build, (16, 13, 5), seed=5)


ACCEPTANCE = {"stride_1x3": stride_1x3_model, "dilation_2": dilated_model,
              "unaligned_concat": unaligned_concat_model, "same_avg_pool_3x3": same_avg_pool_model,
              "slices": slice_model}


@pytest.mark.parametrize("config", ["tiny", "default"])
@pytest.mark.parametrize("name", list(ACCEPTANCE))
def test_acceptance_model_bit_exact_on_iss(name, config):
    assert_bit_exact(ACCEPTANCE[name](), config, inputs=2)


# ----------------------------------------------------------------------------------------------
# Activations, PAD, RESHAPE, MEAN at odd shapes
# ----------------------------------------------------------------------------------------------
def test_standalone_relu_relu6_and_clamp_bit_exact():
    def build(layers, x):
        a, b = layers.Conv2D(5, 1, name="a")(x), layers.Conv2D(6, 3, padding="same", name="b")(x)
        cat = layers.Concatenate(name="cat")([a, b])
        r = layers.ReLU(name="relu")(cat)                       # RELU: requantizes, then clamps
        r6 = layers.ReLU(max_value=6.0, name="relu6")(cat)      # RELU6
        r4 = layers.ReLU(max_value=4.0, name="relu4")(cat)      # RELU, MINIMUM(4), ...
        return layers.Concatenate(name="out")([r, r6, r4])
    bundle = assert_bit_exact(_keras_model(build, (5, 7, 3), seed=5), "tiny")
    assert {"RELU", "RELU6", "MINIMUM"} <= set(kinds(bundle))


def test_relu_of_the_model_input_bit_exact():
    def build(layers, x):
        return layers.ReLU(name="relu")(x)
    assert_bit_exact(_keras_model(build, (3, 5, 7), seed=6), "tiny")


# ----------------------------------------------------------------------------------------------
# What the NPU cannot run: a clear error naming the op, its output tensor and what is supported
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layer, kind", [
    (lambda layers: layers.Activation("tanh", name="gate"), "TANH"),
    (lambda layers: layers.UpSampling2D(2, interpolation="bilinear", name="gate"), "RESIZE_BILINEAR"),
])
def test_unsupported_op_names_op_tensor_and_what_is_supported(layer, kind):
    def build(layers, x):
        return layer(layers)(layers.Conv2D(4, 3, padding="same", name="conv")(x))

    def inside(layers, x):
        return layers.Conv2D(3, 1, name="after")(build(layers, x))
    for model in (_keras_model(inside, (6, 6, 3), seed=7), _keras_model(build, (6, 6, 3), seed=7)):
        with pytest.raises(UnsupportedOp) as info:
            load_tflite(model)
        message = str(info.value)
        assert info.value.kind == kind
        assert f"unsupported op {kind} (op 1, output tensor '{info.value.output}', reading '" in message
        assert "conv" in info.value.inputs[0]               # the layer before it, by name
        assert "supported: " in message and "CONV_2D" in message and "CONCATENATION" in message
    assert "gate" in load_error(_keras_model(inside, (6, 6, 3), seed=7)).output   # inside: its own name


def load_error(model) -> UnsupportedOp:
    with pytest.raises(UnsupportedOp) as info:
        load_tflite(model)
    return info.value


def test_maximum_of_two_tensors_is_a_clear_error():
    def build(layers, x):
        a, b = layers.Conv2D(4, 1, name="a")(x), layers.Conv2D(4, 1, name="b")(x)
        return layers.Maximum(name="max")([a, b])
    with pytest.raises(UnsupportedOp, match=r"unsupported op MAXIMUM \(op 2, output tensor .*\): .*scalar"):
        load_tflite(_keras_model(build, (4, 4, 3), seed=8))


def test_padding_beyond_the_load_unit_is_a_clear_error():
    def build(layers, x):
        p = layers.ZeroPadding2D(16, name="pad")(x)
        return layers.Add(name="add")([p, p])
    graph = load_tflite(_keras_model(build, (3, 3, 4), seed=9))
    with pytest.raises(LoweringError, match=r"op 0 PAD \(output tensor '.*pad.*'\): padding .* exceeds"):
        lower(graph, preset("tiny"))


@pytest.mark.parametrize("config", ["tiny", "default"])
def test_explicit_padding_wider_than_the_kernel_bit_exact(config):
    """Output rows whose windows lie wholly in a folded PAD's rows (a band without input rows)."""
    def build(layers, x):
        p = layers.ZeroPadding2D(((3, 4), (2, 0)), name="pad")(x)
        a = layers.Conv2D(5, 1, name="conv1x1")(p)
        b = layers.Conv2D(5, 1, strides=2, name="conv1x1_s2")(p)
        c = layers.Conv2D(5, 3, strides=(1, 2), name="conv3x3")(p)
        return [a, b, c, layers.MaxPooling2D(2, name="pool")(p)]
    bundle = assert_bit_exact(_keras_model(build, (5, 4, 6), seed=10), config)
    assert "PAD" not in kinds(bundle)


@pytest.mark.parametrize("h, w, c", [(40, 40, 5), (3, 70, 9)])
def test_mean_of_planes_larger_than_the_input_scratchpad_bit_exact(h, w, c):
    def build(layers, x):
        return layers.GlobalAveragePooling2D(name="gap")(x)
    assert_bit_exact(_keras_model(build, (h, w, c), seed=h), "tiny")


def test_kernel_wider_than_one_conv_bit_exact():
    """17x17 convolution and 16x16 average pooling: several CONVs per window, accumulating."""
    def build(layers, x):
        a = layers.Conv2D(3, (17, 2), padding="same", name="tall")(x)
        return [a, layers.AveragePooling2D((16, 3), strides=(1, 2), name="pool")(x)]
    assert_bit_exact(_keras_model(build, (18, 7, 5), seed=11), "tiny")


@pytest.mark.parametrize("config", ["tiny", "default"])
def test_reshapes_alias_or_relayout_bit_exact(config):
    """RESHAPEs that keep the blocked layout alias their input; those that move elements between
    pixels and channels (read by a convolution, or a model output) are relayout layers."""
    def build(layers, x):
        a = layers.Conv2D(6, 1, name="a")(x)                                   # 4x3x6
        same = layers.Reshape((3, 4, 6), name="same_layout")(a)                  # pixels regrouped: alias
        deep = layers.Reshape((2, 3, 12), name="deeper")(a)                      # relayout
        flat = layers.Reshape((1, 1, 72), name="flat")(a)                        # relayout
        return [layers.Conv2D(5, 1, name="b")(same), layers.Conv2D(4, 1, name="c")(deep),
                layers.Conv2D(3, 1, name="d")(flat), layers.Reshape((1, 6, 12), name="to_output")(a)]
    bundle = assert_bit_exact(_keras_model(build, (4, 3, 5), seed=12), config)
    assert kinds(bundle).count("RELAYOUT") >= 2


def test_concatenation_of_a_100_channel_tensor_bit_exact():
    """The report that started this: a 100-channel tensor concatenated with others (16 lanes)."""
    def build(layers, x):
        a = layers.Conv2D(100, 1, activation="relu", name="wide")(x)
        b = layers.Conv2D(24, 3, padding="same", name="narrow")(x)
        cat = layers.Concatenate(name="cat")([a, b, x])              # offsets 0, 100, 124
        return layers.Conv2D(10, 1, name="after")(cat)
    bundle = assert_bit_exact(_keras_model(build, (6, 5, 3), seed=13), "default")
    assert kinds(bundle).count("GATHER") == 1 and "COPY" not in kinds(bundle)
    # the 100 channels stay in place; the gather writes the two blocks from channel 96 on, reading
    # the wide tensor's last block, the 24 channels' two and the input's one: 2 x 4 taps per pixel
    assert array_cycles(bundle, "GATHER") == 2 * 4 * 6 * 5


def array_cycles(bundle, kind: str) -> int:
    """MAC-array cycles (CONV input entries) of the layers of one kind."""
    from softnpu.hdl import isa

    ids = {rec["id"] for rec in bundle.manifest.layers if rec["kind"] == kind}
    layer, total = None, 0
    for insn in isa.decode_program(bundle.program):
        if isinstance(insn, isa.Marker):
            layer = insn.id
        elif isinstance(insn, isa.Conv) and layer in ids:
            total += insn.array_cycles
    return total


def test_concatenation_of_many_narrow_inputs_gathers_per_output_block():
    """Ten 5-channel inputs: each output block reads only the inputs that land in it."""
    def build(layers, x):
        branches = [layers.Conv2D(5, 1, name=f"b{k}")(x) for k in range(10)]
        return layers.Concatenate(name="cat")(branches)
    bundle = assert_bit_exact(_keras_model(build, (3, 4, 3), seed=22), "tiny")
    # output blocks 1..12 of 4 lanes (block 0 is b0's in-place head); each reads 2 or 3 input blocks
    assert array_cycles(bundle, "GATHER") < 3 * 13 * 12


def test_ssd_fc6_dilation_6_on_19x19_bit_exact():
    """SSD's fc6: 3x3, dilation 6, SAME, on a 19x19 map (channels reduced for CI)."""
    def build(layers, x):
        return layers.Conv2D(12, 3, dilation_rate=6, padding="same", activation="relu", name="fc6")(x)
    assert_bit_exact(_keras_model(build, (19, 19, 20), seed=14), "default", inputs=1)


def test_tap_groups_cover_the_kernel_once():
    for kh, kw, dilation in [(3, 3, (1, 1)), (3, 3, (6, 6)), (17, 2, (1, 1)), (16, 31, (1, 1)),
                             (3, 5, (1, 2))]:
        groups = tap_groups(kh, kw, dilation)
        taps = [(g.i0 + i, g.j0 + j) for g in groups for i in range(g.kh) for j in range(g.kw)]
        assert sorted(taps) == [(i, j) for i in range(kh) for j in range(kw)]
        assert all(g.kh <= 15 and g.kw <= 15 for g in tap_groups(kh, kw, dilation))


@pytest.mark.parametrize("config", ["tiny", "default"])
def test_pad_of_channels_and_pixels_bit_exact(config):
    """PAD of C (ResNet's 'option A' shortcut) and of H, W at once: a one-hot 1x1 convolution."""
    import tensorflow as tf

    def build(layers, x):
        y = layers.Conv2D(5, 3, padding="same", name="conv")(x)
        padded = layers.Lambda(lambda t: tf.pad(t, [[0, 0], [1, 2], [0, 1], [3, 4]]), name="pad")(y)
        return layers.Conv2D(6, 1, name="after")(padded)
    bundle = assert_bit_exact(_keras_model(build, (4, 5, 3), seed=15), config)
    assert "PAD" in kinds(bundle)


@pytest.mark.parametrize("kernel, strides, dilation", [(3, 1, 1), ((3, 5), (1, 2), 1), (3, 1, (1, 3)),
                                                      (1, 1, 1)])
def test_rows_wider_than_the_input_scratchpad_tile_columns_bit_exact(kernel, strides, dilation):
    """A 300-pixel row of a 3x3 band does not fit half of tiny's input scratchpad, a 300-pixel output
    row not half its accumulators: column tiles."""
    def build(layers, x):
        return layers.Conv2D(5, kernel, strides=strides, dilation_rate=dilation, padding="same",
                             name="wide_conv")(x)
    bundle = assert_bit_exact(_keras_model(build, (4, 300, 3), seed=17), "tiny", inputs=1)
    assert kinds(bundle) == ["CONV_2D"]


def test_wide_rows_tile_columns_in_every_layer_kind_bit_exact():
    """Rows wider than half of tiny's input scratchpad (512 entries) through pooling (SAME average
    and max), an ADD, a MEAN and a RELU: each tiles columns."""
    def build(layers, x):
        a = layers.AveragePooling2D(3, strides=1, padding="same", name="avg")(x)
        m = layers.MaxPooling2D((2, 3), strides=(1, 2), padding="same", name="max")(x)
        s = layers.Add(name="add")([a, x])
        r = layers.ReLU(max_value=6.0, name="relu6")(s)
        return [m, r, layers.GlobalAveragePooling2D(name="gap")(s)]
    bundle = assert_bit_exact(_keras_model(build, (3, 600, 5), seed=18), "tiny", inputs=1)
    assert {"AVERAGE_POOL_2D", "MAX_POOL_2D", "ADD", "RELU6", "MEAN"} <= set(kinds(bundle))


def test_fully_connected_with_a_long_input_bit_exact():
    """K = 13200 on tiny: more input blocks than 24 K steps of the weight scratchpad's half hold."""
    def build(layers, x):
        return layers.Dense(3, name="dense")(layers.Flatten(name="flatten")(x))
    assert_bit_exact(_keras_model(build, (10, 40, 33), seed=19), "tiny", inputs=1)


def test_a_window_larger_than_the_input_scratchpad_is_a_clear_error():
    def build(layers, x):
        return layers.Conv2D(4, 3, dilation_rate=15, padding="same", name="huge_window")(x)
    graph = load_tflite(_keras_model(build, (32, 32, 3), seed=20))
    with pytest.raises(LoweringError, match=r"^op 0 CONV_2D \(output tensor '.*'\): no tiling fits config "
                                            r"'tiny': one output pixel needs 31x31 input entries"):
        lower(graph, preset("tiny"))
