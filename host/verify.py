"""`softnpu verify`: a bundle on a device against the TFLite interpreter, bit for bit.

The bundle carries the .tflite its compiler consumed (member ``model.tflite``).  The oracle is the
interpreter with reference kernels (``BUILTIN_REF``) on that model without its host tail
(``tflite_import.drop_host_tail``: trailing SOFTMAX/DEQUANTIZE run on the host, and the reference
int8 SOFTMAX can abort on small input scales), so it produces exactly the int8 tensors the NPU
writes: the inputs of the host stages.  Both run on the same random int8 inputs.  A cut graph
(compiler/host_split.py) is checked twice: its NPU outputs against the interpreter's intermediate
tensors of the same name, and the host tail's outputs (host/host_graph.py, run on the NPU's) against
the interpreter's outputs.
"""

from __future__ import annotations

import dataclasses
import threading
import time

import numpy as np

from softnpu.compiler.bundle import Bundle, BundleError, Manifest

__all__ = ["OutputCheck", "VerifyReport", "reference_interpreter", "random_inputs", "verify_bundle",
           "BackendUnavailable"]


class BackendUnavailable(RuntimeError):
    """The requested device backend does not exist (yet) in host.device."""


@dataclasses.dataclass
class OutputCheck:
    input_index: int
    name: str
    shape: list[int]
    mismatches: int
    max_abs_diff: int

    @property
    def equal(self) -> bool:
        return self.mismatches == 0


@dataclasses.dataclass
class VerifyReport:
    checks: list[OutputCheck]
    cycles: list[int]                   # NPU cycles per input
    device_seconds: list[float]         # host wall time of each device run
    interpreter_seconds: list[float]
    recording: object = None            # sim.waves.Recording of a run with waves

    @property
    def equal(self) -> bool:
        return all(c.equal for c in self.checks)


def reference_interpreter(tflite: bytes, preserve_all: bool = False):
    """The oracle: BUILTIN_REF interpreter on the model up to the int8 tensors the NPU produces.
    preserve_all: keep every intermediate tensor readable (a cut graph's NPU outputs are inside
    the model)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from softnpu.compiler.tflite_import import drop_host_tail

    interp = Interpreter(model_content=drop_host_tail(bytes(tflite)),
                         experimental_op_resolver_type=OpResolverType.BUILTIN_REF,
                         experimental_preserve_all_tensors=preserve_all)
    interp.allocate_tensors()
    return interp


def _invoke(interp, in_details: dict, manifest: Manifest, feeds: dict, outcome: list) -> None:
    """Feed one input set to the interpreter and run it; append its time, or the exception it
    raised, to `outcome` (this runs in a thread beside the device)."""
    try:
        start = time.perf_counter()
        for spec in manifest.inputs:
            d = in_details[spec.name] if spec.name in in_details else next(iter(in_details.values()))
            x = feeds[spec.name]
            if d["dtype"] == np.float32:      # a QUANTIZE host stage: feed what it would quantize
                x = ((x.astype(np.float32) - spec.zero_point) * spec.scale).astype(np.float32)
            interp.set_tensor(d["index"], x.reshape(d["shape"]))
        interp.invoke()
        outcome.append(time.perf_counter() - start)
    except BaseException as e:  # noqa: BLE001 - handed to the main thread, raised there
        outcome.append(e)


def random_inputs(manifest: Manifest, count: int, seed: int) -> list[dict[str, np.ndarray]]:
    """`count` sets of uniform random int8 inputs (the extremes included) in the manifest's shapes."""
    rng = np.random.default_rng(seed)
    sets = []
    for _ in range(count):
        one = {}
        for spec in manifest.inputs:
            x = rng.integers(-128, 128, spec.shape, dtype=np.int8)
            x.flat[:2] = (-128, 127)
            one[spec.name] = x
        sets.append(one)
    return sets


def _open_runtime(bundle: Bundle, backend: str):
    from softnpu.host.devices.device import BACKENDS
    from softnpu.host.runtime import Runtime

    if backend not in BACKENDS:
        raise BackendUnavailable(f"backend {backend!r} is not a device backend; host.device provides "
                                 f"{', '.join(sorted(BACKENDS))}")
    return Runtime.open(bundle, backend)


def verify_bundle(bundle: Bundle, backend: str = "iss", inputs: int = 1, seed: int = 0,
                  waves=None, window=None) -> VerifyReport:
    """Run `inputs` random input sets through the bundle on a `backend` device and through the
    interpreter; compare every NPU output with the interpreter's tensor of the same name.

    `waves` (a file path; backend rtl): the first input set runs on the RTL's waves build and
    records `window` (a sim.waves.Window; default the whole run) into that file
    (host/bench/waves_run.py); the report's `recording` says what was written."""
    if waves is not None and backend != "rtl":
        raise BackendUnavailable(f"waveforms need the rtl backend, not {backend!r}")
    if bundle.tflite is None:
        raise BundleError(f"bundle {bundle.manifest.model!r} carries no model.tflite: recompile it with "
                          "`softnpu compile` to verify it")
    from softnpu.host.host_graph import HostGraph

    tail = HostGraph.from_bundle(bundle)
    interp = reference_interpreter(bundle.tflite, preserve_all=tail is not None)
    in_details = {d["name"]: d for d in interp.get_input_details()}
    out_details = {d["name"]: d for d in interp.get_output_details()}
    if tail is not None:      # the NPU's outputs are intermediate tensors of the model
        inner = {d["name"]: d for d in interp.get_tensor_details()}
        out_details = {**{s.name: inner[s.name] for s in bundle.manifest.outputs if s.name in inner},
                       **out_details}
    manifest = bundle.manifest
    for spec in manifest.outputs + (tail.outputs if tail is not None else []):
        if spec.name not in out_details:
            raise BundleError(f"NPU output {spec.name!r} is not an output of the interpreter's model "
                              f"(outputs: {sorted(out_details)})")
    runtime = _open_runtime(bundle, backend)
    report = VerifyReport([], [], [], [])
    try:
        for k, feeds in enumerate(random_inputs(manifest, inputs, seed)):
            # the interpreter runs in a thread beside the device (its invoke releases the GIL, as do
            # the ISS's kernels and the RTL's simulator process): with two cores the two overlap
            outcome: list = []
            oracle = threading.Thread(target=_invoke, args=(interp, in_details, manifest, feeds, outcome))
            oracle.start()
            try:
                if k == 0 and waves is not None:
                    from softnpu.host.bench.waves_run import record_inference
                    from softnpu.host.runtime import Result

                    outputs, stats, report.recording = record_inference(bundle, feeds, waves, window)
                    result = Result(outputs, stats)
                else:
                    result = runtime.infer(feeds)
            finally:
                oracle.join()
            if isinstance(outcome[0], BaseException):
                raise outcome[0]
            report.interpreter_seconds.append(outcome[0])
            report.cycles.append(result.stats.cycles)
            report.device_seconds.append(result.stats.device_s)
            got_all = dict(result.outputs)
            if tail is not None:
                got_all.update(tail(result.outputs))
            for spec in manifest.outputs + (tail.outputs if tail is not None else []):
                want = interp.get_tensor(out_details[spec.name]["index"])
                got = got_all[spec.name].reshape(want.shape)
                diff = np.abs(got.astype(np.int64) - want.astype(np.int64))
                report.checks.append(OutputCheck(k, spec.name, list(want.shape), int((diff > 0).sum()),
                                                 int(diff.max()) if diff.size else 0))
    finally:
        runtime.close()
    return report
