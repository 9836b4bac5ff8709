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

from softnpu.compiler import emit, zoo
from softnpu.compiler.compile import compile_tflite, zoo_tflite
from softnpu.compiler.cycles import estimate
from softnpu.hdl import isa
from softnpu.hdl.config import preset

NETWORKS = ("resnet50", "resnet152", "vgg16", "densenet121", "efficientnet_lite0", "ssd_vgg16")
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
    """The cycle model's figures of the NPU part of `name` (compile_tflite: a detector's host tail
    excluded, its MACs reported apart)."""
    cfg = preset(config)
    data = zoo_tflite(name, size)
    bundle = compile_tflite(data, cfg, name=name)
    layers = bundle.manifest.layers
    est = estimate(cfg, isa.decode_program(bundle.program))
    peak = cfg.macs_per_cycle
    macs = sum(rec["macs"] for rec in layers)
    by_kind: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for rec in layers:
        by_kind[rec["kind"]][0] += rec["cycles"]
        by_kind[rec["kind"]][1] += rec["macs"]
    conv_cycles = sum(by_kind[k][0] for k in MAC_KINDS if k in by_kind and k != "FULLY_CONNECTED")
    conv_macs = by_kind["CONV_2D"][1]
    dw_cycles, dw_macs = by_kind.get("DEPTHWISE_CONV_2D", (0, 0))
    return dict(name=name, macs=macs, cycles=est.cycles, ms=cfg.cycles_to_seconds(est.cycles) * 1e3,
                util=macs / (est.cycles * peak), busy=est.mac_active / est.cycles,
                conv_util=conv_macs / max(conv_cycles * peak, 1), by_kind=dict(by_kind),
                dw_util=dw_macs / (dw_cycles * peak) if dw_cycles else None,
                instructions=len(bundle.program) // isa.INSN_BYTES, size=size,
                host_ops=sum(len(s.get("ops", [])) for s in bundle.manifest.postprocess
                             if s.get("op") == "host_graph"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int,
                        help="input side (default: each network's own, 224; ssd_vgg16 300)")
    parser.add_argument("--config", default="default", help="NPU config preset (default 'default')")
    parser.add_argument("--networks", default=",".join(NETWORKS), help="comma-separated zoo networks")
    parser.add_argument("--repeat", type=int, default=3, help="compile-time runs (median)")
    args = parser.parse_args(argv)
    cfg = preset(args.config)
    print(f"NPU config {cfg.name!r}: {cfg.rows}x{cfg.cols} MACs at {cfg.clock_mhz:g} MHz, "
          f"{cfg.dram_bus_bytes}-byte bus, bursts of {cfg.dram_max_burst} beats after {cfg.dram_latency} "
          f"cycles of latency, {cfg.dram_outstanding} in flight per direction")
    r50_size = args.size or zoo.default_input_size("resnet50")
    times = compile_time("resnet50", r50_size, args.config, args.repeat)
    print(f"compile time resnet50@{r50_size} (import + lowering + encoding, conversion excluded): median "
          f"{statistics.median(times):.2f} s of {len(times)} (min {min(times):.2f}, max {max(times):.2f})")
    print()
    header = (f"{'network':18s} {'size':>4s} {'GMACs':>7s} {'est. cycles':>13s} {'ms':>8s} {'util':>6s} "
              f"{'conv util':>9s} "
              f"{'dw util':>7s} {'array busy':>10s}  cycles by layer kind")
    print(header)
    print("-" * len(header))
    for name in args.networks.split(","):
        r = utilization(name, args.size or zoo.default_input_size(name), args.config)
        kinds = ", ".join(f"{k} {c / r['cycles']:.0%}" for k, (c, _) in
                          sorted(r["by_kind"].items(), key=lambda kv: -kv[1][0]) if c / r["cycles"] >= 0.005)
        dw = f"{r['dw_util']:7.1%}" if r["dw_util"] is not None else f"{'-':>7s}"
        if r["host_ops"]:
            kinds += f"; NPU part only: {r['host_ops']} ops run on the host after it"
        print(f"{name:18s} {r['size']:4d} {r['macs'] / 1e9:7.2f} {r['cycles']:13,} {r['ms']:8.2f} "
              f"{r['util']:6.1%} "
              f"{r['conv_util']:9.1%} {dw} {r['busy']:10.1%}  {kinds}")
    print()
    print("limits: ADD/MUL/pooling are DRAM-bandwidth bound (dram_outstanding bursts of dram_max_burst "
          "beats in flight hide dram_latency when they cover it; fewer pay it once per dram_outstanding "
          "bursts); FULLY_CONNECTED at batch 1 streams every weight once (weight-bandwidth bound); in "
          "convolutions REQUANT takes one compute cycle per output "
          "entry (1/K of a 1x1 conv's time), and 7x7 layers with 2048 channels wait for their weights; "
          "DEPTHWISE_CONV_2D uses one lane per array row (diagonal weights, compiler/depthwise.py): at most "
          f"1/rows = {1 / cfg.rows:.1%}.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
