"""The main job (`nox -s demo`): the Brainwave workflow on the open NPU.

Compiles ResNet-50 and the pretrained EfficientNet-Lite0 to NPU bundles (cached), serves both over
TensorFlow Serving's gRPC API on the RTL-simulated NPU, classifies the photos that scikit-image and
scikit-learn ship with EfficientNet-Lite0 (real answers, ImageNet class names), scores a photo with
ResNet-50 and prints the hardware's cycles, MAC utilization and latency at the configured clock,
writes a per-layer report, records a waveform window, and stops the server.  ResNet-50's zoo
weights are random unless --weights is given (this machine cannot download ImageNet weights), so
its classes are not meaningful; its hardware figures are.

    python -m softnpu.host.cli.demo [--backend rtl|iss] [--config default] [--model resnet50] [--image PATH]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

OUT = Path("out") / "demo"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")      # TensorFlow's start-up chatter


def _say(text: str) -> None:
    print(text, flush=True)


def _cache_key(model: str, config: str, size: int, weights: str | None) -> str:
    root = Path(__file__).resolve().parent.parent.parent
    digest = hashlib.sha256(f"{model}|{config}|{size}|{weights}".encode())
    for path in sorted((root / "compiler").glob("*.py")) + sorted((root / "hdl").glob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def bundle_path(model: str, config: str, size: int, weights: str | None) -> Path:
    """Compile once per (model, config, compiler and ISA sources); later runs reuse the file."""
    from softnpu.cache import cache_dir
    from softnpu.compiler.compile import compile_model

    cache = cache_dir("bundles")
    path = cache / f"{model}-{size}-{config}-{_cache_key(model, config, size, weights)}.npu"
    if path.exists():
        _say(f"[1/6] bundle: {path} (cached)")
        return path
    _say(f"[1/6] compiling {model} at {size}x{size} for the {config!r} NPU (once; cached afterwards)")
    start = time.perf_counter()
    bundle = compile_model(model, config, input_size=size, weights=weights, progress=True)
    bundle.save(path)
    _say(f"      {bundle.manifest.program_instructions} instructions, {len(bundle.weights) / 2**20:.1f} MiB "
         f"of weights, {time.perf_counter() - start:.0f} s -> {path}")
    return path


def photo(path: str | None) -> Path:
    """The image to score: a file, or scikit-image's photo of Chelsea the cat."""
    if path:
        return Path(path)
    from PIL import Image
    from skimage import data

    OUT.mkdir(parents=True, exist_ok=True)
    target = OUT / "chelsea.jpg"
    Image.fromarray(data.chelsea()).save(target, quality=92)
    return target


def classify_photos(address: str, model: str, backend: str) -> list[tuple[str, str, float]]:
    """Score the photos that scikit-image and scikit-learn ship with a pretrained classifier served
    at `address`; print and return (photo, top-1 class name, probability)."""
    from PIL import Image

    from softnpu.compiler.efficientnet import PHOTOS, _photo_sources
    from softnpu.host.serving.client import PredictionClient

    folder = OUT / "photos"
    folder.mkdir(parents=True, exist_ok=True)
    _say(f"[4/6] {model} (pretrained on ImageNet) classifies the bundled photos on the {backend} NPU")
    rows = []
    with PredictionClient(address, timeout=4 * 3600.0, model=model) as client:
        for name, load in _photo_sources().items():
            if name not in PHOTOS:
                continue
            path = folder / f"{name}.png"
            Image.fromarray(load()).save(path)
            start = time.perf_counter()
            out = client.score_file(path, outputs=["labels", "scores", "npu_cycles", "npu_mac_utilization"])
            labels = [x.decode() if isinstance(x, bytes) else str(x) for x in out["labels"][0][:3]]
            scores = [float(s) for s in out["scores"][0][:3]]
            rows.append((name, labels[0], scores[0]))
            runners = ", ".join(f"{label} {score:.0%}" for label, score in zip(labels[1:], scores[1:],
                                                                                   strict=True))
            _say(f"      {name:<11s} {labels[0]:<22s} {scores[0]:6.1%}   (then {runners}; "
                 f"{int(out['npu_cycles'][0]):,} cycles, MAC utilization "
                 f"{float(out['npu_mac_utilization'][0]):.1%}, {time.perf_counter() - start:.0f} s)")
    return rows


def write_report(manifest, out: dict, path_md: Path, path_json: Path) -> None:
    layers = manifest.layers
    measured = [int(c) for c in np.asarray(out["npu_layer_cycles"])[0]] if "npu_layer_cycles" in out else []
    macs_per_cycle = manifest.npu_config.macs_per_cycle
    rows = []
    for i, layer in enumerate(layers):
        cycles = measured[i] if i < len(measured) else None
        macs = int(layer.get("macs", 0))
        rows.append({"id": layer.get("id", i), "name": layer.get("name", ""), "kind": layer.get("kind", ""),
                     "macs": macs, "estimated_cycles": layer.get("cycles"),   # the cycle model's
                     "cycles": cycles,
                     "mac_utilization": (macs / (cycles * macs_per_cycle)) if cycles else None})
    path_json.write_text(json.dumps({"model": manifest.model, "config": manifest.config,
                                     "total_cycles": int(out["npu_cycles"][0]), "layers": rows}, indent=1))
    lines = [f"# {manifest.model} on the {manifest.npu_config.name} NPU "
             f"({manifest.npu_config.rows}x{manifest.npu_config.cols} MACs, "
             f"{manifest.npu_config.clock_mhz:g} MHz)", "",
             f"total: {int(out['npu_cycles'][0]):,} cycles, {float(out['npu_latency_ms'][0]):.2f} ms, "
             f"MAC utilization {float(out['npu_mac_utilization'][0]):.1%}", "",
             "| id | layer | kind | MMACs | est. cycles | cycles | MAC util. |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        util = f"{r['mac_utilization']:.1%}" if r["mac_utilization"] is not None else ""
        est = f"{r['estimated_cycles']:,}" if r["estimated_cycles"] is not None else ""
        cyc = f"{r['cycles']:,}" if r["cycles"] is not None else ""
        lines.append(f"| {r['id']} | {r['name']} | {r['kind']} | {r['macs'] / 1e6:.1f} | {est} | {cyc} "
                     f"| {util} |")
    path_md.write_text("\n".join(lines) + "\n")


def waveform_window(bundle, image: Path, start: int, length: int):
    """The first layer of the bundle's program on a waves build of the RTL, with an FST (or VCD)
    window of `length` cycles from cycle `start` and a GTKWave save file grouped by unit."""
    from softnpu.compiler.layout import to_blocked
    from softnpu.hdl import isa
    from softnpu.host.pipeline import Preprocessor
    from softnpu.host.runtime import tensor_hwc
    from softnpu.sim.rtl.jobs import Job
    from softnpu.sim.rtl.waves import Window, record

    manifest = bundle.manifest
    config = manifest.npu_config
    program = isa.decode_program(bundle.program)
    markers = [i for i, insn in enumerate(program) if isinstance(insn, isa.Marker)]
    first_layer = program[:markers[1]] if len(markers) > 1 else program[:-1]
    first_layer.append(isa.Finish())
    spec = manifest.inputs[0]
    x = Preprocessor.for_manifest(manifest)(image.read_bytes())
    mm = manifest.memory_map
    image_chunks = [(mm["weights"], bundle.weights), (mm["program"], isa.encode_program(first_layer)),
                    (spec.dram, to_blocked(x.reshape(tensor_hwc(spec)), config.cols).tobytes())]
    job = Job("first layer", image_chunks, mm["program"], len(first_layer), [], max_cycles=50_000_000)
    return record(config, [job], OUT / "first_layer.fst", Window.cycles(start, length))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50", help="the network whose hardware figures are reported")
    parser.add_argument("--classifier", default="efficientnet_lite0",
                        help="a pretrained network that classifies the bundled photos ('' to skip)")
    parser.add_argument("--config", default="default")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--weights", default=None, help="zoo weights: 'imagenet' or a file (default random)")
    parser.add_argument("--backend", default="rtl", choices=["rtl", "iss"])
    parser.add_argument("--image", default=None, help="image file to score (default: scikit-image's cat)")
    parser.add_argument("--window", type=int, nargs=2, default=(20_000, 2_000), metavar=("START", "CYCLES"),
                        help="waveform window in the first layer (rtl backend; default 20000 2000)")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()

    from softnpu.compiler.bundle import Bundle
    from softnpu.hdl.config import preset
    from softnpu.host.serving.client import PredictionClient
    from softnpu.host.serving.repository import ModelRepository
    from softnpu.host.serving.service import Server

    path = bundle_path(args.model, args.config, args.input_size, args.weights)
    manifest = Bundle.load(path).manifest
    classifier = bundle_path(args.classifier, args.config, 224, None) if args.classifier else None
    if args.backend == "rtl":
        from softnpu.sim.rtl import harness as rtl_harness
        _say(f"[2/6] RTL simulator of the {args.config!r} NPU (Verilator; built once, then cached)")
        start = time.perf_counter()
        build_dir = rtl_harness.build(preset(args.config))
        _say(f"      {build_dir} ({time.perf_counter() - start:.0f} s)")
    else:
        _say("[2/6] backend iss: the instruction-set simulator (no RTL)")

    OUT.mkdir(parents=True, exist_ok=True)
    repo = ModelRepository(OUT / "models")
    if args.model in repo.models():
        repo.remove(args.model)          # the demo's repository holds only this run's bundle
    repo.register(path, name=args.model)
    if classifier is not None:
        if args.classifier in repo.models():
            repo.remove(args.classifier)
        repo.register(classifier, name=args.classifier)
    server = Server(repo.root, port=0, backend=args.backend, workers=1, run_timeout_s=4 * 3600.0,
                    request_timeout_s=4 * 3600.0, max_message_mb=64)
    server.start()
    served = args.model + (f" and {args.classifier}" if classifier is not None else "")
    _say(f"[3/6] serving {served} over gRPC (TensorFlow Serving Predict API) on {server.address}, "
         f"backend {args.backend}")
    try:
        if classifier is not None:
            classify_photos(server.address, args.classifier, args.backend)
        image = photo(args.image)
        client = PredictionClient(server.address, timeout=4 * 3600.0, model=args.model)
        _say(f"[5/6] scoring {image} (the {args.backend} NPU simulates every cycle; minutes on rtl)")
        start = time.perf_counter()
        out = client.score_file(image, outputs=["classes", "scores", "labels", "npu_cycles", "npu_latency_ms",
                                                "npu_mac_utilization", "npu_layer_cycles"])
        wall = time.perf_counter() - start
    finally:
        server.stop()
    _say(f"      done in {wall:.1f} s; server stopped")
    _say("")
    _say(f"top-5 for {image.name}" + ("" if args.weights else "  (random weights: the classes mean nothing)"))
    for label, score, cls in zip(out["labels"][0], out["scores"][0], out["classes"][0], strict=True):
        label = label.decode() if isinstance(label, bytes) else str(label)
        _say(f"  {score:7.2%}  {label} (class {int(cls)})")
    cycles = int(out["npu_cycles"][0])
    cfg = manifest.npu_config
    _say("")
    _say(f"NPU ({cfg.name}: {cfg.rows}x{cfg.cols} int8 MACs at {cfg.clock_mhz:g} MHz, {args.backend}):")
    _say(f"  cycles           {cycles:,}")
    _say(f"  MAC utilization  {float(out['npu_mac_utilization'][0]):.1%}")
    _say(f"  latency          {float(out['npu_latency_ms'][0]):.2f} ms at {cfg.clock_mhz:g} MHz "
         f"({cycles / wall / 1e3:.0f} k simulated cycles/s on this host)")
    report_md, report_json = OUT / "report.md", OUT / "report.json"
    write_report(manifest, out, report_md, report_json)
    _say(f"[6/6] per-layer report: {report_md} and {report_json}")
    if args.backend == "rtl":
        start = time.perf_counter()
        _say(f"      waveform: cycles {args.window[0]}..{sum(args.window)} of the first layer "
             "(a waves build of the RTL, once)")
        rec = waveform_window(Bundle.load(path), image, *args.window)
        _say(f"      {rec.waves} and {rec.gtkw} ({time.perf_counter() - start:.0f} s); "
             f"view: gtkwave {rec.gtkw}")
    _say(f"demo wall time {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
