"""The NPU layers of one TFLite op each: the emit calls, with the constants they need packed.

`LayerBuilders` is mixed into the lowering (compiler/lower.py), which supplies the graph view
(`t`, `dims`, `operand`, `g`, `b`, `config`, `pad_fold`, `_pad_amounts`).  Each builder returns a
`Layer` (or a list of them): the tensors it reads and writes, for DRAM planning, and a `build`
that packs its constants into the weights blob and emits its instructions once addresses are known.

Weight transforms done here at compile time: the input zero point folded into the bias,
FULLY_CONNECTED weights permuted to read a flattened blocked tensor in place, the space-to-depth
rewrite of stride-2 convolutions with few input channels, and the one-hot weights of the layers
that move channels across lanes (GATHER for concatenations at unaligned offsets, RELAYOUT for
RESHAPEs between pixels and channels).
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Callable

import numpy as np

from softnpu.compiler import emit, layout
from softnpu.compiler.emit import Activation, LoweringError
from softnpu.compiler.ir import Graph, Op, Tensor
from softnpu.compiler.plan_memory import WeightsBlob
from softnpu.hdl import numerics
from softnpu.hdl.config import NPUConfig
from softnpu.hdl.isa import Add, ConvMode, Insn, Mul, Rounding

__all__ = ["Layer", "Context", "LayerBuilders", "fail", "short_name", "flatten_weights",
           "space_to_depth_weights", "fold_bias"]


MAX_RELAYOUT_PIXELS = 4096     # output pixels of a RESHAPE relayout (one small program each)


def fail(graph: Graph, op: Op, reason: str) -> LoweringError:
    """A LoweringError that names the op, its output tensor and why."""
    out = graph.tensors[op.outputs[0]].name if op.outputs else "?"
    return LoweringError(f"op {op.index} {op.kind} (output tensor {out!r}): {reason}")


def short_name(name: str, kind: str = "") -> str:
    """A readable layer name from a converter tensor name ('resnet50_1/conv1_conv_1/convolution;...'
    -> 'conv1_conv')."""
    parts = name.split(";")
    prefer = {"CONV_2D": "convolution", "FULLY_CONNECTED": "MatMul"}.get(kind)
    pick = next((p for p in parts if prefer and prefer in p), parts[0])
    comps = pick.split("/")
    comps = comps[1:-1] if len(comps) >= 3 else comps[1:] if len(comps) == 2 else comps
    return "/".join(re.sub(r"_\d+$", "", c) for c in comps) or name


@dataclasses.dataclass
class Layer:
    pos: int                    # graph op index: the time axis of liveness
    op: Op | None
    kind: str                   # what the report calls it (CONV_2D, COPY, PAD, ...)
    name: str
    reads: list[int]
    writes: list[int]
    build: Callable[[Context, int, bool], tuple[list[Insn], int]]   # -> (instructions, MACs)


@dataclasses.dataclass
class Context:
    config: NPUConfig
    blob: WeightsBlob
    act: Callable[[int], Activation]



class LayerBuilders:
    """Per-op layer builders (a mixin of the lowering; see the module docstring)."""

    def _layer(self, op, kind, reads, build, name=None, writes=None):
        out = op.outputs[0]
        return Layer(op.index, op, kind, name or short_name(self.t(out).name, op.kind), reads,
                      writes if writes is not None else [out], build)

    def _window_input(self, op: Op):
        """(input tensor, pads, pad value of folded PAD or None)."""
        pad_op = self.pad_fold.get(op.index)
        own = tuple(op.params["pad"])
        if pad_op is None:
            return self.operand(op, op.inputs[0]), own, None
        extra = self._pad_amounts(pad_op)
        pads = tuple(a + e for a, e in zip(own, extra, strict=True))
        return self.operand(pad_op, pad_op.inputs[0]), pads, int(pad_op.params["pad_value"])

    def _conv(self, op: Op) -> Layer:
        x, pads, _ = self._window_input(op)
        p = op.params
        w = self.t(op.inputs[1]).data
        sh, sw = op.options["stride"]
        dilation = tuple(op.options.get("dilation", (1, 1)))
        if max(sh, sw) > 15:
            raise fail(self.g, op, f"strides {sh}x{sw}: a CONV takes strides up to 15")
        if p.get("weight_offset", 0):
            raise fail(self.g, op, "asymmetric (non-zero zero point) weights")
        zp_in = -int(p["input_offset"])
        bias = fold_bias(self.g, op, w, zp_in)
        o, kh, kw, cin = w.shape
        oh, ow = p["output_size"]
        macs = int(oh * ow * w.size)
        layers = []
        lanes = -(-cin // self.b)
        if sh == sw == 2 and dilation == (1, 1) and min(kh, kw) >= 2 \
                and 2 * -(-4 * cin // self.b) <= 4 * lanes:
            rewritten = self._space_to_depth(op, x, pads, zp_in)
            if rewritten is not None:   # the conv becomes a stride-1 conv on the rearranged input
                layer, x = rewritten
                layers.append(layer)
                w, pads, sh, sw = space_to_depth_weights(w), (0, 0, 0, 0), 1, 1
                o, kh, kw, cin = w.shape

        def build(ctx: Context, layer_id: int, first: bool):
            b = ctx.config.cols
            wa = ctx.blob.add(layout.pack_conv_weights(w, b, emit.tap_groups(kh, kw, dilation)))
            pa = ctx.blob.add(layout.pack_requant_params(bias, p["multiplier"], p["shift"], b))
            insns = emit.conv2d(ctx.config, ctx.act(x), ctx.act(op.outputs[0]), weights=wa, params=pa,
                                kh=kh, kw=kw, stride=(sh, sw), dilation=dilation, pads=pads, pad_value=zp_in,
                                zero_point=p["output_zero_point"],
                                act_min=p["act_min"], act_max=p["act_max"], rounding=Rounding.FIXED,
                                layer_id=layer_id, first=first, name=f"op {op.index} CONV_2D")
            return insns, macs
        return layers + [self._layer(op, "CONV_2D", [x], build)]

    def _space_to_depth(self, op: Op, x: int, pads, zp_in: int):
        """A layer that rearranges the (padded) input of a stride-2 convolution with few channels into
        2x2 pixel blocks x channels (an exact copy: one-hot weights, identity requantization), so the
        convolution fills the array's lanes; (layer, new tensor), or None if the padding does not fit."""
        h, w, c = self.dims(x, op)
        kh, kw = self.t(op.inputs[1]).shape[1:3]
        oh, ow = op.params["output_size"]
        h2, w2 = oh + -(-kh // 2) - 1, ow + -(-kw // 2) - 1
        top, _, left, _ = pads
        s2d_pads = (top, max(0, 2 * h2 - h - top), left, max(0, 2 * w2 - w - left))
        if max(s2d_pads) > 15:
            return None
        # worth it only when the two layers are estimated faster than the convolution alone
        cfg, cout, k2h, k2w = self.config, self.t(op.outputs[0]).shape[3], -(-kh // 2), -(-kw // 2)
        try:
            direct = emit.plan_conv(cfg, Activation(0, h, w, c), oh, ow, cout, kh, kw, 2, pads)
            copy = emit.plan_conv(cfg, Activation(0, h, w, c), h2, w2, 4 * c, 2, 2, 2, s2d_pads)
            conv = emit.plan_conv(cfg, Activation(0, h2, w2, 4 * c), oh, ow, cout, k2h, k2w, 1, (0, 0, 0, 0))
        except LoweringError:
            return None
        if copy.estimated_cycles + conv.estimated_cycles >= direct.estimated_cycles:
            return None
        src = self.t(x)
        t = Tensor(index=len(self.g.tensors), name=f"{self.t(op.outputs[0]).name}/space_to_depth",
                   shape=(1, h2, w2, 4 * c), dtype="int8", scale=src.scale, zero_point=src.zero_point)
        self.g.tensors.append(t)
        one_hot = np.zeros((4 * c, 2, 2, c), np.int8)
        for di in range(2):
            for dj in range(2):
                one_hot[(di * 2 + dj) * c + np.arange(c), di, dj, np.arange(c)] = 1

        def build(ctx: Context, layer_id: int, first: bool):
            b = ctx.config.cols
            wa = ctx.blob.add(layout.pack_conv_weights(one_hot, b))
            # bias 0, multiplier 2**30 with shift 1: MultiplyByQuantizedMultiplier is the identity
            pa = ctx.blob.add(layout.pack_requant_params(np.zeros(4 * c, np.int64), 1 << 30, 1, b))
            insns = emit.conv2d(ctx.config, ctx.act(x), ctx.act(t.index), weights=wa, params=pa, kh=2, kw=2,
                                stride=2, pads=s2d_pads, pad_value=zp_in, zero_point=0, layer_id=layer_id,
                                first=first, name=f"op {op.index} CONV_2D space-to-depth")
            return insns, 0
        name = short_name(self.t(op.outputs[0]).name, op.kind) + "/s2d"
        return self._layer(op, "SPACE_TO_DEPTH", [x], build, name=name, writes=[t.index]), t.index

    def _fc(self, op: Op) -> Layer:
        p = op.params
        x = self.resolve(op.inputs[0])
        h, w_, c = self.dims(x, op)
        weights = self.t(op.inputs[1]).data
        n, k = weights.shape
        if h * w_ * c != k:
            raise fail(self.g, op, f"input {self.t(op.inputs[0]).name!r} has {h * w_ * c} elements, the "
                                    f"weights rows of {k}: batched FULLY_CONNECTED is not supported")
        if p.get("weight_offset", 0):
            raise fail(self.g, op, "asymmetric (non-zero zero point) weights")
        zp_in = -int(p["input_offset"])
        bias = fold_bias(self.g, op, weights, zp_in)
        b = self.b

        def build(ctx: Context, layer_id: int, first: bool):
            xa = ctx.act(x)
            if h * w_ == 1:
                wmat, xin = weights, Activation(xa.addr, 1, 1, c)
            else:
                wmat = flatten_weights(weights, h, w_, c, b)
                if xa.plane(b) != h * w_ * b:
                    raise fail(self.g, op, "flattened input is not contiguous")
                xin = Activation(xa.addr, 1, 1, wmat.shape[1])
            wa = ctx.blob.add(layout.pack_conv_weights(wmat.reshape(n, 1, 1, -1), b))
            pa = ctx.blob.add(layout.pack_requant_params_double(bias, p["real_scale"], b))
            insns = emit.conv2d(ctx.config, xin, ctx.act(op.outputs[0]), weights=wa, params=pa, kh=1,
                                kw=1, stride=1, pads=(0, 0, 0, 0), pad_value=zp_in,
                                zero_point=p["output_zero_point"],
                                act_min=p["act_min"], act_max=p["act_max"], rounding=Rounding.DOUBLE,
                                layer_id=layer_id, first=first, name=f"op {op.index} FULLY_CONNECTED")
            return insns, int(n * k)
        return self._layer(op, "FULLY_CONNECTED", [x], build)

    def _pool(self, op: Op) -> Layer:
        x, pads, folded_value = self._window_input(op)
        p = op.params
        kh, kw = op.options["filter"]
        sh, sw = op.options["stride"]
        if max(sh, sw) > 15:
            raise fail(self.g, op, f"strides {sh}x{sw}: a pooling CONV takes strides up to 15")
        own = tuple(p["pad"])
        if op.kind == "MAX_POOL_2D":
            mode, divisor = ConvMode.MAX, 1
            pad_value = -128 if any(own) else (folded_value if folded_value is not None else -128)
        elif any(own):
            # TFLite divides each window by its count of in-bounds elements: pad with 0, count per output
            mode, divisor, pad_value = ConvMode.SUM, None, 0
        else:
            mode, divisor = ConvMode.SUM, kh * kw
            pad_value = folded_value if folded_value is not None else 0

        def build(ctx: Context, layer_id: int, first: bool):
            insns = emit.pool2d(ctx.config, ctx.act(x), ctx.act(op.outputs[0]), mode=mode, kh=kh, kw=kw,
                                stride=(sh, sw), pads=pads, pad_value=pad_value, divisor=divisor,
                                act_min=p["act_min"], act_max=p["act_max"], layer_id=layer_id, first=first,
                                name=f"op {op.index} {op.kind}")
            return insns, 0
        return self._layer(op, op.kind, [x], build)

    def _mean(self, op: Op) -> Layer:
        x = self.operand(op, op.inputs[0])
        shape, axes = list(self.t(x).shape), set(op.options["axes"])
        # the NPU averages every pixel of a channel: every axis but the last that has more than one
        # element must be reduced, the last (channels) must not
        if len(shape) - 1 in axes or any(n > 1 and a not in axes for a, n in enumerate(shape[:-1])):
            raise fail(self.g, op, f"MEAN over axes {sorted(axes)} of shape {shape}; the NPU averages all "
                                    "pixels per channel (H and W of NHWC, or every axis but the last)")
        p = op.params

        def build(ctx: Context, layer_id: int, first: bool):
            lanes = layout.pack_lane_params([p["bias"], p["multiplier"], p["shift"]], ctx.config.cols)
            pa = ctx.blob.add(lanes)
            insns = emit.mean(ctx.config, ctx.act(x), ctx.act(op.outputs[0]), params=pa,
                              zero_point=p["output_zero_point"], act_min=p["act_min"], act_max=p["act_max"],
                              layer_id=layer_id, first=first, name=f"op {op.index} MEAN")
            return insns, 0
        return self._layer(op, "MEAN", [x], build)

    def _binary(self, op: Op) -> Layer:
        cls = Add if op.kind == "ADD" else Mul
        ta, tb, out = self.t(op.inputs[0]), self.t(op.inputs[1]), self.t(op.outputs[0])
        p = dict(op.params)
        odims = self.dims(out.index, op)
        if ta.is_const and tb.is_const:
            raise fail(self.g, op, "both operands are constants")
        if ta.is_const:         # the NPU's constant operand is b: swap, with parameters for the swap
            ta, tb = tb, ta
            fn = numerics.add_params if op.kind == "ADD" else numerics.mul_params
            p.update(fn(ta.qscale, ta.qzero, tb.qscale, tb.qzero, out.qscale))
        a = self.operand(op, ta.index)
        if self.dims(a, op) != odims:
            raise fail(self.g, op, f"operand {ta.name!r} {list(ta.shape)} is broadcast to the output "
                                    f"{list(out.shape)}; only a per-channel constant may be broadcast")
        params = [p[k] for k in cls.PARAMS]
        const = None
        reads = [a]
        if tb.is_const:
            if tb.per_channel:
                raise fail(self.g, op, f"constant {tb.name!r} has per-channel quantization")
            data = np.asarray(tb.data).reshape(-1).astype(np.int64)
            if data.size == 1:
                data = np.repeat(data, odims[2])
            if data.size != odims[2] or (tb.data.ndim > 1 and tb.data.shape[-1] != odims[2]):
                raise fail(self.g, op, f"constant {tb.name!r} of shape {list(tb.shape)} is not a "
                                        f"per-channel vector of the output's {odims[2]} channels")
            const = data
            b_t = None
        else:
            b_t = self.operand(op, tb.index)
            if self.dims(b_t, op) != odims:
                raise fail(self.g, op, f"operand {tb.name!r} {list(tb.shape)} is broadcast to the output "
                                        f"{list(out.shape)}; only a per-channel constant may be broadcast")
            reads.append(b_t)

        def build(ctx: Context, layer_id: int, first: bool):
            b = ctx.config.cols
            pa = ctx.blob.add(layout.pack_lane_params(params, b))
            kwargs = {}
            if const is not None:
                vec = np.zeros(-(-const.size // b) * b, np.int32)
                vec[:const.size] = const
                kwargs["b_const"] = ctx.blob.add(vec)
            else:
                kwargs["b"] = ctx.act(b_t)
            insns = emit.elementwise(ctx.config, cls, ctx.act(a), ctx.act(op.outputs[0]), params=pa,
                                     zero_point=p["output_zero_point"], act_min=p["act_min"],
                                     act_max=p["act_max"], layer_id=layer_id, first=first,
                                     name=f"op {op.index} {op.kind}", **kwargs)
            return insns, 0
        return self._layer(op, op.kind, reads, build)

    def _relu(self, op: Op) -> Layer:
        """RELU/RELU6/RELU_N1_TO_1/RELU_0_TO_1 (TFLite's ReluX): MUL by a constant 1 per channel is
        exactly clamp(MBQM(x - zp_in, M, shift) + zp_out), the kernel's arithmetic."""
        x = self.operand(op, op.inputs[0])
        p = op.params
        c = self.dims(x, op)[2]
        params = [-p["input_zero_point"], 0, p["multiplier"], p["shift"]]     # Mul.PARAMS order

        def build(ctx: Context, layer_id: int, first: bool):
            b = ctx.config.cols
            pa = ctx.blob.add(layout.pack_lane_params(params, b))
            ones = ctx.blob.add(np.ones(-(-c // b) * b, np.int32))
            insns = emit.elementwise(ctx.config, Mul, ctx.act(x), ctx.act(op.outputs[0]), params=pa,
                                     b_const=ones, zero_point=p["output_zero_point"], act_min=p["act_min"],
                                     act_max=p["act_max"], layer_id=layer_id, first=first,
                                     name=f"op {op.index} {op.kind}")
            return insns, 0
        return self._layer(op, op.kind, [x], build)

    def _clamp(self, op: Op) -> Layer:
        """MINIMUM/MAXIMUM with a scalar constant: the raw values clamped (an identity max-pool)."""
        x = self.operand(op, op.params["input"])
        p = op.params

        def build(ctx: Context, layer_id: int, first: bool):
            return emit.pool2d(ctx.config, ctx.act(x), ctx.act(op.outputs[0]), mode=ConvMode.MAX, kh=1, kw=1,
                               stride=1, pads=(0, 0, 0, 0), pad_value=0, divisor=1, act_min=p["act_min"],
                               act_max=p["act_max"], layer_id=layer_id, first=first,
                               name=f"op {op.index} {op.kind}"), 0
        return self._layer(op, op.kind, [x], build)

    def _identity(self, ctx, src, dst: Activation, pads, pad_value, layer_id, first, name):
        return emit.pool2d(ctx.config, src, dst, mode=ConvMode.MAX, kh=1, kw=1, stride=1, pads=pads,
                           pad_value=pad_value, divisor=1, layer_id=layer_id, first=first, name=name)

    def _pad_layer(self, op: Op) -> Layer:
        x = self.operand(op, op.inputs[0])
        pads = self._pad_amounts(op)
        if max(pads) > 15:
            raise fail(self.g, op, f"padding {pads} exceeds the load unit's 15 entries")
        value = int(op.params["pad_value"])
        before, after = self._channel_pads(op)
        if before or after:
            return self._channel_pad_layer(op, x, pads, value, before, after)

        def build(ctx: Context, layer_id: int, first: bool):
            return self._identity(ctx, ctx.act(x), ctx.act(op.outputs[0]), pads, value, layer_id, first,
                                  f"op {op.index} PAD"), 0
        return self._layer(op, "PAD", [x], build)

    def _channel_pad_layer(self, op: Op, x: int, pads, value: int, before: int, after: int) -> Layer:
        """A PAD of channels (and pixels): a 1x1 convolution whose one-hot weights move channel c to
        before + c and whose bias is the pad value on the new channels (identity requantization);
        padded pixels load the pad value in every lane, which the one-hot weights copy."""
        c = self.dims(x, op)[2]
        c2 = before + c + after
        one_hot = np.zeros((c2, 1, 1, c), np.int8)
        one_hot[before + np.arange(c), 0, 0, np.arange(c)] = 1
        bias = np.full(c2, value, np.int64)
        bias[before:before + c] = 0

        def build(ctx: Context, layer_id: int, first: bool):
            b = ctx.config.cols
            wa = ctx.blob.add(layout.pack_conv_weights(one_hot, b))
            pa = ctx.blob.add(layout.pack_requant_params(bias, 1 << 30, 1, b))
            insns = emit.conv2d(ctx.config, ctx.act(x), ctx.act(op.outputs[0]), weights=wa, params=pa, kh=1,
                                kw=1, stride=1, pads=pads, pad_value=value, zero_point=0, layer_id=layer_id,
                                first=first, name=f"op {op.index} PAD (channels)")
            return insns, 0
        return self._layer(op, "PAD", [x], build)

    def _slice(self, op: Op) -> Layer:
        """STRIDED_SLICE / SLICE (a crop, a subsampling, a channel range): a CONV that copies, with
        one-hot weights (output channel j <- input channel c0 + j*sc) and identity requantization.
        Output pixel (y, x) reads input (h0 + y*sh, w0 + x*sw): the stride is the CONV's, the offset a
        second tap at dilation h0 (w0), the only tap with a weight, so no tap reads outside the input."""
        x = self.operand(op, op.inputs[0])
        h, w, c = self.dims(x, op)
        (h0, w0, c0), (sh, sw, sc) = op.params["begin"], op.params["slice_stride"]
        _, oh, ow, oc = self.t(op.outputs[0]).shape
        if max(sh, sw) > 15:
            raise fail(self.g, op, f"spatial strides {sh}x{sw}: a slice takes strides up to 15")
        kh, kw = (2 if h0 else 1), (2 if w0 else 1)
        one_hot = np.zeros((oc, kh, kw, c), np.int8)
        one_hot[np.arange(oc), kh - 1, kw - 1, c0 + sc * np.arange(oc)] = 1
        dilation = (max(h0, 1), max(w0, 1))

        def build(ctx: Context, layer_id: int, first: bool):
            b = ctx.config.cols
            wa = ctx.blob.add(layout.pack_conv_weights(one_hot, b, emit.tap_groups(kh, kw, dilation)))
            # bias 0, multiplier 2**30 with shift 1: MultiplyByQuantizedMultiplier is the identity
            pa = ctx.blob.add(layout.pack_requant_params(np.zeros(oc, np.int64), 1 << 30, 1, b))
            insns = emit.conv2d(ctx.config, ctx.act(x), ctx.act(op.outputs[0]), weights=wa, params=pa,
                                kh=kh, kw=kw, stride=(sh, sw), dilation=dilation, pads=(0, 0, 0, 0),
                                pad_value=0, zero_point=0, layer_id=layer_id, first=first,
                                name=f"op {op.index} {op.kind}")
            return insns, 0
        return self._layer(op, op.kind, [x], build)

    def _copy_layer(self, op: Op, i: int, k: int, block: int) -> Layer:
        src, out = self.operand(op, i), op.outputs[0]

        def build(ctx: Context, layer_id: int, first: bool):
            dst = ctx.act(out)
            h, w, c = self.dims(i)
            view = Activation(dst.addr + block * dst.plane(self.b), h, w, c, dst.plane(self.b))
            return self._identity(ctx, ctx.act(src), view, (0, 0, 0, 0), 0, layer_id, first,
                                  f"op {op.index} CONCATENATION input {k}"), 0
        name = f"{short_name(self.t(out).name)}[{k}]"
        return self._layer(op, "COPY", [src], build, name=name, writes=[out])

    def _gather_layer(self, op: Op, run: list[tuple[int, int, int, int]]) -> Layer:
        """Concatenation inputs `run` ((k, tensor, channel offset, channels)) written to their channels
        of the output by 1x1 convolutions with one-hot weights and the identity requantization (an
        exact copy across lanes).  A first input that starts on a channel block is the run's head: it
        is in place already and only its last, partial block is read (its lanes written back as they
        are).  One convolution per output block, each over the inputs it needs, when that saves more
        than half the MACs of one convolution over all of them."""
        out, b = op.outputs[0], self.b
        head = run[0][2] % b == 0
        # the run's parts: (tensor, first block read, channels read)
        parts = [(self.operand(op, i), ic // b, ic % b) if head and n == 0 else (self.operand(op, i), 0, ic)
                 for n, (_, i, _, ic) in enumerate(run)]
        first_block = (run[0][2] + (run[0][3] // b * b if head else 0)) // b
        channels = sum(c for *_, c in parts)
        starts = list(itertools.accumulate((c for *_, c in parts), initial=0))   # run channel of part n
        out_blocks, in_blocks = -(-channels // b), sum(-(-c // b) for *_, c in parts)
        # the parts (a contiguous range) each output block needs
        needs = [[n for n in range(len(parts)) if starts[n] < (j + 1) * b and starts[n + 1] > j * b]
                 for j in range(out_blocks)]
        split = out_blocks > 1 and 2 * sum(sum(-(-parts[n][2] // b) for n in ns) for ns in needs) \
            < out_blocks * in_blocks
        calls = [(j, 1, needs[j]) for j in range(out_blocks)] if split else \
            [(0, out_blocks, list(range(len(parts))))]

        def one_hot(j0: int, nblocks: int, ns: list[int]) -> np.ndarray:
            lo, hi = j0 * b, min(channels, (j0 + nblocks) * b)
            w = np.zeros((hi - lo, 1, 1, sum(-(-parts[n][2] // b) for n in ns) * b), np.int8)
            col = 0
            for n in ns:
                ch = np.arange(parts[n][2])
                rows = starts[n] + ch - lo
                keep = (rows >= 0) & (rows < hi - lo)
                w[rows[keep], 0, 0, col + ch[keep]] = 1
                col += -(-parts[n][2] // b) * b
            return w

        def build(ctx: Context, layer_id: int, first: bool):
            dst = ctx.act(out)
            acts = []
            for t, block, c in parts:
                a = ctx.act(t)
                acts.append(Activation(a.addr + block * a.plane(b), a.h, a.w, c, a.plane(b)))
            pa = ctx.blob.add(layout.pack_requant_params(np.zeros(channels, np.int64), 1 << 30, 1, b))
            insns = []
            for j0, nblocks, ns in calls:
                view = Activation(dst.addr + (first_block + j0) * dst.plane(b), dst.h, dst.w,
                                  min(channels, (j0 + nblocks) * b) - j0 * b, dst.plane(b))
                wa = ctx.blob.add(layout.pack_conv_weights(one_hot(j0, nblocks, ns), b))
                # bias 0, multiplier 2**30 with shift 1: MultiplyByQuantizedMultiplier is the identity
                # every block's parameters are the same: block 0's serve a one-block call
                insns += emit.conv2d(ctx.config, [acts[n] for n in ns], view, weights=wa, params=pa, kh=1,
                                     kw=1, stride=1,
                                     pads=(0, 0, 0, 0), pad_value=0, zero_point=0, layer_id=layer_id,
                                     first=first and not insns,
                                     name=f"op {op.index} CONCATENATION inputs {[k for k, *_ in run]}")
            return insns, 0
        name = f"{short_name(self.t(out).name)}[{run[0][0]}:{run[-1][0] + 1}]"
        return self._layer(op, "GATHER", [t for t, *_ in parts], build, name=name, writes=[out])

    def _relayout(self, op: Op) -> Layer:
        """A RESHAPE that moves elements between pixels and channels ([1, 2, 1, 1] -> [1, 1, 1, 2]):
        for each output pixel, the input pixels holding its elements (in TFLite's row-major order)
        are gathered by a 1x1 one-hot convolution over single-pixel views."""
        x, out = self.resolve(op.inputs[0]), op.outputs[0]
        (h, w, c), (h2, w2, c2) = self.dims(x, op), self.dims(out, op)
        if h2 * w2 > MAX_RELAYOUT_PIXELS:
            raise fail(self.g, op, f"RESHAPE {[h, w, c]} -> {[h2, w2, c2]} moves elements between pixels "
                                    f"and channels; the NPU relayouts at most {MAX_RELAYOUT_PIXELS} output "
                                    f"pixels (this one has {h2 * w2})")

        def build(ctx: Context, layer_id: int, first: bool):
            b = ctx.config.cols
            xa, ya = ctx.act(x), ctx.act(out)
            cb = -(-c // b)
            pa = ctx.blob.add(layout.pack_requant_params(np.zeros(c2, np.int64), 1 << 30, 1, b))
            weights: dict[tuple[int, int], int] = {}
            insns = []
            for pixel in range(h2 * w2):
                lo = pixel * c2
                p0, p1 = lo // c, (lo + c2 - 1) // c
                key = (lo - p0 * c, p1 - p0 + 1)        # the one-hot matrix depends on these only
                if key not in weights:
                    e = key[0] + np.arange(c2)
                    one_hot = np.zeros((c2, 1, 1, key[1] * cb * b), np.int8)
                    one_hot[np.arange(c2), 0, 0, (e // c) * cb * b + e % c] = 1
                    weights[key] = ctx.blob.add(layout.pack_conv_weights(one_hot, b))
                parts = [Activation(xa.addr + q * b, 1, 1, c, xa.plane(b)) for q in range(p0, p1 + 1)]
                view = Activation(ya.addr + pixel * b, 1, 1, c2, ya.plane(b))
                insns += emit.conv2d(ctx.config, parts, view, weights=weights[key], params=pa, kh=1, kw=1,
                                     stride=1, pads=(0, 0, 0, 0), pad_value=0, zero_point=0,
                                     layer_id=layer_id, first=first and pixel == 0,
                                     name=f"op {op.index} RESHAPE pixel {pixel}")
            return insns, 0
        return self._layer(op, "RELAYOUT", [x], build)

    # -- memory -----------------------------------------------------------------------------

def fold_bias(graph: Graph, op: Op, w: np.ndarray, zp_in: int) -> np.ndarray:
    """bias - zp_in * sum(w) per output channel: the input zero point folded into the bias, so the
    array multiplies raw int8 inputs (padding with zp_in then contributes exactly zero)."""
    sums = w.reshape(w.shape[0], -1).sum(axis=1, dtype=np.int64)     # no int64 copy of the weights
    folded = np.asarray(op.params["bias"], np.int64) - zp_in * sums
    if folded.min() < numerics.INT32_MIN or folded.max() > numerics.INT32_MAX:
        raise fail(graph, op, "the bias folded with the input zero point overflows int32")
    return folded


def flatten_weights(w: np.ndarray, h: int, wd: int, c: int, b: int) -> np.ndarray:
    """FULLY_CONNECTED weights [N, H*W*C] (TFLite's row-major HWC flattening) -> [N, K'] in the order
    an HxWxC blocked tensor lies in memory ([C/b][H][W][b], K' = ceil(C/b)*b*H*W), zero for the
    padding channels, so the FC reads the tensor in place as a 1x1xK' activation."""
    cb = -(-c // b)
    hwc = w.reshape(w.shape[0], h, wd, c)
    if cb * b != c:
        hwc = np.concatenate([hwc, np.zeros((w.shape[0], h, wd, cb * b - c), w.dtype)], axis=3)
    return hwc.reshape(w.shape[0], h, wd, cb, b).transpose(0, 3, 1, 2, 4).reshape(w.shape[0], -1)


def space_to_depth_weights(w: np.ndarray) -> np.ndarray:
    """Filters [O, KH, KW, C] of a stride-2 convolution -> [O, ceil(KH/2), ceil(KW/2), 4C] of the
    equivalent stride-1 convolution on the space-to-depth input (channel (di*2+dj)*C + c of pixel
    (i, j) holding input pixel (2i+di, 2j+dj), channel c); taps past the kernel get zero weights."""
    o, kh, kw, c = w.shape
    k2h, k2w = -(-kh // 2), -(-kw // 2)
    padded = np.zeros((o, 2 * k2h, 2 * k2w, c), w.dtype)
    padded[:, :kh, :kw] = w
    out = np.zeros((o, k2h, k2w, 4 * c), w.dtype)
    for di in range(2):
        for dj in range(2):
            out[..., (di * 2 + dj) * c:(di * 2 + dj + 1) * c] = padded[:, di::2, dj::2, :]
    return out
