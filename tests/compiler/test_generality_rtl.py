"""The generality acceptance models (tests/compiler/test_generality.py: a 1x3 stride, a dilation-2
convolution, an unaligned concatenation, a SAME 3x3 average pooling) compiled for `tiny` and run on
the RTL simulation (cocotb + Verilator, one simulator process for all of them), bit-exact with the
TFLite interpreter (reference kernels); and a model whose rows need column tiles."""

from __future__ import annotations

import numpy as np
import pytest

from softnpu.compiler.compile import compile_tflite
from softnpu.host.devices.device import open_device
from softnpu.host.runtime import Runtime
from softnpu.host.verify import random_inputs, reference_interpreter
from tests.compiler.test_generality import ACCEPTANCE, _keras_model


def column_tiles_model():
    """Rows wider than half of tiny's input scratchpad: convolution and pooling in column tiles, and
    a dilated convolution reading a folded PAD."""
    def build(layers, x):
        y = layers.Conv2D(5, 3, padding="same", activation="relu", name="wide_conv")(x)
        y = layers.AveragePooling2D(3, strides=(1, 2), padding="same", name="wide_pool")(y)
        y = layers.ZeroPadding2D(((1, 0), (2, 1)), name="pad")(y)
        return layers.Conv2D(3, (2, 3), dilation_rate=(1, 2), name="dilated")(y)
    return _keras_model(build, (2, 200, 3), seed=21)


MODELS = {**ACCEPTANCE, "column_tiles": column_tiles_model}


@pytest.fixture(scope="module")
def rtl_device():
    bundle = compile_tflite(ACCEPTANCE["stride_1x3"](), "tiny")
    device = open_device("rtl", bundle.manifest.npu_config)
    yield device
    device.close()


@pytest.mark.parametrize("name", list(MODELS))
def test_acceptance_model_bit_exact_on_rtl_tiny(name, rtl_device):
    tflite = MODELS[name]()
    bundle = compile_tflite(tflite, "tiny", name=name)
    runtime = Runtime(bundle, rtl_device)
    interp = reference_interpreter(tflite)
    inputs = {d["name"]: d for d in interp.get_input_details()}
    outputs = {d["name"]: d for d in interp.get_output_details()}
    for feeds in random_inputs(bundle.manifest, 2, seed=11):
        result = runtime.infer(feeds)
        for spec in bundle.manifest.inputs:
            d = inputs[spec.name]
            interp.set_tensor(d["index"], feeds[spec.name].reshape(d["shape"]))
        interp.invoke()
        assert bundle.manifest.outputs
        for spec in bundle.manifest.outputs:
            want = interp.get_tensor(outputs[spec.name]["index"])
            np.testing.assert_array_equal(result.outputs[spec.name].reshape(want.shape), want,
                                          err_msg=f"{name}: output {spec.name!r} on the RTL")
        assert result.stats.cycles > 0
