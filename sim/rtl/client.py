"""A simulated NPU in its own process: spawns the cocotb/Verilator simulation of the NPU at a
config (sim/rtl/cocotb_server.py) and talks to it over a local socket.

Every request has a deadline: a simulator that does not answer in time is killed and reported
as `SimulatorHung`; one that dies is `SimulatorCrashed`.  Either way the process is gone and
`restart()` brings up a fresh one (the host runtime reloads device memory after a restart).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Client
from pathlib import Path

from softnpu.hdl.config import NPUConfig
from softnpu.sim.rtl import harness as rtl_harness

__all__ = ["RTLProcess", "SimulatorCrashed", "SimulatorHung", "RTLRunHang"]


class SimulatorCrashed(RuntimeError):
    """The simulator process died (or could not start)."""


class SimulatorHung(RuntimeError):
    """The simulator did not answer within the request's deadline; it has been killed."""


class RTLRunHang(RuntimeError):
    """The NPU exceeded the run's cycle budget (the simulator reset it and is fine)."""


class RTLProcess:
    """One simulated NPU device in a child process."""

    def __init__(self, config: NPUConfig, *, start_timeout: float = 600.0):
        self.config = config
        self.start_timeout = start_timeout
        self.process: subprocess.Popen | None = None
        self.conn = None
        self._dir = tempfile.TemporaryDirectory(prefix="softnpu_rtl_dev_")
        self.log_path = Path(self._dir.name) / "simulator.log"

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        build_dir = rtl_harness.build(self.config)          # cached; may take minutes the first time
        socket_path = str(Path(self._dir.name) / f"npu-{secrets.token_hex(4)}.sock")
        authkey = secrets.token_bytes(16)
        code = ("import json, sys\n"
                "from softnpu.hdl.config import NPUConfig\n"
                "from softnpu.sim.rtl import harness as rtl_harness\n"
                "config = NPUConfig.from_dict(json.loads(sys.argv[1]))\n"
                "rtl_harness.run(sys.argv[2], 'softnpu.sim.rtl.cocotb_server', config, testcase='serve',\n"
                "    extra_env={'SOFTNPU_SOCKET': sys.argv[3], 'SOFTNPU_AUTHKEY': sys.argv[4]})\n")
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", code, self.config.to_json(), str(build_dir), socket_path,
                 authkey.hex()],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.process.poll() is not None:
                raise SimulatorCrashed(f"the simulator exited with {self.process.returncode} while "
                                       f"starting; log {self.log_path}:\n{self._log_tail()}")
            if os.path.exists(socket_path):
                try:
                    self.conn = Client(socket_path, family="AF_UNIX", authkey=authkey)
                    return
                except (ConnectionRefusedError, FileNotFoundError):
                    pass
            if time.monotonic() > deadline:
                self.kill()
                raise SimulatorHung(f"the simulator did not come up within {self.start_timeout:.0f} s")
            time.sleep(0.05)

    def kill(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except OSError:
                pass
            self.conn = None
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, 9)
            except ProcessLookupError:
                pass
            self.process.wait(timeout=10)
        self.process = None

    def restart(self) -> None:
        self.kill()
        self.start()

    def close(self) -> None:
        if self.conn is not None and self.alive:
            try:
                self._request("close", (), timeout=10)
            except (SimulatorHung, SimulatorCrashed):
                pass
        self.kill()
        self._dir.cleanup()

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # -- requests ------------------------------------------------------------------------------
    def _request(self, op: str, args: tuple, timeout: float):
        if self.conn is None:
            raise SimulatorCrashed("the simulator is not running (start() or restart() it)")
        try:
            self.conn.send((op, args))
            if not self.conn.poll(timeout):
                self.kill()
                raise SimulatorHung(f"the simulator did not answer {op} within {timeout:.1f} s; killed")
            status, value = self.conn.recv()
        except (EOFError, OSError, BrokenPipeError) as exc:
            code = self.process.poll() if self.process else None
            self.kill()
            raise SimulatorCrashed(f"the simulator died during {op} (exit {code}): {exc}; "
                                   f"log {self.log_path}:\n{self._log_tail()}") from None
        if status == "ok":
            return value
        if status == "fault":
            raise value                 # an NPUFault (hdl/faults.py); the simulator is fine
        if status == "hang":
            raise RTLRunHang(value)
        raise RuntimeError(f"simulator request {op} failed: {value}")

    def write_memory(self, addr: int, data, timeout: float = 60.0) -> None:
        self._request("write_memory", (addr, bytes(memoryview(data).cast("B"))), timeout)

    def read_memory(self, addr: int, size: int, timeout: float = 60.0) -> bytes:
        return self._request("read_memory", (addr, size), timeout)

    def write_csr(self, offset: int, value: int, timeout: float = 10.0) -> None:
        self._request("write_csr", (offset, value), timeout)

    def read_csr(self, offset: int, timeout: float = 10.0) -> int:
        return self._request("read_csr", (offset,), timeout)

    def reset(self, timeout: float = 10.0) -> None:
        self._request("reset", (), timeout)

    def run(self, insn_addr: int, insn_count: int, max_cycles: int = 100_000_000,
            timeout: float = 3600.0) -> dict:
        """Run a program; returns {'counters', 'trace'}.  Raises NPUFault, RTLRunHang (budget),
        SimulatorHung (deadline: killed), SimulatorCrashed."""
        return self._request("run", (insn_addr, insn_count, max_cycles), timeout)
