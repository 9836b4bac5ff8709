"""One inference of a bundle on the waves build of the RTL, recording a window into an FST (or VCD)
file with a GTKWave save file beside it: what `softnpu run --backend rtl --waves F --window W` does.

The run is a sim.rtl_jobs Job laid out exactly as host/runtime.py lays a request out (weights and
program at the manifest's addresses, inputs blocked at theirs), so its outputs, counters and
marker trace are those of the `rtl` device backend.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from softnpu.compiler.bundle import Bundle
from softnpu.host.runtime import Stats, blocked_bytes, from_device, layer_spans, to_device, utilization

__all__ = ["record_inference"]


def record_inference(bundle: Bundle, inputs: dict[str, np.ndarray], path: str | Path, window=None,
                     progress: bool = True, max_cycles: int = 2_000_000_000):
    """Run `inputs` (int8, by input name) through `bundle` on the RTL's waves build; returns
    (outputs by name, host.runtime.Stats with per-layer `layers`, sim.waves.Recording)."""
    import sys
    import time

    from softnpu.sim.rtl.jobs import Job
    from softnpu.sim.rtl.waves import Window, record

    manifest = bundle.manifest
    config = manifest.npu_config
    b = config.cols
    mm = manifest.memory_map
    image = [(mm["weights"], bundle.weights), (mm["program"], bundle.program)]
    for spec in manifest.inputs:
        image.append((spec.dram, to_device(spec, inputs[spec.name], b).tobytes()))
    regions = []
    for spec in manifest.outputs:
        regions.append((spec.dram, blocked_bytes(spec, b)))
    job = Job(manifest.model, image, mm["program"], manifest.program_instructions, regions,
              max_cycles=max_cycles)
    window = window or Window()
    if progress:
        print(f"softnpu: recording {window.describe()} of {manifest.model} on the RTL (waves build; the "
              "first build of a config takes a few minutes, cached after)", file=sys.stderr, flush=True)
    start = time.perf_counter()
    recording = record(config, [job], path, window)
    wall = time.perf_counter() - start
    (result,) = recording.results
    if result.npu_fault is not None:
        raise result.npu_fault          # an NPUFault (DeviceError), as from every backend
    if result.error:
        raise RuntimeError(f"{manifest.model} on the RTL: {result.error}")
    outputs = {}
    for spec, raw in zip(manifest.outputs, result.regions, strict=True):
        outputs[spec.name] = from_device(spec, raw, b)
    counters = result.counters
    macs = sum(int(layer.get("macs", 0)) for layer in manifest.layers)
    stats = Stats(cycles=counters["cycles"], utilization=utilization(counters, macs, config.macs_per_cycle),
                  latency_s=config.cycles_to_seconds(counters["cycles"]),
                  dram_read_bytes=counters["dram_read_bytes"], dram_write_bytes=counters["dram_write_bytes"],
                  wall_s=wall, device_s=result.wall_s, counters=counters,
                  layers=layer_spans(manifest, result.trace or [], counters))
    return outputs, stats, recording
