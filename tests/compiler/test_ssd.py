"""SSD in the compiler: the ssd_vgg16 network, TFLite's int8 L2_NORMALIZATION on the host (bit-exact
with the interpreter), and the cut of a graph into an NPU part and a host tail."""

from __future__ import annotations

import numpy as np
import pytest

from softnpu.compiler import l2norm, ssd
from softnpu.compiler.host_split import split_host_tail
from softnpu.compiler.tflite_import import load_tflite


# ----------------------------------------------------------------------------------------------
# L2_NORMALIZATION
# ----------------------------------------------------------------------------------------------
def l2norm_tflite(channels: int, seed: int = 0) -> bytes:
    """A one-op int8 model: tf.math.l2_normalize over the channels of [1, 4, 4, channels]."""
    import tensorflow as tf

    from softnpu.compiler.convert import to_tflite

    inp = tf.keras.Input((4, 4, channels), batch_size=1)
    out = tf.keras.layers.Lambda(lambda x: tf.math.l2_normalize(x, axis=-1))(inp)
    model = tf.keras.Model(inp, out)
    rng = np.random.default_rng(seed)
    calib = [rng.normal(0, 3, (1, 4, 4, channels)).astype(np.float32) for _ in range(4)]
    return to_tflite(model, calib, progress=False)


def run_interpreter(model: bytes, x: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interp = Interpreter(model_content=model, experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    interp.allocate_tensors()
    interp.set_tensor(interp.get_input_details()[0]["index"], x)
    interp.invoke()
    return interp.get_tensor(interp.get_output_details()[0]["index"])


@pytest.mark.parametrize("channels", [3, 512, 40000])
def test_l2_normalization_bit_exact_with_tflite(channels):
    from softnpu.compiler import reference

    model = l2norm_tflite(channels)
    graph = load_tflite(model)
    assert [op.kind for op in graph.ops] == ["L2_NORMALIZATION"]
    zp = graph.tensors[graph.inputs[0]].qzero
    rng = np.random.default_rng(channels)
    x = rng.integers(-128, 128, (1, 4, 4, channels), dtype=np.int8)
    x[0, 0, 0] = zp                      # sum of squares 0
    x[0, 0, 1] = zp
    x[0, 0, 1, 0] = zp + 1 if zp < 127 else zp - 1       # sum of squares 1
    x[0, 0, 2] = -128                    # the largest sums (40000 channels: >= 2**29, the /4 loop)
    x[0, 0, 3] = 127
    x[0, 1, 0] = np.clip(zp + rng.integers(-2, 3, channels), -128, 127)    # tiny norms
    want = run_interpreter(model, x)
    np.testing.assert_array_equal(reference.run(graph, x)[0], want)
    np.testing.assert_array_equal(l2norm.l2_normalization(x, zp), want)


def test_inv_sqrt_multiplier_edges():
    mult, shift = l2norm.inv_sqrt_quantized_multiplier_exp(np.array([0, 1, 4, 2**30, 2**31 - 1]))
    assert mult[:2].tolist() == [2**31 - 1, 2**31 - 1] and shift[:2].tolist() == [0, 0]
    real = mult * 2.0 ** (shift.astype(float) - 31)
    np.testing.assert_allclose(real[2:], 1 / np.sqrt([4, 2**30, 2**31 - 1]), rtol=1e-6)
    with pytest.raises(ValueError, match=">= 0"):
        l2norm.inv_sqrt_quantized_multiplier_exp(np.array([-1]))


# ----------------------------------------------------------------------------------------------
# The networks
# ----------------------------------------------------------------------------------------------
def test_ssd_vgg16_is_ssd300():
    import keras

    model = ssd.ssd_vgg16()
    assert [tuple(o.shape) for o in model.outputs] == [(1, 8732, 21), (1, 8732, 4)]
    fc6, pool5 = model.get_layer("fc6"), model.get_layer("pool5")
    assert fc6.dilation_rate == (6, 6) and fc6.kernel_size == (3, 3) and fc6.filters == 1024
    assert pool5.pool_size == (3, 3) and pool5.strides == (1, 1)
    assert model.get_layer("fc7").kernel_size == (1, 1) and model.get_layer("fc7").filters == 1024
    maps = {name: model.get_layer(name).output.shape[1] for name in
            ("conv4_3", "fc7", "conv8_2", "conv9_2", "conv10_2", "conv11_2")}
    assert list(maps.values()) == [38, 19, 10, 5, 3, 1] == ssd.ssd_vgg16_feature_maps(300)
    norm = model.get_layer("conv4_3_norm")
    np.testing.assert_array_equal(norm.get_weights()[0], np.full(512, 20.0, np.float32))
    for k, boxes in enumerate((4, 6, 6, 6, 4, 4)):
        conf, loc = model.get_layer(f"head{k}_conf"), model.get_layer(f"head{k}_loc")
        assert conf.kernel_size == loc.kernel_size == (3, 3)
        assert (conf.filters, loc.filters) == (boxes * 21, boxes * 4)
    assert 26_000_000 < model.count_params() < 26_500_000          # SSD300's 26.3M
    assert ssd.detection_spec(model) == dict(ssd.SSD300_SPEC, num_classes=21)
    keras.backend.clear_session()


def test_num_classes_and_input_size_are_checked():
    import keras

    model = ssd.tiny_ssd(32, num_classes=7)
    assert [tuple(o.shape) for o in model.outputs] == [(1, 368, 7), (1, 368, 4)]
    spec = ssd.detection_spec(model)
    assert spec["feature_maps"] == [8, 4, 2] and spec["aspect_ratios"] == [[2], [2, 3], [2]]
    with pytest.raises(ValueError, match="num_classes must be an int >= 2"):
        ssd.ssd_vgg16(num_classes=1)
    with pytest.raises(ValueError, match="no 1x1 feature map"):
        ssd.ssd_vgg16(200)
    with pytest.raises(ValueError, match="no downloadable 'imagenet' weights"):
        ssd.ssd_vgg16(weights="imagenet")
    assert ssd.ssd_vgg16_spec(512)["feature_maps"] == [64, 32, 16, 8, 6, 4]
    keras.backend.clear_session()


# ----------------------------------------------------------------------------------------------
# The cut
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_ssd_tflite():
    from softnpu.compiler.convert import to_tflite

    return to_tflite(ssd.tiny_ssd(32, 5), progress=False)


def test_split_puts_l2norm_and_what_follows_on_the_host(tiny_ssd_tflite):
    graph = load_tflite(tiny_ssd_tflite)
    npu, tail = split_host_tail(graph)
    assert tail.ops[0].kind == "L2_NORMALIZATION"
    assert {op.kind for op in tail.ops} == {"L2_NORMALIZATION", "MUL", "CONV_2D", "RESHAPE", "CONCATENATION"}
    assert {op.kind for op in npu.ops} <= {"CONV_2D", "MAX_POOL_2D"}
    assert [op.index for op in npu.ops] == list(range(len(npu.ops)))
    assert len(npu.ops) + len(tail.ops) == len(graph.ops)
    assert tail.outputs == graph.outputs
    # the NPU hands over the L2 norm's input and the heads of the two later maps
    assert npu.outputs == tail.inputs and len(tail.inputs) == 5
    l2_input = tail.ops[0].inputs[0]
    assert l2_input in tail.inputs and any(l2_input in op.inputs for op in npu.ops)
    assert tail.reasons[tail.ops[0].index] == "L2_NORMALIZATION has no NPU lowering (a host op)"
    assert all("no device layout" in why for i, why in tail.reasons.items() if i != tail.ops[0].index)


def test_graph_without_cuts_is_unchanged(tiny_ssd_tflite):
    graph = load_tflite(tiny_ssd_tflite)
    front = graph.ops[:5]          # conv, pool, conv, pool, conv: all NPU ops
    sub = type(graph)(graph.tensors, front, graph.inputs, [front[-1].outputs[0]], "front")
    npu, tail = split_host_tail(sub)
    assert npu is sub and not tail


def test_compile_report_prints_the_split(tiny_ssd_tflite):
    from softnpu.compiler.compile import compile_tflite, host_stages

    bundle = compile_tflite(tiny_ssd_tflite, "tiny", name="tiny_ssd",
                            detection=ssd.detection_spec(ssd.tiny_ssd(32, 5)))
    lines = host_stages(bundle.manifest)
    assert lines[0].startswith("host tail: the graph is cut, 12 ops run on the host")
    assert "L2_NORMALIZATION@7: no NPU lowering" in lines[1]
    assert lines[-1].startswith("detector: SSD decoding on the host, 5 classes")
    with pytest.raises(ValueError, match="expected \\[1, N, 4\\] class scores"):
        compile_tflite(tiny_ssd_tflite, "tiny", detection=dict(ssd.detection_spec(ssd.tiny_ssd(32, 5)),
                                                               num_classes=4))


def test_saved_ssd_file_compiles_to_a_detector(tmp_path):
    from softnpu.compiler.compile import compile_model

    path = tmp_path / "my_ssd.keras"
    ssd.tiny_ssd(32, num_classes=3).save(path)
    bundle = compile_model(path, "tiny", progress=False)
    stage = bundle.manifest.postprocess[-1]
    assert stage["op"] == "ssd_detect" and stage["num_classes"] == 3
    assert bundle.manifest.preprocess["resize"] == "stretch"


def test_ssd_vgg16_splits_at_conv4_3_norm_and_its_host_tail_is_bit_exact():
    import dataclasses

    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from softnpu.compiler import reference
    from softnpu.compiler.compile import zoo_tflite

    data = zoo_tflite("ssd_vgg16", progress=False)
    graph = load_tflite(data)
    npu, tail = split_host_tail(graph)
    assert tail.ops[0].kind == "L2_NORMALIZATION"
    kinds = [op.kind for op in tail.ops]
    assert kinds.count("CONV_2D") == 2              # conv4_3's two heads
    assert kinds.count("RESHAPE") == 12 and kinds.count("CONCATENATION") == 2
    assert len(tail.inputs) == 11                   # conv4_3 and the 10 heads of the other maps
    assert any(graph.tensors[i].shape == (1, 38, 38, 512) for i in tail.inputs)
    # the host tail on the interpreter's NPU-side tensors gives the interpreter's outputs (~7 s)
    interp = Interpreter(model_content=data, experimental_op_resolver_type=OpResolverType.BUILTIN_REF,
                         experimental_preserve_all_tensors=True)
    interp.allocate_tensors()
    x = np.random.default_rng(0).integers(-128, 128, (1, 300, 300, 3), dtype=np.int8)
    interp.set_tensor(interp.get_input_details()[0]["index"], x)
    interp.invoke()
    host = dataclasses.replace(graph, ops=tail.ops, inputs=tail.inputs, outputs=tail.outputs)
    got = reference.run(host, [interp.get_tensor(i) for i in tail.inputs])
    for i, value in zip(tail.outputs, got, strict=True):
        np.testing.assert_array_equal(value, interp.get_tensor(i))
