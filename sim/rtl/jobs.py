"""Run NPU programs on the RTL simulation in batches: one simulator process runs many jobs (a job
= a memory image, a program, and the memory regions to read back), so the simulator's start-up
is paid once.  Used by the differential tests (RTL vs ISS) and the RTL benchmark.

Host side: `run_jobs(config, jobs)`.  Simulator side: the cocotb test in sim/rtl/cocotb_jobs.py.
"""

from __future__ import annotations

import dataclasses
import pickle
import tempfile
from pathlib import Path

from softnpu.hdl.config import NPUConfig
from softnpu.hdl.faults import NPUFault
from softnpu.sim.rtl import harness as rtl_harness
from softnpu.sim.rtl import waves as wave_files

__all__ = ["Job", "JobResult", "run_jobs"]


@dataclasses.dataclass
class Job:
    name: str
    image: list[tuple[int, bytes]]           # (address, bytes) written before the run
    insn_addr: int
    insn_count: int
    regions: list[tuple[int, int]]           # (address, size) read back after the run
    max_cycles: int = 5_000_000
    backpressure: bool = False               # the memory model stalls at random


@dataclasses.dataclass
class JobResult:
    name: str
    regions: list[bytes]
    counters: dict[str, int] | None
    trace: list | None
    fault: tuple[int, int] | None            # (ErrorCode, instruction index)
    error: str | None                        # a hang: the budget message naming the units
    wall_s: float
    npu_fault: NPUFault | None = None        # the fault with its instruction and address
    irq: bool = False                        # the interrupt line was up when the run ended


def run_jobs(config: NPUConfig, jobs: list[Job], *, waves: str | Path | None = None,
             window: wave_files.Window | None = None, build_dir: Path | None = None) -> list[JobResult]:
    """Run `jobs` in one simulator process on the (cached) build of the NPU at `config`.

    With `waves`, the run records a trace into `sim.waves.wave_path(waves)` (FST, or VCD where FST
    can't be compiled) beside a GTKWave save file: `window` of every run (default: every run whole),
    see sim/rtl/waves.py.  Use `sim.waves.record` to be told the paths."""
    if waves is None and window is not None:
        raise ValueError("window= needs waves=PATH: the file to write the window into")
    build_dir = build_dir or rtl_harness.build(config, waves=waves is not None)
    env = {}
    if waves is not None:
        waves = wave_files.wave_path(waves)
        waves.parent.mkdir(parents=True, exist_ok=True)
        waves.unlink(missing_ok=True)
        env["SOFTNPU_WAVE_WINDOW"] = (window or wave_files.Window()).to_json()
    with tempfile.TemporaryDirectory(prefix="softnpu_jobs_") as tmp:
        job_file, result_file = Path(tmp) / "jobs.pkl", Path(tmp) / "results.pkl"
        job_file.write_bytes(pickle.dumps(jobs))
        rtl_harness.run(build_dir, "softnpu.sim.rtl.cocotb_jobs", config, testcase="run_jobs",
                        extra_env={"SOFTNPU_JOBS": str(job_file), "SOFTNPU_RESULTS": str(result_file),
                                   **env},
                        test_dir=Path(tmp) / "run", waves=waves)
        results = pickle.loads(result_file.read_bytes())
    if waves is not None:
        wave_files.finish(waves, window or wave_files.Window(), len(jobs), build_dir, config)
    return results
