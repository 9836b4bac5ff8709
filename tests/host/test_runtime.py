"""The driver interface (ISS backend) and the runtime: outputs equal a direct ISS run and an
independent numpy computation of the network; bad inputs and device faults are reported."""

import numpy as np
import pytest

from softnpu.compiler import layout
from softnpu.hdl import numerics
from softnpu.hdl.config import preset
from softnpu.hdl.isa import CSR, ErrorCode
from softnpu.host.devices.device import DeviceError, IssDevice, open_device
from softnpu.host.pipeline import InputError
from softnpu.host.runtime import Runtime
from softnpu.host.sample import build_sample
from softnpu.sim.iss import ISS


def numpy_reference(model, x: np.ndarray) -> np.ndarray:
    """The sample network computed directly from its integer parameters (TFLite's arithmetic)."""
    conv, fc, mean = model.conv, model.fc, model.mean
    x = x[0].astype(np.int64) - conv.in_zero_point
    size = x.shape[0]
    oh = -(-size // 2)
    pad = max((oh - 1) * 2 + 3 - size, 0)
    top = pad // 2
    xp = np.pad(x, ((top, pad - top), (top, pad - top), (0, 0)))      # zero point pads to 0
    w = conv.weights.astype(np.int64)                                   # [O, 3, 3, I]
    acc = np.zeros((oh, oh, w.shape[0]), np.int64)
    for i in range(3):
        for j in range(3):
            acc += xp[i:i + 2 * oh:2, j:j + 2 * oh:2, :] @ w[:, i, j, :].T
    y1 = numerics.requantize(acc, conv.bias, conv.multiplier, conv.shift, conv.out_zero_point,
                             conv.act_min, conv.act_max)
    y2 = numerics.requantize(y1.astype(np.int64).sum(axis=(0, 1)), mean["bias"], mean["multiplier"],
                             mean["shift"], mean["out_zero_point"])
    acc3 = (y2.astype(np.int64) - fc.in_zero_point) @ fc.weights.reshape(fc.weights.shape[0], -1).T.astype(
        np.int64)
    return numerics.requantize(acc3, fc.bias, fc.multiplier, fc.shift, fc.out_zero_point)[None]


def random_input(model, seed):
    return np.random.default_rng(seed).integers(-128, 128, model.input.shape, dtype=np.int8)


@pytest.mark.parametrize("config", ["tiny", "default"])
def test_runtime_matches_numpy_and_a_direct_iss_run(config):
    model = build_sample(config, seed=3)
    runtime = Runtime.open(model.bundle)
    m = model.bundle.manifest
    b = preset(config).cols
    for seed in range(3):
        x = random_input(model, seed)
        result = runtime.infer({"input": x})
        np.testing.assert_array_equal(result.outputs["logits"], numpy_reference(model, x))
        # the same program on a bare ISS, memory written by hand
        iss = ISS(preset(config))
        iss.write(m.memory_map["weights"], model.bundle.weights)
        iss.write(m.memory_map["program"], model.bundle.program)
        iss.write(m.inputs[0].dram, layout.to_blocked(x[0], b))
        stats = iss.run(m.memory_map["program"], m.program_instructions)
        raw = iss.read(m.outputs[0].dram, b * -(-10 // b)).view(np.int8).reshape(-1, 1, 1, b)
        np.testing.assert_array_equal(result.outputs["logits"], layout.from_blocked(raw, 10).reshape(1, 10))
        assert result.stats.cycles == stats.cycles
        assert result.stats.counters == stats.counters
        assert result.stats.latency_s == pytest.approx(stats.cycles / (preset(config).clock_mhz * 1e6))
        iss_util = stats.utilization()          # the ISS's "mac" is the MAC-active fraction
        assert result.stats.utilization["mac_active"] == pytest.approx(iss_util.pop("mac"))
        macs = (-(-16 // 2)) ** 2 * 8 * 27 + 8 * 10
        assert result.stats.utilization.pop("mac") == pytest.approx(
            macs / (stats.cycles * preset(config).macs_per_cycle))
        assert {k: v for k, v in result.stats.utilization.items() if k != "mac_active"} == \
            pytest.approx(iss_util)
        assert result.stats.dram_read_bytes == stats.counters["dram_read_bytes"] > 0


def test_outputs_are_not_all_saturated(sample):
    outs = [Runtime.open(sample.bundle).infer({"input": random_input(sample, s)}).outputs["logits"]
            for s in range(3)]
    assert len(np.unique(np.concatenate(outs))) > 5


def test_input_without_batch_dimension_and_per_layer_trace(sample):
    runtime = Runtime.open(sample.bundle)
    x = random_input(sample, 1)
    result = runtime.infer({"input": x[0]}, trace=True)
    np.testing.assert_array_equal(result.outputs["logits"], numpy_reference(sample, x))
    layers = result.stats.layers
    assert [layer["name"] for layer in layers] == ["conv", "mean", "fc"]
    assert all(layer["cycles"] > 0 for layer in layers)
    assert sum(layer["cycles"] for layer in layers) <= result.stats.cycles


@pytest.mark.parametrize("inputs, message", [
    ({"input": np.zeros((1, 16, 16, 3), np.float32)}, "dtype float32"),
    ({"input": np.zeros((1, 16, 16, 4), np.int8)}, "shape [1, 16, 16, 4]"),
    ({"image": np.zeros((1, 16, 16, 3), np.int8)}, "unknown ['image']"),
    ({}, "missing ['input']"),
])
def test_bad_inputs_raise_input_error(sample, inputs, message):
    runtime = Runtime.open(sample.bundle)
    with pytest.raises(InputError) as info:
        runtime.infer(inputs)
    assert message in str(info.value)


def test_config_mismatch_is_refused(sample):
    with pytest.raises(ValueError, match="targets NPU config 'tiny'"):
        Runtime(sample.bundle, IssDevice(preset("default")))


def test_device_fault_carries_error_code_and_recovers(sample, broken_bundle_path):
    device = IssDevice(preset("tiny"))
    broken = Runtime(broken_bundle_path, device)
    good = Runtime(sample.bundle, device)
    x = random_input(sample, 0)
    with pytest.raises(DeviceError) as info:
        broken.infer({"input": x})
    assert info.value.code == ErrorCode.ILLEGAL_OPCODE and info.value.code_name == "ILLEGAL_OPCODE"
    assert info.value.pc == 1
    assert "ILLEGAL_OPCODE" in str(info.value) and "instruction 1" in str(info.value)
    # the device was reset; the other runtime re-places its weights and runs correctly
    np.testing.assert_array_equal(good.infer({"input": x}).outputs["logits"], numpy_reference(sample, x))


def test_runtimes_sharing_a_device_replace_each_others_weights():
    a, b = build_sample("tiny", seed=1), build_sample("tiny", seed=2)
    device = IssDevice(preset("tiny"))
    ra, rb = Runtime(a.bundle, device), Runtime(b.bundle, device)
    x = random_input(a, 4)
    for _ in range(2):
        np.testing.assert_array_equal(ra.infer({"input": x}).outputs["logits"], numpy_reference(a, x))
        np.testing.assert_array_equal(rb.infer({"input": x}).outputs["logits"], numpy_reference(b, x))


def test_driver_interface_through_csrs(sample):
    device = open_device("iss", preset("tiny"))
    m = sample.bundle.manifest
    device.write_memory(m.memory_map["weights"], sample.bundle.weights)
    device.write_memory(m.memory_map["program"], np.frombuffer(sample.bundle.program, np.uint8))
    device.start(m.memory_map["program"], m.program_instructions)
    assert device.wait(1.0) is True
    assert device.read_csr(CSR.STATUS) & 2
    assert device.read_csr(CSR.INSN_COUNT) == m.program_instructions
    counters = device.read_counters()
    assert counters["cycles"] > 0 and counters["mac_active"] > 0
    assert [marker for marker, _ in device.read_trace()] == [0, 1, 2]
    assert bytes(device.read_memory(m.memory_map["program"], 32)) == sample.bundle.program[:32]
    device.reset()
    assert device.read_csr(CSR.STATUS) == 0
    # a misaligned program address is a device fault, reported with its code
    device.start(2, 1)
    with pytest.raises(DeviceError) as info:
        device.wait(1.0)
    assert info.value.code_name == "DRAM_ALIGN"
    with pytest.raises(ValueError, match="unknown device backend 'fpga'"):
        open_device("fpga", preset("tiny"))
    device.close()
