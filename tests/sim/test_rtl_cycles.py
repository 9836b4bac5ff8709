"""The RTL's cycle behaviour is pinned: every counter, the marker trace, the fault and a digest of the
memory regions read back, for the programs of tests/sim/test_rtl.py at `tiny`, must equal the
figures recorded in rtl_cycles_tiny.json (recorded on the RTL before the typed-interface refactor
of hdl/, commit 968529e; re-recorded for `dram_outstanding` bursts in flight, which changed only
cycles and dram_read_bytes, now the ISS's on the FULLY_CONNECTED programs, and for the pipelined
vector unit and conv engine; outputs, faults and marker order are the same).  A refactor of hdl/
that moves one counter by one cycle fails here.

Re-record only for an intended timing change: SOFTNPU_RECORD_CYCLES=1 pytest tests/sim/test_rtl_cycles.py
"""

import hashlib
import json
import os
from pathlib import Path

import pytest

from softnpu.hdl.config import preset
from softnpu.sim.rtl.jobs import run_jobs
from tests.sim.programs import random_program
from tests.sim.test_rtl import KINDS, _error_jobs

FIGURES = Path(__file__).with_name("rtl_cycles_tiny.json")
N_RANDOM = 24

pytestmark = pytest.mark.skipif(os.environ.get("SOFTNPU_RTL_CONFIG", "tiny") != "tiny",
                                reason="the recorded figures are for the tiny preset")


def _jobs():
    cfg = preset("tiny")
    jobs = {}
    for i, kind in enumerate(KINDS):
        jobs[f"kind:{kind}"] = random_program(cfg, 1000 + i, kinds=[kind])
        jobs[f"backpressure:{kind}"] = random_program(cfg, 1000 + i, kinds=[kind], backpressure=True)
    for seed in range(N_RANDOM):
        jobs[f"random:{seed}"] = random_program(cfg, seed)
    for job in _error_jobs():
        jobs[f"error:{job.name}"] = job
    return jobs


def _figures(res) -> dict:
    return {"counters": res.counters, "trace": res.trace and [[m, v] for m, v in res.trace],
            "fault": list(res.fault) if res.fault else None, "error": res.error,
            "regions": [hashlib.sha256(r).hexdigest() for r in res.regions]}


@pytest.fixture(scope="module")
def measured():
    jobs = _jobs()
    results = run_jobs(preset("tiny"), list(jobs.values()))
    return {key: _figures(res) for key, res in zip(jobs, results, strict=True)}


def test_counters_trace_and_outputs_equal_the_recorded_figures(measured):
    if os.environ.get("SOFTNPU_RECORD_CYCLES"):
        FIGURES.write_text(json.dumps(measured, indent=1, sort_keys=True) + "\n")
        pytest.skip(f"recorded {FIGURES}")
    recorded = json.loads(FIGURES.read_text())
    assert sorted(measured) == sorted(recorded)
    for key, want in recorded.items():
        got = json.loads(json.dumps(measured[key]))
        for part in ("fault", "error", "counters", "trace", "regions"):
            assert got[part] == want[part], f"{key}: {part} differ: RTL {got[part]} recorded {want[part]}"
    total = sum(f["counters"]["cycles"] for f in recorded.values() if f["counters"])
    print(f"\n{len(recorded)} programs, {total} cycles in all: identical to the recorded figures")
