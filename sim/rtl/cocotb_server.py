"""The simulator side of sim/rtl/client.py: a cocotb test that serves device requests (memory,
CSRs, runs) over a local socket until told to close.  Between requests no simulated time passes;
during a run Python sleeps until the NPU's interrupt (sim/rtl/device.py)."""

from __future__ import annotations

import json
import os
from multiprocessing.connection import Listener

import cocotb

from softnpu.hdl.config import NPUConfig
from softnpu.hdl.faults import NPUFault
from softnpu.sim.rtl.device import CycleBudgetExceeded, RTLDevice


@cocotb.test()
async def serve(dut):
    config = NPUConfig.from_dict(json.loads(os.environ["SOFTNPU_NPU_CONFIG"]))
    device = RTLDevice(dut, config)
    await device.reset()
    listener = Listener(os.environ["SOFTNPU_SOCKET"], family="AF_UNIX",
                        authkey=bytes.fromhex(os.environ["SOFTNPU_AUTHKEY"]))
    conn = listener.accept()
    try:
        while True:
            try:
                op, args = conn.recv()
            except EOFError:
                return
            try:
                if op == "close":
                    conn.send(("ok", None))
                    return
                if op == "write_memory":
                    device.write_memory(*args)
                    value = None
                elif op == "read_memory":
                    value = bytes(device.read_memory(*args))
                elif op == "write_csr":
                    value = await device.write_csr(*args)
                elif op == "read_csr":
                    value = await device.read_csr(*args)
                elif op == "reset":
                    value = await device.reset()
                elif op == "run":
                    run = await device.run(*args)
                    value = {"counters": run.counters, "trace": run.trace}
                else:
                    raise ValueError(f"unknown request {op!r}")
                conn.send(("ok", value))
            except NPUFault as exc:
                conn.send(("fault", exc))          # pickles with every field (NPUFault.__reduce__)
            except CycleBudgetExceeded as exc:
                await device.reset()
                conn.send(("hang", str(exc)))
            except Exception as exc:  # noqa: BLE001 - any request error goes back to the client
                conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()
        listener.close()
