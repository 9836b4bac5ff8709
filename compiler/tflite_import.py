"""Read a .tflite flatbuffer into the compiler's IR (``compiler.ir.Graph``).

``load_tflite(model: bytes | str | Path) -> Graph`` decodes subgraph 0 with the flatbuffer schema
that ai-edge-litert ships, checks that every op is one the compiler supports (else ``UnsupportedOp``
naming the op, its output tensor and why) and derives, for every op, the integer parameters the
TFLite kernels compute in their Prepare step (``Op.params``):

* CONV_2D / FULLY_CONNECTED: per-output-channel ``multiplier``/``shift`` (int64 arrays), exactly as
  kernel_util's PopulateConvolutionQuantizationParams (double arithmetic; FULLY_CONNECTED with
  per-tensor weights uses GetQuantizedConvolutionMultipler, whose scale product is a float32
  product), ``input_offset``, ``weight_offset``, ``output_zero_point``, ``bias``, explicit ``pad``
  (top, bottom, left, right) and output size.  ``requant`` says how TFLite's *reference* kernel
  requantizes: ``"fixed"`` (CONV_2D: MultiplyByQuantizedMultiplier) or ``"double"``
  (FULLY_CONNECTED: ``round(double(acc) * real_scale[c])``, with ``real_scale`` float64 per channel;
  only the optimized kernels use ``multiplier``/``shift`` for FULLY_CONNECTED);
* ADD: ``hdl.numerics.add_params``; MUL: ``mul_params``; MEAN: ``mean_params``;
* every op with an int8 output: ``act_min``/``act_max`` (CalculateActivationRangeQuantized);
* PAD: ``paddings`` ([rank, 2]) and ``pad_value`` (the output zero point);
* QUANTIZE int8 -> int8: ``multiplier``/``shift`` (a requantization);
* RELU, RELU6, RELU_N1_TO_1, RELU_0_TO_1: ``multiplier``/``shift`` of float32(s_in / s_out), the zero
  points and the clamp bounds (activations.cc ReluPrepare/QuantizedReluX);
* MINIMUM/MAXIMUM with a scalar constant: ``input`` (the tensor operand), ``bound`` and the clamp;
* L2_NORMALIZATION (a host op, compiler/l2norm.py): ``input_zero_point``; the output must be
  quantized with scale 1/128 and zero point 0, as TFLite's Prepare requires.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from softnpu.compiler.ir import RELU_BOUNDS, SUPPORTED_OPS, Graph, Op, Tensor, UnsupportedOp
from softnpu.hdl import numerics

__all__ = ["load_tflite", "drop_host_tail", "op_code_names", "activation_range", "conv_output_size",
           "same_padding"]

_DTYPES = {
    "FLOAT32": "float32", "FLOAT16": "float16", "INT32": "int32", "UINT8": "uint8", "INT64": "int64",
    "BOOL": "bool", "INT16": "int16", "INT8": "int8", "FLOAT64": "float64", "UINT32": "uint32",
    "UINT16": "uint16", "UINT64": "uint64",
}
_ACTIVATIONS = {0: "NONE", 1: "RELU", 2: "RELU_N1_TO_1", 3: "RELU6", 4: "TANH", 5: "SIGN_BIT"}
_PADDING = {0: "SAME", 1: "VALID"}


def _schema():
    from ai_edge_litert import schema_py_generated as schema
    return schema


def _enum_names(cls) -> dict[int, str]:
    return {v: k for k, v in vars(cls).items() if not k.startswith("_") and isinstance(v, int)}


def op_code_names() -> dict[int, str]:
    """Builtin operator code -> name (e.g. 3 -> 'CONV_2D')."""
    return _enum_names(_schema().BuiltinOperator)


# ----------------------------------------------------------------------------------------------
# Shared helpers (also used by the reference executor and the lowering)
# ----------------------------------------------------------------------------------------------
def activation_range(activation: str, scale: float, zero_point: int,
                     qmin: int = -128, qmax: int = 127) -> tuple[int, int]:
    """TFLite CalculateActivationRangeQuantized: the int8 clamp bounds of a fused activation."""
    def quantize(f: float) -> int:
        q = np.float32(f) / np.float32(scale)
        return int(zero_point) + int(_round_half_away(float(q)))

    if activation == "NONE":
        return qmin, qmax
    if activation == "RELU":
        return max(qmin, quantize(0.0)), qmax
    if activation == "RELU6":
        return max(qmin, quantize(0.0)), min(qmax, quantize(6.0))
    if activation == "RELU_N1_TO_1":
        return max(qmin, quantize(-1.0)), min(qmax, quantize(1.0))
    raise ValueError(f"fused activation {activation} has no int8 clamp range")


def _round_half_away(x: float) -> float:
    return math.floor(x + 0.5) if x >= 0 else -math.floor(-x + 0.5)


def conv_output_size(size: int, kernel: int, stride: int, padding: str, dilation: int = 1) -> int:
    """TFLite ComputeOutSize."""
    eff = (kernel - 1) * dilation + 1
    if padding == "SAME":
        return (size + stride - 1) // stride
    return (size - eff + stride) // stride


def same_padding(size: int, kernel: int, stride: int, out: int, dilation: int = 1) -> tuple[int, int]:
    """TFLite ComputePaddingWithOffset: (before, after) padding of one spatial dimension."""
    eff = (kernel - 1) * dilation + 1
    total = max((out - 1) * stride + eff - size, 0)
    return total // 2, total - total // 2


# ----------------------------------------------------------------------------------------------
# Flatbuffer decoding
# ----------------------------------------------------------------------------------------------
def load_tflite(model: bytes | bytearray | str | Path, name: str = "") -> Graph:
    """Decode a .tflite flatbuffer (bytes or a path) into a ``Graph`` with derived parameters."""
    if isinstance(model, (str, Path)):
        name = name or Path(model).stem
        model = Path(model).read_bytes()
    buf = bytes(model)
    schema = _schema()
    fb = schema.Model.GetRootAs(buf, 0)
    if fb.SubgraphsLength() < 1:
        raise ValueError("tflite model has no subgraph")
    sub = fb.Subgraphs(0)
    code_names = op_code_names()
    type_names = _enum_names(schema.TensorType)

    tensors = [_tensor(fb, sub.Tensors(i), i, buf, type_names) for i in range(sub.TensorsLength())]
    ops: list[Op] = []
    for i in range(sub.OperatorsLength()):
        fop = sub.Operators(i)
        code = fb.OperatorCodes(fop.OpcodeIndex())
        builtin = max(int(code.BuiltinCode()), int(code.DeprecatedBuiltinCode()))
        kind = code_names.get(builtin, f"BUILTIN_{builtin}")
        if kind == "CUSTOM":
            kind = f"CUSTOM({code.CustomCode().decode() if code.CustomCode() else '?'})"
        inputs = [int(x) for x in fop.InputsAsNumpy()] if fop.InputsLength() else []
        outputs = [int(x) for x in fop.OutputsAsNumpy()] if fop.OutputsLength() else []
        op = Op(index=i, kind=kind, inputs=inputs, outputs=outputs)
        out_name = tensors[outputs[0]].name if outputs else "?"
        if kind not in SUPPORTED_OPS:
            raise UnsupportedOp(kind, out_name, "the NPU compiler has no lowering for this TFLite op "
                                f"(supported: {', '.join(sorted(SUPPORTED_OPS))})", index=i,
                                inputs=_activation_names(inputs, tensors))
        op.options = _options(fop, kind, schema)
        _derive(op, tensors)
        ops.append(op)

    description = fb.Description().decode("utf-8", "replace") if fb.Description() else ""
    graph = Graph(tensors=tensors, ops=ops,
                  inputs=[int(x) for x in sub.InputsAsNumpy()] if sub.InputsLength() else [],
                  outputs=[int(x) for x in sub.OutputsAsNumpy()] if sub.OutputsLength() else [],
                  name=name, description=description)
    return graph


def _tensor(fb, ft, index: int, buf: bytes, type_names: dict[int, str]) -> Tensor:
    name = ft.Name().decode("utf-8", "replace") if ft.Name() else f"tensor_{index}"
    shape = tuple(int(d) for d in ft.ShapeAsNumpy()) if ft.ShapeLength() else ()
    tname = type_names.get(ft.Type(), str(ft.Type()))
    dtype = _DTYPES.get(tname, tname.lower())
    scale = zero_point = None
    qdim = 0
    q = ft.Quantization()
    if q is not None and q.ScaleLength() > 0:
        scale = np.asarray(q.ScaleAsNumpy(), dtype=np.float32).copy()
        zero_point = (np.asarray(q.ZeroPointAsNumpy(), dtype=np.int64).copy() if q.ZeroPointLength()
                      else np.zeros(len(scale), dtype=np.int64))
        if len(zero_point) == 1 and len(scale) > 1:
            zero_point = np.repeat(zero_point, len(scale))
        qdim = int(q.QuantizedDimension())
    data = None
    bidx = ft.Buffer()
    if bidx > 0 and bidx < fb.BuffersLength():
        fbuf = fb.Buffers(bidx)
        raw = None
        if fbuf.Offset() > 1:
            raw = buf[fbuf.Offset(): fbuf.Offset() + fbuf.Size()]
        elif fbuf.DataLength() > 0:
            raw = fbuf.DataAsNumpy().tobytes()
        if raw is not None:
            try:
                npdt = np.dtype(dtype)
            except TypeError:
                npdt = None
            if npdt is not None:
                data = np.frombuffer(raw, dtype=npdt).reshape(shape)
    return Tensor(index=index, name=name, shape=shape, dtype=dtype, scale=scale, zero_point=zero_point,
                  quantized_dimension=qdim, data=data)


def _options(fop, kind: str, schema) -> dict:
    table = fop.BuiltinOptions()

    def opts(cls):
        o = cls()
        if table is not None:
            o.Init(table.Bytes, table.Pos)
        return o

    if kind == "CONV_2D":
        o = opts(schema.Conv2DOptions)
        return dict(padding=_PADDING[o.Padding()], stride=(o.StrideH(), o.StrideW()),
                    dilation=(o.DilationHFactor(), o.DilationWFactor()),
                    activation=_ACTIVATIONS.get(o.FusedActivationFunction(), "?"))
    if kind == "DEPTHWISE_CONV_2D":
        from softnpu.compiler import depthwise
        return depthwise.options(fop, schema, _ACTIVATIONS, _PADDING)
    if kind in ("MAX_POOL_2D", "AVERAGE_POOL_2D"):
        o = opts(schema.Pool2DOptions)
        return dict(padding=_PADDING[o.Padding()], stride=(o.StrideH(), o.StrideW()),
                    filter=(o.FilterHeight(), o.FilterWidth()),
                    activation=_ACTIVATIONS.get(o.FusedActivationFunction(), "?"))
    if kind == "FULLY_CONNECTED":
        o = opts(schema.FullyConnectedOptions)
        return dict(activation=_ACTIVATIONS.get(o.FusedActivationFunction(), "?"),
                    weights_format=int(o.WeightsFormat()), keep_num_dims=bool(o.KeepNumDims()),
                    asymmetric_quantize_inputs=bool(o.AsymmetricQuantizeInputs()))
    if kind == "ADD":
        o = opts(schema.AddOptions)
        return dict(activation=_ACTIVATIONS.get(o.FusedActivationFunction(), "?"))
    if kind == "MUL":
        o = opts(schema.MulOptions)
        return dict(activation=_ACTIVATIONS.get(o.FusedActivationFunction(), "?"))
    if kind == "CONCATENATION":
        o = opts(schema.ConcatenationOptions)
        return dict(axis=int(o.Axis()), activation=_ACTIVATIONS.get(o.FusedActivationFunction(), "?"))
    if kind == "MEAN":
        o = opts(schema.ReducerOptions)
        return dict(keep_dims=bool(o.KeepDims()))
    if kind == "L2_NORMALIZATION":
        o = opts(schema.L2NormOptions)
        return dict(activation=_ACTIVATIONS.get(o.FusedActivationFunction(), "?"))
    if kind == "SOFTMAX":
        o = opts(schema.SoftmaxOptions)
        return dict(beta=float(o.Beta()) if table is not None else 1.0)
    if kind == "STRIDED_SLICE":
        o = opts(schema.StridedSliceOptions)
        return dict(begin_mask=int(o.BeginMask()), end_mask=int(o.EndMask()),
                    ellipsis_mask=int(o.EllipsisMask()), new_axis_mask=int(o.NewAxisMask()),
                    shrink_axis_mask=int(o.ShrinkAxisMask()),
                    offset=bool(o.Offset()) if hasattr(o, "Offset") else False)
    if kind == "RESHAPE":
        if table is None:
            return {}
        o = opts(schema.ReshapeOptions)
        return dict(new_shape=[int(d) for d in o.NewShapeAsNumpy()] if o.NewShapeLength() else [])
    return {}


# ----------------------------------------------------------------------------------------------
# Parameters derived at Prepare time
# ----------------------------------------------------------------------------------------------
def _derive_slice(op: Op, tensors: list[Tensor]) -> None:
    """STRIDED_SLICE / SLICE of a 4-D NHWC tensor (a crop, a subsampling, a channel range): ``begin``
    (h, w, c) and ``slice_stride`` (h, w, c), as TFLite's strided_slice StartForAxis resolves them; the
    output shape gives the counts.  The int8 kernels copy bytes, so input and output quantization must
    agree (the converter makes them equal)."""
    inp, out = tensors[op.inputs[0]], tensors[op.outputs[0]]
    _require_int8(op, tensors, inp.index, out.index)
    if len(inp.shape) != 4 or len(out.shape) != 4:
        _fail(op, tensors, f"input {list(inp.shape)} -> output {list(out.shape)}: the NPU slices 4-D NHWC "
                           "tensors into 4-D tensors")
    if inp.qscale != out.qscale or inp.qzero != out.qzero:
        _fail(op, tensors, "input and output quantization differ")
    consts = [tensors[i] for i in op.inputs[1:]]
    if any(t.data is None for t in consts):
        _fail(op, tensors, "begin/end/size/strides are not constant tensors")
    begin = np.asarray(consts[0].data, np.int64).reshape(-1)
    dims = [int(d) for d in inp.shape]
    if op.kind == "SLICE":
        strides = np.ones(4, np.int64)
    else:
        o = op.options
        if o["ellipsis_mask"] or o["new_axis_mask"] or o["shrink_axis_mask"]:
            _fail(op, tensors, "ellipsis, new-axis or shrink-axis masks (the NPU keeps NHWC)")
        strides = np.asarray(consts[2].data, np.int64).reshape(-1)
        if (strides <= 0).any():
            _fail(op, tensors, f"strides {strides.tolist()}: only positive strides")
        begin = np.array([0 if o["begin_mask"] >> a & 1 else int(begin[a]) for a in range(4)], np.int64)
    begin = np.where(begin < 0, begin + np.asarray(dims), begin)
    begin = np.clip(begin, 0, np.asarray(dims))
    for a in range(4):
        n = int(out.shape[a])
        if n < 1 or begin[a] + (n - 1) * strides[a] >= dims[a]:
            _fail(op, tensors, f"axis {a}: {n} elements from {int(begin[a])} by {int(strides[a])} leave the "
                               f"input's {dims[a]}")
    if begin[0] != 0 or out.shape[0] != 1:
        _fail(op, tensors, "a slice of the batch dimension (the NPU runs batch 1)")
    op.params["begin"] = tuple(int(v) for v in begin[1:])
    op.params["slice_stride"] = tuple(int(v) for v in strides[1:])
    op.params["act_min"], op.params["act_max"] = -128, 127


def _fail(op: Op, tensors: list[Tensor], reason: str):
    out = tensors[op.outputs[0]].name if op.outputs else "?"
    raise UnsupportedOp(op.kind, out, reason, index=op.index, inputs=_activation_names(op.inputs, tensors))


def _activation_names(inputs: list[int], tensors: list[Tensor]) -> tuple[str, ...]:
    """Names of an op's non-constant inputs (they carry the producing layers' names, where a graph
    output's own name may be only the signature's)."""
    return tuple(tensors[i].name for i in inputs if i >= 0 and tensors[i].data is None)


def _require_int8(op: Op, tensors: list[Tensor], *indices: int) -> None:
    for i in indices:
        t = tensors[i]
        if t.dtype != "int8" or not t.is_quantized:
            _fail(op, tensors, f"tensor {t.name!r} is {t.dtype}"
                  f"{'' if t.is_quantized else ' (not quantized)'}; only int8-quantized tensors run on "
                  "the NPU (convert with full-integer int8 quantization)")
        if t.per_channel and not t.is_const:
            _fail(op, tensors, f"activation tensor {t.name!r} has per-channel quantization")


def _activation(op: Op, tensors: list[Tensor]) -> None:
    act = op.options.get("activation", "NONE")
    out = tensors[op.outputs[0]]
    if act not in ("NONE", "RELU", "RELU6", "RELU_N1_TO_1"):
        _fail(op, tensors, f"fused activation {act} is not supported")
    op.params["act_min"], op.params["act_max"] = activation_range(act, out.qscale, out.qzero)


def _derive(op: Op, tensors: list[Tensor]) -> None:
    kind = op.kind
    p = op.params
    if kind in ("CONV_2D", "FULLY_CONNECTED"):
        _derive_matmul(op, tensors)
    elif kind == "DEPTHWISE_CONV_2D":
        from softnpu.compiler import depthwise
        depthwise.derive(op, tensors)
    elif kind in ("ADD", "MUL"):
        a, b, out = (tensors[i] for i in (*op.inputs[:2], op.outputs[0]))
        _require_int8(op, tensors, a.index, b.index, out.index)
        fn = numerics.add_params if kind == "ADD" else numerics.mul_params
        p.update(fn(a.qscale, a.qzero, b.qscale, b.qzero, out.qscale))
        p["output_zero_point"] = out.qzero
        _activation(op, tensors)
    elif kind in RELU_BOUNDS:
        _derive_relu(op, tensors)
    elif kind in ("MINIMUM", "MAXIMUM"):
        _derive_min_max(op, tensors)
    elif kind == "PAD":
        inp, pads, out = tensors[op.inputs[0]], tensors[op.inputs[1]], tensors[op.outputs[0]]
        _require_int8(op, tensors, inp.index, out.index)
        if len(op.inputs) > 2 and op.inputs[2] >= 0:
            _fail(op, tensors, "PAD with explicit constant values")
        if pads.data is None:
            _fail(op, tensors, "paddings are not a constant tensor")
        if inp.qscale != out.qscale or inp.qzero != out.qzero:
            _fail(op, tensors, "input and output quantization differ")
        p["paddings"] = np.asarray(pads.data, dtype=np.int64).reshape(-1, 2)
        p["pad_value"] = out.qzero
        p["act_min"], p["act_max"] = -128, 127
    elif kind in ("STRIDED_SLICE", "SLICE"):
        _derive_slice(op, tensors)
    elif kind in ("MAX_POOL_2D", "AVERAGE_POOL_2D"):
        inp, out = tensors[op.inputs[0]], tensors[op.outputs[0]]
        _require_int8(op, tensors, inp.index, out.index)
        if len(inp.shape) != 4:
            _fail(op, tensors, f"pooling needs a 4-D NHWC input, got shape {inp.shape}")
        if inp.qscale != out.qscale or inp.qzero != out.qzero:
            _fail(op, tensors, "pooling input and output quantization differ")
        _spatial(op, inp, out, op.options["filter"], tensors)
        _activation(op, tensors)
    elif kind == "MEAN":
        inp, axes, out = tensors[op.inputs[0]], tensors[op.inputs[1]], tensors[op.outputs[0]]
        _require_int8(op, tensors, inp.index, out.index)
        if axes.data is None:
            _fail(op, tensors, "reduction axes are not a constant tensor")
        rank = len(inp.shape)
        ax = sorted({int(a) % rank for a in np.asarray(axes.data).reshape(-1)})
        count = int(np.prod([inp.shape[a] for a in ax], dtype=np.int64))
        op.options["axes"] = ax
        p.update(numerics.mean_params(inp.qscale, inp.qzero, out.qscale, count))
        p["num_elements"] = count
        p["output_zero_point"] = out.qzero
        p["act_min"], p["act_max"] = -128, 127
    elif kind == "CONCATENATION":
        out = tensors[op.outputs[0]]
        _require_int8(op, tensors, *op.inputs, out.index)
        if op.options.get("activation", "NONE") != "NONE":
            _fail(op, tensors, "CONCATENATION with a fused activation")
        op.options["axis"] = op.options["axis"] % len(out.shape)
        for i in op.inputs:
            if tensors[i].qscale != out.qscale or tensors[i].qzero != out.qzero:
                # LiteRT's int8 kernel refuses this at Prepare (concatenation.cc: "t->params.scale !=
                # output->params.scale"); the converter never emits it.
                _fail(op, tensors, f"input {tensors[i].name!r} is quantized differently from the output "
                      "(TFLite's int8 CONCATENATION requires equal scale and zero point)")
        p["act_min"], p["act_max"] = -128, 127
    elif kind == "RESHAPE":
        inp, out = tensors[op.inputs[0]], tensors[op.outputs[0]]
        _require_int8(op, tensors, inp.index, out.index)
        if inp.size != out.size:
            _fail(op, tensors, f"RESHAPE from {inp.shape} to {out.shape} changes the element count")
        op.options["new_shape"] = list(out.shape)
    elif kind == "L2_NORMALIZATION":
        inp, out = tensors[op.inputs[0]], tensors[op.outputs[0]]
        _require_int8(op, tensors, inp.index, out.index)
        if op.options.get("activation", "NONE") != "NONE":
            _fail(op, tensors, "L2_NORMALIZATION with a fused activation")
        # l2norm.cc Prepare: int8 output scale 1/128, zero point 0
        if out.qscale != np.float32(1.0 / 128.0) or out.qzero != 0:
            _fail(op, tensors, f"output quantized with scale {out.qscale:g}, zero point {out.qzero}; "
                  "TFLite's int8 L2_NORMALIZATION needs 1/128 and 0")
        p["input_zero_point"] = inp.qzero
    elif kind == "SOFTMAX":
        inp, out = tensors[op.inputs[0]], tensors[op.outputs[0]]
        if inp.dtype not in ("int8", "float32"):
            _fail(op, tensors, f"SOFTMAX on {inp.dtype}")
    elif kind == "QUANTIZE":
        inp, out = tensors[op.inputs[0]], tensors[op.outputs[0]]
        if out.dtype != "int8" or inp.dtype not in ("float32", "int8"):
            _fail(op, tensors, f"QUANTIZE {inp.dtype} -> {out.dtype}; only float32/int8 -> int8")
        if inp.dtype == "int8":
            real = float(np.float32(inp.qscale)) / float(np.float32(out.qscale))
            p["multiplier"], p["shift"] = numerics.quantize_multiplier(real)
        p["output_zero_point"] = out.qzero
    elif kind == "DEQUANTIZE":
        inp, out = tensors[op.inputs[0]], tensors[op.outputs[0]]
        if inp.dtype != "int8" or out.dtype != "float32":
            _fail(op, tensors, f"DEQUANTIZE {inp.dtype} -> {out.dtype}; only int8 -> float32")


def _derive_relu(op: Op, tensors: list[Tensor]) -> None:
    """activations.cc ReluPrepare/QuantizedReluX: out = clamp(zp_out + MBQM(x - zp_in, M, shift)) with
    M = float(s_in / s_out) (a float32 quotient) and bounds zp_out + roundf(bound / s_out)."""
    inp, out = tensors[op.inputs[0]], tensors[op.outputs[0]]
    _require_int8(op, tensors, inp.index, out.index)
    lo, hi = RELU_BOUNDS[op.kind]
    real = float(np.float32(inp.qscale) / np.float32(out.qscale))
    p = op.params
    p["multiplier"], p["shift"] = numerics.quantize_multiplier(real)
    p["input_zero_point"], p["output_zero_point"] = inp.qzero, out.qzero

    def bound(f: float) -> int:
        return out.qzero + int(_round_half_away(float(np.float32(f) / np.float32(out.qscale))))
    p["act_min"] = max(-128, bound(lo))
    p["act_max"] = 127 if hi is None else min(127, bound(hi))


def _derive_min_max(op: Op, tensors: list[Tensor]) -> None:
    """maximum_minimum.cc on int8 compares raw values (no rescaling): with a scalar constant that is a
    clamp of the raw input; the output takes the raw values whatever its quantization says."""
    a, b, out = (tensors[i] for i in (*op.inputs[:2], op.outputs[0]))
    if a.is_const == b.is_const:
        _fail(op, tensors, "MINIMUM/MAXIMUM runs on the NPU only between a tensor and a scalar constant "
              "(a clamp)")
    x, c = (b, a) if a.is_const else (a, b)
    _require_int8(op, tensors, x.index, c.index, out.index)
    if c.data.size != 1:
        _fail(op, tensors, f"constant {c.name!r} of shape {list(c.shape)}: only a scalar bound is supported")
    if tuple(out.shape) != tuple(x.shape):
        _fail(op, tensors, f"output {list(out.shape)} broadcasts the input {list(x.shape)}")
    value = int(np.asarray(c.data).reshape(-1)[0])
    op.params["input"], op.params["bound"] = x.index, value
    op.params["act_min"], op.params["act_max"] = (value, 127) if op.kind == "MAXIMUM" else (-128, value)


def _spatial(op: Op, inp: Tensor, out: Tensor, kernel: tuple[int, int], tensors) -> None:
    """Padding amounts and output size of a windowed op (conv, pooling), checked against the output."""
    (sh, sw), padding = op.options["stride"], op.options["padding"]
    dh, dw = op.options.get("dilation", (1, 1))
    kh, kw = kernel
    _, ih, iw, _ = inp.shape
    oh, ow = conv_output_size(ih, kh, sh, padding, dh), conv_output_size(iw, kw, sw, padding, dw)
    if (oh, ow) != tuple(out.shape[1:3]):
        _fail(op, tensors, f"output size {out.shape[1:3]} differs from the computed {(oh, ow)}")
    if padding == "SAME":
        top, bottom = same_padding(ih, kh, sh, oh, dh)
        left, right = same_padding(iw, kw, sw, ow, dw)
    else:
        top = bottom = left = right = 0
    op.params["pad"] = (top, bottom, left, right)
    op.params["output_size"] = (oh, ow)


def _derive_matmul(op: Op, tensors: list[Tensor]) -> None:
    p = op.params
    inp, w, out = tensors[op.inputs[0]], tensors[op.inputs[1]], tensors[op.outputs[0]]
    bias = tensors[op.inputs[2]] if len(op.inputs) > 2 and op.inputs[2] >= 0 else None
    _require_int8(op, tensors, inp.index, w.index, out.index)
    if w.data is None:
        _fail(op, tensors, "weights are not a constant tensor")
    if bias is not None and (bias.dtype != "int32" or bias.data is None):
        _fail(op, tensors, f"bias {bias.name!r} must be a constant int32 tensor, is {bias.dtype}")
    n_out = w.shape[0]
    if w.per_channel:
        if w.quantized_dimension != 0 or len(w.scale) != n_out:
            _fail(op, tensors, "per-channel weights must be quantized along the output channels")
        if np.any(w.zero_point != 0):
            _fail(op, tensors, "per-channel weights must be symmetric (zero point 0)")
    in_scale, out_scale = inp.qscale, out.qscale
    if op.kind == "CONV_2D":
        if len(inp.shape) != 4 or len(w.shape) != 4:
            _fail(op, tensors, f"CONV_2D needs 4-D NHWC input and OHWI weights, got {inp.shape}, {w.shape}")
        if w.shape[3] != inp.shape[3]:
            _fail(op, tensors, f"grouped convolution (input channels {inp.shape[3]}, filter depth "
                  f"{w.shape[3]})")
        _spatial(op, inp, out, (w.shape[1], w.shape[2]), tensors)
        # PopulateConvolutionQuantizationParams: double(input_scale) * double(filter_scale[i]) /
        # double(output_scale), per output channel (filter_scale[0] for every channel if per-tensor).
        scales = w.scale if w.per_channel else np.repeat(w.scale[:1], n_out)
        reals = [float(in_scale) * float(s) / float(out_scale) for s in scales.astype(np.float32)]
    else:
        if op.options.get("weights_format", 0) != 0:
            _fail(op, tensors, "shuffled FULLY_CONNECTED weights format")
        if len(w.shape) != 2:
            _fail(op, tensors, f"FULLY_CONNECTED weights must be 2-D, got {w.shape}")
        if inp.size % w.shape[1] != 0:
            _fail(op, tensors, f"input {inp.shape} does not flatten to rows of {w.shape[1]}")
        if w.per_channel:
            reals = [float(in_scale) * float(s) / float(out_scale) for s in w.scale.astype(np.float32)]
        else:
            # GetQuantizedConvolutionMultipler: the scale product is taken in float32, then double.
            product = float(np.float32(in_scale) * np.float32(w.scale[0]))
            reals = [product / float(out_scale)] * n_out
    if op.kind == "FULLY_CONNECTED":
        # TFLite's *reference* int8 FULLY_CONNECTED kernels (BUILTIN_REF, the oracle) requantize in
        # double: out = round_half_away(double(acc) * (double(s_in) * double(s_w[c]) / double(s_out))).
        # `multiplier`/`shift` below are what the optimized kernels use instead.
        ws = w.scale if w.per_channel else np.repeat(w.scale[:1], n_out)
        p["real_scale"] = np.asarray([float(in_scale) * float(s) / float(out_scale)
                                      for s in ws.astype(np.float32)], dtype=np.float64)
        p["requant"] = "double"
    else:
        p["requant"] = "fixed"
    mults, shifts = zip(*(numerics.quantize_multiplier(r) for r in reals), strict=True)
    p["multiplier"] = np.asarray(mults, dtype=np.int64)
    p["shift"] = np.asarray(shifts, dtype=np.int64)
    p["input_offset"] = -inp.qzero
    p["weight_offset"] = -int(w.zero_point[0]) if not w.per_channel else 0
    p["output_zero_point"] = out.qzero
    p["bias"] = (np.asarray(bias.data, dtype=np.int64).reshape(-1) if bias is not None
                 else np.zeros(n_out, dtype=np.int64))
    _activation(op, tensors)


# ----------------------------------------------------------------------------------------------
# Flatbuffer editing
# ----------------------------------------------------------------------------------------------
def drop_host_tail(model: bytes, kinds: tuple[str, ...] = ("SOFTMAX", "DEQUANTIZE")) -> bytes:
    """A copy of the .tflite model without the trailing ops of ``kinds`` (ops whose outputs are graph
    outputs and feed nothing else), their inputs becoming the graph outputs; tensor indices are kept.

    Use: run the interpreter up to the int8 logits (TFLite's int8 SOFTMAX reference kernel can abort
    the process on small input scales) and do the rest as a host stage.

    The copy is the model's bytes with edits made in place: the operator vector of subgraph 0 lists
    the kept operators (the dropped tables stay, unreferenced), its output vector names the new
    outputs, and signature outputs that named a dropped tensor name the first new output.  Unpacking
    and packing the whole flatbuffer copies every weight buffer four times (0.4 s for VGG-16's
    138 MB); it remains the way when an edit does not fit in place (_repacked).
    """
    schema = _schema()
    names = op_code_names()
    data = bytes(model)
    m = schema.Model.GetRootAs(data, 0)
    sub = m.Subgraphs(0)
    codes = [m.OperatorCodes(i) for i in range(m.OperatorCodesLength())]
    ops = [sub.Operators(k) for k in range(sub.OperatorsLength())]
    kind = [names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "?")
            for code in (codes[op.OpcodeIndex()] for op in ops)]
    op_inputs = [[] if op.InputsIsNone() else [int(i) for i in op.InputsAsNumpy()] for op in ops]
    op_outputs = [[] if op.OutputsIsNone() else [int(i) for i in op.OutputsAsNumpy()] for op in ops]
    outputs = [] if sub.OutputsIsNone() else [int(i) for i in sub.OutputsAsNumpy()]
    kept = list(range(len(ops)))
    changed = True
    while changed:
        changed = False
        for k in reversed(kept):
            outs = op_outputs[k]
            used = any(i in outs for other in kept if other != k for i in op_inputs[other])
            if kind[k] in kinds and outs and all(o in outputs for o in outs) and not used:
                inputs = [i for i in op_inputs[k] if i >= 0]
                outputs = [inputs[0] if o == outs[0] else o for o in outputs if o == outs[0] or o not in outs]
                kept.remove(k)
                changed = True
                break
    if len(kept) == len(ops):
        return data
    u32 = np.dtype("<u4")
    edits: list[tuple[int, bytes]] = []          # (position, bytes written there)
    # the operator vector: element j holds the offset from its own position to its table
    first = sub._tab.Vector(sub._tab.Offset(10))
    tables = [first + 4 * k + int(np.frombuffer(data, u32, 1, first + 4 * k)[0]) for k in kept]
    edits.append((first - 4, np.array([len(kept)] + [t - (first + 4 * j) for j, t in enumerate(tables)],
                                      u32).tobytes()))
    first = sub._tab.Vector(sub._tab.Offset(8))          # the output vector: no longer than before
    edits.append((first - 4, np.array([len(outputs), *outputs], "<i4").tobytes()))
    for s in range(m.SignatureDefsLength()):
        sig = m.SignatureDefs(s)
        for t in range(sig.OutputsLength()):
            tmap = sig.Outputs(t)
            if tmap.TensorIndex() in outputs:
                continue
            field = tmap._tab.Offset(6)
            if field == 0:                  # an index of 0 is not stored: no room to edit in place
                return _repacked(data, kept, outputs)
            edits.append((tmap._tab.Pos + field, np.array([outputs[0]], u32).tobytes()))
    view, pieces, at = memoryview(data), [], 0           # one copy: the pieces joined
    for position, value in sorted(edits):
        pieces += [view[at:position], value]
        at = position + len(value)
    return b"".join(pieces + [view[at:]])


def _repacked(model: bytes, kept: list[int], outputs: list[int]) -> bytes:
    """drop_host_tail's result by unpacking the whole model and packing it again: subgraph 0 keeps
    the operators `kept`, its outputs and its signatures' outputs become `outputs`."""
    import flatbuffers

    m = _schema().ModelT.InitFromPackedBuf(model, 0)
    sub = m.subgraphs[0]
    sub.operators = [sub.operators[k] for k in kept]
    sub.outputs = np.asarray(outputs, dtype=np.int32)
    for sig in m.signatureDefs or []:
        for tmap in sig.outputs or []:
            if tmap.tensorIndex not in outputs:
                tmap.tensorIndex = outputs[0]
    builder = flatbuffers.Builder(len(model) + 65536)
    builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())
