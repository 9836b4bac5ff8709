"""bench_serve: latency and throughput of `softnpu serve` on the ISS backend.

Every server runs as `softnpu serve` in a process of its own on a free local port (API keys
required); the clients are threads of this process.  Three parts:

1. Latency: 1 and then 2 device workers, as many client threads as workers; p50/p99 latency,
   throughput, the device's host time per request (`device ms`, the ISS running the program) and
   the service overhead = latency - device time (gRPC, tensor conversion, queueing, host stages).
   Then the floor under that overhead on this machine: a bare grpcio echo service with the int8
   row's request size, answering at once and holding each call for the int8 row's device time
   (host/serving/echo_floor.py).
2. Batching: 16 client threads against 1 worker with batching off and on (--enable-batching with
   a BatchingParameters file), side by side.  The servers run at the same time and the rows are
   measured in interleaved rounds, so that a busy machine slows every row alike; the mean batch
   size comes from each server's Prometheus metrics.
3. Stalled connections: an attacker in a process of its own holds `--stalls` HTTP/2 connections
   to the server, each with an unauthenticated Predict call that sent its headers and never a
   message (plain HTTP/2 frames, so that the attacker's own CPU time, which competes with the
   server on a small machine, is ~0.1 ms per call instead of a gRPC client's ~0.5 ms); a call the
   server ends is opened again on its connection after `--reopen-ms` +-50% (random, so that the
   connections do not re-open in step: a burst of 50 refusals is ~10 ms of server time).  The
   authorised clients' p99 with the attacker running is compared with their p99 without it, in
   alternating rounds of the same run; the attacker reports the calls it opened, how they ended
   and after how long, and how many were open at each 10 ms sample; the server's metrics say how
   many it refused UNAUTHENTICATED.  Two controls: 'decoy', the same attacker aimed at a second
   server process on this machine (what the attack's load on the machine costs, without this
   server's part), and 'flood', refused calls re-opened at once (a flood of calls, each costing
   the server about what a health check costs, rather than stalled connections).

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
# The attacker: `python -m softnpu.host.serving.bench_serve --attack ADDRESS`, driven over stdin.
# Plain HTTP/2 frames on non-blocking sockets, so that the attacker's own CPU time (which competes
# with the server on a small machine) is a small fraction of what a gRPC client would spend.
# ----------------------------------------------------------------------------------------------
_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_DATA, _HEADERS, _RST_STREAM, _SETTINGS, _PING, _GOAWAY = 0x0, 0x1, 0x3, 0x4, 0x6, 0x7
_END_STREAM, _ACK, _END_HEADERS = 0x1, 0x1, 0x4


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def _hpack_literal(index: int, value: str, name: str = "") -> bytes:
    """A header field 'literal without indexing' (RFC 7541 6.2.2), no Huffman coding: the name by
    static-table index, or literal when index is 0."""
    def integer(n: int, prefix_bits: int, first: int) -> bytes:
        limit = (1 << prefix_bits) - 1
        if n < limit:
            return bytes([first | n])
        out, n = [first | limit], n - limit
        while n >= 128:
            out.append(n % 128 + 128)
            n //= 128
        return bytes(out + [n])

    def string(s: str) -> bytes:
        raw = s.encode()
        return integer(len(raw), 7, 0) + raw

    return integer(index, 4, 0) + (string(name) if index == 0 else b"") + string(value)


def _request_headers(authority: str) -> bytes:
    """An unauthenticated Predict call's headers (no authorization), as a stock client sends them."""
    return (bytes([0x83, 0x86])                      # :method POST, :scheme http (static table)
            + _hpack_literal(4, PREDICT)             # :path
            + _hpack_literal(1, authority)           # :authority
            + _hpack_literal(31, "application/grpc")  # content-type
            + _hpack_literal(0, "trailers", "te"))


class _Connection:
    """One HTTP/2 connection holding at most one stalled call (a stream that sent HEADERS and
    never DATA)."""

    def __init__(self, host: str, port: int, headers: bytes):
        import socket

        self.sock = socket.create_connection((host, port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(_PREFACE + _frame(_SETTINGS, 0, 0))
        self.sock.setblocking(False)
        self.headers = headers
        self.buffer = b""
        self.stream = -1              # the last stream id used (client streams are odd)
        self.opened_at = None         # when the open call started; None: no call open
        self.next_open = 0.0

    def open_call(self, now: float) -> None:
        self.stream += 2
        self.sock.send(_frame(_HEADERS, _END_HEADERS, self.stream, self.headers))
        self.opened_at = now

    def cancel(self) -> None:
        if self.opened_at is not None:
            with contextlib.suppress(OSError):
                self.sock.send(_frame(_RST_STREAM, 0, self.stream, (8).to_bytes(4, "big")))   # CANCEL
            self.opened_at = None

    def receive(self) -> list[tuple[str, float]]:
        """Read what arrived; answer SETTINGS and PING; returns the call that ended, if it did, as
        (how: 'ended by the server' (trailers) or 'reset by the server', when it was opened)."""
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return []
        if not data:
            raise ConnectionError("the server closed the connection")
        self.buffer += data
        ended = []
        while len(self.buffer) >= 9:
            length = int.from_bytes(self.buffer[:3], "big")
            if len(self.buffer) < 9 + length:
                break
            kind, flags = self.buffer[3], self.buffer[4]
            stream = int.from_bytes(self.buffer[5:9], "big") & 0x7FFFFFFF
            payload = self.buffer[9:9 + length]
            self.buffer = self.buffer[9 + length:]
            if kind == _SETTINGS and not flags & _ACK:
                self.sock.send(_frame(_SETTINGS, _ACK, 0))
            elif kind == _PING and not flags & _ACK:
                self.sock.send(_frame(_PING, _ACK, 0, payload))
            elif kind == _GOAWAY:
                raise ConnectionError("GOAWAY from the server")
            elif stream == self.stream and self.opened_at is not None and (
                    (kind in (_HEADERS, _DATA) and flags & _END_STREAM) or kind == _RST_STREAM):
                how = "reset by the server" if kind == _RST_STREAM else "ended by the server"
                ended.append((how, self.opened_at))
                self.opened_at = None
        return ended


def attack(address: str, count: int, reopen_s: float) -> int:
    """Hold `count` connections, each with one stalled unauthenticated call, while told to.

    stdin: 'start' opens the calls (and re-opens each `reopen_s` +-50% after the server ended it,
    the connections out of step as independent clients would be); 'stop' cancels them and prints a
    JSON summary of the phase; 'quit' exits.  Prints 'ready' once connected."""
    import selectors

    host, _, port = address.rpartition(":")
    headers = _request_headers(address)
    connections = [_Connection(host.strip("[]"), int(port), headers) for _ in range(count)]
    selector = selectors.DefaultSelector()
    for c in connections:
        selector.register(c.sock, selectors.EVENT_READ, c)
    jitter = random.Random(0)
    stop = threading.Event()
    summary: dict = {}

    def pump(timeout: float) -> list:
        ended = []
        for key, _ in selector.select(timeout):
            ended += [(key.data, how, opened_at) for how, opened_at in key.data.receive()]
        return ended

    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:          # settings exchanged
        pump(0.05)
    print("ready", flush=True)

    def phase():
        ended = collections.Counter()
        refusal_ms, samples = [], []
        opened = 0
        now = time.monotonic()
        for c in connections:
            c.next_open = now
        next_sample = now
        while not stop.is_set():
            now = time.monotonic()
            for c in connections:
                if c.opened_at is None and now >= c.next_open:
                    c.open_call(now)
                    opened += 1
            wait = min([c.next_open for c in connections if c.opened_at is None] + [next_sample]) - now
            for c, how, opened_at in pump(max(0.0, min(wait, 0.01))):
                done = time.monotonic()
                ended[how] += 1
                refusal_ms.append((done - opened_at) * 1e3)
                c.next_open = done + reopen_s * jitter.uniform(0.5, 1.5)
            if time.monotonic() >= next_sample:
                samples.append(sum(c.opened_at is not None for c in connections))
                next_sample += 0.01
        still = sum(c.opened_at is not None for c in connections)
        for c in connections:
            c.cancel()
        pump(0.05)
        if still:
            ended["still open at the end"] += still
        summary.update(opened=opened, ended=dict(ended),
                       open_mean=float(np.mean(samples)) if samples else 0.0,
                       open_max=max(samples, default=0), refusal_p50_ms=_percentile(refusal_ms, 50),
                       refusal_p99_ms=_percentile(refusal_ms, 99))

    worker = None
    for line in sys.stdin:
        command = line.strip()
        if command == "start" and worker is None:
            stop.clear()
            summary.clear()
            worker = threading.Thread(target=phase, daemon=True)
            worker.start()
        elif command == "stop" and worker is not None:
            stop.set()
            worker.join(30)
            worker = None
            print(json.dumps(summary), flush=True)
        elif command == "quit":
            break
    for c in connections:
        c.sock.close()
    return 0


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
def _latency(root: Path, modes: dict, requests: int, backend: str | None) -> None:
    for workers in (1, 2):
        # without --backend the server picks: iss with one worker, iss-process with two
        chosen = ("--backend", backend) if backend else ()
        with _server_process(root, workers, *chosen) as served:
            if workers == 1:
                print(f"gRPC floor (health-check round trip) p50 {_health_rtt(served.address):.2f} ms")
                print(HEADER)
            for name, (make, outputs) in modes.items():
                stats = _stats([_run(served.address, make, workers, requests, outputs)])
                _row(name, workers, workers, stats)
                if workers == 1 and name == "int8 tensor":
                    floor_for = (sum(np.asarray(v).nbytes for v in make(0).values()), stats["device"])
    # the same request size, a handler that holds each call as long as the device ran: what gRPC and
    # Python cost per call here before softnpu does anything (host/serving/echo_floor.py)
    from softnpu.host.serving.echo_floor import overhead_ms

    size, device_ms = floor_for
    print(f"floor: a bare gRPC echo service, {size:,}-byte requests, overhead p50 "
          f"{overhead_ms(size, 0.0, requests):.2f} ms answering at once, "
          f"{overhead_ms(size, device_ms / 1e3, requests):.2f} ms holding each call {device_ms:.0f} ms "
          "(the int8 row's device time)")


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
        with _server_process(root, workers, "--rest-port", "0") as served, \
                _server_process(root, workers, "--rest-port", "0") as decoy:
            attackers, targets = {}, {"stall": served, "decoy": decoy, "flood": served}
            unauthenticated = collections.Counter()      # as the attacked server counted them
            metric = 'softnpu_rejected_total{reason="unauthenticated"}'
            try:
                attackers["stall"] = Attacker(served.address, stalls, reopen_s)
                attackers["decoy"] = Attacker(decoy.address, stalls, reopen_s)
                attackers["flood"] = Attacker(served.address, stalls, 0.0)
                runs = {"quiet": [], "stall": [], "decoy": [], "flood": []}
                for _ in range(rounds):
                    for name in runs:
                        attacker = attackers.get(name)
                        if attacker is not None:
                            before = targets[name].metric(metric)
                            attacker.start()
                            time.sleep(0.2)                 # every connection has its call open
                        runs[name].append(_run(served.address, make, workers, requests // rounds, outputs))
                        if attacker is not None:
                            attacker.stop()
                            unauthenticated[name] += targets[name].metric(metric) - before
            finally:
                for attacker in attackers.values():
                    attacker.close()
            quiet = _stats(runs["quiet"])
            _row("int8, unloaded", workers, workers, quiet)
            for name, label in (("stall", f"{stalls} stalled conns"), ("decoy", "decoy (control)"),
                                ("flood", "flood (control)")):
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
                      f"{', '.join(f'{n} {c}' for c, n in ended.most_common())}; the server counted "
                      f"{unauthenticated[name]:.0f} UNAUTHENTICATED); ended after p50 "
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
    parser.add_argument("--backend", choices=("iss", "iss-process"), default=None,
                        help="device backend of the latency rows' servers (default: the server's own "
                             "choice, iss with one worker and iss-process with two)")
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
              f"{manifest.program_instructions} instructions), backend "
              f"{args.backend or 'iss (1 worker), iss-process (2 workers)'}, "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
        parts = args.only or ("latency", "batching", "stalls")
        if "latency" in parts:
            _latency(repo.root, modes, args.requests, args.backend)
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
