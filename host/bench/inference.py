"""Wall time of one inference: compiled zoo networks on the ISS (the host runtime's `iss` device)
next to the TFLite interpreter with its default kernels (XNNPACK, one thread), measured side by
side in one run on the same random int8 images (ISS and interpreter alternate image by image, so
both see the same machine load); medians.  Also the ISS's first run (weights placed, program
decoded, scheduled and prepared) and the peak resident memory of one ISS device serving the model
(the device alone, in a child process).

    nox -s bench_models                       (the four ImageNet networks at 224x224)
    nox -s bench_compiler                     (ResNet-50 only, after compiler.bench)
    python -m softnpu.host.bench.inference --network resnet50 --network vgg16 --size 224 --images 5

The ISS computes on one thread: its numba kernels are serial, onnxruntime's int8 GEMM runs with one
intra-op thread, and BLAS (the reference ops' float32 product) is held to one thread; set
OPENBLAS_NUM_THREADS=1 as well (what the nox sessions do) so that nothing else spawns threads.  So
the figures compare one ISS thread with one interpreter thread.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from softnpu.compiler.compile import compile_tflite, zoo_tflite
from softnpu.host.runtime import Runtime

NETWORKS = ("resnet50", "resnet152", "vgg16", "densenet121")


def _peak_rss_bytes(pid: int) -> int:
    """VmHWM of a process: the most memory it has held resident."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")


def device_peak_rss(bundle, images: int = 2) -> int:
    """Peak resident bytes of one ISS device serving `bundle`: the device alone in a child process
    (the `iss-process` backend), after placing the weights and running `images` images."""
    runtime = Runtime.open(bundle, "iss-process")
    spec = bundle.manifest.inputs[0]
    rng = np.random.default_rng(1)
    try:
        for _ in range(images):
            runtime.infer({spec.name: rng.integers(-128, 128, spec.shape, dtype=np.int8)}, timeout_s=600)
        return _peak_rss_bytes(runtime.device.proc.pid)
    finally:
        runtime.close()


def bench(network: str, size: int, config: str, images: int, memory: bool = True) -> dict:
    """Median seconds per image on the ISS and on the interpreter, for one network."""
    from ai_edge_litert.interpreter import Interpreter

    data = zoo_tflite(network, size)
    bundle = compile_tflite(data, config, name=network)
    spec = bundle.manifest.inputs[0]
    interp = Interpreter(model_content=data, num_threads=1)        # default kernels: XNNPACK
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    rng = np.random.default_rng(0)
    runtime = Runtime.open(bundle, "iss")
    start = time.perf_counter()
    result = runtime.infer({spec.name: rng.integers(-128, 128, spec.shape, dtype=np.int8)})
    first_s = time.perf_counter() - start              # places weights, decodes, plans, runs
    iss_s, tfl_s, iss_cpu, tfl_cpu = [], [], [], []
    for _ in range(images):
        x = rng.integers(-128, 128, spec.shape, dtype=np.int8)
        start, cpu = time.perf_counter(), time.thread_time()
        result = runtime.infer({spec.name: x})
        iss_s.append(time.perf_counter() - start)
        iss_cpu.append(time.thread_time() - cpu)
        start, cpu = time.perf_counter(), time.thread_time()
        interp.set_tensor(inp["index"], x.reshape(inp["shape"]))
        interp.invoke()
        tfl_s.append(time.perf_counter() - start)
        tfl_cpu.append(time.thread_time() - cpu)
    runtime.close()
    rss = device_peak_rss(bundle) if memory else 0
    cfg = bundle.manifest.npu_config
    return dict(network=network, size=size, config=cfg, iss=statistics.median(iss_s),
                tfl=statistics.median(tfl_s), iss_cpu=statistics.median(iss_cpu),
                tfl_cpu=statistics.median(tfl_cpu), first=first_s, rss=rss, stats=result.stats,
                instructions=bundle.manifest.program_instructions)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", action="append", choices=NETWORKS + ("digits",),
                        help=f"zoo network, repeatable (default resnet50); --all for {', '.join(NETWORKS)}")
    parser.add_argument("--all", action="store_true", help="the four ImageNet networks")
    parser.add_argument("--size", type=int, default=224, help="input side (default 224)")
    parser.add_argument("--config", default="default", help="NPU config preset (default 'default')")
    parser.add_argument("--images", type=int, default=3, help="timed images (median; one warm-up more)")
    parser.add_argument("--no-memory", action="store_true",
                        help="skip the peak-memory run of the device in a child process")
    args = parser.parse_args(argv)
    networks = NETWORKS if args.all else tuple(args.network or ("resnet50",))
    from softnpu.sim.iss_kernels import int8_gemm

    blas = os.environ.get("OPENBLAS_NUM_THREADS", "all cores")
    gemm = "int8 (onnxruntime MLAS)" if int8_gemm() else "float32 BLAS (no exact int8 GEMM here)"
    print(f"ISS (1 thread, {gemm} GEMM) vs TFLite interpreter (XNNPACK, 1 thread), {args.size}x{args.size}, "
          f"config {args.config!r}, median of {args.images} images, OpenBLAS threads: {blas}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print("wall: seconds per image; cpu: CPU seconds of the thread that ran it (both run in this "
          "thread), less sensitive to a loaded host")
    print(f"{'network':12s} {'ISS s/img':>10s} {'interp s/img':>13s} {'ratio':>7s} {'cpu ratio':>10s} "
          f"{'ISS 1st run':>12s} "
          f"{'ISS peak RSS':>12s} {'G MAC/s':>8s} {'NPU ms':>8s} {'insns':>7s}")
    for network in networks:
        r = bench(network, args.size, args.config, args.images, memory=not args.no_memory)
        cfg, stats = r["config"], r["stats"]
        gmacs = stats.counters["mac_active"] * cfg.macs_per_cycle / r["iss"] / 1e9
        print(f"{network:12s} {r['iss']:10.3f} {r['tfl']:13.4f} {r['iss'] / r['tfl']:6.1f}x "
              f"{r['iss_cpu'] / r['tfl_cpu']:9.1f}x "
              f"{r['first']:11.2f}s {r['rss'] / 2**30:10.2f}Gi {gmacs:8.1f} "
              f"{cfg.cycles_to_seconds(stats.cycles) * 1e3:8.2f} {r['instructions']:7d}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
