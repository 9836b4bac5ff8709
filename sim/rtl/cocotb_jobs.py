"""The simulator side of sim/rtl/jobs.py: a cocotb test that runs every job of a job file on the
NPU harness and writes the results.  Not a pytest module: cocotb runs it inside the simulator."""

from __future__ import annotations

import os
import pickle
import time
from pathlib import Path

import cocotb

from softnpu.hdl.config import NPUConfig
from softnpu.hdl.faults import NPUFault
from softnpu.sim.rtl.device import CycleBudgetExceeded, RTLDevice
from softnpu.sim.rtl.jobs import JobResult
from softnpu.sim.rtl.waves import Window


@cocotb.test()
async def run_jobs(dut):
    config = NPUConfig.from_dict(__import__("json").loads(os.environ["SOFTNPU_NPU_CONFIG"]))
    jobs = pickle.loads(Path(os.environ["SOFTNPU_JOBS"]).read_bytes())
    device = RTLDevice(dut, config)
    window = Window.from_json(os.environ["SOFTNPU_WAVE_WINDOW"]) if os.environ.get("SOFTNPU_WAVE_WINDOW") \
        else None
    results = []
    dirty: list[tuple[int, int]] = [(0, device.memory.size)] if device.memory.size <= 1 << 28 else []
    for index, job in enumerate(jobs):
        start = time.perf_counter()
        await device.reset(job.backpressure)
        device.arm_waves(window if window is not None and window.applies_to(index) else None)
        for addr, size in dirty:             # what the last job wrote or read back: zero again
            device.memory.view[addr:addr + size] = 0
        dirty = [(a, len(d)) for a, d in job.image] + list(job.regions)
        device.load_image(job.image)
        counters = trace = fault = npu_fault = error = None
        device.irq_at_end = False
        try:
            run = await device.run(job.insn_addr, job.insn_count, job.max_cycles)
            counters, trace = run.counters, run.trace
        except NPUFault as exc:
            fault, npu_fault = (int(exc.code), exc.pc), exc
        except CycleBudgetExceeded as exc:
            error = str(exc)
        regions = [bytes(device.read_memory(addr, size)) for addr, size in job.regions]
        results.append(JobResult(job.name, regions, counters, trace, fault, error,
                                 time.perf_counter() - start, npu_fault, device.irq_at_end))
        if error:       # a hung NPU: reset before the next job
            await device.reset()
    Path(os.environ["SOFTNPU_RESULTS"]).write_bytes(pickle.dumps(results))
