"""The report's plots of a profile (host/bench/profile.py), as PNG and SVG with matplotlib:

* `cycles.*`: cycles per layer, stacked by what the compute unit was doing (the counters): MAC
  array active, other compute (vector work), waiting for load/store tokens (`compute_stall`: memory
  stalls), and compute idle with no instruction (fetch blocked behind a full queue, drain);
* `utilization.*`: MAC utilization (useful MACs / peak) and MAC-active per layer;
* `roofline.*`: MACs per cycle against MACs per DRAM byte, under the config's compute roof (rows x
  cols) and bandwidth roof (dram_bus_bytes per cycle).
"""

from __future__ import annotations

from pathlib import Path

from softnpu.host.bench.profile import Profile

__all__ = ["write_plots"]

PLOTS = ("cycles", "utilization", "roofline")


def _save(fig, out_dir: Path, name: str) -> list[Path]:
    paths = []
    for suffix in ("png", "svg"):
        path = out_dir / f"{name}.{suffix}"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        paths.append(path)
    return paths


def _finish_per_layer(fig, ax, ylabel: str, title: str, labels: list[str], out_dir: Path,
                      name: str) -> list[Path]:
    """Axis labels, legend and layer ticks of a per-layer bar chart; saved and closed."""
    import matplotlib.pyplot as plt

    ax.set_xlabel("layer (id)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    if len(labels) <= 60:
        ax.set_xticks(range(len(labels)), labels, fontsize=7)
    paths = _save(fig, out_dir, name)
    plt.close(fig)
    return paths


def write_plots(profile: Profile, out_dir: str | Path) -> list[Path]:
    """Write the three plots into `out_dir` (created); returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    layers = profile.layers
    x = list(range(len(layers)))
    labels = [f"{layer.id}" for layer in layers]
    title = (f"{profile.model} on {profile.backend}, {profile.config.get('name')} "
             f"({profile.config['rows']}x{profile.config['cols']})")
    width = max(6.0, min(0.18 * len(layers) + 2, 40.0))
    written = []

    # 1. cycles stacked by cause
    mac = [layer.mac_active_cycles for layer in layers]
    other = [max(layer.compute_busy - layer.mac_active_cycles, 0) for layer in layers]
    stalled_mem = [layer.compute_stall for layer in layers]
    rest = [max(layer.cycles - layer.compute_busy - layer.compute_stall, 0) for layer in layers]
    fig, ax = plt.subplots(figsize=(width, 4))
    bottom = [0] * len(layers)
    for values, name, color in ((mac, "MAC array active", "#2a9d8f"),
                                (other, "other compute (vector, partial tiles)", "#8ab17d"),
                                (stalled_mem, "waiting for load/store tokens", "#e76f51"),
                                (rest, "compute idle: no instruction (fetch, full queues)", "#bbbbbb")):
        ax.bar(x, values, bottom=bottom, label=name, color=color, width=0.85)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    written += _finish_per_layer(fig, ax, "cycles", f"cycles per layer by cause: {title}", labels, out_dir,
                                 "cycles")

    # 2. utilization per layer
    fig, ax = plt.subplots(figsize=(width, 3.5))
    ax.bar([i - 0.2 for i in x], [layer.mac_utilization * 100 for layer in layers], width=0.4,
           label="MAC utilization (useful MACs / peak)", color="#264653")
    ax.bar([i + 0.2 for i in x], [layer.mac_active * 100 for layer in layers], width=0.4,
           label="MAC-active (cycles with the array active)", color="#e9c46a")
    ax.axhline(profile.mac_utilization * 100, color="#264653", linestyle="--", linewidth=1,
               label=f"whole network: {profile.mac_utilization:.1%}")
    ax.set_ylim(0, 105)
    written += _finish_per_layer(fig, ax, "%", f"MAC utilization per layer: {title}", labels, out_dir,
                                 "utilization")

    # 3. roofline
    peak = profile.peak_macs_per_cycle
    bus = float(profile.config["dram_bus_bytes"])
    points = [(layer.arithmetic_intensity, layer.macs / layer.cycles, layer.kind)
              for layer in layers if layer.macs and layer.cycles and layer.dram_bytes]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    lo = min([p[0] for p in points] + [peak / bus / 100])
    hi = max([p[0] for p in points] + [peak / bus * 100])
    xs = [lo * (hi / lo) ** (i / 200) for i in range(201)]
    ax.plot(xs, [min(peak, bus * v) for v in xs], color="black", linewidth=1.5,
            label=f"roof: min({peak} MACs/cycle, {bus:g} B/cycle x intensity)")
    kinds = sorted({p[2] for p in points})
    for kind in kinds:
        sel = [p for p in points if p[2] == kind]
        ax.scatter([p[0] for p in sel], [p[1] for p in sel], s=14, label=kind)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (useful MACs per DRAM byte)")
    ax.set_ylabel("useful MACs per cycle")
    ax.set_title(f"roofline: {title}", fontsize=9)
    ax.legend(fontsize=7)
    written += _save(fig, out_dir, "roofline")
    plt.close(fig)
    return written
