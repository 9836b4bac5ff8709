"""The plots of a sweep (host/scale/sweep.py), PNG with matplotlib:

* `pareto.png`: latency (ms, log scale) against the MAC array's size (MACs per cycle), one colour
  per network, the Pareto front (no point both smaller and faster) drawn as a line;
* `utilization_by_kind.png`: MAC utilization per layer kind (useful MACs over the array's peak in
  the kind's cycles), one bar per point, grouped by kind, for the first network.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["write_sweep_plots"]


def write_sweep_plots(rows: list[dict], out_dir: str | Path) -> list[Path]:
    """Write both plots of the finished points into `out_dir`; returns the files written."""
    if not rows:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from softnpu.host.scale.sweep import pareto_front

    out = Path(out_dir)
    written = []
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["input_size"]), []).append(r)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    front = pareto_front(rows)
    for n, ((model, size), group) in enumerate(sorted(groups.items())):
        colour = f"C{n % 10}"
        ax.scatter([r["macs_per_cycle"] for r in group], [r["latency_ms"] for r in group], color=colour,
                   alpha=0.6, label=f"{model} {size}x{size}")
        line = sorted((r for r in front if (r["model"], r["input_size"]) == (model, size)),
                      key=lambda r: r["macs_per_cycle"])
        ax.plot([r["macs_per_cycle"] for r in line], [r["latency_ms"] for r in line], color=colour,
                drawstyle="steps-post", linewidth=1.5)
        for r in line:
            ax.annotate(r["config"], (r["macs_per_cycle"], r["latency_ms"]), fontsize=6,
                        xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("MACs per cycle (rows x cols)")
    ax.set_ylabel("latency per inference (ms, at clock_mhz)")
    ax.set_title("Design points: latency vs MAC array size (line: Pareto front)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    path = out / "pareto.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    written.append(path)

    (model, size), group = sorted(groups.items())[0]
    kinds = sorted({k for r in group for k, v in r["kinds"].items() if v["macs"]})
    if kinds:
        fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(kinds) + 0.12 * len(group) * len(kinds)), 4.5))
        width = 0.8 / len(group)
        for n, r in enumerate(sorted(group, key=lambda r: r["latency_ms"])):
            xs = [k + n * width for k in range(len(kinds))]
            ax.bar(xs, [r["kinds"].get(k, {}).get("utilization", 0.0) for k in kinds], width,
                   label=r["config"], color=f"C{n % 10}")
        ax.set_xticks([k + 0.4 - width / 2 for k in range(len(kinds))], kinds, fontsize=8)
        ax.set_ylabel("MAC utilization (useful MACs / peak)")
        ax.set_ylim(0, 1)
        ax.set_title(f"{model} {size}x{size}: MAC utilization per layer kind")
        ax.legend(fontsize=6, ncol=2)
        ax.grid(True, axis="y", alpha=0.3)
        path = out / "utilization_by_kind.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    return written
