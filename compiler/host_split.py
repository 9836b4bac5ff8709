"""Cut a graph where the NPU must stop: the NPU part in front, a host tail behind.

The lowering (compiler/lower.py) puts host stages only at the graph's edges.  Some networks need
the host in the middle: SSD normalizes conv4_3 with L2_NORMALIZATION (a per-pixel inverse square
root the NPU cannot compute, see compiler/l2norm.py), and its heads end in RESHAPEs to
[1, boxes, values] and a CONCATENATION along the boxes, tensors that have no device layout.

``split_host_tail(graph)`` finds the *cut ops* (host-only ops other than the edge stages
QUANTIZE/DEQUANTIZE/SOFTMAX, and RESHAPE/CONCATENATION whose output has no device layout) and puts
each of them, with everything downstream of it, in the host tail.  The rest is the NPU graph; its
outputs are the tensors the tail reads (plus the graph outputs it produces itself).  A graph
without cut ops comes back unchanged with an empty tail.

The tail is integer TFLite ops run by the reference executor (compiler/reference.py, bit-exact with
the interpreter), so the whole network stays bit-exact; the bundle records it in the manifest's
postprocess as ``{"op": "host_graph", "ops": [op indices of model.tflite], "inputs": [...],
"outputs": [...]}`` and the host runs those ops of the bundle's model.tflite
(host/host_graph.py).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from softnpu.compiler.ir import HOST_OPS, Graph, Op

__all__ = ["HostTail", "split_host_tail", "EDGE_STAGES", "device_layout"]

EDGE_STAGES = frozenset({"QUANTIZE", "DEQUANTIZE", "SOFTMAX"})     # compiler/lower.py handles these


def device_layout(shape) -> bool:
    """Whether a tensor of this shape has a device layout (compiler/lower.py ``device_dims``):
    NHWC with batch 1, or a vector."""
    shape = tuple(int(d) for d in shape)
    if len(shape) == 4 and shape[0] == 1:
        return True
    return bool(shape) and int(np.prod(shape[:-1], dtype=np.int64)) == 1


@dataclasses.dataclass
class HostTail:
    """The host part of a cut graph: ops (in execution order) and the tensors it reads and writes."""
    ops: list[Op]
    inputs: list[int]           # tensors the NPU part produces (or graph inputs) that the tail reads
    outputs: list[int]          # graph outputs the tail produces
    reasons: dict[int, str]     # cut op index -> why the NPU cannot run it

    def __bool__(self) -> bool:
        return bool(self.ops)

    def stage(self, graph: Graph) -> dict:
        """The manifest's postprocess record of this tail."""
        cuts = [{"op": index, "kind": next(o.kind for o in self.ops if o.index == index),
                 "reason": why} for index, why in self.reasons.items()]
        return {"op": "host_graph", "ops": [op.index for op in self.ops],
                "inputs": [graph.tensors[i].name for i in self.inputs],
                "outputs": [graph.tensors[i].name for i in self.outputs], "cuts": cuts}


def _cut_reason(graph: Graph, op: Op) -> str | None:
    if op.kind in HOST_OPS and op.kind not in EDGE_STAGES:
        return f"{op.kind} has no NPU lowering (a host op)"
    if op.kind in ("RESHAPE", "CONCATENATION"):
        shape = graph.tensors[op.outputs[0]].shape
        if not device_layout(shape):
            return f"output shape {list(shape)} has no device layout (NHWC batch 1 or a vector)"
    return None


def split_host_tail(graph: Graph) -> tuple[Graph, HostTail]:
    """(the NPU graph, the host tail).  The NPU graph shares the tensors (and their indices) of
    ``graph``, its ops are renumbered 0..n-1 (the tail keeps model.tflite's op indices); without
    cut ops it is ``graph`` itself."""
    reasons = {op.index: why for op in graph.ops if (why := _cut_reason(graph, op)) is not None}
    if not reasons:
        return graph, HostTail([], [], [], {})
    tainted: set[int] = set()           # tensors computed by the tail
    tail: list[Op] = []
    for op in graph.ops:                # topological order: one pass finds the downstream closure
        if op.index in reasons or any(i in tainted for i in op.inputs if i >= 0):
            tail.append(op)
            tainted.update(op.outputs)
    in_tail = {op.index for op in tail}
    npu_ops = [op for op in graph.ops if op.index not in in_tail]
    produced = {o for op in npu_ops for o in op.outputs} | set(graph.inputs)
    tail_inputs: list[int] = []
    for op in tail:
        for i in op.inputs:
            if i >= 0 and i in produced and i not in tail_inputs:
                tail_inputs.append(i)
    fed = [graph.tensors[i].name for i in tail_inputs if i in graph.inputs]
    if fed:
        raise ValueError(f"graph {graph.name!r}: the host tail reads the graph input(s) {fed} directly; "
                         "a model whose host-only op reads its input has nothing to run on the NPU first")
    npu_outputs = list(tail_inputs) + [o for o in graph.outputs if o in produced and o not in tail_inputs]
    npu_outputs = [o for o in npu_outputs if o not in graph.inputs]
    if not npu_ops:
        raise ValueError(f"graph {graph.name!r}: nothing is left for the NPU after cutting at ops "
                         f"{sorted(reasons)}")
    tail_outputs = [o for o in graph.outputs if o in tainted]
    # The NPU graph's ops are copies numbered 0..n-1: the lowering takes an op's index as its
    # position in time (buffer liveness ends at len(ops) + 1), which a gapped numbering would break.
    npu_ops = [dataclasses.replace(op, index=k) for k, op in enumerate(npu_ops)]
    npu = dataclasses.replace(graph, ops=npu_ops, outputs=npu_outputs)
    return npu, HostTail(tail, tail_inputs, tail_outputs, reasons)
