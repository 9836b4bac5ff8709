"""The floor under bench_serve's service overhead on this machine: a bare grpcio echo service.

A server process with one unary method and no other work: it holds each call for `hold` seconds
(streaming through 64 MB of memory, as the ISS does while it runs a network, or not at all), then
answers with the time it held.  The client, in the calling process, sends requests of the served
model's request size and reports latency minus that time: what gRPC and the Python interpreter
cost per call on this machine, before any tensor is converted or any device memory written.

    python -m softnpu.host.serving.echo_floor [--bytes N] [--hold-ms MS] [--requests N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import struct
import subprocess
import sys
import time
from concurrent import futures

METHOD = "/softnpu.EchoFloor/Hold"


def serve(hold_s: float) -> None:
    import grpc
    import numpy as np

    memory = np.zeros(64 << 20, np.uint8)

    def hold(request: bytes, context) -> bytes:
        start = time.perf_counter()
        while time.perf_counter() - start < hold_s:
            np.add(memory, 1, out=memory)
        return struct.pack("<d", time.perf_counter() - start)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                         options=[("grpc.max_receive_message_length", 64 << 20)])
    service, method = METHOD.strip("/").split("/")
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        service, {method: grpc.unary_unary_rpc_method_handler(hold)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    server.wait_for_termination()


def overhead_ms(request_bytes: int, hold_s: float, requests: int = 100) -> float:
    """p50 of latency minus the handler's hold, in ms, over `requests` calls after 5 to warm up."""
    import grpc

    proc = subprocess.Popen([sys.executable, "-m", "softnpu.host.serving.echo_floor", "--serve",
                             "--hold-ms", str(hold_s * 1e3)], stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary(METHOD)
            payload = os.urandom(request_bytes)
            for _ in range(5):
                call(payload, timeout=60)
            over = []
            for _ in range(requests):
                start = time.perf_counter()
                held = struct.unpack("<d", call(payload, timeout=60))[0]
                over.append((time.perf_counter() - start - held) * 1e3)
        return statistics.median(over)
    finally:
        proc.kill()
        proc.wait(10)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m softnpu.host.serving.echo_floor", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bytes", type=int, default=150_600, help="request size (default: a 224x224x3 "
                        "int8 tensor's request)")
    parser.add_argument("--hold-ms", type=float, default=48.0, help="how long the handler holds each call")
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.hold_ms / 1e3)
        return 0
    for hold in (0.0, args.hold_ms / 1e3):
        print(f"bare gRPC echo, {args.bytes:,}-byte requests, handler holding {hold * 1e3:.0f} ms: overhead "
              f"p50 {overhead_ms(args.bytes, hold, args.requests):.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
