"""A timeline of one inference that Perfetto's UI (or chrome://tracing) opens: Chrome trace JSON.

Two processes:

* **cycle model** (compiler/cycles.py's schedule of the program): one track per unit - fetch,
  load (DMA read), compute (the conv engine, MARKER, FINISH), its vector unit (REQUANT, NARROW,
  ADD, MUL: they overlap the next CONVs), store (DMA write) - with a slice per
  instruction named by its disassembly, a `wait` slice where an instruction that reached its unit
  waited for a dependency token, and a `layers` track with one slice per layer (marker to marker);
* **measured** (the device's marker trace: ISS or RTL counters): a `layers` track with the measured
  layer spans, and counter tracks per layer (MAC-active and busy fraction of each unit).

Time is in microseconds at the config's clock (`ts = cycle / clock_mhz`); every slice carries its
cycles in `args`.  `validate` checks the Chrome-trace schema of a file we wrote.
"""

from __future__ import annotations

import json
from pathlib import Path

from softnpu.compiler.bundle import Bundle
from softnpu.compiler.cycles import estimate
from softnpu.hdl import isa
from softnpu.hdl.asm import format_insn

__all__ = ["build_timeline", "write_timeline", "validate"]

MODEL_PID, MEASURED_PID = 1, 2
UNIT_TRACKS = {"fetch": 1, "load (DMA read)": 2, "compute": 3, "vector unit": 6, "store (DMA write)": 4,
               "layers": 5}
_VECTOR_OPS = (isa.Requant, isa.Narrow, isa.Add, isa.Mul)
_UNIT_NAMES = ("load (DMA read)", "compute", "store (DMA write)")


def _meta(pid: int, tid: int | None, name: str) -> dict:
    if tid is None:
        return {"ph": "M", "pid": pid, "name": "process_name", "args": {"name": name}}
    return {"ph": "M", "pid": pid, "tid": tid, "name": "thread_name", "args": {"name": name}}


def build_timeline(bundle: Bundle, measured_layers: list[dict] | None = None,
                   backend: str = "") -> dict:
    """The trace as a dict: `traceEvents` plus `otherData` (model, config, totals)."""
    manifest = bundle.manifest
    config = manifest.npu_config
    program = isa.decode_program(bundle.program)
    est = estimate(config, program, spans=True)
    us = 1.0 / config.clock_mhz                     # microseconds per cycle

    def slice_(pid, tid, name, start, end, **args):
        return {"ph": "X", "pid": pid, "tid": tid, "name": name, "ts": start * us,
                "dur": (end - start) * us, "args": {"start_cycle": start, "cycles": end - start, **args}}

    events = [_meta(MODEL_PID, None, f"cycle model: {manifest.model} on {config.name}")]
    events += [_meta(MODEL_PID, tid, name) for name, tid in UNIT_TRACKS.items()]
    names = {layer.get("id"): layer.get("name", "") for layer in manifest.layers}
    for span in est.spans:
        insn = program[span.pc]
        text = format_insn(insn)
        unit = "vector unit" if isinstance(insn, _VECTOR_OPS) else _UNIT_NAMES[span.unit]
        events.append(slice_(MODEL_PID, UNIT_TRACKS["fetch"], type(insn).__name__.lower(), span.fetch_start,
                             span.fetch_end, pc=span.pc, insn=text))
        if span.start > span.ready:
            events.append(slice_(MODEL_PID, UNIT_TRACKS[unit], "wait", span.ready, span.start, pc=span.pc,
                                 reason="dependency token"))
        if span.end > span.start:
            events.append(slice_(MODEL_PID, UNIT_TRACKS[unit], text.split()[0], span.start, span.end,
                                 pc=span.pc, insn=text))
    layer_ends = [t for _, t in est.markers[1:]] + [est.cycles]
    for (marker, start), end in zip(est.markers, layer_ends, strict=True):
        events.append(slice_(MODEL_PID, UNIT_TRACKS["layers"], names.get(marker, f"layer {marker}"),
                             start, end, layer=marker))
    if measured_layers:
        events.append(_meta(MEASURED_PID, None, f"measured on {backend or 'device'}: {manifest.model}"))
        events.append(_meta(MEASURED_PID, 1, "layers"))
        for layer in measured_layers:
            start, end = layer["start"], layer["start"] + layer["cycles"]
            c, cycles = layer.get("counters", {}), max(layer["cycles"], 1)
            events.append(slice_(MEASURED_PID, 1, layer.get("name") or f"layer {layer['id']}", start, end,
                                 layer=layer["id"], **{k: int(v) for k, v in c.items()}))
            busy = {u: c.get(f"{u}_busy", 0) / cycles for u in ("load", "compute", "store")}
            events.append({"ph": "C", "pid": MEASURED_PID, "name": "busy fraction", "ts": start * us,
                           "args": {"mac_active": c.get("mac_active", 0) / cycles, **busy}})
    return {"traceEvents": events, "displayTimeUnit": "ns",
            "otherData": {"model": manifest.model, "config": config.name, "clock_mhz": config.clock_mhz,
                          "model_cycles": est.cycles, "measured_backend": backend,
                          "model_busy": dict(zip(("load", "compute", "store"), est.busy, strict=True))}}


def write_timeline(path: str | Path, bundle: Bundle, measured_layers: list[dict] | None = None,
                   backend: str = "") -> Path:
    path = Path(path)
    path.write_text(json.dumps(build_timeline(bundle, measured_layers, backend)))
    return path


_PHASES = {"X": ("name", "ts", "dur", "pid", "tid"), "M": ("name", "pid", "args"),
           "C": ("name", "ts", "pid", "args")}


def validate(trace: dict) -> None:
    """Raise ValueError unless `trace` follows the Chrome trace event format (JSON object form) in
    the phases we write: complete slices (X), metadata (M) and counters (C)."""
    if not isinstance(trace, dict) or not isinstance(trace.get("traceEvents"), list):
        raise ValueError("a Chrome trace is an object with a traceEvents list")
    for i, event in enumerate(trace["traceEvents"]):
        phase = event.get("ph")
        if phase not in _PHASES:
            raise ValueError(f"event {i}: phase {phase!r} is not one of {sorted(_PHASES)}")
        for key in _PHASES[phase]:
            if key not in event:
                raise ValueError(f"event {i} ({phase}): missing {key!r}")
        if phase == "X" and (event["dur"] < 0 or event["ts"] < 0):
            raise ValueError(f"event {i}: negative time")
        if phase == "C" and not all(isinstance(v, int | float) for v in event["args"].values()):
            raise ValueError(f"event {i}: counter values must be numbers")
