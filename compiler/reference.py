"""The reference executor: runs an IR graph in numpy with ``hdl.numerics`` only (no TensorFlow).

Bit-exact with the TFLite interpreter's reference kernels on every int8 tensor (batch 1):

* CONV_2D: im2col + ``numerics.int_matmul``; ``sum w * (x - zp)`` is computed as
  ``x @ w - zp * sum(w)`` with the input padded by its zero point, which is what TFLite's skipping
  of out-of-bounds taps amounts to; then ``numerics.requantize`` per output channel.
* FULLY_CONNECTED: the same on the flattened input, but requantized like TFLite's reference FC kernel:
  ``round(double(acc) * real_scale)`` (``requantize_double``), not MultiplyByQuantizedMultiplier.
* ADD / MUL: ``numerics.add`` / ``numerics.mul`` with numpy broadcasting.
* PAD: constant padding with the output zero point.
* MAX_POOL_2D: max over in-bounds taps; AVERAGE_POOL_2D: sum over in-bounds taps,
  ``numerics.pool_output`` with the in-bounds count; both clamped to the fused activation range.
* MEAN: int sum over the axes, ``numerics.requantize`` with ``mean_params``.
* CONCATENATION: a copy (TFLite's int8 kernel requires inputs quantized exactly like the output and
  rejects the model otherwise; so does the import).
* RESHAPE: reshape.
* L2_NORMALIZATION (a host op): compiler/l2norm.py, TFLite's integer kernel step by step.
* RELU, RELU6, RELU_N1_TO_1, RELU_0_TO_1: TFLite's ReluX, ``numerics.requantize`` of ``x - zp_in``
  with the clamp; MINIMUM/MAXIMUM with a scalar constant: a clamp of the raw values.
* Host stages in float numpy: SOFTMAX (dequantize, softmax, quantize; not bit-exact with TFLite's
  int8 softmax LUT), DEQUANTIZE, QUANTIZE (float -> int8 as TFLite's AffineQuantize; int8 -> int8
  is an integer requantization, bit-exact).

``execute(graph, inputs)`` returns every tensor's value by tensor index.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from softnpu.compiler import depthwise
from softnpu.compiler.ir import Graph, Op, Tensor
from softnpu.compiler.l2norm import l2_normalization
from softnpu.hdl import numerics

__all__ = ["execute", "run", "quantize", "dequantize", "KERNELS", "conv2d", "fully_connected",
           "pool2d", "im2col", "requantize_double"]


# ----------------------------------------------------------------------------------------------
# Host-stage conversions
# ----------------------------------------------------------------------------------------------
def quantize(x, scale: float, zero_point: int) -> np.ndarray:
    """float -> int8 as TFLite's AffineQuantize: round_half_away(float32(x) / float32(scale)) + zp."""
    q = np.asarray(x, dtype=np.float32) / np.float32(scale)
    q = np.where(q >= 0, np.floor(q + np.float32(0.5)), -np.floor(-q + np.float32(0.5)))
    return np.clip(q.astype(np.int64) + int(zero_point), -128, 127).astype(np.int8)


def dequantize(q, scale: float, zero_point: int) -> np.ndarray:
    """int8 -> float32 as TFLite's Dequantize: float32(double(scale) * (q - zp))."""
    return (float(np.float32(scale)) * (np.asarray(q, dtype=np.int64) - int(zero_point))).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------
def im2col(x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int],
           pad: tuple[int, int, int, int], pad_value: int, out_hw: tuple[int, int]) -> np.ndarray:
    """x [H, W, C] -> patches [OH*OW, KH*KW*C] (row-major over kh, kw, c: TFLite's OHWI order)."""
    kh, kw = kernel
    sh, sw = stride
    top, bottom, left, right = pad
    oh, ow = out_hw
    if top or bottom or left or right:
        x = np.pad(x, ((top, bottom), (left, right), (0, 0)), constant_values=pad_value)
    if (kh, kw) == (1, 1):
        return np.ascontiguousarray(x[: (oh - 1) * sh + 1: sh, : (ow - 1) * sw + 1: sw]).reshape(oh * ow, -1)
    win = sliding_window_view(x, (kh, kw), axis=(0, 1))          # [H', W', C, KH, KW]
    win = win[: (oh - 1) * sh + 1: sh, : (ow - 1) * sw + 1: sw]  # [OH, OW, C, KH, KW]
    return np.ascontiguousarray(win.transpose(0, 1, 3, 4, 2)).reshape(oh * ow, -1)


def _matmul_requant(cols: np.ndarray, wmat: np.ndarray, p: dict) -> np.ndarray:
    """int8 cols [M, K] x int8 weights [N, K] -> int8 [M, N] (TFLite int8 conv/FC output stage)."""
    w_t = wmat.reshape(wmat.shape[0], -1).T                           # [K, N]
    acc = numerics.int_matmul(cols, w_t).astype(np.int64)
    in_off, w_off = int(p["input_offset"]), int(p.get("weight_offset", 0))
    if in_off:
        acc = acc + in_off * w_t.astype(np.int64).sum(axis=0)
    if w_off:
        k = w_t.shape[0]
        acc = acc + w_off * cols.astype(np.int64).sum(axis=1, keepdims=True) + k * in_off * w_off
    if p.get("requant") == "double":
        return requantize_double(acc, p["bias"], p["real_scale"], p["output_zero_point"],
                                 p["act_min"], p["act_max"])
    return numerics.requantize(acc, p["bias"], p["multiplier"], p["shift"], p["output_zero_point"],
                               p["act_min"], p["act_max"])


def requantize_double(acc, bias, real_scale, zero_point, act_min=-128, act_max=127) -> np.ndarray:
    """The output stage of TFLite's reference int8 FULLY_CONNECTED kernels: clamp(int32(std::round(
    double(acc + bias) * real_scale)) + zero_point); ``hdl.numerics.requantize_double``."""
    return numerics.requantize_double(acc, bias, real_scale, zero_point, act_min, act_max)


def conv2d(x: np.ndarray, w: np.ndarray, op: Op) -> np.ndarray:
    """int8 CONV_2D, x [1, H, W, C], w [O, KH, KW, C] -> [1, OH, OW, O]."""
    p = op.params
    oh, ow = p["output_size"]
    dh, dw = op.options.get("dilation", (1, 1))
    if (dh, dw) != (1, 1):      # the dilated kernel as a dense one with zero taps between (exact)
        shape = (w.shape[0], (w.shape[1] - 1) * dh + 1, (w.shape[2] - 1) * dw + 1, w.shape[3])
        dense = np.zeros(shape, w.dtype)
        dense[:, ::dh, ::dw] = w
        w = dense
    cols = im2col(x[0], (w.shape[1], w.shape[2]), op.options["stride"], p["pad"], -int(p["input_offset"]),
                  (oh, ow))
    out = _matmul_requant(cols, w, p)
    return out.reshape(1, oh, ow, w.shape[0])


def fully_connected(x: np.ndarray, w: np.ndarray, op: Op, out_shape) -> np.ndarray:
    rows = x.reshape(-1, w.shape[1])
    return _matmul_requant(rows, w, op.params).reshape(out_shape)


def pool2d(x: np.ndarray, op: Op) -> np.ndarray:
    """int8 MAX_POOL_2D / AVERAGE_POOL_2D over in-bounds taps, x [1, H, W, C]."""
    p = op.params
    kh, kw = op.options["filter"]
    sh, sw = op.options["stride"]
    top, bottom, left, right = p["pad"]
    oh, ow = p["output_size"]
    pad = ((top, bottom), (left, right), (0, 0))
    if op.kind == "MAX_POOL_2D":
        xp = np.pad(x[0], pad, constant_values=-128)   # -128 never beats an in-bounds int8 tap
        win = sliding_window_view(xp, (kh, kw), axis=(0, 1))[: (oh - 1) * sh + 1: sh, : (ow - 1) * sw + 1: sw]
        out = win.max(axis=(3, 4)).astype(np.int64)
        return numerics.clamp_int8(out, p["act_min"], p["act_max"])[None]
    xp = np.pad(x[0].astype(np.int64), pad)
    ones = np.pad(np.ones(x.shape[1:3], dtype=np.int64), pad[:2])
    win = sliding_window_view(xp, (kh, kw), axis=(0, 1))[: (oh - 1) * sh + 1: sh, : (ow - 1) * sw + 1: sw]
    cnt = sliding_window_view(ones, (kh, kw))[: (oh - 1) * sh + 1: sh, : (ow - 1) * sw + 1: sw]
    acc = win.sum(axis=(3, 4))
    count = cnt.sum(axis=(2, 3))[..., None]
    return numerics.pool_output(acc, count, p["act_min"], p["act_max"])[None]


def _k_conv(g: Graph, op: Op, args):
    return conv2d(args[0], args[1], op)


def _k_fc(g: Graph, op: Op, args):
    return fully_connected(args[0], args[1], op, g.tensors[op.outputs[0]].shape)


def _k_add(g: Graph, op: Op, args):
    p = op.params
    keys = ("a_offset", "a_mult", "a_shift", "b_offset", "b_mult", "b_shift", "out_mult", "out_shift")
    return numerics.add(args[0], args[1], **{k: p[k] for k in keys}, zero_point=p["output_zero_point"],
                        act_min=p["act_min"], act_max=p["act_max"])


def _k_mul(g: Graph, op: Op, args):
    p = op.params
    keys = ("a_offset", "b_offset", "out_mult", "out_shift")
    return numerics.mul(args[0], args[1], **{k: p[k] for k in keys}, zero_point=p["output_zero_point"],
                        act_min=p["act_min"], act_max=p["act_max"])


def _k_pad(g: Graph, op: Op, args):
    pads = [tuple(int(v) for v in row) for row in op.params["paddings"]]
    return np.pad(args[0], pads, constant_values=np.int8(op.params["pad_value"]))


def _k_slice(g: Graph, op: Op, args):
    (h0, w0, c0), (sh, sw, sc) = op.params["begin"], op.params["slice_stride"]
    _, oh, ow, oc = g.tensors[op.outputs[0]].shape
    return args[0][:, h0:h0 + (oh - 1) * sh + 1:sh, w0:w0 + (ow - 1) * sw + 1:sw,
                   c0:c0 + (oc - 1) * sc + 1:sc]


def _k_pool(g: Graph, op: Op, args):
    return pool2d(args[0], op)


def _k_mean(g: Graph, op: Op, args):
    p = op.params
    total = args[0].astype(np.int64).sum(axis=tuple(op.options["axes"]))
    return numerics.requantize(total, p["bias"], p["multiplier"], p["shift"], p["output_zero_point"],
                               p["act_min"], p["act_max"])


def _k_relu(g: Graph, op: Op, args):
    p = op.params
    return numerics.requantize(args[0].astype(np.int64) - p["input_zero_point"], 0, p["multiplier"],
                               p["shift"], p["output_zero_point"], p["act_min"], p["act_max"])


def _k_min_max(g: Graph, op: Op, args):
    x = args[0] if op.inputs[0] == op.params["input"] else args[1]
    return numerics.clamp_int8(x.astype(np.int64), op.params["act_min"], op.params["act_max"])


def _k_concat(g: Graph, op: Op, args):
    # The import guarantees equal quantization of inputs and output (as TFLite's int8 kernel does).
    return np.concatenate(args, axis=op.options["axis"])


def _k_reshape(g: Graph, op: Op, args):
    return args[0].reshape(g.tensors[op.outputs[0]].shape)


def _k_softmax(g: Graph, op: Op, args):
    inp, out = g.tensors[op.inputs[0]], g.tensors[op.outputs[0]]
    x = args[0] if inp.dtype == "float32" else dequantize(args[0], inp.qscale, inp.qzero)
    z = (x.astype(np.float64) - x.max(axis=-1, keepdims=True)) * float(op.options.get("beta", 1.0))
    e = np.exp(z)
    y = (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)
    return y if out.dtype == "float32" else quantize(y, out.qscale, out.qzero)


def _k_quantize(g: Graph, op: Op, args):
    inp, out = g.tensors[op.inputs[0]], g.tensors[op.outputs[0]]
    if inp.dtype == "float32":
        return quantize(args[0], out.qscale, out.qzero)
    p = op.params
    return numerics.requantize(args[0].astype(np.int64) - inp.qzero, 0, p["multiplier"], p["shift"],
                               out.qzero)


def _k_dequantize(g: Graph, op: Op, args):
    inp = g.tensors[op.inputs[0]]
    return dequantize(args[0], inp.qscale, inp.qzero)


def _k_l2norm(g: Graph, op: Op, args):
    return l2_normalization(args[0], op.params["input_zero_point"])


KERNELS = {
    "CONV_2D": _k_conv, "FULLY_CONNECTED": _k_fc, "ADD": _k_add, "MUL": _k_mul, "PAD": _k_pad,
    "STRIDED_SLICE": _k_slice, "SLICE": _k_slice,
    "MAX_POOL_2D": _k_pool, "AVERAGE_POOL_2D": _k_pool, "MEAN": _k_mean, "CONCATENATION": _k_concat,
    "RESHAPE": _k_reshape, "RELU": _k_relu, "RELU6": _k_relu, "RELU_N1_TO_1": _k_relu,
    "RELU_0_TO_1": _k_relu, "MINIMUM": _k_min_max, "MAXIMUM": _k_min_max, "SOFTMAX": _k_softmax,
    "QUANTIZE": _k_quantize, "DEQUANTIZE": _k_dequantize, "DEPTHWISE_CONV_2D": depthwise.reference,
    "L2_NORMALIZATION": _k_l2norm,
}


# ----------------------------------------------------------------------------------------------
# Graph execution
# ----------------------------------------------------------------------------------------------
def _as_input(t: Tensor, x) -> np.ndarray:
    arr = np.asarray(x)
    if arr.size != t.size:
        raise ValueError(f"input {t.name!r}: expected {t.shape} ({t.size} elements), got {arr.shape}")
    if t.dtype == "int8" and arr.dtype != np.int8:
        if np.issubdtype(arr.dtype, np.floating):
            raise TypeError(f"input {t.name!r} is int8; quantize float inputs first "
                            f"(reference.quantize(x, {t.qscale}, {t.qzero}))")
        if arr.min() < -128 or arr.max() > 127:
            raise ValueError(f"input {t.name!r}: values outside int8")
    return arr.astype(t.dtype, copy=False).reshape(t.shape)


def execute(graph: Graph, inputs, *, keep: bool = True) -> dict[int, np.ndarray]:
    """Run the graph on ``inputs`` (one array, a sequence in graph-input order, or a dict by tensor
    index/name).  Returns {tensor index: value} for the inputs, every op output (all of them when
    ``keep``, else only the graph outputs) and no constants."""
    if isinstance(inputs, dict):
        feeds = {graph.tensor(k).index: v for k, v in inputs.items()}
    elif isinstance(inputs, np.ndarray) or not isinstance(inputs, Sequence):
        feeds = {graph.inputs[0]: inputs}
    else:
        feeds = dict(zip(graph.inputs, inputs, strict=True))
    if set(feeds) != set(graph.inputs):
        raise ValueError(f"inputs {sorted(feeds)} do not match the graph inputs {graph.inputs}")
    values: dict[int, np.ndarray] = {i: _as_input(graph.tensors[i], v) for i, v in feeds.items()}
    remaining = {}
    if not keep:
        for op in graph.ops:
            for i in op.inputs:
                remaining[i] = remaining.get(i, 0) + 1
    for op in graph.ops:
        args = []
        for i in op.inputs:
            if i < 0:
                args.append(None)
                continue
            t = graph.tensors[i]
            args.append(t.data if t.is_const else values[i])
        result = KERNELS[op.kind](graph, op, args)
        out_t = graph.tensors[op.outputs[0]]
        result = np.asarray(result)
        if result.size != out_t.size:
            raise AssertionError(f"{op.kind} produced {result.shape}, tensor {out_t.name!r} is {out_t.shape}")
        values[op.outputs[0]] = result.astype(out_t.dtype, copy=False).reshape(out_t.shape)
        if not keep:
            for i in op.inputs:
                remaining[i] -= 1
                if remaining[i] == 0 and i not in graph.outputs and i in values:
                    del values[i]
    return values


def run(graph: Graph, inputs) -> list[np.ndarray]:
    """The graph outputs, in order."""
    values = execute(graph, inputs, keep=False)
    return [values[i] for i in graph.outputs]
