"""Per-layer hardware profile of one inference: estimated vs measured cycles, the two MAC metrics,
DRAM traffic and arithmetic intensity; as a table (80 columns, or wide), JSON or CSV.

The two MAC metrics, named the same everywhere (CLI, reports, plots, gRPC outputs):

* **MAC utilization** = useful MACs / (cycles x rows x cols): how much of the array's peak the layer
  turned into results.  Useful MACs are the layer's own (`macs` in the manifest: output elements
  x kernel taps x input channels), not the zeros the array multiplies when a tile is partial.
* **MAC-active** = cycles with the MAC array active / cycles (the `mac_active` counter): how often
  the array was busy, partial tiles included.

Measured figures come from the NPU's marker trace (host/runtime.py `Runtime.infer(trace=True)`),
estimates from the compiler's cycle model (the manifest's per-layer `cycles`).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json

from softnpu.compiler.bundle import Manifest

__all__ = ["LayerProfile", "Profile", "profile_run"]


@dataclasses.dataclass
class LayerProfile:
    id: int
    name: str
    kind: str
    macs: int                       # useful multiply-accumulates
    estimated_cycles: int | None    # the cycle model's, from the manifest
    start: int                      # measured: the cycle of this layer's marker
    cycles: int                     # measured: this marker to the next
    mac_active_cycles: int          # cycles with the MAC array active
    load_busy: int
    compute_busy: int
    compute_stall: int              # compute had an instruction but waited for a load/store token
    store_busy: int
    dram_read_bytes: int
    dram_write_bytes: int

    @property
    def mac_utilization(self) -> float:
        return self.macs / (self.cycles * self._peak) if self.cycles else 0.0

    @property
    def mac_active(self) -> float:
        return self.mac_active_cycles / self.cycles if self.cycles else 0.0

    @property
    def dram_bytes(self) -> int:
        return self.dram_read_bytes + self.dram_write_bytes

    @property
    def arithmetic_intensity(self) -> float:
        """Useful MACs per DRAM byte (read + written)."""
        return self.macs / self.dram_bytes if self.dram_bytes else 0.0

    @property
    def estimate_error(self) -> float | None:
        """(measured - estimated) / measured."""
        if self.estimated_cycles is None or not self.cycles:
            return None
        return (self.cycles - self.estimated_cycles) / self.cycles

    _peak: int = dataclasses.field(default=1, repr=False)

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if not f.name.startswith("_")}
        out.update(mac_utilization=self.mac_utilization, mac_active=self.mac_active,
                   dram_bytes=self.dram_bytes, arithmetic_intensity=self.arithmetic_intensity,
                   estimate_error=self.estimate_error)
        return out


@dataclasses.dataclass
class Profile:
    model: str
    backend: str
    config: dict
    cycles: int                     # the whole run, start to done
    counters: dict[str, int]        # the run's performance counters
    layers: list[LayerProfile]

    @property
    def peak_macs_per_cycle(self) -> int:
        return int(self.config["rows"]) * int(self.config["cols"])

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def mac_utilization(self) -> float:
        return self.macs / (self.cycles * self.peak_macs_per_cycle) if self.cycles else 0.0

    @property
    def mac_active(self) -> float:
        return self.counters.get("mac_active", 0) / self.cycles if self.cycles else 0.0

    @property
    def latency_ms(self) -> float:
        return self.cycles / float(self.config["clock_mhz"]) / 1e3

    def to_dict(self) -> dict:
        return {"model": self.model, "backend": self.backend, "config": self.config, "cycles": self.cycles,
                "latency_ms": self.latency_ms, "macs": self.macs, "mac_utilization": self.mac_utilization,
                "mac_active": self.mac_active, "counters": self.counters,
                "layers": [layer.to_dict() for layer in self.layers]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def to_csv(self) -> str:
        rows = [layer.to_dict() for layer in self.layers]
        buffer = io.StringIO()
        if rows:
            writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        return buffer.getvalue()

    def table(self, wide: bool = False) -> str:
        """Fixed-width text: 80 columns, or every figure with `wide`."""
        def num(n: float) -> str:
            for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
                if abs(n) >= div:
                    return f"{n / div:.1f}{unit}"
            return f"{n:.0f}"

        name_w = 20 if not wide else max([24] + [len(layer.name) for layer in self.layers])
        head = (f"{'id':>3} {'layer':<{name_w}} {'kind':<9} {'MACs':>7} {'est.cyc':>8} {'cycles':>8} "
                f"{'MAC%':>5} {'act%':>5} {'DRAM B':>7}")
        if wide:
            head += f" {'rd B':>8} {'wr B':>8} {'MAC/B':>7} {'err%':>6} {'ld%':>5} {'cp%':>5} {'st%':>5}"
        lines = [head, "-" * len(head)]
        for layer in self.layers:
            est = num(layer.estimated_cycles) if layer.estimated_cycles is not None else "-"
            name = layer.name if len(layer.name) <= name_w else layer.name[:name_w - 1] + "~"
            line = (f"{layer.id:>3} {name:<{name_w}} {layer.kind[:9]:<9} {num(layer.macs):>7} {est:>8} "
                    f"{num(layer.cycles):>8} {layer.mac_utilization:>5.0%} {layer.mac_active:>5.0%} "
                    f"{num(layer.dram_bytes):>7}")
            if wide:
                err = f"{layer.estimate_error:+.1%}" if layer.estimate_error is not None else "-"
                c = max(layer.cycles, 1)
                line += (f" {layer.dram_read_bytes:>8} {layer.dram_write_bytes:>8} "
                         f"{layer.arithmetic_intensity:>7.1f} {err:>6} {layer.load_busy / c:>5.0%} "
                         f"{layer.compute_busy / c:>5.0%} {layer.store_busy / c:>5.0%}")
            lines.append(line)
        lines.append("-" * len(head))
        lines.append(f"{self.model} on {self.backend} ({self.config.get('name')}, "
                     f"{self.config['rows']}x{self.config['cols']} MACs, {self.config['clock_mhz']:g} MHz): "
                     f"{self.cycles:,} cycles = {self.latency_ms:.3f} ms")
        lines.append(f"MAC utilization {self.mac_utilization:.1%} (useful MACs / peak), "
                     f"MAC-active {self.mac_active:.1%}")
        lines.append(f"DRAM: {num(self.counters.get('dram_read_bytes', 0))}B read, "
                     f"{num(self.counters.get('dram_write_bytes', 0))}B written")
        return "\n".join(lines)


def profile_run(manifest: Manifest, backend: str, stats) -> Profile:
    """The profile of one traced inference (`Runtime.infer(..., trace=True).stats`)."""
    if stats.layers is None:
        raise ValueError("profile_run needs an inference run with trace=True")
    by_id = {layer.get("id"): layer for layer in manifest.layers}
    peak = manifest.npu_config.macs_per_cycle
    layers = []
    for measured in stats.layers:
        meta = by_id.get(measured["id"], {})
        c = measured.get("counters", {})
        layers.append(LayerProfile(
            id=measured["id"], name=measured.get("name") or meta.get("name", ""), kind=meta.get("kind", ""),
            macs=int(meta.get("macs", 0)), estimated_cycles=meta.get("cycles"), start=measured["start"],
            cycles=measured["cycles"],
            mac_active_cycles=c.get("mac_active", 0), load_busy=c.get("load_busy", 0),
            compute_busy=c.get("compute_busy", 0), compute_stall=c.get("compute_stall", 0),
            store_busy=c.get("store_busy", 0),
            dram_read_bytes=c.get("dram_read_bytes", 0), dram_write_bytes=c.get("dram_write_bytes", 0),
            _peak=peak))
    return Profile(manifest.model, backend, dict(manifest.config), stats.cycles, dict(stats.counters), layers)
