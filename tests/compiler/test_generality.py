"""Compiler generality: shapes outside the zoo networks' habits, each bit-exact with the TFLite
interpreter (reference kernels) on the ISS: unequal stride pairs, dilated convolutions, kernels
larger than one CONV, concatenations at any channel offset, SAME average pooling (a divisor per
window), standalone activations, and clear errors for what the NPU cannot run."""

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


ACCEPTANCE = {"stride_1x3": stride_1x3_model, "dilation_2": dilated_model,
              "unaligned_concat": unaligned_concat_model, "same_avg_pool_3x3": same_avg_pool_model}


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
