"""The runtime: a bundle on a device.

`Runtime(bundle, device)` places the program and the weights in device memory once; `infer`
streams each input in (NHWC int8 -> the channel-blocked layout the NPU reads), starts the NPU
through its CSRs, waits for done, streams the outputs out and reads the performance counters.
One device runs one inference at a time: `infer` holds the device's lock.  Several runtimes may
share a device (a service worker switching models): whichever runs re-places its weights if
another one ran in between.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from pathlib import Path

import numpy as np

from softnpu.compiler.bundle import Bundle, Manifest, TensorSpec
from softnpu.compiler.layout import from_blocked, to_blocked
from softnpu.host.devices.device import Device, DeviceError, DeviceLost, DeviceTimeout
from softnpu.host.pipeline import InputError

__all__ = ["Runtime", "Result", "Stats", "layer_spans", "tensor_hwc"]

_ids = itertools.count(1)


@dataclasses.dataclass
class Stats:
    """What one inference cost on the modelled hardware, and on this host."""
    cycles: int                          # NPU clock cycles, start to done
    utilization: dict[str, float]        # busy fraction of load/compute/store, `mac`, `mac_active`
    latency_s: float                     # cycles at the config's clock_mhz
    dram_read_bytes: int
    dram_write_bytes: int
    wall_s: float                        # host time of the whole infer call (seconds)
    device_s: float                      # host time spent in start..done (seconds)
    counters: dict[str, int]
    layers: list[dict] | None = None     # per-layer cycles from the marker trace (trace=True)


@dataclasses.dataclass
class Result:
    outputs: dict[str, np.ndarray]       # name -> int8, in the manifest's shape
    stats: Stats


def tensor_hwc(spec: TensorSpec) -> tuple[int, int, int]:
    """The [H, W, C] a tensor occupies on the device: NHWC -> HWC, [1, N] -> 1x1xN."""
    shape = list(spec.shape)
    if len(shape) == 4 and shape[0] == 1:
        return tuple(shape[1:])
    if len(shape) == 3:
        return tuple(shape)
    if len(shape) == 2 and shape[0] == 1:
        return 1, 1, shape[1]
    if len(shape) == 1:
        return 1, 1, shape[0]
    raise ValueError(f"tensor {spec.name!r}: shape {shape} has no device layout (batch must be 1)")


def blocked_bytes(spec: TensorSpec, block: int) -> int:
    """Bytes the tensor occupies on the device in the blocked layout (compiler/layout.py)."""
    h, w, c = tensor_hwc(spec)
    return -(-c // block) * h * w * block


def to_device(spec: TensorSpec, x: np.ndarray, block: int) -> np.ndarray:
    """An int8 tensor in the manifest's shape -> its blocked device image."""
    return to_blocked(np.asarray(x, dtype=np.int8).reshape(tensor_hwc(spec)), block)


def from_device(spec: TensorSpec, raw, block: int) -> np.ndarray:
    """The blocked device image of a tensor (bytes or uint8/int8 array) -> int8 in the manifest's shape."""
    h, w, c = tensor_hwc(spec)
    blocked = np.frombuffer(raw, np.int8) if isinstance(raw, bytes | bytearray) else raw.view(np.int8)
    return from_blocked(blocked.reshape(-(-c // block), h, w, block), c).reshape(spec.shape)


def utilization(counters: dict[str, int], macs: int, peak_macs_per_cycle: int) -> dict[str, float]:
    """Busy fraction of load/compute/store; `mac`: MAC utilization (useful MACs over the array's
    peak in these cycles); `mac_active`: cycles with the array active over cycles (host/bench/profile.py
    names the two metrics)."""
    cycles = max(counters.get("cycles", 0), 1)
    util = {unit: counters.get(f"{unit}_busy", 0) / cycles for unit in ("load", "compute", "store")}
    util["mac"] = macs / (cycles * peak_macs_per_cycle)
    util["mac_active"] = counters.get("mac_active", 0) / cycles
    return util


def layer_spans(manifest: Manifest, entries: list, counters: dict[str, int]) -> list[dict]:
    """Per marker (layer) of a marker trace [(id, counters snapshot)]: its name, start cycle, cycles,
    and every performance counter's increase over the layer (the next snapshot, or the final
    `counters`, minus this one), so the layers' counters add up to the run's from the first marker."""
    names = {layer.get("id"): layer.get("name", "") for layer in manifest.layers}
    ends = [c for _, c in entries[1:]] + [counters]
    return [{"id": marker, "name": names.get(marker, ""), "start": c["cycles"],
             "cycles": end["cycles"] - c["cycles"], "counters": {k: end[k] - c[k] for k in c if k in end}}
            for (marker, c), end in zip(entries, ends, strict=True)]


class Runtime:
    """A loaded bundle on one device.  `timeout_s` bounds each run (None: no bound)."""

    def __init__(self, bundle: Bundle | str | Path, device: Device, timeout_s: float | None = None):
        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
        self.manifest = self.bundle.manifest
        self.device = device
        self.timeout_s = timeout_s
        self._token = next(_ids)
        want, have = self.manifest.npu_config.to_dict(), device.config.to_dict()
        want.pop("name"), have.pop("name")
        if want != have:
            diff = {k: (want[k], have[k]) for k in want if want[k] != have[k]}
            raise ValueError(f"bundle {self.manifest.model!r} targets NPU config "
                             f"{self.manifest.config.get('name')!r}, the device is "
                             f"{device.config.name!r}; differing fields (bundle, device): {diff}")
        for spec in self.manifest.inputs + self.manifest.outputs:
            if spec.layout != "blocked":
                raise ValueError(f"tensor {spec.name!r}: layout {spec.layout!r} is not supported")
            tensor_hwc(spec)
        self.inputs = {s.name: s for s in self.manifest.inputs}
        self.outputs = {s.name: s for s in self.manifest.outputs}
        with device.lock:
            self._place()

    @classmethod
    def open(cls, bundle: Bundle | str | Path, backend: str = "iss", **kw) -> Runtime:
        """A runtime on a new device of `backend` configured as the bundle requires."""
        from softnpu.host.devices.device import open_device
        bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
        return cls(bundle, open_device(backend, bundle.manifest.npu_config), **kw)

    def _place(self):
        mm = self.manifest.memory_map
        self.device.write_memory(mm["program"], self.bundle.program)
        self.device.write_memory(mm["weights"], self.bundle.weights)
        self.device.resident = self._token

    # -- inputs -----------------------------------------------------------------------------
    def check_inputs(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Validated int8 arrays in each input's manifest shape; InputError says what is wrong."""
        if not isinstance(inputs, dict):
            raise InputError(f"inputs must be a dict of name -> array, got {type(inputs).__name__}")
        unknown = sorted(set(inputs) - set(self.inputs))
        missing = sorted(set(self.inputs) - set(inputs))
        if unknown or missing:
            raise InputError(f"model {self.manifest.model!r} takes inputs {sorted(self.inputs)}"
                             + (f"; unknown {unknown}" if unknown else "")
                             + (f"; missing {missing}" if missing else ""))
        out = {}
        for name, spec in self.inputs.items():
            x = np.asarray(inputs[name])
            if x.dtype != np.int8:
                raise InputError(f"input {name!r}: dtype {x.dtype} given, the NPU takes int8 "
                                 f"(scale {spec.scale:g}, zero point {spec.zero_point})")
            shape = list(spec.shape)
            if list(x.shape) != shape and not (shape[:1] == [1] and list(x.shape) == shape[1:]):
                raise InputError(f"input {name!r}: shape {list(x.shape)} given, the model takes {shape}")
            out[name] = x.reshape(shape)
        return out

    # -- running ----------------------------------------------------------------------------
    def infer(self, inputs: dict[str, np.ndarray], timeout_s: float | None = None,
              trace: bool = False) -> Result:
        """Run one inference.  Raises InputError (bad inputs), DeviceError (an NPU fault, with
        its error code), DeviceTimeout or DeviceLost (a device process that died or hung)."""
        t0 = time.perf_counter()
        inputs = self.check_inputs(inputs)
        b = self.device.config.cols
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        blocked = {name: to_device(spec, inputs[name], b) for name, spec in self.inputs.items()}
        mm = self.manifest.memory_map
        with self.device.lock:
            try:
                if getattr(self.device, "resident", None) != self._token:
                    self._place()
                for name, spec in self.inputs.items():
                    self.device.write_memory(spec.dram, blocked[name])
                t1 = time.perf_counter()
                self.device.run(mm["program"], self.manifest.program_instructions, timeout_s)
                device_s = time.perf_counter() - t1
                raw = {}
                for name, spec in self.outputs.items():
                    raw[name] = self.device.read_memory(spec.dram, blocked_bytes(spec, b))
                counters = self.device.read_counters()
                trace_entries = self.device.read_trace() if trace else None
            except (DeviceError, DeviceTimeout, DeviceLost):
                # a faulting program may have written anywhere: reset and re-place next time
                self.device.resident = None
                self.device.reset()
                raise
        outputs = {}
        for name, spec in self.outputs.items():
            outputs[name] = from_device(spec, raw[name], b)
        config = self.device.config
        macs = sum(int(layer.get("macs", 0)) for layer in self.manifest.layers)
        util = utilization(counters, macs, config.macs_per_cycle)
        stats = Stats(cycles=counters["cycles"], utilization=util,
                      latency_s=config.cycles_to_seconds(counters["cycles"]),
                      dram_read_bytes=counters["dram_read_bytes"],
                      dram_write_bytes=counters["dram_write_bytes"],
                      wall_s=time.perf_counter() - t0, device_s=device_s, counters=counters,
                      layers=layer_spans(self.manifest, trace_entries, counters) if trace else None)
        return Result(outputs, stats)

    def close(self):
        self.device.close()
