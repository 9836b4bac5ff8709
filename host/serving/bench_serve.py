"""bench_serve: latency and throughput of `softnpu serve` on the ISS backend.

Starts `softnpu serve` in a process of its own on a free local port with 1 and then 2 device
workers (API keys required), sends Predict requests from as many client threads as there are
workers, and prints p50/p99 latency, throughput, the device's host time per request
(`device_ms`, the ISS running the program) and the service overhead = latency - device time
(gRPC, tensor conversion, queueing, host stages).  The row "int8 + stalls" repeats the int8 run
while an attacker on the same host keeps `--stalls` unauthenticated calls open that send their
headers and never a message (each is refused at once and opened again): the authorised calls'
p99 under that load.

    python -m host.bench_serve [--requests N] [--bundle FILE.npu] [--config tiny|default|large]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def _percentile(values, q) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


API_KEY = "bench-key"


@contextlib.contextmanager
def _stalled_calls(address: str, count: int):
    """Keep `count` unauthenticated Predict calls open that never send a message; yields a Counter
    of how they ended (status code names; 'open' for those still open at the end)."""
    import collections

    import grpc
    from tensorflow_serving.apis import predict_pb2

    ended: collections.Counter = collections.Counter()
    stop = threading.Event()
    channel = grpc.insecure_channel(address)
    call = channel.stream_unary("/tensorflow.serving.PredictionService/Predict",
                                request_serializer=predict_pb2.PredictRequest.SerializeToString,
                                response_deserializer=predict_pb2.PredictResponse.FromString)

    def never():
        stop.wait(60)
        return
        yield

    def attacker():
        futures = []
        while not stop.is_set():
            for f in futures:
                if f.done():
                    ended[f.code().name] += 1
            futures = [f for f in futures if not f.done()]
            while len(futures) < count and not stop.is_set():
                futures.append(call.future(never(), timeout=30))
            time.sleep(0.001)
        ended["open"] += len(futures)
        for f in futures:
            f.cancel()

    thread = threading.Thread(target=attacker, daemon=True)
    thread.start()
    try:
        yield ended
    finally:
        stop.set()
        thread.join(10)
        channel.close()


def _run(address: str, make_inputs, clients: int, requests: int, outputs: list[str]):
    from softnpu.host.serving.client import PredictionClient

    latencies, device = [], []
    lock = threading.Lock()
    errors = []

    def client(n):
        try:
            with PredictionClient(address, model="bench", timeout=60, api_key=API_KEY) as c:
                c.predict(make_inputs(0), outputs)                    # warm the channel
                for i in range(n):
                    t0 = time.perf_counter()
                    out = c.predict(make_inputs(i), outputs)
                    dt = time.perf_counter() - t0
                    with lock:
                        latencies.append(dt * 1e3)
                        device.append(float(out["device_ms"][0]))
        except Exception as exc:        # reported after the run
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(requests // clients,)) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    overhead = [lat - dev for lat, dev in zip(latencies, device, strict=True)]
    return dict(p50=_percentile(latencies, 50), p99=_percentile(latencies, 99), rps=len(latencies) / wall,
                device=_percentile(device, 50), over50=_percentile(overhead, 50),
                over99=_percentile(overhead, 99))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="requests per run (default 200)")
    parser.add_argument("--bundle", help="a compiled bundle (default: host/sample.py's classifier)")
    parser.add_argument("--config", default="tiny", help="NPU config of the sample model (default tiny)")
    parser.add_argument("--stalls", type=int, default=50,
                        help="unauthenticated stalled calls kept open in the 'stalls' rows (default 50)")
    args = parser.parse_args(argv)

    from softnpu.host.serving import lightproto
    lightproto.preload()            # the client side needs TF Serving's protos, not TensorFlow
    from softnpu.host.pipeline import Preprocessor
    from softnpu.host.sample import build_sample
    from softnpu.host.serving.repository import ModelRepository

    with tempfile.TemporaryDirectory() as tmp:
        if args.bundle:
            bundle_path = Path(args.bundle)
        else:
            bundle_path = build_sample(args.config).bundle.save(Path(tmp) / "sample.npu")
        repo = ModelRepository(Path(tmp) / "models")
        repo.register(bundle_path, "bench")
        manifest = repo.load("bench").manifest
        spec = manifest.inputs[0]
        rng = np.random.default_rng(0)
        tensors = [rng.integers(-128, 128, spec.shape, dtype=np.int8) for _ in range(8)]
        images = []
        if len(spec.shape) == 4:
            import io

            from PIL import Image
            Preprocessor.for_manifest(manifest)
            for _ in range(8):
                buf = io.BytesIO()
                pixels = rng.integers(0, 256, (spec.shape[1] * 2, spec.shape[2] * 2, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(buf, "JPEG")
                images.append(buf.getvalue())
        modes = {"int8 tensor": (lambda i: {spec.name: tensors[i % 8]}, ["classes", "device_ms"])}
        if images:
            modes["JPEG image"] = (lambda i: {"images": [images[i % 8]]}, ["classes", "device_ms"])
        print(f"bench_serve: model {manifest.model} (config {manifest.config.get('name')}, "
              f"{manifest.program_instructions} instructions), backend iss, {args.requests} requests per row")
        header = (f"{'input':<13} {'workers':>7} {'clients':>7} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8} "
                  f"{'device ms':>9} {'overhead p50':>12} {'p99':>7}")
        for workers in (1, 2):
            with _server_process(repo.root, workers) as address:
                if workers == 1:
                    print(f"gRPC floor (health-check round trip) p50 {_health_rtt(address):.2f} ms")
                    print(header)
                for name, (make, outputs) in modes.items():
                    r = _run(address, make, workers, args.requests, outputs)
                    _row(name, workers, r)
                make, outputs = modes["int8 tensor"]
                with _stalled_calls(address, args.stalls) as ended:
                    r = _run(address, make, workers, args.requests, outputs)
                _row("int8 + stalls", workers, r, "  (stalled calls: " +
                     ", ".join(f"{n} {code}" for code, n in ended.most_common()) + ")")
    return 0


def _row(name: str, workers: int, r: dict, note: str = "") -> None:
    print(f"{name:<13} {workers:>7} {workers:>7} {r['p50']:>8.2f} {r['p99']:>8.2f} {r['rps']:>8.1f} "
          f"{r['device']:>9.2f} {r['over50']:>12.2f} {r['over99']:>7.2f}{note}", flush=True)


def _health_rtt(address: str, count: int = 200) -> float:
    from softnpu.host.serving.client import PredictionClient

    with PredictionClient(address, timeout=30) as c:
        c.health()
        times = []
        for _ in range(count):
            t0 = time.perf_counter()
            c.health()
            times.append((time.perf_counter() - t0) * 1e3)
    return _percentile(times, 50)


@contextlib.contextmanager
def _server_process(root: Path, workers: int):
    """`softnpu serve` in its own process (its own interpreter lock, as in production), on a
    free port; yields its address and stops it (SIGTERM, then SIGKILL) afterwards."""
    cmd = [sys.executable, "-m", "softnpu", "serve", "--model-dir", str(root), "--port", "0",
           "--workers", str(workers), "--max-queue", "64"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1", SOFTNPU_API_KEYS=API_KEY)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        address = None
        deadline = time.monotonic() + 120
        while address is None:
            line = proc.stdout.readline()
            if not line or time.monotonic() > deadline:
                raise RuntimeError(f"softnpu serve did not start (exit code {proc.poll()})")
            match = re.search(r"gRPC on (\S+),", line)
            address = match.group(1) if match else None
        yield address
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


if __name__ == "__main__":
    raise SystemExit(main())
