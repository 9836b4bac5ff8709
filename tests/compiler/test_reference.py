"""The reference executor against the TFLite interpreter (reference kernels), tensor by tensor.

Every int8 tensor an op computes must be bit-identical (np.array_equal) to the interpreter's, for
the digits CNN and for every zoo network at a reduced input size.  SOFTMAX is a float host stage
(compared with a tolerance of one step where the interpreter can run it).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from softnpu.compiler import reference
from softnpu.compiler.ir import HOST_OPS, NPU_OPS, UnsupportedOp
from softnpu.compiler.tflite_import import drop_host_tail, load_tflite

from .conftest import interpreter_tensors

# Input sizes for the zoo networks in CI: small enough for a few seconds of conversion each,
# large enough that no spatial dimension degenerates before the last stage (VGG-16 needs >= 32).
NETWORK_SIZES = {"resnet50": 64, "vgg16": 32, "densenet121": 32, "resnet152": 32}


def assert_all_tensors_equal(graph, ref_values, interp_values, skip_kinds=("SOFTMAX",)):
    checked = 0
    for op in graph.ops:
        if op.kind in skip_kinds:
            continue
        for idx in op.outputs:
            t = graph.tensors[idx]
            want, got = interp_values[idx], ref_values[idx]
            assert got.dtype == want.dtype and got.shape == want.shape, (op, t)
            if not np.array_equal(got, want):
                diff = np.abs(got.astype(np.int64) - want.astype(np.int64))
                pytest.fail(f"op {op.index} {op.kind} -> {t.name!r}: {int((diff > 0).sum())} of "
                            f"{diff.size} values differ (max |diff| {int(diff.max())})")
            checked += 1
    return checked


def quantized_input(graph, image) -> np.ndarray:
    t = graph.tensors[graph.inputs[0]]
    return reference.quantize(image, t.qscale, t.qzero).reshape(t.shape)


# ----------------------------------------------------------------------------------------------
# digits: a trained CNN on real data
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits(tflite_model):
    from softnpu.compiler import zoo

    model = tflite_model("digits", 8)
    _, x_test, _, y_test = zoo.digits_data(8)
    return model, load_tflite(model, name="digits"), x_test, y_test


def test_digits_every_tensor_bit_exact(digits):
    model, graph, x_test, _ = digits
    for image in x_test[:8]:
        x = quantized_input(graph, image)
        values = reference.execute(graph, x)
        checked = assert_all_tensors_equal(graph, values, interpreter_tensors(model, x))
        assert checked == len(graph.ops) - 1
        assert np.array_equal(reference.run(graph, x)[0], values[graph.outputs[0]])


def test_digits_accuracy_matches_interpreter(digits):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    model, graph, x_test, y_test = digits
    interp = Interpreter(model_content=model, experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    logits_index = graph.ops[-1].inputs[0]
    assert graph.ops[-1].kind == "SOFTMAX"
    ref_pred, tfl_pred = [], []
    for image in x_test:
        x = quantized_input(graph, image)
        interp.set_tensor(inp["index"], x)
        interp.invoke()
        tfl_probs = interp.get_tensor(out["index"])[0]
        values = reference.execute(graph, x)
        ref_probs = values[graph.outputs[0]][0]
        # the float host-stage softmax is within one int8 step of TFLite's int8 softmax
        assert np.abs(ref_probs.astype(int) - tfl_probs.astype(int)).max() <= 1
        ref_pred.append(int(np.argmax(values[logits_index][0])))
        tfl_pred.append(int(np.argmax(tfl_probs)))
    ref_acc = float(np.mean(np.asarray(ref_pred) == y_test))
    tfl_acc = float(np.mean(np.asarray(tfl_pred) == y_test))
    assert ref_acc > 0.9
    assert abs(ref_acc - tfl_acc) <= 2 / len(y_test)   # argmax ties of saturated int8 probabilities


# ----------------------------------------------------------------------------------------------
# The zoo networks at reduced input size
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(NETWORK_SIZES))
def test_network_every_tensor_bit_exact(name, tflite_model):
    from softnpu.compiler import zoo

    size = NETWORK_SIZES[name]
    model = tflite_model(name, size)
    graph = load_tflite(model, name=name)
    kinds = {op.kind for op in graph.ops}
    assert kinds <= NPU_OPS | HOST_OPS
    assert {"CONV_2D", "FULLY_CONNECTED", "MAX_POOL_2D"} <= kinds
    if name.startswith("resnet"):
        assert {"ADD", "PAD", "MEAN"} <= kinds
    if name == "densenet121":
        # randomised BatchNorm statistics keep DenseNet's pre-activation BN as MUL + ADD(ReLU)
        assert {"CONCATENATION", "AVERAGE_POOL_2D", "MUL", "ADD"} <= kinds
        assert any(op.kind == "ADD" and op.options["activation"] == "RELU" for op in graph.ops)
    rng = np.random.default_rng(abs(hash(name)) % 1000)
    t_in = graph.tensors[graph.inputs[0]]
    inputs = [quantized_input(graph, zoo.calibration_images(name, size, count=1)[0]),
              rng.integers(-128, 128, size=t_in.shape, dtype=np.int64).astype(np.int8)]
    for x in inputs:
        values = reference.execute(graph, x)
        checked = assert_all_tensors_equal(graph, values, interpreter_tensors(model, x))
        assert checked == sum(op.kind != "SOFTMAX" for op in graph.ops)


# ----------------------------------------------------------------------------------------------
# IR details
# ----------------------------------------------------------------------------------------------
def test_ir_is_topological_and_params_complete(tflite_model):
    graph = load_tflite(tflite_model("resnet50", NETWORK_SIZES["resnet50"]))
    available = set(graph.inputs) | {t.index for t in graph.tensors if t.is_const}
    for op in graph.ops:
        assert all(i in available for i in op.inputs if i >= 0), op
        available.update(op.outputs)
        if op.kind in NPU_OPS and op.kind != "RESHAPE":
            assert -128 <= op.params["act_min"] <= op.params["act_max"] <= 127
        if op.kind == "CONV_2D":
            n = graph.tensors[op.inputs[1]].shape[0]
            assert op.params["multiplier"].shape == op.params["shift"].shape == (n,)
            assert np.all(op.params["multiplier"] >= 1 << 30)
            if op.options["activation"] == "RELU":
                assert op.params["act_min"] == max(-128, graph.tensors[op.outputs[0]].qzero)
    assert all(op.on_host == (op.kind in HOST_OPS) for op in graph.ops)
    assert graph.ops[-1].kind == "SOFTMAX" and graph.outputs == graph.ops[-1].outputs


def test_drop_host_tail(tflite_model):
    model = tflite_model("digits", 8)
    graph = load_tflite(model)
    cut = load_tflite(drop_host_tail(model))
    assert [op.kind for op in cut.ops] == [op.kind for op in graph.ops[:-1]]
    assert cut.outputs == graph.ops[-1].inputs[:1]
    assert len(cut.tensors) == len(graph.tensors)


def _with_signature(model: bytes, outputs: list[int]) -> bytes:
    """The model with a signature whose outputs are the tensors `outputs`."""
    import flatbuffers

    from softnpu.compiler.tflite_import import _schema

    schema = _schema()
    m = schema.ModelT.InitFromPackedBuf(model, 0)
    sig = schema.SignatureDefT()
    sig.signatureKey, sig.subgraphIndex, sig.inputs = "serving_default", 0, []
    sig.outputs = []
    for k, index in enumerate(outputs):
        tmap = schema.TensorMapT()
        tmap.name, tmap.tensorIndex = f"output_{k}", index
        sig.outputs.append(tmap)
    m.signatureDefs = [sig]
    builder = flatbuffers.Builder(len(model) + 4096)
    builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


@pytest.mark.parametrize("signature", [None, "stored", "default"])
def test_drop_host_tail_edits_in_place_as_repacking_would(tflite_model, signature):
    """The bytes edited in place (and the repacking they fall back to when a signature's output
    index is 0, a value flatbuffers does not store) unpack to the model with the tail removed."""
    from softnpu.compiler.tflite_import import _repacked, _schema

    model = tflite_model("digits", 8)
    graph = load_tflite(model)
    softmax = graph.ops[-1]
    if signature is not None:
        model = _with_signature(model, [softmax.outputs[0]] + ([0] if signature == "default" else []))
    cut = _schema().ModelT.InitFromPackedBuf(drop_host_tail(model), 0)
    want = _schema().ModelT.InitFromPackedBuf(
        _repacked(model, list(range(len(graph.ops) - 1)), softmax.inputs[:1]), 0)
    got_sub, want_sub = cut.subgraphs[0], want.subgraphs[0]
    assert got_sub.outputs.tolist() == want_sub.outputs.tolist() == softmax.inputs[:1]
    assert [(op.opcodeIndex, op.inputs.tolist(), op.outputs.tolist()) for op in got_sub.operators] == \
        [(op.opcodeIndex, op.inputs.tolist(), op.outputs.tolist()) for op in want_sub.operators]
    assert len(got_sub.operators) == len(graph.ops) - 1
    assert len(cut.buffers) == len(want.buffers)
    if signature is not None:
        assert [t.tensorIndex for t in cut.signatureDefs[0].outputs] == \
            [t.tensorIndex for t in want.signatureDefs[0].outputs] == \
            softmax.inputs[:1] * (2 if signature == "default" else 1)
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interp = Interpreter(model_content=drop_host_tail(model),
                         experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    interp.allocate_tensors()
    assert [d["index"] for d in interp.get_output_details()] == softmax.inputs[:1]


def test_drop_host_tail_leaves_a_model_without_one_unchanged(tflite_model):
    model = drop_host_tail(tflite_model("digits", 8))
    assert drop_host_tail(model) == model


def test_quantize_matches_tflite_rounding():
    x = np.array([-1.5, -0.5, 0.5, 1.5, 2.5, 1000.0, -1000.0], dtype=np.float32)
    q = reference.quantize(x, 1.0, 0)
    assert q.tolist() == [-2, -1, 1, 2, 3, 127, -128]
    assert reference.dequantize(q, 0.5, 1).tolist() == [-1.5, -1.0, 0.0, 0.5, 1.0, 63.0, -64.5]


def test_requantize_double_rounds_half_away_from_zero():
    acc = np.array([5, -5, 3, -3, 0])
    out = reference.requantize_double(acc, 0, 0.5, 0)
    assert out.tolist() == [3, -3, 2, -2, 0]


# ----------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------
def test_unsupported_op_is_named():
    import keras

    from softnpu.compiler import convert

    inp = keras.Input(shape=(8, 8, 1), batch_size=1)
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inp)
    x = keras.layers.Activation("sigmoid", name="gate")(x)
    model = keras.Model(inp, keras.layers.GlobalAveragePooling2D()(x))
    rng = np.random.default_rng(0)
    tfl = convert.to_tflite(model, [rng.uniform(0, 1, (8, 8, 1)) for _ in range(4)], progress=False)
    with pytest.raises(UnsupportedOp) as info:
        load_tflite(tfl)
    err = info.value
    assert err.kind == "LOGISTIC"
    assert "gate" in err.output
    assert "LOGISTIC" in str(err) and err.output in str(err)


def test_capture_fds_keeps_text():
    from softnpu.compiler.convert import capture_fds

    with capture_fds() as log:
        os.write(1, b"to stdout\n")
        os.write(2, b"to stderr\n")
    assert "to stdout" in log[0] and "to stderr" in log[0]


def test_conversion_error_carries_log():
    import keras
    import tensorflow as tf

    from softnpu.compiler import convert

    inp = keras.Input(shape=(4, 4, 1), batch_size=1)
    det = keras.layers.Lambda(lambda t: tf.linalg.det(t[..., 0]), name="det")(inp)
    model = keras.Model(inp, det)
    rng = np.random.default_rng(0)
    with pytest.raises(convert.ConversionError) as info:
        convert.to_tflite(model, [rng.uniform(0, 1, (4, 4, 1)) for _ in range(2)], progress=False)
    assert "converter output" in str(info.value) and info.value.log
    with pytest.raises(ValueError, match="empty calibration"):
        convert.to_tflite(model, [], progress=False)


def test_concatenation_with_requantizing_inputs_is_rejected(tflite_model):
    """LiteRT's int8 CONCATENATION refuses inputs quantized unlike the output; so does the import."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = tflite_model("densenet121", NETWORK_SIZES["densenet121"])
    graph = load_tflite(model)
    concat = next(op for op in graph.ops if op.kind == "CONCATENATION")
    fb = schema.ModelT.InitFromPackedBuf(model, 0)
    q = fb.subgraphs[0].tensors[concat.inputs[1]].quantization
    q.scale = np.asarray(q.scale, dtype=np.float32) * 1.5
    builder = flatbuffers.Builder(len(model) + 65536)
    builder.Finish(fb.Pack(builder), file_identifier=b"TFL3")
    with pytest.raises(UnsupportedOp, match="CONCATENATION") as info:
        load_tflite(bytes(builder.Output()))
    assert info.value.output == graph.tensors[concat.outputs[0]].name
