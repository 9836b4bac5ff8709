"""What the service serves: models from a repository with their serving signature.

`ServedModel` is one bundle version as the Predict API sees it (signature `serving_default`):

inputs   `images`   DT_STRING [N] encoded images (JPEG, PNG, ...), preprocessed on the host; or
         `<input>`  the model's input tensor by its manifest name (`images` also accepted for a
                    single-input model): DT_INT8 already quantized, DT_FLOAT/DT_DOUBLE in the
                    model's input domain (quantized here), DT_UINT8 pixels at the model's size
                    (normalised and quantized here).  Shape: the manifest's, or [N, ...] for N
                    examples, or without the batch dimension.
outputs  classifier (one [1, C] output): `logits` (float32, dequantized), `logits_int8` (the
         NPU's int8), `probabilities` (softmax), `classes` (int64 top-k), `scores` (their
         probabilities), `labels` (their class names);
         detector (an `ssd_detect` postprocess stage), the TF Object Detection API's outputs:
         `detection_boxes` [N, M, 4] (ymin, xmin, ymax, xmax, fractions of the image),
         `detection_scores` [N, M], `detection_classes` [N, M] (float32 class ids, 1-based: the
         model's class index, background being 0), `num_detections` [N] (float32), zero-padded to
         M = max_detections; `detection_labels` [N, M] their class names (softnpu's addition);
         `raw_detection_boxes` [N, boxes, 4] and `raw_detection_scores`
         [N, boxes, classes] before NMS;
         every output of a model that is not a detector: `<name>` (float32) and `<name>_int8`
         (after the host tail, when the graph was cut: host/host_graph.py);
         hardware figures of the run: `npu_cycles` (int64), `npu_latency_ms` (at the config's
         clock), `device_ms` (host time on the device), `npu_mac_utilization` (useful MACs
         / the array's peak in those cycles), `npu_mac_active` (cycles with the MAC array active /
         cycles), `npu_layer_cycles` (int64 [N, layers], from the marker trace).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from softnpu.compiler.bundle import Bundle
from softnpu.host import pipeline
from softnpu.host.detection import Detector, detection_stage
from softnpu.host.host_graph import HostGraph
from softnpu.host.pipeline import InputError
from softnpu.host.runtime import Result

__all__ = ["ServedModel", "ModelNotFound", "ModelLoadError", "UnknownLabel", "Unsupported", "IMAGES",
           "LAYER_CYCLES", "SIGNATURE", "MAX_BATCH", "describe"]

IMAGES = "images"
LAYER_CYCLES = "npu_layer_cycles"
SIGNATURE = "serving_default"
MAX_BATCH = 64


class ModelNotFound(LookupError):
    """Unknown model or version, or a version that failed to load (gRPC NOT_FOUND)."""


class ModelLoadError(RuntimeError):
    """A request the model cannot serve: an unknown signature (gRPC FAILED_PRECONDITION)."""


class UnknownLabel(InputError):
    """A version label the model does not have (gRPC INVALID_ARGUMENT, as TF Serving)."""


class Unsupported(NotImplementedError):
    """A method or a form of request this server does not implement (gRPC UNIMPLEMENTED)."""


@dataclasses.dataclass
class OutputAlias:
    kind: str          # float, int8, probabilities, classes, scores, labels, cycles, latency, device
    dtype: str         # numpy dtype name, "string" for labels
    shape: list[int]   # with the batch dimension (-1)
    spec: object = None


class ServedModel:
    def __init__(self, bundle: Bundle, name: str | None = None, version: int | None = None,
                 top_k: int = 5):
        self.bundle = bundle
        self.manifest = m = bundle.manifest
        self.name = name or m.model
        self.version = int(version if version is not None else m.version)
        self.key = (self.name, self.version, id(bundle))
        self.inputs = {s.name: s for s in m.inputs}
        self.preprocessor = None
        if len(m.inputs) == 1 and len(m.inputs[0].shape) == 4 and m.inputs[0].shape[3] in (1, 3):
            self.preprocessor = pipeline.Preprocessor.for_manifest(m)
        # a cut graph (compiler/host_split.py): the host runs the tail after the NPU
        self.host_graph = HostGraph.from_bundle(bundle)
        finals = self.host_graph.outputs if self.host_graph is not None else m.outputs
        stage = detection_stage(m.postprocess)
        self.detector = Detector(stage, {s.name: s for s in finals}) if stage is not None else None
        first = finals[0]
        self.classifier = self.detector is None and len(first.shape) == 2 and first.shape[0] == 1
        self.class_names = pipeline.class_names(m, first.shape[-1]) if self.classifier else \
            pipeline.class_names(m, self.detector.num_classes) if self.detector is not None else []
        self.top_k = max(1, min(top_k, first.shape[-1]))
        self.aliases: dict[str, OutputAlias] = {}
        if self.classifier:
            c, k = first.shape[-1], self.top_k
            self.aliases.update({
                "logits": OutputAlias("float", "float32", [-1, c], first),
                "logits_int8": OutputAlias("int8", "int8", [-1, c], first),
                "probabilities": OutputAlias("probabilities", "float32", [-1, c], first),
                "classes": OutputAlias("classes", "int64", [-1, k], first),
                "scores": OutputAlias("scores", "float32", [-1, k], first),
                "labels": OutputAlias("labels", "string", [-1, k], first)})
        if self.detector is not None:
            d = self.detector
            n, c, top = d.spec.num_priors, d.num_classes, d.max_detections
            self.aliases.update({
                "detection_boxes": OutputAlias("detection_boxes", "float32", [-1, top, 4]),
                "detection_scores": OutputAlias("detection_scores", "float32", [-1, top]),
                "detection_classes": OutputAlias("detection_classes", "float32", [-1, top]),
                "num_detections": OutputAlias("num_detections", "float32", [-1]),
                "detection_labels": OutputAlias("detection_labels", "string", [-1, top]),
                "raw_detection_boxes": OutputAlias("raw_detection_boxes", "float32", [-1, n, 4]),
                "raw_detection_scores": OutputAlias("raw_detection_scores", "float32", [-1, n, c])})
        else:
            for spec in finals:
                shape = [-1] + list(spec.shape[1:])
                self.aliases.setdefault(spec.name, OutputAlias("float", "float32", shape, spec))
                self.aliases.setdefault(spec.name + "_int8", OutputAlias("int8", "int8", shape, spec))
        self.aliases.update({"npu_cycles": OutputAlias("cycles", "int64", [-1]),
                             "npu_latency_ms": OutputAlias("latency", "float32", [-1]),
                             "device_ms": OutputAlias("device", "float32", [-1]),
                             "npu_mac_utilization": OutputAlias("mac_utilization", "float32", [-1]),
                             "npu_mac_active": OutputAlias("mac_active", "float32", [-1]),
                             LAYER_CYCLES: OutputAlias("layer_cycles", "int64", [-1, -1])})

    def __repr__(self):
        return f"<ServedModel {self.name}:{self.version}>"

    # -- signature --------------------------------------------------------------------------
    def input_signature(self) -> dict[str, tuple[str, list[int]]]:
        """alias -> (dtype, shape with batch -1)."""
        sig = {}
        if self.preprocessor is not None:
            sig[IMAGES] = ("string", [-1])
        for spec in self.manifest.inputs:
            sig[spec.name] = ("int8", [-1] + list(spec.shape[1:]))
        return sig

    # -- requests ---------------------------------------------------------------------------
    def examples(self, tensors: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Request tensors by alias -> one dict of int8 NPU inputs per example."""
        if not tensors:
            raise InputError(f"no inputs given; {self.name} takes {sorted(self.input_signature())}")
        signature = self.input_signature()
        single = next(iter(self.inputs)) if len(self.inputs) == 1 else None
        per_input: dict[str, list[np.ndarray]] = {}
        for alias, x in tensors.items():
            if alias not in signature and not (alias == IMAGES and single):
                raise InputError(f"input {alias!r} is not in signature {SIGNATURE!r} of "
                                 f"{self.name}:{self.version} (inputs: {sorted(signature)})")
            target = single if alias == IMAGES else alias
            if target in per_input:
                raise InputError(f"input {target!r} given twice (as {IMAGES!r} and by name)")
            per_input[target] = self._input_examples(alias, target, x)
        missing = sorted(set(self.inputs) - set(per_input))
        if missing:
            raise InputError(f"missing inputs {missing} of {self.name}:{self.version}")
        counts = {len(v) for v in per_input.values()}
        if len(counts) != 1:
            raise InputError(f"inputs disagree on the batch size: {sorted(counts)}")
        n = counts.pop()
        return [{name: xs[i] for name, xs in per_input.items()} for i in range(n)]

    def _input_examples(self, alias: str, name: str, x: np.ndarray) -> list[np.ndarray]:
        spec = self.inputs[name]
        if x.dtype == object:
            if self.preprocessor is None:
                raise InputError(f"input {alias!r}: encoded images are accepted only by single-input "
                                 "image models")
            items = list(x.reshape(-1))
            if x.ndim > 1:
                raise InputError(f"input {alias!r}: encoded images must be a scalar or a vector [N], "
                                 f"got shape {list(x.shape)}")
            self._check_batch(alias, len(items))
            return [self.preprocessor(item) for item in items]
        body = list(spec.shape[1:])
        if list(x.shape) == body:
            x = x[None]
        if x.ndim != len(spec.shape) or list(x.shape[1:]) != body:
            raise InputError(f"input {alias!r}: shape {list(x.shape)} given, {self.name} takes "
                             f"{[-1] + body} (or {body} for one example)")
        self._check_batch(alias, x.shape[0])
        if x.dtype == np.int8:
            q = x
        elif x.dtype in (np.float32, np.float64, np.float16):
            if not np.all(np.isfinite(x)):
                raise InputError(f"input {alias!r}: float values must be finite")
            q = pipeline.quantize(x, spec.scale, spec.zero_point)
        elif x.dtype == np.uint8 and self.preprocessor is not None:
            q = pipeline.quantize(pipeline.normalize(x, self.preprocessor.mode), spec.scale,
                                  spec.zero_point)
        else:
            raise InputError(f"input {alias!r}: dtype {x.dtype} is not accepted; send int8 (quantized, "
                             f"scale {spec.scale:g}, zero point {spec.zero_point}), float32 (the model's "
                             f"input domain)" + (", uint8 pixels or encoded images (DT_STRING) as "
                                                 f"{IMAGES!r}" if self.preprocessor else ""))
        return [q[i:i + 1] for i in range(q.shape[0])]

    @staticmethod
    def _check_batch(alias: str, n: int):
        if n == 0:
            raise InputError(f"input {alias!r} is empty (batch of 0)")
        if n > MAX_BATCH:
            raise InputError(f"input {alias!r}: batch of {n} exceeds the limit of {MAX_BATCH}")

    def outputs(self, results: list[Result], wanted: list[str] | None = None) -> dict[str, np.ndarray]:
        """Alias -> batched array for the requested aliases (all when `wanted` is empty)."""
        wanted = list(wanted) if wanted else list(self.aliases)
        unknown = [w for w in wanted if w not in self.aliases]
        if unknown:
            raise InputError(f"output alias(es) {unknown} not in signature {SIGNATURE!r} of "
                             f"{self.name}:{self.version} (outputs: {list(self.aliases)})")
        cls = None
        out = {}
        # the host tail and the detector run only when a requested output needs them
        detecting = any(self.aliases[w].kind in _DETECTION for w in wanted)
        finals = [self.final_outputs(r) for r in results] if detecting or any(
            self.aliases[w].spec is not None for w in wanted) else []
        detected = [self.detector(f) for f in finals] if detecting else []
        for alias in dict.fromkeys(wanted):
            a = self.aliases[alias]
            if a.kind in _DETECTION:
                out[alias] = _detection_output(a.kind, detected, self.detector.max_detections,
                                               self.class_names)
                continue
            if a.kind in ("probabilities", "classes", "scores", "labels") and cls is None:
                q = np.concatenate([f[a.spec.name] for f in finals])
                cls = pipeline.classify(q, a.spec, self.class_names, self.top_k, self.manifest.postprocess)
            if a.kind == "int8":
                out[alias] = np.concatenate([f[a.spec.name] for f in finals])
            elif a.kind == "float":
                q = np.concatenate([f[a.spec.name] for f in finals])
                out[alias] = pipeline.dequantize(q, a.spec.scale, a.spec.zero_point)
            elif a.kind == "probabilities":
                out[alias] = cls.probabilities
            elif a.kind == "classes":
                out[alias] = cls.classes
            elif a.kind == "scores":
                out[alias] = cls.scores
            elif a.kind == "labels":
                labels = np.empty(cls.classes.shape, dtype=object)
                labels[:] = [[s.encode() for s in row] for row in cls.labels]
                out[alias] = labels
            elif a.kind == "cycles":
                out[alias] = np.array([r.stats.cycles for r in results], np.int64)
            elif a.kind == "latency":
                out[alias] = np.array([r.stats.latency_s * 1e3 for r in results], np.float32)
            elif a.kind == "device":
                out[alias] = np.array([r.stats.device_s * 1e3 for r in results], np.float32)
            elif a.kind == "mac_utilization":
                out[alias] = np.array([r.stats.utilization["mac"] for r in results], np.float32)
            elif a.kind == "mac_active":
                out[alias] = np.array([r.stats.utilization["mac_active"] for r in results], np.float32)
            elif a.kind == "layer_cycles":
                out[alias] = np.array([[layer["cycles"] for layer in (r.stats.layers or [])]
                                       for r in results], np.int64)
        return out

    def final_outputs(self, result: Result) -> dict[str, np.ndarray]:
        """The model's int8 outputs for one NPU result: the NPU's, or the host tail's after them."""
        return self.host_graph(result.outputs) if self.host_graph is not None else result.outputs


_DETECTION = ("detection_boxes", "detection_scores", "detection_classes", "num_detections",
              "detection_labels", "raw_detection_boxes", "raw_detection_scores")


def _detection_output(kind: str, detected: list, top: int, names: list[str]) -> np.ndarray:
    """One TF Object Detection API output over a batch of DetectorOutput (padded to `top`);
    `detection_labels` (softnpu's addition) are the class names, b"" in the padding."""
    if kind == "raw_detection_boxes":
        return np.stack([d.boxes for d in detected])
    if kind == "raw_detection_scores":
        return np.stack([d.probabilities for d in detected])
    if kind == "detection_labels":
        labels = np.full((len(detected), top), b"", dtype=object)
        for row, d in enumerate(detected):
            for k, c in enumerate(d.detections.classes[:top]):
                labels[row, k] = names[c].encode()
        return labels
    rows = [d.detections.padded(top) for d in detected]
    return np.concatenate([row[kind] for row in rows])


def describe(model: ServedModel) -> str:
    """One line for logs and `softnpu models list`."""
    m = model.manifest
    ins = ", ".join(f"{s.name}{s.shape}" for s in m.inputs)
    outs = ", ".join(f"{s.name}{s.shape}" for s in m.outputs)
    return (f"{model.name}:{model.version} ({m.model}, config {m.config.get('name')}, "
            f"{m.program_instructions} instructions; {ins} -> {outs})")

