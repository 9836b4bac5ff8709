"""Compiler benchmark: compile time of ResNet-50 (the TFLite conversion excluded) and the estimated
MAC utilization of every zoo network on an NPU config, with what limits it.

    nox -s bench_compiler [-- --size 224 --config default --networks resnet50,vgg16]

Utilization is *useful* MACs / (cycles x rows x cols): padding lanes, vector ops (REQUANT, ADD,
pooling) and DMA waits all count as lost.  "array busy" is the fraction of cycles the MAC array
streams input entries (the ISS's `mac` utilization), lanes used or not.  Cycles are the compiler's
static schedule (compiler/cycles.py), which is the ISS's cycle model.  The ISS's and the
interpreter's wall time per image: `python -m host.bench_inference` (the same nox session).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

from softnpu.compiler import emit
from softnpu.compiler.compile import compile_tflite, zoo_tflite
from softnpu.compiler.lower import lower
from softnpu.compiler.tflite_import import load_tflite
from softnpu.hdl.config import preset

NETWORKS = ("resnet50", "resnet152", "vgg16", "densenet121", "efficientnet_lite0")
MAC_KINDS = ("CONV_2D", "FULLY_CONNECTED", "SPACE_TO_DEPTH")


def compile_time(name: str, size: int, config: str, repeat: int) -> list[float]:
    data = zoo_tflite(name, size)           # converted (or read from the cache) outside the timing
    times = []
    for _ in range(repeat):
        emit._plan_conv.cache_clear()       # every run plans from scratch
        start = time.perf_counter()
        compile_tflite(data, config, name=name)
        times.append(time.perf_counter() - start)
    return times


def utilization(name: str, size: int, config: str) -> dict:
    cfg = preset(config)
    lowered = lower(load_tflite(zoo_tflite(name, size), name=name), cfg)
    est = lowered.estimate
    peak = cfg.macs_per_cycle
    macs = sum(rec["macs"] for rec in lowered.layers)
    by_kind: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for rec in lowered.layers:
        by_kind[rec["kind"]][0] += rec["cycles"]
        by_kind[rec["kind"]][1] += rec["macs"]
    conv_cycles = sum(by_kind[k][0] for k in MAC_KINDS if k in by_kind and k != "FULLY_CONNECTED")
    conv_macs = by_kind["CONV_2D"][1]
    dw_cycles, dw_macs = by_kind.get("DEPTHWISE_CONV_2D", (0, 0))
    return dict(name=name, macs=macs, cycles=est.cycles, ms=cfg.cycles_to_seconds(est.cycles) * 1e3,
                util=macs / (est.cycles * peak), busy=est.mac_active / est.cycles,
                conv_util=conv_macs / max(conv_cycles * peak, 1), by_kind=dict(by_kind),
                dw_util=dw_macs / (dw_cycles * peak) if dw_cycles else None,
                instructions=len(lowered.program))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224, help="input side (default 224)")
    parser.add_argument("--config", default="default", help="NPU config preset (default 'default')")
    parser.add_argument("--networks", default=",".join(NETWORKS), help="comma-separated zoo networks")
    parser.add_argument("--repeat", type=int, default=3, help="compile-time runs (median)")
    args = parser.parse_args(argv)
    cfg = preset(args.config)
    print(f"NPU config {cfg.name!r}: {cfg.rows}x{cfg.cols} MACs at {cfg.clock_mhz:g} MHz, "
          f"{cfg.dram_bus_bytes}-byte bus, bursts of {cfg.dram_max_burst} beats after {cfg.dram_latency} "
          "cycles of latency")
    times = compile_time("resnet50", args.size, args.config, args.repeat)
    print(f"compile time resnet50@{args.size} (import + lowering + encoding, conversion excluded): median "
          f"{statistics.median(times):.2f} s of {len(times)} (min {min(times):.2f}, max {max(times):.2f})")
    print()
    header = (f"{'network':18s} {'GMACs':>7s} {'est. cycles':>13s} {'ms':>8s} {'util':>6s} {'conv util':>9s} "
              f"{'dw util':>7s} {'array busy':>10s}  cycles by layer kind")
    print(header)
    print("-" * len(header))
    for name in args.networks.split(","):
        r = utilization(name, args.size, args.config)
        kinds = ", ".join(f"{k} {c / r['cycles']:.0%}" for k, (c, _) in
                          sorted(r["by_kind"].items(), key=lambda kv: -kv[1][0]) if c / r["cycles"] >= 0.005)
        dw = f"{r['dw_util']:7.1%}" if r["dw_util"] is not None else f"{'-':>7s}"
        print(f"{name:18s} {r['macs'] / 1e9:7.2f} {r['cycles']:13,} {r['ms']:8.2f} {r['util']:6.1%} "
              f"{r['conv_util']:9.1%} {dw} {r['busy']:10.1%}  {kinds}")
    print()
    print("limits: ADD/MUL/pooling are DRAM-latency bound (each burst of dram_max_burst beats waits "
          "dram_latency cycles, one burst at a time); FULLY_CONNECTED at batch 1 streams every weight "
          "once (weight-bandwidth bound); in convolutions REQUANT takes one compute cycle per output "
          "entry (1/K of a 1x1 conv's time), and 7x7 layers with 2048 channels wait for their weights; "
          "DEPTHWISE_CONV_2D uses one lane per array row (diagonal weights, compiler/depthwise.py): at most "
          f"1/rows = {1 / cfg.rows:.1%}.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
