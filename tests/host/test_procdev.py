"""ProcessDevice: the ISS in a child process over a Unix socket gives the in-process answers; a
child that dies or hangs is detected within its deadline, reported, and restarted."""

import os
import signal

import numpy as np
import pytest

from softnpu.hdl.config import preset
from softnpu.host.devices.device import DeviceLost, open_device
from softnpu.host.devices.process import ProcessDevice
from softnpu.host.runtime import Runtime
from softnpu.host.serving.client import PredictionClient


@pytest.fixture()
def device():
    d = ProcessDevice(preset("tiny"), call_timeout_s=10)
    yield d
    d.close()


def _x(seed=0):
    return np.random.default_rng(seed).integers(-128, 128, (1, 16, 16, 3), dtype=np.int8)


def test_same_outputs_and_counters_as_the_in_process_iss(device, sample):
    remote, local = Runtime(sample.bundle, device), Runtime.open(sample.bundle)
    for seed in range(3):
        a, b = remote.infer({"input": _x(seed)}, trace=True), local.infer({"input": _x(seed)}, trace=True)
        np.testing.assert_array_equal(a.outputs["logits"], b.outputs["logits"])
        assert a.stats.counters == b.stats.counters and a.stats.layers == b.stats.layers
    assert device.backend == "iss-process"


def test_a_killed_child_is_reported_and_restarted(device, sample):
    runtime = Runtime(sample.bundle, device)
    expected = runtime.infer({"input": _x()}).outputs["logits"]
    os.kill(device.proc.pid, signal.SIGKILL)
    device.proc.wait(5)
    with pytest.raises(DeviceLost, match="is gone"):
        runtime.infer({"input": _x()})
    np.testing.assert_array_equal(runtime.infer({"input": _x()}).outputs["logits"], expected)
    assert device.restarts == 1


def test_a_hung_child_is_killed_at_its_deadline(device, sample):
    runtime = Runtime(sample.bundle, device)
    expected = runtime.infer({"input": _x()}).outputs["logits"]
    device.call_timeout_s = 0.5
    stopped = device.proc
    os.kill(stopped.pid, signal.SIGSTOP)          # a simulator that stops answering
    with pytest.raises(DeviceLost, match="hung"):
        runtime.infer({"input": _x()})
    assert stopped.poll() is not None             # killed, not left behind
    device.call_timeout_s = 10
    np.testing.assert_array_equal(runtime.infer({"input": _x()}).outputs["logits"], expected)


def test_bad_requests_are_answered_and_the_child_lives_on(device):
    with pytest.raises(ValueError, match="exceeds device memory"):
        device.read_memory(preset("tiny").dram_bytes, 16)
    device.write_memory(64, b"\x01\x02\x03\x04")
    assert bytes(device.read_memory(64, 4)) == b"\x01\x02\x03\x04"


def test_the_child_exits_when_closed():
    d = open_device("iss-process", preset("tiny"))
    proc = d.proc
    d.close()
    assert proc.wait(5) is not None


def test_service_on_process_devices_survives_a_crash(serve, sample):
    server = serve(backend="iss-process", workers=1)
    with PredictionClient(server.address, model="sample", timeout=30, retries=0) as client:
        expected = client.predict({"input": _x()}, "logits_int8")
        worker = server.pool._all[0]
        (child,) = worker.devices.values()
        os.kill(child.proc.pid, signal.SIGKILL)
        child.proc.wait(5)
        from softnpu.host.serving.client import ScoreError
        with pytest.raises(ScoreError) as info:
            client.predict({"input": _x()}, "logits_int8")
        assert info.value.code.name == "UNAVAILABLE" and "restarted" in info.value.message
        np.testing.assert_array_equal(client.predict({"input": _x()}, "logits_int8"), expected)
