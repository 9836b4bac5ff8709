"""Devices in a process of their own, reached over a local (Unix-domain) socket.

A simulator that can hang or crash (Verilator, cocotb) must never take the server down with it:
`ProcessDevice` runs the device in a child process and bounds every exchange with a deadline.  A
child that does not answer in time is killed, one that died is noticed at the next exchange;
either way the caller gets `DeviceLost` and the next use starts a fresh child (device memory is
gone, so `resident` is cleared and the runtime places its weights again).

Protocol (little-endian, one request then one response, strictly alternating):

  request   op u8 | a u64 | b u64 | n u32 | n payload bytes
  response  ok u8 | value u64 | n u32 | n payload bytes (data; an error message when ok=0)

  op  HELLO       -> payload: the child's NPUConfig as JSON
      WRITE_MEM   a=addr, payload=bytes
      READ_MEM    a=addr, b=size -> payload
      WRITE_CSR   a=offset, b=value      (CTRL.start returns at once; the run goes on)
      READ_CSR    a=offset -> value
      READ_CSRS   a=offset, b=count -> payload: count u32 words from consecutive offsets
      WAIT        a=timeout in microseconds -> value: STATUS once done or error, or at timeout
      RESET       device reset (waits for a run in progress to end)
      CLOSE       the child exits

The child is `python -m host.procdev --backend iss --config JSON --socket PATH`; it serves one
connection and exits when it closes, so a dead parent leaves no child behind.  An RTL simulator
harness speaks the same protocol to become a backend.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from softnpu.hdl.config import NPUConfig
from softnpu.hdl.csr_map import COUNTERS, CSR
from softnpu.host.devices.device import CTRL_START, STATUS_BUSY, STATUS_DONE, STATUS_ERROR, Device, DeviceLost

__all__ = ["ProcessDevice", "serve_device"]

HELLO, WRITE_MEM, READ_MEM, WRITE_CSR, READ_CSR, READ_CSRS, WAIT, RESET, CLOSE = range(9)
_REQ = struct.Struct("<BQQI")
_RESP = struct.Struct("<BQI")


def _recv_exact(sock: socket.socket, n: int) -> bytearray:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            raise ConnectionError("connection closed by the peer")
        got += k
    return buf             # not copied into bytes: a tensor's payload is read once, where it lies


class ProcessDevice(Device):
    """A device of `backend` (see host.device.BACKENDS) in a child process.

    call_timeout_s bounds each exchange but WAIT (bounded by its own timeout); start_timeout_s
    bounds the child's start-up (its imports)."""

    def __init__(self, config: NPUConfig, backend: str = "iss", call_timeout_s: float = 30.0,
                 start_timeout_s: float = 60.0):
        super().__init__(config)
        self.inner_backend = backend
        self.backend = f"{backend}-process"
        self.call_timeout_s, self.start_timeout_s = call_timeout_s, start_timeout_s
        self.proc: subprocess.Popen | None = None
        self.sock: socket.socket | None = None
        self.restarts = 0
        self._running = False
        self._dir = tempfile.TemporaryDirectory(prefix="softnpu-dev-")
        self._spawn()

    # -- the child ----------------------------------------------------------------------------
    def _spawn(self):
        path = Path(self._dir.name) / f"dev{self.restarts}.sock"
        cmd = [sys.executable, "-m", "softnpu.host.devices.process", "--backend", self.inner_backend,
               "--config", self.config.to_json(), "--socket", str(path)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace").strip()[-2000:]
                self.proc = None
                raise DeviceLost(f"{self.backend} device process exited at start-up: {err}")
            if path.exists():
                try:
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    sock.connect(str(path))
                    break
                except OSError:
                    sock.close()
            if time.monotonic() > deadline:
                self._kill()
                raise DeviceLost(f"{self.backend} device process did not start in {self.start_timeout_s} s")
            time.sleep(0.01)
        self.sock = sock
        _, payload = self._call(HELLO)
        theirs = NPUConfig.from_dict(json.loads(payload))
        if theirs != self.config:
            self._kill()
            raise DeviceLost(f"{self.backend} device process runs config {theirs.name!r}, not "
                             f"{self.config.name!r}")

    def _kill(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
            if self.proc.stderr:
                self.proc.stderr.close()
            self.proc = None

    def _lost(self, why: str) -> DeviceLost:
        pid = self.proc.pid if self.proc else None
        self._kill()
        self.resident = None
        self._running = False
        return DeviceLost(f"{self.backend} device process {pid} {why}; it is restarted on next use")

    def _call(self, op: int, a: int = 0, b: int = 0, payload: bytes = b"",
              timeout_s: float | None = None) -> tuple[int, bytes]:
        if self.sock is None:
            self.restarts += 1
            self._spawn()
        self.sock.settimeout(self.call_timeout_s if timeout_s is None else timeout_s)
        try:
            self.sock.sendall(_REQ.pack(op, a, b, len(payload)))
            if payload:
                self.sock.sendall(payload)          # not concatenated: a tensor is sent where it lies
            ok, value, n = _RESP.unpack(_recv_exact(self.sock, _RESP.size))
            data = _recv_exact(self.sock, n) if n else b""
        except TimeoutError:
            raise self._lost(f"did not answer in {self.sock.gettimeout():.3g} s (hung)") from None
        except OSError as exc:
            code = self.proc.poll() if self.proc else None
            raise self._lost(f"is gone ({exc}; exit code {code})") from None
        if not ok:
            raise ValueError(data.decode(errors="replace"))
        return value, data

    # -- the driver interface -------------------------------------------------------------------
    def write_memory(self, addr: int, data) -> None:
        raw = memoryview(np.ascontiguousarray(data)).cast("B") if isinstance(data, np.ndarray) else data
        self._call(WRITE_MEM, addr, 0, raw)

    def read_memory(self, addr: int, size: int) -> np.ndarray:
        return np.frombuffer(self._call(READ_MEM, addr, size)[1], np.uint8).copy()

    def write_csr(self, offset: int, value: int) -> None:
        self._call(WRITE_CSR, offset, value & 0xFFFFFFFF)
        if offset == CSR.CTRL and value & CTRL_START:
            self._running = True

    def read_csr(self, offset: int) -> int:
        return self._call(READ_CSR, offset)[0]

    def wait(self, timeout_s: float | None = None) -> bool:
        limit = 3600.0 if timeout_s is None else max(timeout_s, 0.0)
        status, _ = self._call(WAIT, int(limit * 1e6), 0, timeout_s=limit + self.call_timeout_s)
        self._running = not status & (STATUS_DONE | STATUS_ERROR)
        if status & STATUS_ERROR:
            raise self._fault()
        return bool(status & STATUS_DONE)

    def read_counters(self) -> dict[str, int]:
        words = np.frombuffer(self._call(READ_CSRS, CSR.COUNTERS, 2 * len(COUNTERS))[1], "<u4")
        return {name: int(words[2 * i]) | (int(words[2 * i + 1]) << 32) for i, name in enumerate(COUNTERS)}

    def reset(self) -> None:
        """Reset the NPU; a child still running a program past its deadline is killed instead
        (a hung simulator), and restarts on next use."""
        if self._running:
            self._running = False
            self._lost("was still running at reset")
        elif self.sock is not None:
            self._call(RESET)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def restart(self) -> None:
        """A fresh child now (the old one, dead or not, is killed); raises DeviceLost if it does
        not start."""
        self._kill()
        self.resident = None
        self._running = False
        self.restarts += 1
        self._spawn()

    def close(self) -> None:
        if self.sock is not None:
            try:
                self._call(CLOSE, timeout_s=2.0)
            except DeviceLost:
                pass
        self._kill()
        self._dir.cleanup()


# ----------------------------------------------------------------------------------------------
# The child: one device behind the socket
# ----------------------------------------------------------------------------------------------
class _Served:
    """The device in the child, with CTRL.start run on a thread so that WAIT can time out."""

    def __init__(self, device: Device):
        self.device = device
        self.run: threading.Thread | None = None
        self.run_error: str | None = None

    def busy(self) -> bool:
        return self.run is not None and self.run.is_alive()

    def finish(self):
        if self.run is not None:
            self.run.join()
            self.run = None

    def handle(self, op: int, a: int, b: int, payload: bytes) -> tuple[int, bytes]:
        d = self.device
        if op == HELLO:
            return 0, d.config.to_json().encode()
        if op == WRITE_CSR and a == CSR.CTRL and b & CTRL_START:
            self.finish()

            def go():
                d.write_csr(a, b)
            self.run = threading.Thread(target=go, daemon=True)
            self.run.start()
            return 0, b""
        if op == WAIT:
            if self.run is not None:
                self.run.join(a / 1e6)
                if self.run.is_alive():
                    return STATUS_BUSY, b""
                self.run = None
            return d.read_csr(CSR.STATUS), b""
        if self.busy() and op in (WRITE_MEM, WRITE_CSR, RESET):
            self.finish()               # the hardware would be racing the run: finish it first
        if op == WRITE_MEM:
            d.write_memory(a, payload)
            return 0, b""
        if op == READ_MEM:
            return 0, d.read_memory(a, b).tobytes()
        if op == WRITE_CSR:
            d.write_csr(a, b)
            return 0, b""
        if op == READ_CSR:
            if a == CSR.STATUS and self.busy():
                return STATUS_BUSY, b""
            return d.read_csr(a), b""
        if op == READ_CSRS:
            return 0, np.array([d.read_csr(a + 4 * i) for i in range(b)], "<u4").tobytes()
        if op == RESET:
            d.reset()
            return 0, b""
        raise ValueError(f"unknown op {op}")


def serve_device(device: Device, path: str) -> None:
    """Serve `device` on a Unix socket at `path` until the connection closes or CLOSE."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    tmp = path + ".tmp"
    listener.bind(tmp)
    listener.listen(1)
    os.replace(tmp, path)            # the parent connects only once the socket is listening
    conn, _ = listener.accept()
    listener.close()
    served = _Served(device)
    with conn:
        while True:
            try:
                op, a, b, n = _REQ.unpack(_recv_exact(conn, _REQ.size))
                payload = _recv_exact(conn, n) if n else b""
            except ConnectionError:
                return
            if op == CLOSE:
                conn.sendall(_RESP.pack(1, 0, 0))
                return
            try:
                value, data = served.handle(op, a, b, payload)
                conn.sendall(_RESP.pack(1, value, len(data)) + data)
            except Exception as exc:        # a bad request is answered, never fatal
                message = f"{type(exc).__name__}: {exc}".encode()
                conn.sendall(_RESP.pack(0, 0, len(message)) + message)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="one softnpu device behind a Unix socket")
    parser.add_argument("--backend", default="iss")
    parser.add_argument("--config", required=True, help="NPUConfig as JSON")
    parser.add_argument("--socket", required=True)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)       # the parent decides when this process ends
    from softnpu.host.devices.device import open_device
    device = open_device(args.backend, NPUConfig.from_dict(json.loads(args.config)))
    serve_device(device, args.socket)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
