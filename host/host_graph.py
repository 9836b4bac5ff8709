"""The host tail of a cut graph (compiler/host_split.py): the int8 ops after the NPU, on the CPU.

A bundle whose manifest postprocess holds ``{"op": "host_graph", "ops": [...], "inputs": [...],
"outputs": [...]}`` needs these ops of its model.tflite run on the NPU's outputs.  They run in the
compiler's reference executor (integer numpy, bit-exact with the TFLite interpreter; the
L2_NORMALIZATION kernel is compiler/l2norm.py), so the outputs are the int8 tensors the
interpreter computes for the whole model.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from softnpu.compiler.bundle import Bundle, BundleError, TensorSpec

__all__ = ["HostGraph", "host_graph_stage"]


def host_graph_stage(postprocess: list[dict]) -> dict | None:
    return next((p for p in postprocess or [] if p.get("op") == "host_graph"), None)


@dataclasses.dataclass
class HostGraph:
    """Callable: NPU outputs by name (int8) -> the tail's outputs by name (int8, model shapes)."""
    graph: object                   # compiler.ir.Graph holding only the tail's ops
    outputs: list[TensorSpec]       # the tail's outputs: name, shape, quantization (no DRAM address)

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> HostGraph | None:
        """The bundle's host tail, or None when the NPU computes the model's outputs itself."""
        stage = host_graph_stage(bundle.manifest.postprocess)
        if stage is None:
            return None
        if bundle.tflite is None:
            raise BundleError(f"bundle {bundle.manifest.model!r} has a host_graph stage but carries no "
                              "model.tflite to run it from")
        from softnpu.compiler.tflite_import import load_tflite

        full = load_tflite(bundle.tflite, name=bundle.manifest.model)
        by_index = {op.index: op for op in full.ops}
        missing = [i for i in stage["ops"] if i not in by_index]
        if missing:
            raise BundleError(f"host_graph stage: ops {missing} are not in model.tflite")
        names = {t.name: t.index for t in full.tensors}
        try:
            inputs = [names[n] for n in stage["inputs"]]
            outputs = [names[n] for n in stage["outputs"]]
        except KeyError as exc:
            raise BundleError(f"host_graph stage: tensor {exc} is not in model.tflite") from None
        npu = {s.name for s in bundle.manifest.outputs}
        unfed = [n for n in stage["inputs"] if n not in npu]
        if unfed:
            raise BundleError(f"host_graph stage reads {unfed}, which the NPU does not output")
        graph = dataclasses.replace(full, ops=[by_index[i] for i in stage["ops"]], inputs=inputs,
                                    outputs=outputs)
        specs = []
        for i in outputs:
            t = full.tensors[i]
            specs.append(TensorSpec(t.name, list(t.shape), t.dtype, t.qscale if t.is_quantized else 1.0,
                                    t.qzero, dram=-1, layout="host"))
        return cls(graph, specs)

    def __call__(self, npu_outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from softnpu.compiler import reference

        feeds = {self.graph.tensors[i].name: npu_outputs[self.graph.tensors[i].name]
                 for i in self.graph.inputs}
        values = reference.execute(self.graph, feeds, keep=False)
        return {spec.name: values[i] for spec, i in zip(self.outputs, self.graph.outputs, strict=True)}
