"""DEPTHWISE_CONV_2D (int8, per-channel weights, depth multiplier 1) on the MAC array.

Mapping.  The array computes `acc[out_lane] += sum_in_lane W[out_lane][in_lane] * x[in_lane]` per
input entry, and an input entry is one pixel's channel block.  A depthwise filter connects input
channel c to output channel c only, so each channel block runs as its own CONV (out_blocks=1,
in_blocks=1) whose weight entries are diagonal: W[l][l] = w[c0 + l], zero elsewhere.  Zero weights add
nothing, so the result is exact; the array does `rows` times the useful work, and the layer's MAC
utilization is at most 1/rows (the per-layer report says so: it counts useful MACs only).

Why not more, within this ISA: every lane of an accumulator entry belongs to the same output pixel
and every tap feeds the array one pixel, so per tap only the diagonal is useful.  A Toeplitz mapping
(lanes = pixels of one channel along a row) would use about kw/ceil((b*s+kw-1)/b) more of the array, but
needs a pixel-major layout; the only transpose this ISA has is a CONV with a kw=b window, which costs
as many cycles as the whole diagonal depthwise layer, twice (there and back).

Requantization is CONV_2D's: per-channel MultiplyByQuantizedMultiplier (TFLite's
reference_integer_ops::DepthwiseConvPerChannel), the bias folded with the input zero point so padded
taps (filled with the zero point by the load unit) contribute exactly zero, as TFLite's skipped
out-of-bounds taps do.

This module holds the whole op: the Prepare-time parameters (`derive`, called by the importer), the
reference kernel (`reference`), the lowering (`DepthwiseBuilders`, mixed into compiler/lower.py) and
the tiled code generation (`depthwise2d`).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from softnpu.compiler import layout
from softnpu.compiler.emit import (
    Activation,
    LoweringError,
    _band_rows,
    _emit,
    _finish_layer,
    _halves,
    _input_band,
    _input_rows,
    _input_span,
    _Step,
    _store_rows,
    _Tile,
)
from softnpu.compiler.tiling import widest_column_range
from softnpu.hdl import numerics
from softnpu.hdl.config import NPUConfig
from softnpu.hdl.isa import Buffer, Conv, ConvMode, Insn, Load, Requant, Rounding
from softnpu.hdl.timing import dma_cycles

__all__ = ["derive", "reference", "pack_depthwise_weights", "fold_depthwise_bias", "DepthwisePlan",
           "plan_depthwise", "depthwise2d", "DepthwiseBuilders"]


# ----------------------------------------------------------------------------------------------
# Import: the parameters TFLite's Prepare derives (depthwise_conv.cc)
# ----------------------------------------------------------------------------------------------
def derive(op, tensors) -> None:
    """Fill `op.params` of a DEPTHWISE_CONV_2D as compiler/tflite_import.py does for CONV_2D:
    per-channel multiplier/shift (PopulateConvolutionQuantizationParams: double arithmetic, filter
    scales along the filter's channel axis 3), input_offset, output_zero_point, bias, pad, output_size,
    act_min/act_max.  Raises UnsupportedOp for what the NPU mapping does not cover."""
    from softnpu.compiler import tflite_import as ti

    p = op.params
    inp, w, out = tensors[op.inputs[0]], tensors[op.inputs[1]], tensors[op.outputs[0]]
    bias = tensors[op.inputs[2]] if len(op.inputs) > 2 and op.inputs[2] >= 0 else None
    ti._require_int8(op, tensors, inp.index, w.index, out.index)
    if w.data is None:
        ti._fail(op, tensors, "weights are not a constant tensor")
    if len(inp.shape) != 4 or len(w.shape) != 4 or w.shape[0] != 1:
        ti._fail(op, tensors, f"DEPTHWISE_CONV_2D needs a 4-D NHWC input and [1, KH, KW, C] weights, got "
                 f"{inp.shape}, {w.shape}")
    channels = w.shape[3]
    if op.options.get("depth_multiplier", 1) not in (0, 1) or channels != inp.shape[3]:
        ti._fail(op, tensors, f"depth multiplier {op.options.get('depth_multiplier')} (input channels "
                 f"{inp.shape[3]}, output channels {channels}); only 1 runs on the NPU")
    if tuple(op.options["dilation"]) != (1, 1):
        ti._fail(op, tensors, f"dilated depthwise convolution {op.options['dilation']}")
    if bias is not None and (bias.dtype != "int32" or bias.data is None):
        ti._fail(op, tensors, f"bias {bias.name!r} must be a constant int32 tensor, is {bias.dtype}")
    if w.per_channel:
        if w.quantized_dimension != 3 or len(w.scale) != channels:
            ti._fail(op, tensors, "per-channel depthwise weights must be quantized along axis 3")
        if np.any(w.zero_point != 0):
            ti._fail(op, tensors, "per-channel weights must be symmetric (zero point 0)")
    elif w.zero_point is not None and int(w.zero_point[0]) != 0:
        ti._fail(op, tensors, "asymmetric (non-zero zero point) weights")
    ti._spatial(op, inp, out, (w.shape[1], w.shape[2]), tensors)
    scales = w.scale if w.per_channel else np.repeat(w.scale[:1], channels)
    reals = [float(inp.qscale) * float(s) / float(out.qscale) for s in scales.astype(np.float32)]
    mults, shifts = zip(*(numerics.quantize_multiplier(r) for r in reals), strict=True)
    p["multiplier"] = np.asarray(mults, dtype=np.int64)
    p["shift"] = np.asarray(shifts, dtype=np.int64)
    p["requant"] = "fixed"
    p["input_offset"] = -inp.qzero
    p["weight_offset"] = 0
    p["output_zero_point"] = out.qzero
    p["bias"] = (np.asarray(bias.data, dtype=np.int64).reshape(-1) if bias is not None
                 else np.zeros(channels, dtype=np.int64))
    ti._activation(op, tensors)


def options(fop, schema, activations: dict, paddings: dict) -> dict:
    """The decoded DepthwiseConv2DOptions of a flatbuffer operator."""
    o = schema.DepthwiseConv2DOptions()
    table = fop.BuiltinOptions()
    if table is not None:
        o.Init(table.Bytes, table.Pos)
    return dict(padding=paddings[o.Padding()], stride=(o.StrideH(), o.StrideW()),
                dilation=(o.DilationHFactor() or 1, o.DilationWFactor() or 1),
                depth_multiplier=int(o.DepthMultiplier()),
                activation=activations.get(o.FusedActivationFunction(), "?"))


# ----------------------------------------------------------------------------------------------
# The reference kernel (compiler/reference.py)
# ----------------------------------------------------------------------------------------------
def reference(graph, op, args) -> np.ndarray:
    """int8 DEPTHWISE_CONV_2D, x [1, H, W, C], w [1, KH, KW, C] -> [1, OH, OW, C], as TFLite's
    reference kernel: sum over taps of w * (x - zp_in), padding with zp_in standing for the skipped
    out-of-bounds taps, then per-channel requantization."""
    x, w = args[0], args[1]
    p = op.params
    sh, sw = op.options["stride"]
    top, bottom, left, right = p["pad"]
    oh, ow = p["output_size"]
    kh, kw = w.shape[1:3]
    zp = -int(p["input_offset"])
    xp = np.pad(x[0].astype(np.int64) - zp, ((top, bottom), (left, right), (0, 0)))
    win = sliding_window_view(xp, (kh, kw), axis=(0, 1))[: (oh - 1) * sh + 1: sh, : (ow - 1) * sw + 1: sw]
    acc = np.einsum("hwcij,ijc->hwc", win, w[0].astype(np.int64))
    out = numerics.requantize(acc, p["bias"], p["multiplier"], p["shift"], p["output_zero_point"],
                              p["act_min"], p["act_max"])
    return out[None]


# ----------------------------------------------------------------------------------------------
# Constants
# ----------------------------------------------------------------------------------------------
def pack_depthwise_weights(w: np.ndarray, b: int) -> np.ndarray:
    """Filters [1, KH, KW, C] -> diagonal weight entries [C/b][KH][KW][b_out][b_in] int8:
    entry (cb, i, j) has W[l][l] = w[0, i, j, cb*b + l] and zeros off the diagonal."""
    _, kh, kw, c = w.shape
    nb = -(-c // b)
    padded = np.zeros((kh, kw, nb * b), np.int8)
    padded[:, :, :c] = w[0]
    out = np.zeros((nb, kh, kw, b, b), np.int8)
    lane = np.arange(b)
    out[:, :, :, lane, lane] = padded.reshape(kh, kw, nb, b).transpose(2, 0, 1, 3)
    return out


def fold_depthwise_bias(bias, w: np.ndarray, zp_in: int) -> np.ndarray:
    """bias - zp_in * sum over taps of w, per channel (see compiler/layers.py fold_bias)."""
    folded = np.asarray(bias, np.int64) - zp_in * w[0].astype(np.int64).sum(axis=(0, 1))
    if folded.min() < numerics.INT32_MIN or folded.max() > numerics.INT32_MAX:
        raise LoweringError("the bias folded with the input zero point overflows int32")
    return folded


# ----------------------------------------------------------------------------------------------
# Tiling and code generation
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class DepthwisePlan:
    """Channel blocks per tile and output rows per tile; tiles run block groups outside row tiles,
    so a group's weights and parameters are loaded once.  cols_per_tile: when a band of input rows
    does not fit half the input scratchpad, tiles are also cut into ranges of that many output
    columns (each loads its own input columns, with SAME's left/right padding at the image borders
    only); 0: whole rows."""
    blocks_per_tile: int
    rows_per_tile: int
    estimated_cycles: int
    cols_per_tile: int = 0


_REFINE = 4


def plan_depthwise(config: NPUConfig, x: Activation, out_h: int, out_w: int, kh: int, kw: int, stride: int,
                   pads: tuple[int, int, int, int], name: str = "depthwise") -> DepthwisePlan:
    """The fastest tiling found: candidates ranked by an analytic cost, the best few emitted and
    scheduled with the cycle model.  Memoized on the layer's shape."""
    try:
        return _plan(config, x.h, x.w, x.c, out_h, out_w, kh, kw, stride, tuple(pads))
    except LoweringError as exc:
        raise LoweringError(f"{name}: {exc}") from None


@functools.lru_cache(maxsize=1024)
def _plan(config, h, w, c, out_h, out_w, kh, kw, stride, pads) -> DepthwisePlan:
    b = config.cols
    half = _halves(config)
    nb = -(-c // b)

    def plans(tw: int, q: int, cols_per_tile: int) -> list[DepthwisePlan]:
        found = []
        n_cols = -(-out_w // tw)
        in_w = min(q, w)            # real (not padded) input columns a tile loads
        for nbt in range(1, min(nb, 255) + 1):
            if nbt * kh * kw > half["wgt"] or 3 * nbt > half["param"]:
                break
            th = min(out_h, half["acc"] // (nbt * tw), half["out"] // (nbt * tw))
            # whole rows: the band the load takes is (th-1)*stride+kh rows (_input_rows); column
            # tiles load with _input_band, which may take one row more (a band inside the padding)
            rows = (lambda t: (t - 1) * stride + kh) if not cols_per_tile else \
                (lambda t: _band_rows(t, stride, kh, pads))
            while th >= 1 and nbt * rows(th) * q > half["inp"]:
                th -= 1
            if th < 1:
                break
            groups, row_tiles = -(-nb // nbt), -(-out_h // th)
            in_rows = min((th - 1) * stride + kh, h)
            load = dma_cycles(config, nbt * in_rows, in_w * b) + nbt * ((th - 1) * stride + kh) * (q - in_w)
            mac = nbt * th * tw * kh * kw + config.mac_latency + 8 * nbt
            wgt = dma_cycles(config, 1, nbt * kh * kw * b * b)
            store = dma_cycles(config, nbt * th, tw * b) + nbt * th * tw
            tiles = row_tiles * n_cols
            cost = groups * (tiles * max(load, mac, store) + wgt) + load + store + 12 * groups * tiles
            found.append(DepthwisePlan(nbt, th, int(cost), cols_per_tile))
        return found

    q = pads[2] + w + pads[3]
    candidates = plans(out_w, q, 0)
    if not candidates:      # width tiling: the widest column range whose band (one block) fits
        tw = widest_column_range(out_w, (stride, stride), (kh, kw), pads, half)
        if tw >= 1:
            candidates = plans(tw, _band_rows(tw, stride, kw, pads[2:]), tw)
    if not candidates:
        raise LoweringError(f"{kh} input rows of {q} entries do not fit half the input scratchpad "
                            f"({half['inp']} entries) of config {config.name!r}, nor do {kh} rows of the "
                            f"{kw} input columns of one output column"
                            if kh * kw <= half["wgt"] and half["param"] >= 3 else
                            f"a {kh}x{kw} kernel's diagonal weights ({kh * kw} entries) do not fit half "
                            f"the weight scratchpad ({half['wgt']} entries) of config {config.name!r}")
    candidates.sort(key=lambda p: p.estimated_cycles)
    if len(candidates) == 1:
        return candidates[0]
    from softnpu.compiler.cycles import estimate

    x, y = Activation(0, h, w, c), Activation(0, out_h, out_w, c)
    scheduled = []
    for plan in candidates[:_REFINE]:
        program = _program(config, x, y, plan, weights=0, params=0, kh=kh, kw=kw, stride=stride, pads=pads,
                           pad_value=0, zero_point=0, act_min=-128, act_max=127, layer_id=0, first=True)
        scheduled.append((estimate(config, program).cycles, len(program), plan))
    cycles, _, plan = min(scheduled, key=lambda s: (s[0], s[1]))
    return dataclasses.replace(plan, estimated_cycles=cycles)


def _program(config, x: Activation, y: Activation, plan: DepthwisePlan, *, weights, params, kh, kw, stride,
             pads, pad_value, zero_point, act_min, act_max, layer_id, first) -> list[Insn]:
    b = config.cols
    half = _halves(config)
    nb = x.blocks(b)
    nbt, th = plan.blocks_per_tile, plan.rows_per_tile
    tw = plan.cols_per_tile or y.w
    tiles = []
    wgt_half = 1
    for cb0 in range(0, nb, nbt):
        ncb = min(nbt, nb - cb0)
        for oh0, ow0 in itertools.product(range(0, y.h, th), range(0, y.w, tw)):
            nrows, ncols = min(th, y.h - oh0), min(tw, y.w - ow0)
            o = len(tiles)
            inp_base, acc_base, out_base = ((o % 2) * half[k] for k in ("inp", "acc", "out"))
            loads = []
            if oh0 == 0 and ow0 == 0:   # a new block group: its weights and parameters, into the other half
                wgt_half ^= 1
                loads.append(Load(buffer=Buffer.WGT, sram=wgt_half * half["wgt"],
                                  dram=weights + cb0 * kh * kw * b * b, blocks=1, rows=1, cols=ncb * kh * kw))
                loads.append(Load(buffer=Buffer.PARAM, sram=wgt_half * half["param"],
                                  dram=params + 3 * cb0 * 4 * b, blocks=1, rows=1, cols=3 * ncb))
            if plan.cols_per_tile:      # a column range: its own input columns, padding at the borders only
                first_row, nin, ptop, pbot, skip = _input_band(x, oh0, nrows, stride, kh, pads[0])
                first_col, in_cols, pleft, pright, skip_col = _input_span(x.w, ow0, ncols, stride, kw,
                                                                          pads[2])
            else:
                first_row, nin, ptop, pbot = _input_rows(x, oh0, nrows, stride, kh, pads[0])
                first_col, in_cols, pleft, pright, skip, skip_col = 0, x.w, pads[2], pads[3], 0, 0
            p = ptop + nin + pbot
            q = pleft + in_cols + pright
            src = x.addr + cb0 * x.plane(b) + (first_row * x.w + first_col) * b
            loads.append(Load(buffer=Buffer.INP, sram=inp_base, dram=src,
                              blocks=ncb, rows=nin, cols=in_cols, row_stride=x.w * b, block_stride=x.plane(b),
                              pad_top=ptop, pad_bottom=pbot, pad_left=pleft, pad_right=pright,
                              pad_value=pad_value))
            count = nrows * ncols
            convs = [Conv(mode=ConvMode.MAC, out_blocks=1, in_blocks=1, kh=kh, kw=kw, stride_h=stride,
                          stride_w=stride, out_h=nrows, out_w=ncols, acc=acc_base + k * count,
                          inp=inp_base + k * p * q + skip * q + skip_col,
                          wgt=wgt_half * half["wgt"] + k * kh * kw, inp_row=q, inp_block=p * q)
                     for k in range(ncb)]
            requant = Requant(out=out_base, acc=acc_base, param=wgt_half * half["param"], blocks=ncb,
                              count=count, zero_point=zero_point, act_min=act_min, act_max=act_max,
                              rounding=Rounding.FIXED)
            tiles.append(_Tile([_Step(loads, convs)], [requant],
                               [_store_rows(config, y, out_base, cb0, ncb, oh0, nrows, ow0, ncols)]))
    return _finish_layer(_emit(tiles), layer_id, first, config)


def depthwise2d(config: NPUConfig, x: Activation, y: Activation, *, weights: int, params: int, kh: int,
                kw: int, stride: int, pads: tuple[int, int, int, int], pad_value: int, zero_point: int,
                act_min: int = -128, act_max: int = 127, layer_id: int = 0, first: bool = False,
                name: str = "depthwise", plan: DepthwisePlan | None = None) -> list[Insn]:
    """DEPTHWISE_CONV_2D.  `weights`: DRAM address of pack_depthwise_weights' output; `params`: of
    layout.pack_requant_params' (bias folded with the input zero point); pads = (top, bottom, left,
    right); pad_value = the input zero point."""
    plan = plan or plan_depthwise(config, x, y.h, y.w, kh, kw, stride, pads, name)
    return _program(config, x, y, plan, weights=weights, params=params, kh=kh, kw=kw, stride=stride,
                    pads=pads, pad_value=pad_value, zero_point=zero_point, act_min=act_min, act_max=act_max,
                    layer_id=layer_id, first=first)


# ----------------------------------------------------------------------------------------------
# Lowering (a mixin of compiler/lower.py's _Lowering, beside compiler/layers.py's builders)
# ----------------------------------------------------------------------------------------------
class DepthwiseBuilders:
    def _depthwise(self, op):
        from softnpu.compiler.layers import fail

        x, pads, _ = self._window_input(op)
        p = op.params
        w = self.t(op.inputs[1]).data
        sh, sw = op.options["stride"]
        if sh != sw:
            raise fail(self.g, op, f"strides {sh}x{sw}: the NPU's loops take one stride for both axes")
        zp_in = -int(p["input_offset"])
        try:
            bias = fold_depthwise_bias(p["bias"], w, zp_in)
        except LoweringError as exc:
            raise fail(self.g, op, str(exc)) from None
        _, kh, kw, c = w.shape
        oh, ow = p["output_size"]
        macs = int(oh * ow * c * kh * kw)

        def build(ctx, layer_id: int, first: bool):
            b = ctx.config.cols
            wa = ctx.blob.add(pack_depthwise_weights(w, b))
            pa = ctx.blob.add(layout.pack_requant_params(bias, p["multiplier"], p["shift"], b))
            insns = depthwise2d(ctx.config, ctx.act(x), ctx.act(op.outputs[0]), weights=wa, params=pa,
                                kh=kh, kw=kw, stride=sh, pads=pads, pad_value=zp_in,
                                zero_point=p["output_zero_point"], act_min=p["act_min"], act_max=p["act_max"],
                                layer_id=layer_id, first=first, name=f"op {op.index} DEPTHWISE_CONV_2D")
            return insns, macs
        return self._layer(op, "DEPTHWISE_CONV_2D", [x], build)
