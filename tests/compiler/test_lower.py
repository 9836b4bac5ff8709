"""Whole-model lowering (compiler/lower.py) proven on the ISS against the TFLite interpreter.

Single layers of random shapes, small multi-layer models for each graph rewrite (PAD folding,
in-place flatten and concatenation), every zoo network at a reduced input size, digits accuracy,
the errors a user sees, DRAM planning and the CLI.  Every comparison is bit-exact.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from softnpu.compiler.bundle import Bundle
from softnpu.compiler.compile import compile_tflite
from softnpu.compiler.emit import LoweringError
from softnpu.compiler.lower import flatten_weights, lower
from softnpu.compiler.plan_memory import Buffer, plan_activations
from softnpu.compiler.tflite_import import load_tflite
from softnpu.hdl import isa
from softnpu.hdl.config import preset
from softnpu.host.verify import verify_bundle
from tests import oracle

NETWORK_SIZES = {"resnet50": 64, "resnet152": 32, "vgg16": 32, "densenet121": 32, "digits": 8}


def assert_bit_exact(tflite: bytes, config: str = "default", inputs: int = 2, seed: int = 0) -> Bundle:
    """Compile, run on the ISS and on the interpreter, compare; also the cycle estimate."""
    bundle = compile_tflite(tflite, config, name="test")
    report = verify_bundle(bundle, "iss", inputs=inputs, seed=seed)
    bad = [c for c in report.checks if not c.equal]
    assert not bad, f"{len(bad)} outputs differ: {bad[:3]}"
    # the compiler's static schedule is the ISS's schedule (equal today; 2% leaves the ISS room to
    # model what a static schedule cannot)
    assert sum(rec["cycles"] for rec in bundle.manifest.layers) == pytest.approx(report.cycles[0], rel=0.02)
    return bundle


def kinds(bundle: Bundle) -> list[str]:
    return [rec["kind"] for rec in bundle.manifest.layers]


# ----------------------------------------------------------------------------------------------
# Single layers of random shapes
# ----------------------------------------------------------------------------------------------
@st.composite
def conv_layers(draw):
    k = draw(st.integers(1, 7))
    stride = draw(st.integers(1, 2))
    padding = draw(st.sampled_from(["same", "valid"]))
    h = draw(st.integers(k if padding == "valid" else 1, 14))
    w = draw(st.integers(k if padding == "valid" else 1, 14))
    cin = draw(st.sampled_from([1, 3, 5, 16, 20, 35]))
    cout = draw(st.sampled_from([1, 3, 8, 17, 32, 40]))
    relu = draw(st.sampled_from([False, True, "relu6"]))
    config = draw(st.sampled_from(["tiny", "default"]))
    return dict(h=h, w=w, cin=cin, cout=cout, k=k, stride=stride, padding=padding, relu=relu), config


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv_layers())
def test_conv2d_of_random_shape_bit_exact(case):
    params, config = case
    assert_bit_exact(oracle.conv2d(**params, seed=params["cin"] + params["k"]), config)


@st.composite
def window_layers(draw):
    """(oracle builder, its arguments, config): models are built in the test, not in the strategy."""
    kind = draw(st.sampled_from(["max_pool", "avg_pool", "dense", "mean"]))
    c = draw(st.sampled_from([3, 4, 16, 21]))
    h, w = draw(st.integers(2, 12)), draw(st.integers(2, 12))
    config = draw(st.sampled_from(["tiny", "default"]))
    if kind == "dense":
        return "dense", dict(k=h * c, n=draw(st.sampled_from([5, 16, 33])), relu=draw(st.booleans())), config
    if kind == "mean":
        return "mean", dict(h=h, w=w, c=c, keep_dims=draw(st.booleans())), config
    k = draw(st.integers(1, min(h, w, 4)))
    stride = draw(st.integers(1, 2))
    padding = "valid" if kind == "avg_pool" else draw(st.sampled_from(["same", "valid"]))
    return kind, dict(k=k, stride=stride, padding=padding, h=h, w=w, c=c), config


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(window_layers())
def test_pool_dense_and_mean_of_random_shape_bit_exact(case):
    builder, params, config = case
    assert_bit_exact(getattr(oracle, builder)(**params), config)


@pytest.mark.parametrize("config", ["tiny", "default"])
def test_residual_add_and_constant_mul_bit_exact(config):
    assert_bit_exact(oracle.add(shape=(5, 7, 20), relu=True), config)
    assert_bit_exact(oracle.mul_by_constant(shape=(6, 5, 19)), config)


# ----------------------------------------------------------------------------------------------
# Graph rewrites: PAD folding, flatten, concatenation in place
# ----------------------------------------------------------------------------------------------
def _keras_model(build, shape, seed=0):
    keras = oracle._keras()
    x = keras.Input(shape=shape, batch_size=1, name="input")
    keras.utils.set_random_seed(seed)
    model = keras.Model(x, build(keras.layers, x), name="model")
    return oracle.convert_int8(model, oracle.representative([shape], seed))


@pytest.fixture(scope="module")
def stem_model():
    """ResNet's stem: ZeroPadding2D(3) -> 7x7/2 conv -> ZeroPadding2D(1) -> 3x3/2 max pool."""
    def build(layers, x):
        x = layers.ZeroPadding2D(3, name="pad1")(x)
        x = layers.Conv2D(8, 7, strides=2, activation="relu", name="conv1")(x)
        x = layers.ZeroPadding2D(1, name="pad2")(x)
        return layers.MaxPooling2D(3, 2, name="pool")(x)
    return _keras_model(build, (13, 12, 3))


@pytest.mark.parametrize("config", ["tiny", "default"])
def test_zero_padding_folds_into_conv_and_max_pool(stem_model, config):
    assert [op.kind for op in load_tflite(stem_model).ops].count("PAD") == 2
    bundle = assert_bit_exact(stem_model, config)
    # at 16 lanes the 3-channel stride-2 conv runs on a space-to-depth copy of its padded input
    stem = ["SPACE_TO_DEPTH"] if config == "default" else []
    assert kinds(bundle) == stem + ["CONV_2D", "MAX_POOL_2D"]


def test_pad_read_by_a_non_window_op_is_materialised():
    def build(layers, x):
        p = layers.ZeroPadding2D(1, name="pad")(x)
        return layers.Add(name="add")([p, layers.Conv2D(5, 1, name="conv")(p)])
    model = _keras_model(build, (6, 7, 5))
    bundle = assert_bit_exact(model, "default")
    assert kinds(bundle) == ["PAD", "CONV_2D", "ADD"]


@pytest.mark.parametrize("config", ["tiny", "default"])
def test_flatten_then_dense_reads_the_blocked_tensor_in_place(config):
    def build(layers, x):
        x = layers.Conv2D(20, 3, padding="same", activation="relu", name="conv")(x)
        x = layers.Flatten(name="flatten")(x)
        return layers.Dense(10, name="dense")(x)
    model = _keras_model(build, (5, 4, 3))
    bundle = assert_bit_exact(model, config)
    assert kinds(bundle) == ["CONV_2D", "FULLY_CONNECTED"]


def test_flatten_weights_follow_the_blocked_layout():
    h, w, c, b = 2, 3, 5, 4
    x = np.arange(h * w * c).reshape(h, w, c)             # x[h, w, c] = its TFLite flat index
    weights = np.eye(h * w * c, dtype=np.int64)         # row n picks flat element n
    permuted = flatten_weights(weights, h, w, c, b)
    blocked = np.zeros((2, h, w, b), np.int64) - 1      # [C/b][H][W][b], padding lanes -1
    for ch in range(c):
        blocked[ch // b, :, :, ch % b] = x[:, :, ch]
    np.testing.assert_array_equal(permuted @ np.where(blocked < 0, 0, blocked).reshape(-1),
                                  np.arange(h * w * c))


@pytest.fixture(scope="module")
def dense_block_model():
    """Chained concatenations like a DenseNet block, plus one that concatenates the model input
    (which cannot be written in place: it is copied)."""
    def build(layers, x):
        x0 = layers.Conv2D(32, 1, activation="relu", name="stem")(x)
        feats = x0
        for i in range(3):
            y = layers.Conv2D(32, 3, padding="same", name=f"grow{i}")(feats)
            feats = layers.Concatenate(name=f"concat{i}")([feats, y])
        z = layers.Conv2D(16, 1, name="transition")(feats)
        return layers.Concatenate(name="with_input")([z, x])
    return _keras_model(build, (6, 5, 16))


@pytest.mark.parametrize("config", ["tiny", "default"])
def test_dense_block_concatenates_in_place(dense_block_model, config):
    bundle = assert_bit_exact(dense_block_model, config)
    layer_kinds = kinds(bundle)
    assert layer_kinds.count("COPY") == 1             # only the model input is copied
    assert "CONCATENATION" not in layer_kinds


@pytest.mark.parametrize("config", ["tiny", "default"])
def test_misaligned_concatenation_is_gathered(config):
    def build(layers, x):
        a, b = layers.Conv2D(5, 1, name="a")(x), layers.Conv2D(7, 1, name="b")(x)
        return layers.Concatenate(name="cat")([a, b])
    bundle = assert_bit_exact(_keras_model(build, (4, 4, 3)), config)
    assert kinds(bundle).count("GATHER") == 1


def test_average_pool_with_variable_count_bit_exact():
    bundle = assert_bit_exact(oracle.avg_pool(k=3, stride=2, padding="same", h=7, w=7, c=4), "default")
    assert kinds(bundle) == ["AVERAGE_POOL_2D"]


def test_host_stage_in_the_middle_is_a_clear_error(tflite_model):
    graph = load_tflite(tflite_model("digits", 8))
    pool = next(op for op in graph.ops if op.kind == "MAX_POOL_2D")
    pool.kind = "DEQUANTIZE"
    name = graph.tensors[pool.outputs[0]].name
    with pytest.raises(LoweringError, match=rf"op {pool.index} DEQUANTIZE \(output tensor '{name}'\).*host"):
        lower(graph, preset("default"))


# ----------------------------------------------------------------------------------------------
# DRAM planning
# ----------------------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 5000), st.integers(0, 30), st.integers(0, 10)), min_size=1,
                max_size=40))
def test_live_buffers_never_overlap(specs):
    buffers = [Buffer(f"t{i}", size, first, first + span) for i, (size, first, span) in enumerate(specs)]
    total = plan_activations(buffers)
    for i, a in enumerate(buffers):
        assert a.offset % 64 == 0 and a.offset + a.size <= total
        for b in buffers[i + 1:]:
            if a.first <= b.last and b.first <= a.last:
                assert a.offset + a.size <= b.offset or b.offset + b.size <= a.offset, (a, b)
    assert total <= sum(-(-b.size // 64) * 64 for b in buffers)


def test_memory_map_reuses_activations(tflite_model):
    graph = load_tflite(tflite_model("resnet50", 64))
    lowered = lower(graph, preset("default"))
    mm = lowered.memory_map
    activations = sum(-(-t.size // 16) * 16 for t in graph.activations() if t.dtype == "int8")
    assert mm["activations_bytes"] < activations / 4           # liveness reuse
    assert mm["activations_bytes"] <= mm["weights"] < mm["weights"] + mm["weights_bytes"] <= mm["program"]
    assert all(v % 64 == 0 for k, v in mm.items() if k in ("weights", "program"))
    assert isinstance(lowered.program[-1], isa.Finish)
    markers = [insn.id for insn in lowered.program if isinstance(insn, isa.Marker)]
    assert markers == list(range(len(lowered.layers)))
    assert sum(rec["macs"] for rec in lowered.layers) > 0.9 * _macs(graph)
    assert all(rec["scratchpad"]["inp"] <= preset("default").inp_depth for rec in lowered.layers)


def _macs(graph) -> int:
    total = 0
    for op in graph.ops:
        if op.kind in ("CONV_2D", "FULLY_CONNECTED"):
            out = graph.tensors[op.outputs[0]]
            total += graph.tensors[op.inputs[1]].size * out.size // out.shape[-1]
    return total


# ----------------------------------------------------------------------------------------------
# The zoo at reduced input sizes
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(NETWORK_SIZES))
def test_zoo_network_bit_exact_on_iss(name, tflite_model):
    bundle = assert_bit_exact(tflite_model(name, NETWORK_SIZES[name]), "default", inputs=1, seed=3)
    m = bundle.manifest
    assert m.postprocess == [{"op": "dequantize"}, {"op": "softmax", "beta": 1.0}]
    assert m.outputs[0].shape == [1, 10 if name == "digits" else 1000]


def test_digits_bit_exact_on_tiny(tflite_model):
    assert_bit_exact(tflite_model("digits", 8), "tiny", inputs=3)


def test_digits_accuracy_through_iss_equals_interpreter(tflite_model):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from softnpu.compiler import zoo
    from softnpu.host.pipeline import quantize
    from softnpu.host.runtime import Runtime

    model = tflite_model("digits", 8)
    bundle = compile_tflite(model, "default", name="digits")
    spec = bundle.manifest.inputs[0]
    _, x_test, _, y_test = zoo.digits_data(8)
    interp = Interpreter(model_content=model, experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    runtime = Runtime.open(bundle, "iss")
    npu_pred, tfl_pred = [], []
    for image in x_test:
        x = quantize(image, spec.scale, spec.zero_point).reshape(spec.shape)
        logits = runtime.infer({spec.name: x}).outputs[bundle.manifest.outputs[0].name]
        npu_pred.append(int(np.argmax(logits)))
        interp.set_tensor(inp["index"], x)
        interp.invoke()
        tfl_pred.append(int(np.argmax(interp.get_tensor(out["index"]))))
    npu_acc = float(np.mean(np.asarray(npu_pred) == y_test))
    tfl_acc = float(np.mean(np.asarray(tfl_pred) == y_test))
    assert npu_acc > 0.9
    assert npu_acc == tfl_acc


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------
def test_cli_compile_and_verify(tmp_path, capsys, tflite_model):
    from softnpu.host.cli.commands import main

    tflite_model("digits", 8)                                # the zoo cache holds it now
    out = tmp_path / "digits.npu"
    assert main(["compile", "digits", "-o", str(out), "--config", "tiny"]) == 0
    text = capsys.readouterr().out
    assert "est. cycles" in text and "FULLY_CONNECTED" in text and "MAC utilization" in text
    bundle = Bundle.load(out)
    assert bundle.tflite is not None and bundle.manifest.labels == "digits"
    assert bundle.manifest.preprocess["mode"] == "unit"
    assert main(["verify", str(out), "--inputs", "2", "--seed", "1"]) == 0
    text = capsys.readouterr().out
    assert text.count("]: bit-exact") == 2 and "PASS" in text
    from softnpu.host.devices.device import BACKENDS

    if "rtl" not in BACKENDS:
        with pytest.raises(SystemExit, match="not available yet"):
            main(["verify", str(out), "--backend", "rtl"])


@pytest.mark.parametrize("k, padding", [(3, "same"), (5, "valid"), (6, "valid")])
def test_space_to_depth_rewrite_bit_exact(k, padding):
    model = oracle.conv2d(h=45, w=38, cin=3, cout=64, k=k, stride=2, padding=padding, relu=True, seed=k)
    bundle = assert_bit_exact(model, "default")
    assert kinds(bundle) == ["SPACE_TO_DEPTH", "CONV_2D"]


def test_compile_is_deterministic(tflite_model):
    from softnpu.compiler import emit

    model = tflite_model("densenet121", 32)
    first = compile_tflite(model, "default")
    emit._plan_conv.cache_clear()
    second = compile_tflite(model, "default")
    assert first.program == second.program and first.weights == second.weights
    assert first.manifest.to_json() == second.manifest.to_json()


def test_compile_model_from_a_keras_file(tmp_path):
    from softnpu.compiler.compile import compile_model

    keras = oracle._keras()
    keras.utils.set_random_seed(5)
    x = keras.Input(shape=(9, 10, 3), batch_size=1, name="input")
    y = keras.layers.Conv2D(6, 3, strides=2, padding="same", activation="relu", name="conv")(x)
    y = keras.layers.Flatten(name="flatten")(y)
    y = keras.layers.Dense(4, activation="softmax", name="dense")(y)
    path = tmp_path / "small.keras"
    keras.Model(x, y, name="small").save(path)
    bundle = compile_model(path, "tiny", progress=False)
    m = bundle.manifest
    assert m.model == "small" and m.preprocess == {"mode": "raw", "size": [9, 10]} and m.labels is None
    assert m.postprocess == [{"op": "dequantize"}, {"op": "softmax", "beta": 1.0}]
    assert verify_bundle(bundle, "iss", inputs=2).equal


def test_bundle_without_tflite_loads_and_verify_says_why(tmp_path, tflite_model):
    from softnpu.compiler.bundle import BundleError

    bundle = compile_tflite(tflite_model("digits", 8), "tiny", name="digits")
    bundle.tflite = None
    loaded = Bundle.load(bundle.save(tmp_path / "old.npu"))
    assert loaded.tflite is None and loaded.program == bundle.program
    with pytest.raises(BundleError, match="carries no model.tflite"):
        verify_bundle(loaded)
