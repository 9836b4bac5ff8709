"""Depthwise convolutions on the NPU, measured: EfficientNet-Lite0 (pretrained) on a device, the MAC
utilization of each of its depthwise layers, and the whole network's cycles and utilization next to
ResNet-50's, both measured on the same backend (`nox -s bench_depthwise`, default `rtl`).

    python -m softnpu.host.bench.depthwise [--backend rtl|iss] [--config default]
"""

from __future__ import annotations

import argparse
import statistics
import sys


def _profile(model: str, config: str, backend: str):
    from softnpu.compiler.bundle import Bundle
    from softnpu.host.bench.profile import profile_run
    from softnpu.host.cli.demo import bundle_path
    from softnpu.host.runtime import Runtime
    from softnpu.host.verify import random_inputs

    bundle = Bundle.load(bundle_path(model, config, 224, None))
    runtime = Runtime.open(bundle, backend)
    try:
        result = runtime.infer(random_inputs(bundle.manifest, 1, 0)[0], trace=True)
    finally:
        runtime.close()
    return profile_run(bundle.manifest, backend, result.stats)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["rtl", "iss"], default="rtl")
    parser.add_argument("--config", default="default")
    args = parser.parse_args(argv)
    eff = _profile("efficientnet_lite0", args.config, args.backend)
    depthwise = [layer for layer in eff.layers if layer.kind == "DEPTHWISE_CONV_2D"]
    peak = eff.peak_macs_per_cycle
    print(f"\nEfficientNet-Lite0's depthwise layers on {args.backend} ({args.config}, "
          f"{eff.config['rows']}x{eff.config['cols']}): MAC utilization (useful MACs / peak); the "
          f"diagonal mapping's ceiling is 1/rows = {1 / eff.config['rows']:.2%}")
    print(f"{'id':>4} {'layer':<28} {'MMACs':>7} {'cycles':>10} {'est.':>10} {'MAC util':>9} "
          f"{'MAC-active':>10}")
    for layer in depthwise:
        print(f"{layer.id:>4} {layer.name[:28]:<28} {layer.macs / 1e6:>7.2f} {layer.cycles:>10,} "
              f"{layer.estimated_cycles or 0:>10,} {layer.mac_utilization:>9.2%} {layer.mac_active:>10.1%}")
    dw_cycles = sum(layer.cycles for layer in depthwise)
    dw_macs = sum(layer.macs for layer in depthwise)
    print(f"depthwise total: {dw_macs / 1e6:.1f} MMACs in {dw_cycles:,} cycles "
          f"({dw_cycles / eff.cycles:.0%} of the network's), MAC utilization "
          f"{dw_macs / (dw_cycles * peak):.2%}, median per layer "
          f"{statistics.median(layer.mac_utilization for layer in depthwise):.2%}")
    r50 = _profile("resnet50", args.config, args.backend)
    print(f"\nwhole networks on {args.backend} ({args.config}):")
    print(f"{'network':<20} {'GMACs':>7} {'cycles':>12} {'ms':>8} {'MAC util':>9} {'MAC-active':>10}")
    for p in (eff, r50):
        print(f"{p.model:<20} {p.macs / 1e9:>7.2f} {p.cycles:>12,} {p.latency_ms:>8.2f} "
              f"{p.mac_utilization:>9.1%} {p.mac_active:>10.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
