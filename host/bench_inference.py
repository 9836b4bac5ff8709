"""Wall time of one inference: a compiled zoo network on the ISS (the host runtime's `iss` device)
next to the TFLite interpreter with its default kernels (XNNPACK, one thread), measured side by
side in one run on the same random int8 images; medians.

    nox -s bench_compiler            (after compiler.bench)
    python -m host.bench_inference --network resnet50 --size 224 --images 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from softnpu.compiler.compile import compile_tflite, zoo_tflite
from softnpu.host.runtime import Runtime


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", default="resnet50", help="zoo network (default resnet50)")
    parser.add_argument("--size", type=int, default=224, help="input side (default 224)")
    parser.add_argument("--config", default="default", help="NPU config preset (default 'default')")
    parser.add_argument("--images", type=int, default=3, help="timed images (median; one warm-up more)")
    args = parser.parse_args(argv)
    from ai_edge_litert.interpreter import Interpreter

    data = zoo_tflite(args.network, args.size)
    bundle = compile_tflite(data, args.config, name=args.network)
    runtime = Runtime.open(bundle, "iss")
    spec = bundle.manifest.inputs[0]
    interp = Interpreter(model_content=data, num_threads=1)        # default kernels: XNNPACK
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    rng = np.random.default_rng(0)
    iss_s, tfl_s, cycles = [], [], 0
    for k in range(args.images + 1):
        x = rng.integers(-128, 128, spec.shape, dtype=np.int8)
        start = time.perf_counter()
        result = runtime.infer({spec.name: x})
        iss = time.perf_counter() - start
        start = time.perf_counter()
        interp.set_tensor(inp["index"], x.reshape(inp["shape"]))
        interp.invoke()
        tfl = time.perf_counter() - start
        cycles = result.stats.cycles
        if k:                                   # the first image warms both up
            iss_s.append(iss)
            tfl_s.append(tfl)
    runtime.close()
    cfg = bundle.manifest.npu_config
    iss_m, tfl_m = statistics.median(iss_s), statistics.median(tfl_s)
    print(f"{args.network}@{args.size}, config {cfg.name!r}, median of {args.images} images:")
    print(f"  ISS (host runtime, iss device)          {iss_m:8.3f} s per image "
          f"({result.stats.counters['mac_active'] * cfg.macs_per_cycle / iss_m / 1e9:.2f} G array-MAC/s "
          "simulated)")
    print(f"  TFLite interpreter (XNNPACK, 1 thread)  {tfl_m:8.3f} s per image")
    print(f"  ratio ISS / interpreter                 {iss_m / tfl_m:8.1f} x")
    print(f"  modelled NPU latency                    {cfg.cycles_to_seconds(cycles) * 1e3:8.2f} ms "
          f"({cycles:,} cycles at {cfg.clock_mhz:g} MHz)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
