"""The `rtl` device backend: a bundle runs on the RTL simulation in a child process and gives the
ISS's outputs; a killed simulator fails that request cleanly and the next request succeeds; a
hung run is cut off at its deadline."""

import os
import signal

import numpy as np
import pytest

from softnpu.host.devices.device import DeviceLost, DeviceTimeout, open_device
from softnpu.host.runtime import Runtime
from softnpu.host.sample import build_sample


@pytest.fixture(scope="module")
def sample():
    return build_sample("tiny")


@pytest.fixture(scope="module")
def rtl_runtime(sample):
    runtime = Runtime(sample.bundle, open_device("rtl", sample.bundle.manifest.npu_config))
    yield runtime
    runtime.device.close()


def _inputs(sample, seed):
    spec = sample.bundle.manifest.inputs[0]
    x = np.random.default_rng(seed).integers(-128, 128, spec.shape, dtype=np.int8)
    return {spec.name: x}


def test_rtl_backend_matches_the_iss(sample, rtl_runtime):
    iss = Runtime(sample.bundle, open_device("iss", sample.bundle.manifest.npu_config))
    for seed in range(2):
        inputs = _inputs(sample, seed)
        got, want = rtl_runtime.infer(inputs, trace=True), iss.infer(inputs)
        for name in want.outputs:
            np.testing.assert_array_equal(got.outputs[name], want.outputs[name])
        assert got.stats.cycles > 0 and got.stats.counters["mac_active"] == want.stats.counters["mac_active"]


def test_killed_simulator_fails_one_request_then_recovers(sample, rtl_runtime):
    rtl_runtime.infer(_inputs(sample, 0))
    os.killpg(rtl_runtime.device._proc.process.pid, signal.SIGKILL)
    with pytest.raises(DeviceLost):
        rtl_runtime.infer(_inputs(sample, 1))
    result = rtl_runtime.infer(_inputs(sample, 1))          # a new simulator, weights placed again
    iss = Runtime(sample.bundle, open_device("iss", sample.bundle.manifest.npu_config))
    for name, value in iss.infer(_inputs(sample, 1)).outputs.items():
        np.testing.assert_array_equal(result.outputs[name], value)


def test_hung_run_is_cut_off_at_the_deadline(sample, rtl_runtime):
    with pytest.raises(DeviceTimeout):
        rtl_runtime.infer(_inputs(sample, 2), timeout_s=0.001)
    rtl_runtime.infer(_inputs(sample, 2))


def test_a_simulator_that_died_while_idle_fails_one_request_then_recovers(sample, rtl_runtime):
    """The death is seen before the request reaches the socket: the request still fails (its
    memory died with the process) rather than run on a new, empty simulator."""
    rtl_runtime.infer(_inputs(sample, 0))
    proc = rtl_runtime.device._proc.process
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    with pytest.raises(DeviceLost):
        rtl_runtime.infer(_inputs(sample, 3))
    result = rtl_runtime.infer(_inputs(sample, 3))
    iss = Runtime(sample.bundle, open_device("iss", sample.bundle.manifest.npu_config))
    for name, value in iss.infer(_inputs(sample, 3)).outputs.items():
        np.testing.assert_array_equal(result.outputs[name], value)
