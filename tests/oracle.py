"""The test oracle: TFLite full-integer conversion, the reference-kernel interpreter, model introspection.

Everything the NPU computes is checked against TensorFlow Lite's interpreter running its *reference*
kernels (``OpResolverType.BUILTIN_REF``) on an int8 model.  This module gives tests:

- :func:`convert_int8` - Keras model / ``tf.function`` -> full-integer int8 ``.tflite`` bytes;
- :func:`run_reference` - run such bytes on the reference interpreter (int8 in, int8 out);
  :func:`run_reference_tensors` - every tensor of the model after a run (per-layer debugging);
- :func:`read_ops` / :func:`single_op` - each operator with its opcode, options, fused-activation
  clamp bounds and quantized operand tensors (:class:`QTensor`: scales, zero points, constant
  contents in TFLite layout, e.g. CONV_2D filters OHWI), read from the flatbuffer;
- :func:`patch_tensor` - rewrite a tensor's quantization or constant contents (crafted edge cases);
- cached builders of single-op models: :func:`conv2d`, :func:`dense`, :func:`add`,
  :func:`mul_by_constant`, :func:`max_pool`, :func:`avg_pool`, :func:`mean`.

TensorFlow is imported lazily, once, on first conversion; converted models are cached per parameter
set for the whole test session (``functools.cache``), so each costs one conversion (~0.3-1 s).

Mind that the reference FULLY_CONNECTED kernel rescales in double precision, not in fixed point
(``hdl.numerics.requantize_double``); every other kernel used here is fixed point.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import sys
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

__all__ = [
    "QTensor", "SingleOp", "convert_int8", "run_reference", "run_reference_tensors", "read_ops",
    "single_op", "model_io",
    "activation_range", "patch_tensor", "representative", "conv2d", "depthwise_conv2d", "dense", "add",
    "mul_by_constant", "max_pool", "avg_pool", "mean",
]


# ----------------------------------------------------------------------------------------------
# TensorFlow, imported once and quietly
# ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _quiet():
    """Silence everything written to fds 1/2 (the converter's C++ chatter) and Python warnings.

    The chatter is kept in a temporary file; if the body raises, its tail is attached to the error.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            with open(os.dup(log.fileno()), "w", closefd=True) as pylog, \
                    contextlib.redirect_stdout(pylog), contextlib.redirect_stderr(pylog), \
                    warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield
        except Exception as exc:
            sys.stdout.flush()
            log.seek(0)
            tail = log.read().decode(errors="replace")[-4000:]
            raise RuntimeError(f"{type(exc).__name__}: {exc}\n--- converter output (tail) ---\n{tail}") \
                from exc
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


@functools.cache
def _tf():
    with _quiet():
        import tensorflow as tf
        tf.get_logger().setLevel("ERROR")
    return tf


@functools.cache
def _keras():
    _tf()
    with _quiet():
        import keras
    return keras


def _schema():
    from ai_edge_litert import schema_py_generated
    return schema_py_generated


# ----------------------------------------------------------------------------------------------
# Conversion and the reference interpreter
# ----------------------------------------------------------------------------------------------
def _samples(representative_inputs: Iterable) -> list[list[np.ndarray]]:
    out = []
    for sample in representative_inputs:
        arrays = [sample] if isinstance(sample, np.ndarray) else list(sample)
        out.append([np.asarray(a, dtype=np.float32) for a in arrays])
    if not out:
        raise ValueError("convert_int8: the representative set is empty")
    for arrays in out:
        for a in arrays:
            if a.ndim == 0 or a.shape[0] != 1:
                raise ValueError(f"convert_int8: representative samples need a leading batch axis of 1, "
                                 f"got shape {a.shape}")
    return out


def convert_int8(model: Any, representative_inputs: Iterable) -> bytes:
    """Convert a Keras model or a ``tf.function`` to a full-integer int8 TFLite flatbuffer.

    ``representative_inputs`` is a sequence of calibration samples; a sample is one float array or a
    list of arrays (one per model input, in the model's/function's argument order), each with a
    leading batch axis of 1.  The model gets fixed batch-1 input shapes (those of the samples).
    Weights int8 per-channel, activations int8 per-tensor, int8 model inputs and outputs; the
    converter's output on fds 1/2 is silenced.  Deterministic for a given model and sample list
    (give Keras layers and models explicit names: the automatic ones count up within a session and
    end up in the tensor names).  ``tf.function`` models must not capture variables (use constants).
    """
    tf = _tf()
    samples = _samples(representative_inputs)
    shapes = [a.shape for a in samples[0]]
    with _quiet():
        keras = _keras()
        if isinstance(model, keras.Model):
            if any(tuple(t.shape) != s for t, s in zip(model.inputs, shapes, strict=True)):
                inputs = [keras.Input(batch_shape=s, dtype="float32") for s in shapes]
                outputs = model(inputs if len(inputs) > 1 else inputs[0])
                model = keras.Model(inputs, outputs, name=model.name)
            converter = tf.lite.TFLiteConverter.from_keras_model(model)
        else:
            if hasattr(model, "get_concrete_function"):
                concrete = model.get_concrete_function(*[tf.TensorSpec(s, tf.float32) for s in shapes])
            else:
                concrete = model  # already a ConcreteFunction
            converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete])
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: iter([list(s) for s in samples])
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
        return bytes(converter.convert())


@functools.lru_cache(maxsize=64)
def _interpreter(tflite_bytes: bytes):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    interp = Interpreter(model_content=tflite_bytes,
                         experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    interp.allocate_tensors()
    return interp


def run_reference(tflite_bytes: bytes, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Run the model on TFLite's reference kernels; ``inputs`` in the model's input order.

    The model's input order is the interpreter's (``model_io(tflite_bytes)[0]``), which for Keras
    models with several inputs need not be the Keras order.  Inputs must have exactly the model's
    dtype (int8) and shape.  Returns copies of all outputs, in the model's output order.
    """
    interp = _interpreter(bytes(tflite_bytes))
    details = interp.get_input_details()
    if len(inputs) != len(details):
        raise ValueError(f"run_reference: model has {len(details)} inputs, got {len(inputs)}")
    for d, x in zip(details, inputs, strict=True):
        x = np.asarray(x)
        if x.dtype != d["dtype"] or tuple(x.shape) != tuple(d["shape"]):
            raise ValueError(f"run_reference: input {d['name']!r} needs {np.dtype(d['dtype'])}"
                             f"{tuple(d['shape'])}, got {x.dtype}{x.shape}")
        interp.set_tensor(d["index"], x)
    interp.invoke()
    return [interp.get_tensor(d["index"]).copy() for d in interp.get_output_details()]


def run_reference_tensors(tflite_bytes: bytes, inputs: Sequence[np.ndarray]) -> dict[int, np.ndarray]:
    """Run on the reference kernels keeping every tensor; {tensor index: value} after the run.

    Indices are those of :class:`QTensor` (``read_ops``), so a test can compare each layer's output.
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    interp = Interpreter(model_content=bytes(tflite_bytes),
                         experimental_op_resolver_type=OpResolverType.BUILTIN_REF,
                         experimental_preserve_all_tensors=True)
    interp.allocate_tensors()
    details = interp.get_input_details()
    if len(inputs) != len(details):
        raise ValueError(f"run_reference_tensors: model has {len(details)} inputs, got {len(inputs)}")
    for d, x in zip(details, inputs, strict=True):
        interp.set_tensor(d["index"], np.asarray(x))
    interp.invoke()
    out = {}
    for d in interp.get_tensor_details():
        with contextlib.suppress(ValueError):       # tensors without data (e.g. unused optionals)
            out[d["index"]] = interp.get_tensor(d["index"]).copy()
    return out


# ----------------------------------------------------------------------------------------------
# Reading the flatbuffer
# ----------------------------------------------------------------------------------------------
_NP_TYPES = {"FLOAT32": np.float32, "FLOAT16": np.float16, "INT32": np.int32, "UINT8": np.uint8,
             "INT64": np.int64, "BOOL": np.bool_, "INT16": np.int16, "INT8": np.int8,
             "FLOAT64": np.float64, "UINT64": np.uint64, "UINT32": np.uint32, "UINT16": np.uint16}


def _enum_names(cls) -> dict[int, str]:
    return {v: k for k, v in vars(cls).items() if not k.startswith("_") and isinstance(v, int)}


def _snake(name: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")


@dataclasses.dataclass(frozen=True, eq=False)
class QTensor:
    """One tensor of a TFLite model with its quantization and (for constants) contents."""

    index: int
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    scales: np.ndarray            # float32, (1,) per-tensor or (C,) per-channel; empty if unquantized
    zero_points: np.ndarray       # int64, same length as scales
    quantized_dimension: int
    data: np.ndarray | None       # constant contents in TFLite layout, None for activations

    @property
    def quantized(self) -> bool:
        return self.scales.size > 0

    @property
    def per_channel(self) -> bool:
        return self.scales.size > 1

    @property
    def scale(self) -> float:
        """The per-tensor scale (as the float32 TFLite stores, widened exactly to a Python float)."""
        if self.scales.size != 1:
            raise ValueError(f"tensor {self.name!r} has {self.scales.size} scales, not one")
        return float(self.scales[0])

    @property
    def zero_point(self) -> int:
        if self.zero_points.size != 1:
            raise ValueError(f"tensor {self.name!r} has {self.zero_points.size} zero points, not one")
        return int(self.zero_points[0])


def activation_range(fused_activation: str, scale: float, zero_point: int,
                     dtype=np.int8) -> tuple[int, int]:
    """kernel_util.cc CalculateActivationRangeQuantized: clamp bounds for a fused activation.

    ``quantize(f) = zero_point + round_half_away(float32(f) / float32(scale))``, in float32 as TFLite.
    """
    info = np.iinfo(dtype)
    qmin, qmax = int(info.min), int(info.max)

    def quantize(f: float) -> int:
        q = float(np.float32(f) / np.float32(scale))
        return zero_point + int(math.copysign(math.floor(abs(q) + 0.5), q))

    if fused_activation == "RELU":
        return max(qmin, quantize(0.0)), qmax
    if fused_activation == "RELU6":
        return max(qmin, quantize(0.0)), min(qmax, quantize(6.0))
    if fused_activation == "RELU_N1_TO_1":
        return max(qmin, quantize(-1.0)), min(qmax, quantize(1.0))
    if fused_activation in ("NONE", None):
        return qmin, qmax
    raise ValueError(f"activation_range: unsupported fused activation {fused_activation!r}")


@dataclasses.dataclass(frozen=True, eq=False)
class SingleOp:
    """One operator of a model: everything needed to recompute it with ``hdl.numerics``."""

    opcode: str                                  # builtin operator name, e.g. "CONV_2D"
    inputs: tuple[QTensor | None, ...]           # operands in TFLite order; None = omitted optional
    outputs: tuple[QTensor, ...]
    options: dict[str, Any]                      # builtin options, snake_case; enums as names
    act_min: int                                 # fused-activation clamp bounds (output dtype range
    act_max: int                                 # when there is no fused activation)
    model_inputs: tuple[QTensor, ...]            # the model's inputs, in run_reference order
    model_outputs: tuple[QTensor, ...]

    @property
    def input(self) -> QTensor:
        return self.inputs[0]

    @property
    def output(self) -> QTensor:
        return self.outputs[0]

    @property
    def weights(self) -> QTensor | None:
        """The filter of CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED (OHWI / 1HWO / OI)."""
        if self.opcode in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV"):
            return self.inputs[1]
        return None

    @property
    def bias(self) -> QTensor | None:
        if self.opcode in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED") and len(self.inputs) > 2:
            return self.inputs[2]
        return None

    @property
    def padding(self) -> str:
        return self.options["padding"]

    @property
    def stride(self) -> tuple[int, int]:
        return self.options["stride_h"], self.options["stride_w"]

    @property
    def filter_size(self) -> tuple[int, int]:
        """(kh, kw): pool options' filter size, or the spatial size of a convolution's filter."""
        if "filter_height" in self.options:
            return self.options["filter_height"], self.options["filter_width"]
        w = self.weights
        if w is None or len(w.shape) != 4:
            raise ValueError(f"{self.opcode} has no filter size")
        return w.shape[1], w.shape[2]

    def operands(self, model_input_values: Sequence[np.ndarray]) -> list[np.ndarray | None]:
        """The operator's input values, given the model's input values (in run_reference order).

        Constant operands come from the model; an operand that is neither a model input nor a
        constant (an intermediate of a multi-op model) raises.
        """
        by_index = {t.index: np.asarray(v)
                    for t, v in zip(self.model_inputs, model_input_values, strict=True)}
        values: list[np.ndarray | None] = []
        for t in self.inputs:
            if t is None:
                values.append(None)
            elif t.index in by_index:
                values.append(by_index[t.index])
            elif t.data is not None:
                values.append(t.data)
            else:
                raise ValueError(f"operand {t.name!r} of {self.opcode} is an intermediate tensor")
        return values


def _model(tflite_bytes: bytes):
    s = _schema()
    return s.ModelT.InitFromObj(s.Model.GetRootAsModel(tflite_bytes, 0))


def _tensor(model, subgraph, index: int, tflite_bytes: bytes) -> QTensor:
    s = _schema()
    t = subgraph.tensors[index]
    type_name = _enum_names(s.TensorType)[t.type]
    dtype = np.dtype(_NP_TYPES.get(type_name, np.uint8))
    q = t.quantization
    scales = np.asarray(q.scale if q is not None and q.scale is not None else [], dtype=np.float32)
    zps = np.asarray(q.zeroPoint if q is not None and q.zeroPoint is not None else [], dtype=np.int64)
    if zps.size == 0 and scales.size:
        zps = np.zeros(scales.size, np.int64)
    shape = tuple(int(d) for d in (t.shape if t.shape is not None else ()))
    data = None
    buf = model.buffers[t.buffer] if 0 < t.buffer < len(model.buffers) else None
    if buf is not None:
        raw = None
        if buf.data is not None and len(buf.data):
            raw = np.asarray(buf.data, dtype=np.uint8)
        elif buf.offset > 1 and buf.size:
            raw = np.frombuffer(tflite_bytes, np.uint8, buf.size, buf.offset)
        if raw is not None:
            data = raw.view(dtype.newbyteorder("<")).astype(dtype).reshape(shape)
            data.setflags(write=False)
    name = t.name.decode() if isinstance(t.name, bytes) else str(t.name)
    return QTensor(index=index, name=name, shape=shape, dtype=dtype, scales=scales, zero_points=zps,
                   quantized_dimension=int(q.quantizedDimension) if q is not None else 0, data=data)


def _options(op) -> dict[str, Any]:
    s = _schema()
    if op.builtinOptions is None:
        return {}
    enums = {"padding": _enum_names(s.Padding),
             "fusedActivationFunction": _enum_names(s.ActivationFunctionType)}
    out = {}
    for key, value in vars(op.builtinOptions).items():
        if key in enums:
            value = enums[key].get(value, value)
        elif isinstance(value, np.ndarray):
            value = value.tolist()
        out[_snake(key)] = value
    return out


def read_ops(tflite_bytes: bytes) -> list[SingleOp]:
    """All operators of the model's main subgraph, in execution order."""
    s = _schema()
    model = _model(tflite_bytes)
    sg = model.subgraphs[0]
    op_names = _enum_names(s.BuiltinOperator)
    cache: dict[int, QTensor] = {}

    def tensor(i: int) -> QTensor | None:
        if i < 0:
            return None
        if i not in cache:
            cache[i] = _tensor(model, sg, int(i), tflite_bytes)
        return cache[i]

    model_inputs = tuple(tensor(int(i)) for i in sg.inputs)
    model_outputs = tuple(tensor(int(i)) for i in sg.outputs)
    ops = []
    for op in sg.operators or []:
        code = model.operatorCodes[op.opcodeIndex]
        builtin = max(int(code.builtinCode), int(code.deprecatedBuiltinCode))
        options = _options(op)
        outputs = tuple(tensor(int(i)) for i in op.outputs)
        out = outputs[0]
        fused = options.get("fused_activation_function", "NONE")
        if out.quantized and out.scales.size == 1 and np.issubdtype(out.dtype, np.integer):
            act_min, act_max = activation_range(fused, out.scale, out.zero_point, out.dtype)
        else:
            act_min = act_max = 0
        ops.append(SingleOp(opcode=op_names.get(builtin, str(builtin)),
                            inputs=tuple(tensor(int(i)) for i in op.inputs), outputs=outputs,
                            options=options, act_min=act_min, act_max=act_max,
                            model_inputs=model_inputs, model_outputs=model_outputs))
    return ops


def single_op(tflite_bytes: bytes, opcode: str | None = None) -> SingleOp:
    """The one operator of a single-op model (checking its opcode if given)."""
    ops = read_ops(tflite_bytes)
    if len(ops) != 1:
        raise ValueError(f"expected a single-op model, got {[o.opcode for o in ops]}")
    if opcode is not None and ops[0].opcode != opcode:
        raise ValueError(f"expected {opcode}, got {ops[0].opcode}")
    return ops[0]


def model_io(tflite_bytes: bytes) -> tuple[tuple[QTensor, ...], tuple[QTensor, ...]]:
    """(inputs, outputs) of the model, in run_reference order."""
    model = _model(tflite_bytes)
    sg = model.subgraphs[0]
    return (tuple(_tensor(model, sg, int(i), tflite_bytes) for i in sg.inputs),
            tuple(_tensor(model, sg, int(i), tflite_bytes) for i in sg.outputs))


def patch_tensor(tflite_bytes: bytes, index: int, *, scales=None, zero_points=None,
                 data: np.ndarray | None = None) -> bytes:
    """A copy of the model with tensor ``index``'s quantization and/or constant contents replaced.

    For crafted edge cases the converter would never produce (chosen scales, chosen weights).
    ``data`` must have the tensor's shape; it is cast to the tensor's dtype.
    """
    import flatbuffers

    s = _schema()
    model = _model(tflite_bytes)
    t = model.subgraphs[0].tensors[index]
    if scales is not None:
        t.quantization.scale = [float(np.float32(v)) for v in np.atleast_1d(scales)]
    if zero_points is not None:
        t.quantization.zeroPoint = [int(v) for v in np.atleast_1d(zero_points)]
    if data is not None:
        dtype = np.dtype(_NP_TYPES[_enum_names(s.TensorType)[t.type]])
        arr = np.asarray(data).astype(dtype.newbyteorder("<"))
        if tuple(arr.shape) != tuple(int(d) for d in t.shape):
            raise ValueError(f"patch_tensor: data shape {arr.shape} != tensor shape {tuple(t.shape)}")
        buf = model.buffers[t.buffer]
        buf.data = np.frombuffer(arr.tobytes(), np.uint8)
        buf.offset = buf.size = 0
    builder = flatbuffers.Builder(len(tflite_bytes) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


# ----------------------------------------------------------------------------------------------
# Single-op model builders (cached per parameter set)
# ----------------------------------------------------------------------------------------------
def representative(shapes: Sequence[tuple[int, ...]], seed: int = 0, n: int = 12,
                   ranges: Sequence[tuple[float, float]] | None = None) -> list[list[np.ndarray]]:
    """A seeded calibration set: ``n`` samples, one uniform float32 array per shape (batch 1 added).

    ``ranges`` gives (low, high) per input; asymmetric defaults so zero points are non-zero.
    """
    rng = np.random.default_rng(seed)
    ranges = ranges or [(-0.7, 1.3)] * len(shapes)
    return [[rng.uniform(lo, hi, (1, *shape)).astype(np.float32)
             for shape, (lo, hi) in zip(shapes, ranges, strict=True)] for _ in range(n)]


def _input(shape, name="input"):
    return _keras().Input(shape=tuple(shape), batch_size=1, name=name)


def _model_of(inputs, outputs):
    # explicit names: Keras' automatic ones count up per session and end up in the tensor names
    return _keras().Model(inputs, outputs, name="model")


def _padding(padding: str) -> str:
    padding = padding.lower()
    if padding not in ("same", "valid"):
        raise ValueError(f"padding must be 'same' or 'valid', got {padding!r}")
    return padding


def _activation(relu: bool | str) -> str | None:
    if relu in (False, None):
        return None
    if relu is True or relu == "relu":
        return "relu"
    if relu == "relu6":
        return "relu6"
    raise ValueError(f"relu must be False, True or 'relu6', got {relu!r}")


@functools.cache
def conv2d(h: int = 8, w: int = 8, cin: int = 3, cout: int = 4, k: int = 3, stride: int = 1,
           padding: str = "same", relu: bool | str = False, seed: int = 0) -> bytes:
    """CONV_2D, k x k, per-channel int8 weights (channel magnitudes differ), non-zero bias.

    ``relu``: False, True (fused RELU) or "relu6" (fused RELU6).
    """
    keras = _keras()
    rng = np.random.default_rng(seed)
    x = _input((h, w, cin))
    layer = keras.layers.Conv2D(cout, k, strides=stride, padding=_padding(padding),
                                activation=_activation(relu), name="conv2d")
    model = _model_of(x, layer(x))
    kernel = rng.normal(0.0, 1.0 / math.sqrt(k * k * cin), (k, k, cin, cout))
    kernel *= rng.uniform(0.2, 2.0, cout)
    bias = rng.uniform(-0.5, 0.5, cout)
    layer.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
    return convert_int8(model, representative([(h, w, cin)], seed))


@functools.cache
def depthwise_conv2d(h: int = 8, w: int = 8, c: int = 6, k: int = 3, stride: int = 1, padding: str = "same",
                     relu: bool | str = False, seed: int = 0) -> bytes:
    """DEPTHWISE_CONV_2D, k x k, depth multiplier 1, per-channel int8 weights, non-zero bias."""
    keras = _keras()
    rng = np.random.default_rng(seed)
    x = _input((h, w, c))
    layer = keras.layers.DepthwiseConv2D(k, strides=stride, padding=_padding(padding),
                                         activation=_activation(relu), name="depthwise")
    model = _model_of(x, layer(x))
    kernel = rng.normal(0.0, 1.0 / k, (k, k, c, 1)) * rng.uniform(0.2, 2.0, (c, 1))
    bias = rng.uniform(-0.5, 0.5, c)
    layer.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
    return convert_int8(model, representative([(h, w, c)], seed))


@functools.cache
def dense(k: int = 20, n: int = 6, relu: bool | str = False, seed: int = 0) -> bytes:
    """FULLY_CONNECTED on a (1, k) input, per-channel int8 weights, non-zero bias.

    Its reference kernel rescales in double precision: recompute it with
    ``hdl.numerics.requantize_double``, not ``requantize``.
    """
    keras = _keras()
    rng = np.random.default_rng(seed)
    x = _input((k,))
    layer = keras.layers.Dense(n, activation=_activation(relu), name="dense")
    model = _model_of(x, layer(x))
    kernel = rng.normal(0.0, 1.0 / math.sqrt(k), (k, n)) * rng.uniform(0.2, 2.0, n)
    bias = rng.uniform(-0.5, 0.5, n)
    layer.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
    return convert_int8(model, representative([(k,)], seed))


@functools.cache
def add(shape: tuple[int, ...] = (6, 6, 4), relu: bool = False, seed: int = 0) -> bytes:
    """ADD of two model inputs with different ranges (so different scales), optional fused ReLU."""
    keras = _keras()
    a, b = _input(shape, "a"), _input(shape, "b")
    y = keras.layers.Add(name="add")([a, b])
    if relu:
        y = keras.layers.ReLU(name="relu")(y)
    model = _model_of([a, b], y)
    return convert_int8(model, representative([shape, shape], seed, ranges=[(-0.7, 1.3), (-3.0, 1.0)]))


@functools.cache
def mul_by_constant(shape: tuple[int, ...] = (6, 6, 4), seed: int = 0) -> bytes:
    """MUL of the input by a constant per-channel vector (a standalone BatchNormalization's scale)."""
    tf = _tf()
    rng = np.random.default_rng(seed)
    vec = tf.constant(rng.uniform(-1.5, 2.5, shape[-1]).astype(np.float32))
    fn = tf.function(lambda x: x * vec)
    return convert_int8(fn, representative([shape], seed))


@functools.cache
def max_pool(k: int = 2, stride: int = 2, padding: str = "valid", h: int = 8, w: int = 8, c: int = 4,
             seed: int = 0) -> bytes:
    """MAX_POOL_2D."""
    keras = _keras()
    x = _input((h, w, c))
    model = _model_of(x, keras.layers.MaxPooling2D(k, stride, padding=_padding(padding), name="pool")(x))
    return convert_int8(model, representative([(h, w, c)], seed))


@functools.cache
def avg_pool(k: int = 2, stride: int = 2, padding: str = "valid", h: int = 8, w: int = 8, c: int = 4,
             seed: int = 0) -> bytes:
    """AVERAGE_POOL_2D (SAME: edge windows average only their in-bounds elements)."""
    keras = _keras()
    x = _input((h, w, c))
    model = _model_of(x, keras.layers.AveragePooling2D(k, stride, padding=_padding(padding), name="pool")(x))
    return convert_int8(model, representative([(h, w, c)], seed))


@functools.cache
def mean(h: int = 6, w: int = 6, c: int = 4, keep_dims: bool = False, seed: int = 0) -> bytes:
    """MEAN over H x W, from Keras GlobalAveragePooling2D (keep_dims -> keepdims=True)."""
    keras = _keras()
    x = _input((h, w, c))
    model = _model_of(x, keras.layers.GlobalAveragePooling2D(keepdims=keep_dims, name="mean")(x))
    return convert_int8(model, representative([(h, w, c)], seed))
