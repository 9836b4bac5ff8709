"""The compiler's intermediate representation: a small, explicit graph of int8 tensors and ops.

A ``Graph`` is what ``compiler.tflite_import.load_tflite`` makes of a .tflite flatbuffer:

* ``Tensor``: index (the flatbuffer's tensor index, so it can be matched with the interpreter's),
  name, shape, dtype (numpy dtype name), quantization (``scale`` float32 array and ``zero_point``
  int64 array, one entry per tensor or one per channel along ``quantized_dimension``) and, for
  constants, ``data`` (a read-only numpy array).
* ``Op``: ``kind`` (TFLite builtin name, e.g. ``"CONV_2D"``), ``inputs``/``outputs`` (tensor indices,
  -1 for an absent optional input), ``options`` (the builtin options, decoded: padding, strides,
  filter size, fused activation, axes, keep_dims, concat axis, new shape, ...) and ``params`` (the
  integer parameters the TFLite kernels derive at Prepare time: per-channel multipliers/shifts,
  ADD/MUL offsets and multipliers, MEAN multiplier, int8 clamp bounds).  Ops are in topological
  (execution) order.

Op kinds run on the NPU: ``NPU_OPS``; host stages (float or format conversions, and ops the NPU
cannot compute such as L2_NORMALIZATION's per-pixel inverse square root): ``HOST_OPS``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["NPU_OPS", "HOST_OPS", "RELU_BOUNDS", "SUPPORTED_OPS", "UnsupportedOp", "Tensor", "Op", "Graph"]

NPU_OPS = frozenset({
    "CONV_2D", "FULLY_CONNECTED", "ADD", "MUL", "PAD", "MAX_POOL_2D", "AVERAGE_POOL_2D", "MEAN",
    "CONCATENATION", "RESHAPE", "DEPTHWISE_CONV_2D", "RELU", "RELU6", "RELU_N1_TO_1", "RELU_0_TO_1",
    "MINIMUM", "MAXIMUM", "STRIDED_SLICE", "SLICE",
})
# standalone activations: TFLite's ReluX kernel, a requantization with a clamp (real bounds)
RELU_BOUNDS = {"RELU": (0.0, None), "RELU6": (0.0, 6.0), "RELU_N1_TO_1": (-1.0, 1.0),
               "RELU_0_TO_1": (0.0, 1.0)}
HOST_OPS = frozenset({"SOFTMAX", "QUANTIZE", "DEQUANTIZE", "L2_NORMALIZATION"})
SUPPORTED_OPS = NPU_OPS | HOST_OPS


class UnsupportedOp(ValueError):
    """The model uses an op (or an op variant) the compiler cannot map."""

    def __init__(self, kind: str, output: str, reason: str, index: int | None = None,
                 inputs: tuple[str, ...] = ()):
        where = f"op {index}, " if index is not None else ""
        reads = f", reading {', '.join(repr(n) for n in inputs)}" if inputs else ""
        super().__init__(f"unsupported op {kind} ({where}output tensor {output!r}{reads}): {reason}")
        self.inputs = tuple(inputs)
        self.kind = kind
        self.index = index
        self.output = output
        self.reason = reason


@dataclass(eq=False)
class Tensor:
    index: int
    name: str
    shape: tuple[int, ...]
    dtype: str                                  # numpy dtype name: 'int8', 'int32', 'float32', ...
    scale: np.ndarray | None = None             # float32 [1] or [channels]; None if not quantized
    zero_point: np.ndarray | None = None        # int64, same length as scale
    quantized_dimension: int = 0
    data: np.ndarray | None = None              # constant contents, shaped like `shape`

    @property
    def is_const(self) -> bool:
        return self.data is not None

    @property
    def is_quantized(self) -> bool:
        return self.scale is not None and len(self.scale) > 0

    @property
    def per_channel(self) -> bool:
        return self.is_quantized and len(self.scale) > 1

    @property
    def qscale(self) -> float:
        """The per-tensor scale as the float32 value TFLite keeps in params.scale."""
        if not self.is_quantized:
            raise ValueError(f"tensor {self.name!r} is not quantized")
        return float(np.float32(self.scale[0]))

    @property
    def qzero(self) -> int:
        if not self.is_quantized:
            return 0
        return int(self.zero_point[0])

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def __repr__(self) -> str:
        q = ""
        if self.is_quantized:
            q = (f" scale={self.qscale:.6g} zp={self.qzero}" if not self.per_channel
                 else f" per-channel[{len(self.scale)}]@{self.quantized_dimension}")
        c = " const" if self.is_const else ""
        return f"<Tensor {self.index} {self.name!r} {self.dtype}{list(self.shape)}{q}{c}>"


@dataclass(eq=False)
class Op:
    index: int
    kind: str
    inputs: list[int]
    outputs: list[int]
    options: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def on_host(self) -> bool:
        return self.kind in HOST_OPS

    def __repr__(self) -> str:
        return f"<Op {self.index} {self.kind} in={self.inputs} out={self.outputs} {self.options}>"


@dataclass(eq=False)
class Graph:
    tensors: list[Tensor]
    ops: list[Op]
    inputs: list[int]
    outputs: list[int]
    name: str = ""
    description: str = ""

    def tensor(self, ref: int | str) -> Tensor:
        """A tensor by index or by name."""
        if isinstance(ref, (int, np.integer)):
            return self.tensors[int(ref)]
        for t in self.tensors:
            if t.name == ref:
                return t
        raise KeyError(f"no tensor named {ref!r}")

    def producer(self, index: int) -> Op | None:
        for op in self.ops:
            if index in op.outputs:
                return op
        return None

    def consumers(self, index: int) -> list[Op]:
        return [op for op in self.ops if index in op.inputs]

    def activations(self) -> list[Tensor]:
        """Tensors computed by ops (every op output), in execution order."""
        return [self.tensors[i] for op in self.ops for i in op.outputs]

    def summary(self) -> str:
        lines = [f"graph {self.name!r}: {len(self.ops)} ops, inputs {self.inputs}, outputs {self.outputs}"]
        for op in self.ops:
            outs = ", ".join(repr(self.tensors[i]) for i in op.outputs)
            lines.append(f"  {op.index:4d} {op.kind:16s} {op.inputs} -> {outs}")
        return "\n".join(lines)
