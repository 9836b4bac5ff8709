"""`softnpu run` and `softnpu profile`: one inference of a bundle on a device, with its hardware
figures, per-layer profile, report (JSON, CSV, Markdown, plots), Perfetto timeline and waveforms.

    softnpu run BUNDLE [--backend iss|rtl] [--image PATH | --random] [--report DIR] [--trace T.json]
                       [--waves W.fst --window layer:N|cycles:A:B] [--shards N [--ray-address A | --no-ray]]
    softnpu profile BUNDLE [--backend iss|rtl] [--format table|json|csv] [--wide]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from softnpu.host.cli.commands import UsageError, input_file, output_file, positive_int

__all__ = ["add_commands", "parse_window"]


def parse_window(text: str):
    """`layer:N` (the layer of MARKER N) or `cycles:A:B` (cycles [A, B)) as a sim.waves.Window."""
    from softnpu.sim.rtl.waves import Window

    parts = text.split(":")
    try:
        if parts[0] == "layer" and len(parts) == 2:
            return Window.layer(int(parts[1]))
        if parts[0] == "cycles" and len(parts) == 3:
            start, end = int(parts[1]), int(parts[2])
            if end <= start:
                raise ValueError(f"end {end} must be after start {start}")
            return Window.cycles(start, end - start)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"--window {text}: {exc}") from None
    raise UsageError(f"--window {text}: expected layer:N or cycles:START:END")


def _inputs(bundle, args) -> dict[str, np.ndarray]:
    manifest = bundle.manifest
    if args.image:
        from softnpu.host.pipeline import InputError, Preprocessor

        if len(manifest.inputs) != 1:
            raise UsageError(f"--image: model {manifest.model!r} has {len(manifest.inputs)} inputs; "
                             "use --random")
        path = input_file(args.image, "--image")
        try:
            x = Preprocessor.for_manifest(manifest)(path.read_bytes())
        except (InputError, ValueError) as exc:
            raise UsageError(f"--image {path}: {exc}") from None
        return {manifest.inputs[0].name: x}
    from softnpu.host.verify import random_inputs

    return random_inputs(manifest, 1, args.seed)[0]


def _run(args):
    """Load, run once (traced); returns (bundle, result stats, outputs, layers)."""
    from softnpu.compiler.bundle import Bundle, BundleError
    from softnpu.host.devices.device import DeviceError, DeviceLost, DeviceTimeout

    try:
        bundle = Bundle.load(input_file(args.bundle, "bundle"))
    except BundleError as exc:
        raise SystemExit(f"softnpu {args.command}: {exc}") from None
    inputs = _inputs(bundle, args)
    quiet = getattr(args, "quiet", False)
    waves = getattr(args, "waves", None)
    if getattr(args, "shards", None):
        from softnpu.host.cli.scale import run_shards

        outputs, stats = run_shards(bundle, inputs, args)
        return bundle, outputs, stats
    try:
        if waves:
            if args.backend != "rtl":
                raise UsageError("--waves needs --backend rtl (the ISS has no signals)")
            from softnpu.host.bench.waves_run import record_inference

            window = parse_window(args.window) if args.window else None
            outputs, stats, recording = record_inference(bundle, inputs, waves, window, progress=not quiet)
            if not quiet:
                where = recording.waves or "nothing (the window never opened)"
                gtkw = f", GTKWave save file {recording.gtkw}" if recording.gtkw else ""
                print(f"waveform: {where}{gtkw}")
        else:
            from softnpu.host.runtime import Runtime
            from softnpu.progress import activity

            estimate = sum(int(layer.get("cycles", 0)) for layer in bundle.manifest.layers)
            with activity(f"starting the {args.backend} device"):
                runtime = Runtime.open(bundle, args.backend)
            try:
                with activity(f"{bundle.manifest.model} on {args.backend}: about {estimate:,} cycles"):
                    result = runtime.infer(inputs, trace=True)
            finally:
                runtime.close()
            outputs, stats = result.outputs, result.stats
    except (DeviceError, DeviceTimeout, DeviceLost) as exc:
        raise SystemExit(f"softnpu {args.command}: {args.bundle} on {args.backend}: {exc}") from None
    return bundle, outputs, stats


def _print_outputs(bundle, outputs, top: int) -> None:
    from softnpu.host.pipeline import class_names, classify

    manifest = bundle.manifest
    for spec in manifest.outputs:
        q = outputs[spec.name]
        if len(spec.shape) == 2 and spec.shape[0] == 1 and spec.shape[1] > 1:
            names = class_names(manifest, spec.shape[1])
            cls = classify(q, spec, names, top, manifest.postprocess)
            print(f"{spec.name} {spec.shape}: top {len(cls.labels[0])}")
            for rank, (label, score) in enumerate(zip(cls.labels[0], cls.scores[0], strict=True), 1):
                print(f"  {rank:2d}. {label:<32s} {float(score):.4f}")
        else:
            flat = np.asarray(q).reshape(-1)
            head = " ".join(str(int(v)) for v in flat[:16])
            print(f"{spec.name} {spec.shape} int8 (scale {spec.scale:g}, zero point {spec.zero_point}): "
                  f"{head}{' ...' if flat.size > 16 else ''}")


def write_report(profile, bundle, out_dir: Path) -> list[Path]:
    """profile.json, profile.csv, report.md and the plots (PNG and SVG) into `out_dir`."""
    from softnpu.host.bench.plots import write_plots

    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "profile.json", out_dir / "profile.csv", out_dir / "report.md"]
    written[0].write_text(profile.to_json())
    written[1].write_text(profile.to_csv())
    plots = write_plots(profile, out_dir)
    figures = "\n".join(f"![{p.stem}]({p.name})" for p in plots if p.suffix == ".png")
    written[2].write_text(f"# {profile.model} on {profile.backend}\n\n"
                          f"```\n{profile.table(wide=True)}\n```\n\n{figures}\n")
    return written + plots


def cmd_run(args) -> int:
    from softnpu.host.bench.profile import profile_run

    for option in ("trace", "waves"):
        if getattr(args, option):
            output_file(getattr(args, option), f"--{option}")
    if args.window and not args.waves:
        raise UsageError("--window needs --waves FILE")
    bundle, outputs, stats = _run(args)
    _print_outputs(bundle, outputs, args.top)
    profile = profile_run(bundle.manifest, args.backend, stats)
    config = bundle.manifest.npu_config
    print(f"NPU ({config.name}, {config.rows}x{config.cols} MACs, {config.clock_mhz:g} MHz, {args.backend}): "
          f"{profile.cycles:,} cycles = {profile.latency_ms:.3f} ms; MAC utilization "
          f"{profile.mac_utilization:.1%}, MAC-active {profile.mac_active:.1%}; "
          f"DRAM {stats.dram_read_bytes:,} B read, {stats.dram_write_bytes:,} B written")
    if args.report:
        files = write_report(profile, bundle, Path(args.report))
        print(f"report: {len(files)} files in {args.report}/ (report.md, profile.json/.csv, plots)")
    if args.trace:
        from softnpu.host.bench.timeline import write_timeline

        path = write_timeline(args.trace, bundle, stats.layers, args.backend)
        print(f"timeline: {path} (open it in Perfetto's UI)")
    return 0


def cmd_profile(args) -> int:
    from softnpu.host.bench.profile import profile_run

    args.quiet = True
    bundle, _, stats = _run(args)
    profile = profile_run(bundle.manifest, args.backend, stats)
    text = {"table": lambda: profile.table(wide=args.wide), "json": profile.to_json,
            "csv": profile.to_csv}[args.format]()
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


def _common(p) -> None:
    p.add_argument("bundle", help="*.npu bundle written by `softnpu compile`")
    p.add_argument("--backend", choices=["iss", "rtl"], default="iss", help="device backend (default iss)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--image", help="image file, preprocessed as the bundle says")
    source.add_argument("--random", action="store_true", help="random int8 input (the default)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random input (default 0)")


def add_commands(sub) -> None:
    p = sub.add_parser("run", help="run one inference and report the hardware's figures",
                       description="Run a bundle once on a device: the outputs (top-k for a classifier), "
                                   "cycles, MAC utilization and latency at the configured clock; "
                                   "optionally a report folder, a Perfetto timeline and a waveform.")
    _common(p)
    p.add_argument("--top", type=positive_int, default=5, help="classes to print (default 5)")
    p.add_argument("--report", metavar="DIR", help="write report.md, profile.json/.csv and plots here")
    p.add_argument("--trace", metavar="OUT.json", help="write a timeline (Chrome trace JSON for Perfetto)")
    p.add_argument("--waves", metavar="OUT.fst", help="record a waveform (needs --backend rtl)")
    p.add_argument("--window", help="what the waveform records: layer:N or cycles:START:END "
                                    "(default: the whole run)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress messages")
    p.add_argument("--shards", type=positive_int, metavar="N",
                   help="split the network at drained layer boundaries into N RTL simulations run in "
                        "parallel, each checked bit for bit against the ISS (needs --backend rtl)")
    p.add_argument("--ray-address", metavar="HOST:PORT", help="run the shards on this Ray cluster "
                                                              "(default: Ray embedded in this process)")
    p.add_argument("--no-ray", action="store_true", help="run the shards in a process pool, without Ray")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("profile", help="per-layer cycles, MACs and DRAM traffic of one inference",
                       description="Per layer: estimated vs measured cycles, useful MACs, MAC utilization "
                                   "(useful MACs / peak) and MAC-active (cycles with the array active), "
                                   "DRAM bytes, arithmetic intensity.")
    _common(p)
    p.add_argument("--format", choices=["table", "json", "csv"], default="table", help="(default table)")
    p.add_argument("--wide", action="store_true", help="every column (wider than 80 characters)")
    p.set_defaults(func=cmd_profile)

