"""bench_serve: latency and throughput of `softnpu serve` on the ISS backend.

Every server runs as `softnpu serve` in a process of its own on a free local port (API keys
required); the clients are threads of this process.  Three parts:

1. Latency: 1 and then 2 device workers, as many client threads as workers; p50/p99 latency,
   throughput, the device's host time per request (`device ms`, the ISS running the program) and
   the service overhead = latency - device time (gRPC, tensor conversion, queueing, host stages).
2. Batching: 16 client threads against 1 worker with batching off and on (--enable-batching with
   a BatchingParameters file), side by side.  The servers run at the same time and the rows are
   measured in interleaved rounds, so that a busy machine slows every row alike; the mean batch
   size comes from each server's Prometheus metrics.
3. Stalled connections: an attacker in a process of its own holds `--stalls` connections to the
   server (one channel, so one TCP connection, each), each with an unauthenticated Predict call
   that sent its headers and never a message; a call the server refuses is opened again on its
   connection after `--reopen-ms` +-50% (random, so that the 50 connections do not re-open in
   step: bursts of 50 refusals queue ~10 ms of server time each).  The authorised clients' p99
   with the attacker running is compared with their p99 without it, in alternating rounds of the
   same run; the attacker reports the calls it opened, how they ended, how long the server took
   to refuse them, and how many were open at each 10 ms sample.  Two controls: 'decoy', the same
   attacker aimed at a second server process on this machine (what the attacker's load on the
   machine costs, without this server's part: on a 2-core machine it is most of it), and 'flood',
   refused calls re-opened at once (a flood of calls, which costs the server CPU per call, rather
   than stalled connections).

    python -m softnpu.host.serving.bench_serve [--requests N] [--bundle FILE.npu] [--config tiny|...]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

API_KEY = "bench-key"
PREDICT = "/tensorflow.serving.PredictionService/Predict"
BATCHING = "max_batch_size { value: %d } batch_timeout_micros { value: %d } " \
           "max_enqueued_batches { value: 64 } num_batch_threads { value: 1 }\n"


def _percentile(values, q) -> float:
    return float(np.percentile(np.asarray(values), q)) if len(values) else float("nan")


# ----------------------------------------------------------------------------------------------
# The attacker: `python -m softnpu.host.serving.bench_serve --attack ADDRESS`, driven over stdin
# ----------------------------------------------------------------------------------------------
def attack(address: str, count: int, reopen_s: float) -> int:
    """Hold `count` connections, each with one stalled unauthenticated call, while told to.

    stdin: 'start' opens the calls (and re-opens each `reopen_s` +-50% after it ends, the
    connections out of step as independent clients would be, not in bursts); 'stop' cancels
    them and prints a JSON summary of the phase; 'quit' exits.  Prints 'ready' once connected.
    grpc.aio on one event loop: a stalled call costs no thread here."""
    import asyncio

    import grpc

    from softnpu.host.serving import lightproto
    lightproto.preload()
    from tensorflow_serving.apis import predict_pb2

    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    def run(coro, timeout=60):
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)

    async def connect():
        # a channel of its own (local subchannel pool): a TCP connection per stalled call
        channels = [grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
                    for _ in range(count)]
        await asyncio.gather(*(c.channel_ready() for c in channels))
        return channels

    channels = run(connect())
    calls = [c.stream_unary(PREDICT, request_serializer=predict_pb2.PredictRequest.SerializeToString,
                            response_deserializer=predict_pb2.PredictResponse.FromString) for c in channels]
    print("ready", flush=True)

    jitter = random.Random(0)

    async def phase(stop: asyncio.Event) -> dict:
        ended = collections.Counter()
        refusal_ms, samples = [], []
        is_open = [False] * count
        opened = 0

        async def hold(i):
            nonlocal opened
            while not stop.is_set():
                async def never():             # sends the headers, then never a message
                    await stop.wait()
                    return
                    yield
                t0 = time.monotonic()
                is_open[i] = True
                opened += 1
                call = calls[i](never(), timeout=60)
                try:
                    await call
                    ended["OK"] += 1
                except grpc.aio.AioRpcError as err:
                    if stop.is_set():
                        ended["still open at the end"] += 1
                        return
                    ended[err.code().name] += 1
                except asyncio.CancelledError:
                    ended["still open at the end"] += 1
                    return
                finally:
                    is_open[i] = False
                refusal_ms.append((time.monotonic() - t0) * 1e3)
                with contextlib.suppress(asyncio.TimeoutError):     # jitter: connections not in step
                    await asyncio.wait_for(stop.wait(), reopen_s * jitter.uniform(0.5, 1.5))

        holders = [asyncio.ensure_future(hold(i)) for i in range(count)]
        while not stop.is_set():
            samples.append(sum(is_open))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.01)
        await asyncio.sleep(0.05)
        for h in holders:
            h.cancel()
        await asyncio.gather(*holders, return_exceptions=True)
        return dict(opened=opened, ended=dict(ended), open_mean=float(np.mean(samples)) if samples else 0.0,
                    open_max=max(samples, default=0), refusal_p50_ms=_percentile(refusal_ms, 50),
                    refusal_p99_ms=_percentile(refusal_ms, 99))

    current = None
    for line in sys.stdin:
        command = line.strip()
        if command == "start" and current is None:
            stop = run(_event())
            current = asyncio.run_coroutine_threadsafe(phase(stop), loop)
        elif command == "stop" and current is not None:
            loop.call_soon_threadsafe(stop.set)
            print(json.dumps(current.result(60)), flush=True)
            current = None
        elif command == "quit":
            break
    run(asyncio.gather(*(c.close() for c in channels)))
    loop.call_soon_threadsafe(loop.stop)
    return 0


async def _event():
    import asyncio
    return asyncio.Event()


class Attacker:
    """The attacker process (see `attack`)."""

    def __init__(self, address: str, count: int, reopen_s: float):
        cmd = [sys.executable, "-m", "softnpu.host.serving.bench_serve", "--attack", address,
               "--stalls", str(count), "--reopen-ms", str(reopen_s * 1e3)]
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, env=env)
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the attacker process did not start (exit code {self.proc.poll()})")
        self.phases: list[dict] = []

    def _send(self, command: str) -> None:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def start(self) -> None:
        self._send("start")

    def stop(self) -> dict:
        self._send("stop")
        summary = json.loads(self.proc.stdout.readline())
        self.phases.append(summary)
        return summary

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._send("quit")
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


# ----------------------------------------------------------------------------------------------
# Clients and servers
# ----------------------------------------------------------------------------------------------
def _run(address: str, make_inputs, clients: int, requests: int, outputs: list[str]) -> dict:
    """`requests` Predict calls from `clients` threads; latencies (ms), device ms, wall seconds."""
    from softnpu.host.serving.client import PredictionClient

    latencies, device = [], []
    lock = threading.Lock()
    errors = []
    start = threading.Barrier(clients + 1)

    def client(n):
        try:
            with PredictionClient(address, model="bench", timeout=60, api_key=API_KEY) as c:
                c.predict(make_inputs(0), outputs)                    # warm the channel
                start.wait()
                for i in range(n):
                    t0 = time.perf_counter()
                    out = c.predict(make_inputs(i), outputs)
                    dt = time.perf_counter() - t0
                    with lock:
                        latencies.append(dt * 1e3)
                        device.append(float(out["device_ms"][0]))
        except Exception as exc:        # reported after the run
            errors.append(exc)
            start.abort()

    threads = [threading.Thread(target=client, args=(requests // clients,)) for _ in range(clients)]
    for t in threads:
        t.start()
    with contextlib.suppress(threading.BrokenBarrierError):
        start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join(600)
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return dict(latencies=latencies, device=device, wall=wall)


def _stats(runs: list[dict]) -> dict:
    latencies = [x for r in runs for x in r["latencies"]]
    device = [x for r in runs for x in r["device"]]
    overhead = [lat - dev for lat, dev in zip(latencies, device, strict=True)]
    return dict(p50=_percentile(latencies, 50), p99=_percentile(latencies, 99), n=len(latencies),
                rps=len(latencies) / sum(r["wall"] for r in runs), device=_percentile(device, 50),
                over50=_percentile(overhead, 50), over99=_percentile(overhead, 99))


HEADER = (f"{'input':<22} {'workers':>7} {'clients':>7} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8} "
          f"{'device ms':>9} {'overhead p50':>12} {'p99':>7}")


def _row(name: str, workers: int, clients: int, r: dict, note: str = "") -> None:
    print(f"{name:<22} {workers:>7} {clients:>7} {r['p50']:>8.2f} {r['p99']:>8.2f} {r['rps']:>8.1f} "
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


class _Served:
    def __init__(self, address: str, rest: str | None):
        self.address, self.rest = address, rest

    def metric(self, name: str) -> float:
        """A sample's value from the server's Prometheus metrics (0 when absent)."""
        with urllib.request.urlopen(f"http://{self.rest}/monitoring/prometheus/metrics", timeout=30) as r:
            text = r.read().decode()
        match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
        return float(match.group(1)) if match else 0.0


@contextlib.contextmanager
def _server_process(root: Path, workers: int, *extra: str):
    """`softnpu serve` in its own process (its own interpreter lock, as in production), on a
    free port; yields a _Served and stops it (SIGTERM, then SIGKILL) afterwards."""
    cmd = [sys.executable, "-m", "softnpu", "serve", "--model-dir", str(root), "--port", "0",
           "--workers", str(workers), "--max-queue", "64", *extra]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1", SOFTNPU_API_KEYS=API_KEY)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        address = rest = None
        deadline = time.monotonic() + 120
        while address is None:
            line = proc.stdout.readline()
            if not line or time.monotonic() > deadline:
                raise RuntimeError(f"softnpu serve did not start (exit code {proc.poll()})")
            match = re.search(r"gRPC on (\S+),", line)
            address = match.group(1) if match else None
            match = re.search(r"REST and metrics on http://(\S+)", line)
            rest = match.group(1) if match else rest
        yield _Served(address, rest)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# ----------------------------------------------------------------------------------------------
# The three parts
# ----------------------------------------------------------------------------------------------
def _latency(root: Path, modes: dict, requests: int) -> None:
    for workers in (1, 2):
        with _server_process(root, workers) as served:
            if workers == 1:
                print(f"gRPC floor (health-check round trip) p50 {_health_rtt(served.address):.2f} ms")
                print(HEADER)
            for name, (make, outputs) in modes.items():
                _row(name, workers, workers, _stats([_run(served.address, make, workers, requests, outputs)]))


def _batching(root: Path, tmp: Path, make, outputs, clients: int, requests: int, rounds: int,
              batch: int) -> None:
    configs = {"batching off": None, "batching on": 0, "batching on, 2 ms": 2000}
    print(f"\nbatching: {clients} client threads, 1 worker; on = --enable-batching with max_batch_size "
          f"{batch}, batch_timeout_micros 0 or 2000, num_batch_threads 1;")
    print(f"servers side by side, {rounds} interleaved rounds of {requests // rounds} requests per row")
    with contextlib.ExitStack() as stack:
        served = {}
        for name, timeout in configs.items():
            extra = ["--rest-port", "0"]
            if timeout is not None:
                path = tmp / f"batching-{timeout}.txt"
                path.write_text(BATCHING % (batch, timeout))
                extra += ["--enable-batching", "--batching-parameters-file", str(path)]
            served[name] = stack.enter_context(_server_process(root, 1, *extra))
        runs = {name: [] for name in configs}
        for _ in range(rounds):
            for name, s in served.items():
                runs[name].append(_run(s.address, make, clients, requests // rounds, outputs))
        print(HEADER + f" {'mean batch':>10}")
        for name, s in served.items():
            note = ""
            if configs[name] is not None:
                count = s.metric("softnpu_batch_size_count")
                note = f" {s.metric('softnpu_batch_size_sum') / max(count, 1):>10.2f}"
            _row(name, 1, clients, _stats(runs[name]), note)


def _stalls(root: Path, make, outputs, stalls: int, reopen_s: float, requests: int, rounds: int) -> None:
    print(f"\nstalled connections: an attacker process holds {stalls} connections, each with an "
          "unauthenticated Predict call that sent its headers and never a message;")
    print(f"a refused call is re-opened on its connection after {reopen_s * 1e3:.0f} ms +-50%.  "
          f"Authorised p99 with the attacker vs without it, {rounds} alternating rounds of "
          f"{requests // rounds} requests each.")
    print("Controls: 'decoy' = the same attacker aimed at another server process on this machine (the "
          "machine's load without this server's part);")
    print("'flood' = refused calls re-opened at once: a flood of calls rather than stalled connections")
    print(HEADER + f" {'p99 ratio':>9}")
    for workers in (1, 2):
        with _server_process(root, workers) as served, _server_process(root, workers) as decoy:
            attackers = {}
            try:
                attackers["stall"] = Attacker(served.address, stalls, reopen_s)
                attackers["decoy"] = Attacker(decoy.address, stalls, reopen_s)
                attackers["flood"] = Attacker(served.address, stalls, 0.0)
                runs = {"quiet": [], "stall": [], "decoy": [], "flood": []}
                for _ in range(rounds):
                    for name in runs:
                        attacker = attackers.get(name)
                        if attacker is not None:
                            attacker.start()
                            time.sleep(0.2)                 # every connection has its call open
                        runs[name].append(_run(served.address, make, workers, requests // rounds, outputs))
                        if attacker is not None:
                            attacker.stop()
            finally:
                for attacker in attackers.values():
                    attacker.close()
            quiet = _stats(runs["quiet"])
            _row("int8, unloaded", workers, workers, quiet)
            for name, label in (("stall", f"{stalls} stalled conns"), ("decoy", "  decoy (control)"),
                                ("flood", "  flood (control)")):
                r = _stats(runs[name])
                _row(f"int8, {label}", workers, workers, r, f" {r['p99'] / quiet['p99']:>9.2f}")
                phases = attackers[name].phases
                ended = collections.Counter()
                for p in phases:
                    ended.update(p["ended"])
                seconds = sum(r["wall"] for r in runs[name]) + 0.2 * rounds
                opened = sum(p["opened"] for p in phases)
                refused = np.median([p["refusal_p50_ms"] for p in phases])
                print(f"    attacker: {opened} calls opened in {seconds:.1f} s ({opened / seconds:.0f}/s: "
                      f"{', '.join(f'{n} {c}' for c, n in ended.most_common())}); refused after p50 "
                      f"{refused:.2f} ms; calls open at a 10 ms sample: mean "
                      f"{np.mean([p['open_mean'] for p in phases]):.1f}, max "
                      f"{max(p['open_max'] for p in phases)}; {stalls} connections open throughout",
                      flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="requests per latency row (default 200)")
    parser.add_argument("--bundle", help="a compiled bundle (default: host/sample.py's classifier)")
    parser.add_argument("--config", default="tiny", help="NPU config of the sample model (default tiny)")
    parser.add_argument("--clients", type=int, default=16, help="client threads of the batching rows (16)")
    parser.add_argument("--batch-requests", type=int, default=1600, help="requests per batching row (1600)")
    parser.add_argument("--max-batch-size", type=int, default=8, help="max_batch_size when batching (8)")
    parser.add_argument("--stalls", type=int, default=50,
                        help="stalled unauthenticated connections of the attacker (default 50)")
    parser.add_argument("--reopen-ms", type=float, default=100.0,
                        help="how soon the attacker re-opens a refused call on its connection (default 100)")
    parser.add_argument("--stall-requests", type=int, default=1000,
                        help="authorised requests with and without the attacker, each (default 1000)")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds (default 10)")
    parser.add_argument("--only", choices=("latency", "batching", "stalls"), action="append",
                        help="run only this part (repeatable; default: all three)")
    parser.add_argument("--attack", metavar="ADDRESS", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.attack:
        return attack(args.attack, args.stalls, args.reopen_ms / 1e3)

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
              f"{manifest.program_instructions} instructions), backend iss, {os.cpu_count()} CPUs, "
              f"load average {os.getloadavg()[0]:.1f}")
        parts = args.only or ("latency", "batching", "stalls")
        if "latency" in parts:
            _latency(repo.root, modes, args.requests)
        make, outputs = modes["int8 tensor"]
        if "batching" in parts:
            _batching(repo.root, Path(tmp), make, outputs, args.clients, args.batch_requests, args.rounds,
                      args.max_batch_size)
        if "stalls" in parts:
            _stalls(repo.root, make, outputs, args.stalls, args.reopen_ms / 1e3, args.stall_requests,
                    args.rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
