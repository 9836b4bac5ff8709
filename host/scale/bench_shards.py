"""Sharded RTL simulation against one simulator process: wall time and cycles, side by side.

    python -m softnpu.host.scale.bench_shards [--model resnet50] [--input-size 224] [--config default]
                                        [--shards 2] [--layers L] [--no-ray]

`--layers L` runs only the network's first L layers (a prefix ending at a drained boundary) when the
whole network on the RTL does not fit the time at hand; the printout says so.  The Verilator build
is made before either run is timed.
"""

from __future__ import annotations

import argparse
import time


def main(argv=None) -> int:
    from softnpu.compiler.compile import compile_model
    from softnpu.host.scale import shards
    from softnpu.host.verify import random_inputs
    from softnpu.sim.rtl import harness as rtl_harness

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--config", default="default")
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--layers", type=int, help="only the first L layers (default: the whole network)")
    ap.add_argument("--no-ray", action="store_true", help="a process pool instead of Ray")
    args = ap.parse_args(argv)

    t = time.perf_counter()
    bundle = compile_model(args.model, args.config, input_size=args.input_size, progress=False)
    print(f"compiled {args.model} {args.input_size}x{args.input_size} for {args.config}: "
          f"{len(bundle.manifest.layers)} layers, {time.perf_counter() - t:.1f} s")
    inputs = random_inputs(bundle.manifest, 1, 0)[0]
    t = time.perf_counter()
    plan = shards.prepare_shards(bundle, inputs, args.shards, args.layers)
    prep_s = time.perf_counter() - t
    n = len(bundle.manifest.layers)
    what = f"the first {args.layers} of {n} layers" if args.layers else "the whole network"
    print(f"{what}: {plan.iss_cycles:,} ISS cycles; ISS preparation of {args.shards} shards (each shard's "
          f"memory image): {prep_s:.1f} s")
    rtl_harness.build(bundle.manifest.npu_config)
    mono, mono_act, mono_s = shards.run_monolithic(bundle, plan)
    mono_cycles = mono["cycles"]
    print(f"1 process : {mono_s:8.1f} s  {mono_cycles:,} cycles")
    run = shards.run_sharded(bundle, inputs, args.shards, use_ray=not args.no_ray, plan=plan,
                             log=lambda m: None)
    ratio = run.rtl_wall_s / mono_s
    print(f"{args.shards} shards  : {run.rtl_wall_s:8.1f} s  {run.cycles:,} cycles ({ratio:.2f}x the wall "
          f"time; slowest shard {max(run.shard_wall_s):.1f} s of simulation; with the ISS preparation "
          f"{run.rtl_wall_s + prep_s:.1f} s)")
    diff = run.cycles - mono_cycles
    print(f"cycles: sharded - monolithic = {diff:+,} ({diff / mono_cycles:+.4%}); the ISS models the same "
          f"split as {run.iss_boundary_cycles:+,}: each boundary adds the shard's cold start (its first "
          "instructions fetched into empty queues) and its FINISH")
    same = mono_act == run.activations
    print(f"activations after the last shard equal the monolithic run's: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
