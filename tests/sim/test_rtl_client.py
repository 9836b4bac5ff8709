"""sim/rtl/client.py: the RTL simulation as a device in its own process, over a local socket:
results equal the ISS's, faults come back as the ISS's NPUFault, a hung or killed simulator is detected and
restarted."""

import os
import signal

import numpy as np
import pytest

from softnpu.hdl import isa
from softnpu.hdl.config import preset
from softnpu.hdl.faults import NPUFault
from softnpu.sim.iss import ISS
from softnpu.sim.rtl.client import RTLProcess, RTLRunHang, SimulatorCrashed, SimulatorHung
from tests.sim.programs import random_program

CFG = preset("tiny")


@pytest.fixture(scope="module")
def device():
    dev = RTLProcess(CFG)
    dev.start()
    yield dev
    dev.close()


def _load(dev, job):
    for addr, data in job.image:
        dev.write_memory(addr, np.frombuffer(data, np.uint8))


def _iss(job):
    iss = ISS(CFG)
    for addr, data in job.image:
        iss.write(addr, data)
    stats = iss.run(job.insn_addr, job.insn_count)
    return [bytes(iss.read(a, s)) for a, s in job.regions], stats


def test_program_over_the_socket_matches_the_iss(device):
    job = random_program(CFG, 7, kinds=["conv", "add"])
    _load(device, job)
    result = device.run(job.insn_addr, job.insn_count)
    expected, stats = _iss(job)
    assert [device.read_memory(a, s) for a, s in job.regions] == expected
    assert result["counters"]["mac_active"] == stats.counters["mac_active"]
    assert device.read_csr(isa.CSR.STATUS) & 0b110 == 0


def test_fault_comes_back_as_the_iss_fault(device):
    program = isa.Marker(id=3, pop_prev=True).encode()
    device.write_memory(0x9000, np.frombuffer(program, np.uint8))
    with pytest.raises(NPUFault) as info:
        device.run(0x9000, 1)
    assert info.value.code == isa.ErrorCode.DEADLOCK and info.value.insn == "marker id=3 pop_prev"
    with pytest.raises(NPUFault) as iss:
        ISS(CFG).run_program(program, 0x9000)
    assert str(info.value) == str(iss.value)


def test_cycle_budget_is_an_error_not_a_freeze(device):
    job = random_program(CFG, 3, kinds=["conv"])
    _load(device, job)
    with pytest.raises(RTLRunHang, match="no interrupt within 50 cycles"):
        device.run(job.insn_addr, job.insn_count, max_cycles=50)
    device.run(job.insn_addr, job.insn_count)        # the device still works


def test_killed_simulator_is_detected_and_restarted():
    dev = RTLProcess(CFG)
    dev.start()
    try:
        job = random_program(CFG, 11, kinds=["mean"])
        os.killpg(dev.process.pid, signal.SIGKILL)
        with pytest.raises(SimulatorCrashed):
            _load(dev, job)
            dev.run(job.insn_addr, job.insn_count)
        dev.restart()
        _load(dev, job)
        dev.run(job.insn_addr, job.insn_count)
        assert [dev.read_memory(a, s) for a, s in job.regions] == _iss(job)[0]
    finally:
        dev.close()


def test_deadline_kills_a_slow_simulator():
    dev = RTLProcess(CFG)
    dev.start()
    try:
        job = random_program(CFG, 18, n_layers=3)
        _load(dev, job)
        # a simulator that cannot answer (stopped, as a wedged one would be), whatever the machine's
        # load: the deadline passes, the client kills it
        os.killpg(dev.process.pid, signal.SIGSTOP)
        with pytest.raises(SimulatorHung, match="did not answer run"):
            dev.run(job.insn_addr, job.insn_count, timeout=0.5)
        assert not dev.alive
    finally:
        dev.close()
