"""Lowering: an int8 ``Graph`` to one whole-network NPU program plus its weights blob.

``lower(graph, config) -> Lowered`` maps every op between the host stages onto the layer emitters
of compiler/emit.py:

* host stages at the graph's edges (a leading float->int8 QUANTIZE; trailing DEQUANTIZE/SOFTMAX)
  become the manifest's preprocess/postprocess; one in the middle of the graph is an error;
* CONV_2D and FULLY_CONNECTED (rounding=double, TFLite's reference kernel) on the MAC array, the
  bias folded with the input zero point (bias - zp_in * sum(w)); a FULLY_CONNECTED whose input is
  a flattened HxWxC tensor reads it in place, its weights permuted at compile time to the
  channel-blocked order ([C/b][H][W][b]);
* PAD folded into its consumers' load padding (pad value = the PAD's zero point) when every
  consumer is a convolution or a pooling layer that can take it; otherwise materialised as a
  1x1 identity max-pool with padding;
* CONV_2D with any stride pair, dilation and kernel size (tap groups, compiler/tiling.py);
* MAX_POOL_2D (SAME pads with -128), AVERAGE_POOL_2D (SAME: a divisor per rectangle of equal window
  counts), MEAN, ADD and MUL (activation + activation, or activation and a per-channel constant);
* standalone RELU/RELU6/RELU_N1_TO_1/RELU_0_TO_1 (a MUL by one: TFLite's ReluX) and MINIMUM/MAXIMUM
  with a scalar constant (a clamp);
* CONCATENATION and most RESHAPEs cost nothing: a concatenation's inputs are written into channel slices
  of one buffer (chained concatenations, as in DenseNet's dense blocks, share one buffer), and an
  input that cannot be written in place (a graph input, a tensor already placed in another
  concatenation) is copied by an identity max-pool; inputs at channel offsets that are not on a
  channel block are gathered by a one-hot 1x1 convolution; a RESHAPE aliases its input unless it
  moves elements between pixels and channels for a reader other than FULLY_CONNECTED (then a
  relayout layer: a one-hot gather per output pixel).

The per-op layers are built in compiler/layers.py.  Activations get DRAM by liveness
(compiler/plan_memory.py); every layer starts with a MARKER whose id indexes ``Lowered.layers``;
the program ends with FINISH.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from softnpu.compiler.bundle import TensorSpec
from softnpu.compiler.cycles import Estimate, estimate
from softnpu.compiler.depthwise import DepthwiseBuilders
from softnpu.compiler.emit import Activation, LoweringError
from softnpu.compiler.ir import Graph, Op, Tensor
from softnpu.compiler.layers import (
    Context,
    Layer,
    LayerBuilders,
    fail,
    flatten_weights,
    short_name,
    space_to_depth_weights,
)
from softnpu.compiler.plan_memory import ALIGN, Buffer, WeightsBlob, align, plan_activations
from softnpu.hdl import isa
from softnpu.hdl.config import NPUConfig
from softnpu.hdl.isa import ConvMode, Insn
from softnpu.hdl.timing import dram_bytes

__all__ = ["Lowered", "LoweringError", "lower", "device_dims", "same_layout", "short_name", "flatten_weights",
           "space_to_depth_weights"]

_WINDOW_OPS = ("CONV_2D", "MAX_POOL_2D", "AVERAGE_POOL_2D", "DEPTHWISE_CONV_2D")


@dataclasses.dataclass
class Lowered:
    """A lowered network: what a bundle holds, before encoding."""
    program: list[Insn]
    weights: bytes
    memory_map: dict[str, int]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    layers: list[dict]
    preprocess: dict
    postprocess: list[dict]
    estimate: Estimate


def same_layout(a: tuple[int, int, int], b: tuple[int, int, int]) -> bool:
    """Whether two (H, W, C) views of a tensor lie identically in the blocked layout: the same
    channels and pixel count (pixels are row-major inside a channel block)."""
    return a[2] == b[2] and a[0] * a[1] == b[0] * b[1]


def device_dims(t: Tensor) -> tuple[int, int, int] | None:
    """(H, W, C) of the blocked layout a tensor has on the device: NHWC with batch 1 -> (H, W, C),
    a vector ([1, N], [N], [1, 1, 1, N]) -> (1, 1, N); None if it has no device layout."""
    shape = tuple(int(d) for d in t.shape)
    if len(shape) == 4 and shape[0] == 1:
        return shape[1], shape[2], shape[3]
    if shape and int(np.prod(shape[:-1], dtype=np.int64)) == 1:
        return 1, 1, shape[-1]
    return None


# ----------------------------------------------------------------------------------------------
# Partition: host stages at the edges, the NPU in between
# ----------------------------------------------------------------------------------------------
def _split_host(graph: Graph):
    head = [op for op in graph.ops if op.kind == "QUANTIZE" and op.inputs[0] in graph.inputs
            and graph.tensors[op.inputs[0]].dtype == "float32"]
    tail: list[Op] = []
    changed = True
    while changed:
        changed = False
        for op in reversed(graph.ops):
            if op in tail or op.kind not in ("SOFTMAX", "DEQUANTIZE"):
                continue
            ok = True
            for o in op.outputs:
                users = graph.consumers(o)
                if any(u not in tail for u in users) or (not users and o not in graph.outputs):
                    ok = False
            if ok:
                tail.append(op)
                changed = True
    tail.sort(key=lambda op: op.index)
    host = set(map(id, head + tail))
    npu = [op for op in graph.ops if id(op) not in host]
    for op in npu:
        if op.on_host:
            raise fail(graph, op, "a host stage (float or format conversion) in the middle of the graph: "
                                   "the NPU cannot run it, only stages at the graph's edges go to the host")
    npu_inputs = [op.outputs[0] for op in head] + [i for i in graph.inputs
                                                   if not any(i == h.inputs[0] for h in head)]
    produced = {o for op in npu for o in op.outputs}
    npu_outputs = []
    for op in tail:
        for i in op.inputs:
            if (i in produced or i in npu_inputs) and i not in npu_outputs:
                npu_outputs.append(i)
    for o in graph.outputs:
        if o in produced and o not in npu_outputs:
            npu_outputs.append(o)
    postprocess: list[dict] = []
    for op in tail:
        if op.kind == "DEQUANTIZE" or (op.kind == "SOFTMAX" and graph.tensors[op.inputs[0]].dtype == "int8"):
            if {"op": "dequantize"} not in postprocess:
                postprocess.append({"op": "dequantize"})
        if op.kind == "SOFTMAX":
            postprocess.append({"op": "softmax", "beta": float(op.options.get("beta", 1.0))})
    preprocess = {"quantize": True} if head else {}
    return npu, npu_inputs, npu_outputs, preprocess, postprocess


# ----------------------------------------------------------------------------------------------
# Layer plans
# ----------------------------------------------------------------------------------------------
class _Lowering(LayerBuilders, DepthwiseBuilders):
    def __init__(self, graph: Graph, config: NPUConfig):
        # a copy of the tensor list: rewrites add tensors (space-to-depth) without touching the graph
        self.g = dataclasses.replace(graph, tensors=list(graph.tensors))
        self.config, self.b = config, config.cols
        self.npu, self.npu_inputs, self.npu_outputs, self.preprocess, self.postprocess = _split_host(self.g)
        self.canon: dict[int, int] = {}               # RESHAPE output -> its input
        self.parent: dict[int, tuple[int, int]] = {}  # tensor -> (concat output, channel block offset)
        self.pad_fold: dict[int, Op] = {}             # consumer op index -> the PAD it absorbs
        self.layers: list[Layer] = []

    # -- tensors ----------------------------------------------------------------------------
    def t(self, i: int) -> Tensor:
        return self.g.tensors[i]

    def resolve(self, i: int) -> int:
        while i in self.canon:
            i = self.canon[i]
        return i

    def dims(self, i: int, op: Op | None = None) -> tuple[int, int, int]:
        d = device_dims(self.t(i))
        if d is None:
            reason = f"tensor {self.t(i).name!r} of shape {list(self.t(i).shape)} has no device layout " \
                     "(batch must be 1)"
            raise fail(self.g, op, reason) if op else LoweringError(reason)
        return d

    def operand(self, op: Op, i: int) -> int:
        """The tensor an op reads for input i (a RESHAPE alias is read through, in the reader's
        shape), its device layout checked against the op's view."""
        src = self.resolve(i)
        if not same_layout(self.dims(src, op), self.dims(i, op)):
            raise fail(self.g, op, f"input {self.t(i).name!r} is a RESHAPE of {self.t(src).name!r} "
                                    f"{list(self.t(src).shape)} that changes its memory layout; only "
                                    "FULLY_CONNECTED can read a flattened tensor in place")
        return i

    def root(self, i: int) -> int:
        i = self.resolve(i)
        while i in self.parent:
            i = self.parent[i][0]
        return i

    def activation(self, i: int, base: dict[int, int]) -> Activation:
        """Tensor i in device memory, in its own shape when it is a RESHAPE alias of the same layout."""
        src = self.resolve(i)
        h, w, c = self.dims(src)
        view = device_dims(self.t(i))
        if view is not None and same_layout(view, (h, w, c)):
            h, w, c = view
        if src in self.parent:
            p, block = self.parent[src]
            pa = self.activation(p, base)
            return Activation(pa.addr + block * pa.plane(self.b), h, w, c, pa.plane(self.b))
        return Activation(base[src], h, w, c)

    # -- analysis ---------------------------------------------------------------------------
    def analyse(self):
        for op in self.npu:
            if op.kind == "RESHAPE" and self._reshape_in_place(op):
                self.canon[op.outputs[0]] = op.inputs[0]
        for op in self.npu:
            if op.kind == "PAD":
                self._plan_pad(op)
        for op in self.npu:
            if op.kind == "CONCATENATION":
                self._plan_concat(op)
        for op in self.npu:
            self._plan_op(op)

    def _reshape_in_place(self, op: Op) -> bool:
        """A RESHAPE aliases its input when the blocked layouts agree (same channels and pixel count:
        pixels lie in row-major order), or when only FULLY_CONNECTED layers read it (they read a
        flattened tensor in place); otherwise it is a relayout layer."""
        src, out = self.resolve(op.inputs[0]), op.outputs[0]
        if same_layout(self.dims(src, op), self.dims(out, op)):
            return True
        users = self.g.consumers(out)
        return bool(users) and out not in self.npu_outputs and \
            all(u.kind == "FULLY_CONNECTED" and u.inputs.index(out) == 0 for u in users)

    def _pad_amounts(self, op: Op) -> tuple[int, int, int, int]:
        """(top, bottom, left, right) of a PAD of an NHWC tensor (channel padding: _channel_pads)."""
        pads = np.asarray(op.params["paddings"]).reshape(-1, 2)
        if len(pads) != 4 or pads[0].any():
            raise fail(self.g, op, f"paddings {pads.tolist()}: the NPU pads H, W and C of a batch-1 NHWC "
                                    "tensor")
        return int(pads[1, 0]), int(pads[1, 1]), int(pads[2, 0]), int(pads[2, 1])

    def _channel_pads(self, op: Op) -> tuple[int, int]:
        pads = np.asarray(op.params["paddings"]).reshape(-1, 2)
        return int(pads[3, 0]), int(pads[3, 1])

    def _plan_pad(self, op: Op):
        extra = self._pad_amounts(op)
        if any(self._channel_pads(op)):
            return                      # a layer of its own (layers._pad_layer)
        value = int(op.params["pad_value"])
        out = op.outputs[0]
        users = self.g.consumers(out)
        foldable = bool(users) and out not in self.npu_outputs and out not in self.canon.values()
        for user in users:
            if user.kind not in _WINDOW_OPS or user.inputs[0] != out or user.inputs.count(out) != 1:
                foldable = False
                break
            own = user.params["pad"]
            if any(a + e > 15 for a, e in zip(own, extra, strict=True)):
                foldable = False
            if user.kind == "MAX_POOL_2D" and any(own) and value != -128:
                foldable = False
            if user.kind == "AVERAGE_POOL_2D" and any(own):
                foldable = False
        if foldable:
            for user in users:
                self.pad_fold[user.index] = op

    def _plan_concat(self, op: Op):
        out = op.outputs[0]
        rank = len(self.t(out).shape)
        h, w, _ = self.dims(out, op)
        if op.options["axis"] != rank - 1:
            raise fail(self.g, op, f"concatenation along axis {op.options['axis']} of a rank-{rank} tensor; "
                                    "the NPU concatenates channels (the last axis) only")
        entries, offset = [], 0
        for k, i in enumerate(op.inputs):
            t = self.t(i)
            if t.is_const:
                raise fail(self.g, op, f"constant input {t.name!r}")
            ih, iw, ic = self.dims(i, op)
            if (ih, iw) != (h, w):
                raise fail(self.g, op, f"input {t.name!r} is {ih}x{iw}, the output {h}x{w}")
            entries.append((k, i, offset, ic))
            offset += ic
        # An input that starts on a channel block is written in place (or copied when it cannot be);
        # the inputs after one that ends inside a block form a run, from that block on, which one-hot
        # 1x1 convolutions gather (they move channels across lanes); the run's first entry is then
        # that input's last, partial block (its "head"), whose lanes the gather writes back unchanged.
        run: list[tuple[int, int, int, int]] = []
        for n, (k, i, offset, ic) in enumerate(entries):
            if offset % self.b == 0:
                if run:
                    self.layers.append(self._gather_layer(op, run))
                    run = []
                self._place_in_concat(op, k, i, offset)
                if ic % self.b and n < len(entries) - 1:
                    run.append((k, i, offset, ic))
            else:
                run.append((k, i, offset, ic))
        if run:
            self.layers.append(self._gather_layer(op, run))

    def _place_in_concat(self, op: Op, k: int, i: int, offset: int):
        out = op.outputs[0]
        src = self.resolve(i)
        producer = self.g.producer(src)
        aliasable = (src == i and src not in self.parent and src not in self.npu_inputs
                     and producer is not None and src not in self.npu_outputs)
        if aliasable:
            self.parent[src] = (out, offset // self.b)
        else:
            self.layers.append(self._copy_layer(op, i, k, offset // self.b))

    # -- per-op layer plans -------------------------------------------------------------------
    def _plan_op(self, op: Op):
        kind = op.kind
        if kind == "CONCATENATION" or (kind == "RESHAPE" and op.outputs[0] in self.canon):
            return
        if kind == "RESHAPE":
            self.layers.append(self._relayout(op))
            return
        if kind == "PAD":
            if any(self.pad_fold.get(u.index) is op for u in self.g.consumers(op.outputs[0])):
                return
            self.layers.append(self._pad_layer(op))
            return
        method = {"CONV_2D": self._conv, "FULLY_CONNECTED": self._fc, "MAX_POOL_2D": self._pool,
                  "AVERAGE_POOL_2D": self._pool, "MEAN": self._mean, "ADD": self._binary,
                  "MUL": self._binary, "DEPTHWISE_CONV_2D": self._depthwise, "RELU": self._relu,
                  "RELU6": self._relu, "RELU_N1_TO_1": self._relu, "RELU_0_TO_1": self._relu,
                  "MINIMUM": self._clamp, "MAXIMUM": self._clamp, "STRIDED_SLICE": self._slice,
                  "SLICE": self._slice}.get(kind)
        if method is None:
            raise fail(self.g, op, "no NPU lowering for this op")
        layers = method(op)
        self.layers += layers if isinstance(layers, list) else [layers]

    def plan_memory(self) -> tuple[dict[int, int], int]:
        """Device address of every root tensor's buffer (region starting at 0); region size."""
        b = self.b
        first: dict[int, int] = {}
        last: dict[int, int] = {}
        for i in self.npu_inputs:
            first[self.root(i)] = -1
        for layer in self.layers:
            for i in layer.writes:
                r = self.root(i)
                first[r] = min(first.get(r, layer.pos), layer.pos)
            for i in layer.reads:
                r = self.root(i)
                last[r] = max(last.get(r, layer.pos), layer.pos)
        end = len(self.g.ops) + 1
        for i in self.npu_outputs:
            last[self.root(i)] = end
        buffers = {}
        for r, f in first.items():
            h, w, c = self.dims(r)
            size = -(-c // b) * h * w * b
            buffers[r] = Buffer(self.t(r).name, size, f, max(last.get(r, f), f))
        size = plan_activations(list(buffers.values()))
        return {r: buf.offset for r, buf in buffers.items()}, size


def _scratchpad_use(config: NPUConfig, insns: list[Insn]) -> dict[str, int]:
    """Highest scratchpad entry + 1 each buffer sees in a layer."""
    use = dict.fromkeys(("inp", "wgt", "param", "acc", "out"), 0)
    names = {isa.Buffer.INP: "inp", isa.Buffer.WGT: "wgt", isa.Buffer.PARAM: "param"}
    for insn in insns:
        if isinstance(insn, isa.Load):
            name = names[isa.Buffer(insn.buffer)]
            use[name] = max(use[name], isa.load_footprint(insn)[1])
        elif isinstance(insn, isa.Conv):
            n = (insn.out_blocks if insn.mode == ConvMode.MAC else insn.in_blocks) * insn.out_h * insn.out_w
            use["acc"] = max(use["acc"], insn.acc + n)
        elif isinstance(insn, (isa.Requant, isa.Narrow, isa.Add, isa.Mul)):
            use["out"] = max(use["out"], insn.out + insn.blocks * insn.count)
    return use


# ----------------------------------------------------------------------------------------------
# The entry point
# ----------------------------------------------------------------------------------------------
def lower(graph: Graph, config: NPUConfig, progress: Callable[[int, int], None] | None = None) -> Lowered:
    """Lower `graph` for `config`.  Raises LoweringError naming the op, its output tensor and why.
    `progress(done, total)` is called after each layer is emitted."""
    lw = _Lowering(graph, config)
    lw.analyse()
    lw.layers.sort(key=lambda layer: layer.pos)     # copies of a concatenation run at its position
    if not lw.layers:
        raise LoweringError(f"graph {graph.name!r} has nothing for the NPU to run")
    addr, act_bytes = lw.plan_memory()
    weights_base = align(act_bytes, 4096)
    blob = WeightsBlob(weights_base)
    ctx = Context(config, blob, lambda i: lw.activation(i, addr))
    program: list[Insn] = []
    records = []
    spans = []
    for layer_id, layer in enumerate(lw.layers):
        try:
            insns, macs = layer.build(ctx, layer_id, layer_id == 0)
        except LoweringError as exc:    # name the op and its output tensor, once
            msg = str(exc)
            if "(output tensor " in msg:
                raise
            prefix = f"op {layer.op.index} {layer.op.kind}"
            msg = msg.split(": ", 1)[1] if msg.startswith(prefix) and ": " in msg else msg
            raise fail(graph, layer.op, msg) from None
        except ValueError as exc:       # an ISA field out of range: say which layer
            raise fail(graph, layer.op, f"cannot encode: {exc}") from None
        for insn in insns:              # what the NPU would reject is a compiler bug: never emit it
            reason = insn.illegal_reason()
            if reason:
                raise fail(graph, layer.op, f"layer {layer.name!r} emitted an illegal instruction {insn!r}: "
                                            f"{reason}")
        spans.append((len(program), len(program) + len(insns)))
        program += insns
        out = lw.g.tensors[layer.writes[0]]
        records.append(dict(id=layer_id, name=layer.name, kind=layer.kind, op=layer.op.index,
                            output=out.name, macs=macs))
        if progress:
            progress(layer_id + 1, len(lw.layers))
    program.append(isa.Finish())
    program_addr = align(weights_base + blob.size, 4096)
    end = program_addr + len(program) * isa.INSN_BYTES
    if end > config.dram_bytes:
        raise LoweringError(f"graph {graph.name!r} needs {end} bytes of device memory (activations "
                            f"{act_bytes}, weights {blob.size}, program {len(program) * isa.INSN_BYTES}); "
                            f"config {config.name!r} has {config.dram_bytes}")
    est = estimate(config, program)
    cycles = est.layer_cycles()
    peak = config.macs_per_cycle
    entry = {name: config.entry_bytes(name) for name in ("inp", "wgt", "param", "acc", "out")}
    for rec, (s, e) in zip(records, spans, strict=True):
        insns = program[s:e]
        rec["cycles"] = cycles[rec["id"]]
        rec["utilization"] = rec["macs"] / max(rec["cycles"] * peak, 1)
        rec["dram_bytes"] = sum(sum(dram_bytes(config, i)) for i in insns)
        rec["instructions"] = len(insns)
        use = _scratchpad_use(config, insns)
        rec["scratchpad"] = use
        rec["scratchpad_bytes"] = sum(use[k] * entry[k] for k in use)

    def spec(i: int) -> TensorSpec:
        t = graph.tensors[i]
        src = lw.resolve(i)
        if not same_layout(lw.dims(src), lw.dims(i)):
            raise LoweringError(f"NPU output {t.name!r} is a RESHAPE that changes the memory layout of "
                                f"{graph.tensors[src].name!r}; the host reads blocked tensors only")
        return TensorSpec(name=t.name, shape=[int(d) for d in t.shape], dtype=t.dtype, scale=t.qscale,
                          zero_point=t.qzero, dram=lw.activation(i, addr).addr)

    memory_map = dict(activations=0, activations_bytes=act_bytes, weights=weights_base,
                      weights_bytes=blob.size, program=program_addr,
                      program_bytes=len(program) * isa.INSN_BYTES, end=end, align=ALIGN)
    return Lowered(program, blob.tobytes(), memory_map, [spec(i) for i in lw.npu_inputs],
                   [spec(i) for i in lw.npu_outputs], records, lw.preprocess, lw.postprocess, est)
