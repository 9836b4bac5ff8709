"""`softnpu sweep`: spec validation, a 4-point sweep on embedded Ray with a worker killed mid-task
(retried once, then reported failed with the point's parameters), resuming, the table and plots."""

from __future__ import annotations

import json
import socket

import pytest

from softnpu.host.scale.scaleout import ScaleOutError, check_address
from softnpu.host.scale.sweep import KILL_ENV, SpecError, load_spec, pareto_front, run_sweep

SPEC = {"base": "tiny", "models": ["digits"], "array": [4, 8], "dram_latency": [8, 32]}


def _spec(tmp_path, data, name="spec.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data) if name.endswith(".json") else data)
    return path


@pytest.mark.parametrize("data, message", [
    (dict(SPEC, rowz=[4]), "unknown config field 'rowz'"),
    (dict(SPEC, array=[4, 6]), "array: value 6 is not valid: NPUConfig.rows must be a power of two"),
    (dict(SPEC, dram_latency=[-1]), "dram_latency: value -1 is not valid"),
    (dict(SPEC, base="huge"), "base 'huge' is not a preset"),
    (dict(SPEC, models=["alexnet"]), "'alexnet' is not a zoo network"),
    (dict(SPEC, array=[4], dram_bus_bytes=[8]), "no combination is a valid config; {'array': 4, "
                                                 "'dram_latency': 8, 'dram_bus_bytes': 8}: NPUConfig"),
    (dict(SPEC, inp_depth=[]), "inp_depth: an empty list gives no points"),
])
def test_spec_errors_name_the_field_and_value(tmp_path, data, message):
    with pytest.raises(SpecError, match=None) as info:
        load_spec(_spec(tmp_path, data))
    assert message in str(info.value)


def test_yaml_spec_gives_the_cross_product(tmp_path):
    path = _spec(tmp_path, "base: tiny\nmodels: [digits]\narray: [4, 8]\ndram_latency: [8, 16, 32]\n",
                 "spec.yaml")
    spec = load_spec(path)
    assert len(spec.points) == 6
    assert {(p.config.rows, p.config.cols, p.config.dram_latency) for p in spec.points} == \
        {(a, a, lat) for a in (4, 8) for lat in (8, 16, 32)}
    assert len({p.id for p in spec.points}) == 6
    # a bus wider than the array is valid alone, not with array 4: that combination is skipped
    spec = load_spec(_spec(tmp_path, dict(SPEC, dram_latency=[8], dram_bus_bytes=[4, 8])))
    assert [(p.config.rows, p.config.dram_bus_bytes) for p in spec.points] == [(4, 4), (8, 4), (8, 8)]
    assert len(spec.skipped) == 1 and "exceeds cols=4" in spec.skipped[0]


def test_unreachable_ray_address_is_a_clear_error():
    with socket.socket() as s:                # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ScaleOutError, match=f"127.0.0.1:{port}: no Ray cluster answers there"):
        check_address(f"127.0.0.1:{port}", timeout_s=2)
    with pytest.raises(ScaleOutError, match="expected HOST:PORT"):
        check_address("nowhere")


def test_sweep_killed_worker_retry_failure_and_resume(tmp_path, monkeypatch):
    from softnpu.compiler.compile import compile_model, summary

    spec = load_spec(_spec(tmp_path, SPEC))
    out = tmp_path / "out"
    # point 0: killed once, then its retry finishes; point 1: killed on both attempts: failed
    monkeypatch.setenv(KILL_ENV, "0:1,1:2")
    table = run_sweep(spec, out, workers=2, log=lambda m: None)
    status = [r["status"] for r in table]
    assert status == ["ok", "failed", "ok", "ok"]
    failed = table[1]
    assert "worker" in failed["error"] and "died" in failed["error"]
    assert failed["array"] == spec.points[1].config.rows and failed["model"] == "digits"
    assert len(list((out / "points").glob("*.json"))) == 3
    # the figures are the cycle model's for that config
    p = spec.points[2]
    want = summary(compile_model("digits", p.config, progress=False).manifest)
    assert (table[2]["cycles"], table[2]["macs"]) == (want["cycles"], want["macs"])
    assert table[2]["utilization"] == pytest.approx(want["utilization"])

    monkeypatch.delenv(KILL_ENV)
    messages = []
    table2 = run_sweep(spec, out, workers=2, log=messages.append)
    assert messages[0].startswith("resuming: 3 of 4 points")
    assert any(m.startswith("1 points on") for m in messages)
    assert [r["status"] for r in table2] == ["ok"] * 4
    assert [r["cycles"] for r in table2 if r["id"] != failed["id"]] == \
        [r["cycles"] for r in table if r["status"] == "ok"]
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert len(csv_lines) == 5 and "util_CONV_2D" in csv_lines[0]
    assert len(json.loads((out / "results.json").read_text())) == 4
    for plot in ("pareto.png", "utilization_by_kind.png"):
        assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    front = pareto_front(table2)
    assert front[0]["macs_per_cycle"] == 16
    assert front[-1]["latency_ms"] == min(r["latency_ms"] for r in table2)


def test_point_verified_on_the_iss_matches_the_interpreter(tmp_path):
    from softnpu.compiler.compile import zoo_tflite
    from softnpu.host.scale.sweep import compute_point

    spec = load_spec(_spec(tmp_path, dict(SPEC, array=[4], dram_latency=[8], verify="iss")))
    (point,) = spec.points
    row = compute_point(point, zoo_tflite("digits", 8, progress=False))
    assert row["verify"] == "iss" and row["verified"] is True
    assert row["measured_cycles"] == row["cycles"]          # the ISS runs the compiler's cycle model
    assert load_spec(_spec(tmp_path, SPEC), verify="rtl").points[0].verify == "rtl"
    with pytest.raises(SpecError, match="verify: 'fpga'; expected iss or rtl"):
        load_spec(_spec(tmp_path, dict(SPEC, verify="fpga")))


def test_a_local_ray_node_that_does_not_start_is_started_again():
    from softnpu.host.scale import scaleout

    class FakeRay:
        def __init__(self, failures):
            self.failures, self.inits, self.shutdowns = failures, 0, 0

        def init(self, **kwargs):
            self.inits += 1
            if self.inits <= self.failures:
                raise Exception("The current node timed out during startup. This could happen because ...")

        def shutdown(self):
            self.shutdowns += 1

    once = FakeRay(1)
    scaleout._start_local(once, 2, {})
    assert (once.inits, once.shutdowns) == (2, 1)
    twice = FakeRay(2)
    with pytest.raises(Exception, match="timed out during startup"):
        scaleout._start_local(twice, 2, {})
    assert twice.inits == 2
