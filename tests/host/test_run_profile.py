"""`softnpu run` and `softnpu profile` (host/cli/run.py): the outputs and figures of one inference,
the report (JSON, CSV, Markdown, three plots as PNG and SVG), the Perfetto timeline (Chrome trace
JSON whose spans add up to the counters), and an RTL waveform bounded to one layer."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest

from softnpu.compiler.bundle import Bundle
from softnpu.compiler.compile import compile_tflite
from softnpu.compiler.cycles import estimate
from softnpu.hdl import isa
from softnpu.host.bench.timeline import MEASURED_PID, MODEL_PID, UNIT_TRACKS, validate
from softnpu.host.cli.commands import main
from softnpu.host.runtime import Runtime
from tests import oracle


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory):
    """conv -> max pool -> conv: three layers on `tiny`."""
    keras = oracle._keras()
    keras.utils.set_random_seed(3)
    x = keras.Input((10, 10, 3), batch_size=1)
    y = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    y = keras.layers.MaxPooling2D(2)(y)
    y = keras.layers.Conv2D(6, 3, padding="valid")(y)
    tflite = oracle.convert_int8(keras.Model(x, y), oracle.representative([(10, 10, 3)]))
    path = tmp_path_factory.mktemp("run") / "net.npu"
    compile_tflite(tflite, "tiny", name="net").save(path)
    return path


def test_run_writes_the_report_and_a_timeline_that_adds_up(bundle_path, tmp_path, capsys):
    report, trace = tmp_path / "report", tmp_path / "t.json"
    assert main(["run", str(bundle_path), "--report", str(report), "--trace", str(trace)]) == 0
    out = capsys.readouterr().out
    assert "cycles =" in out and "MAC utilization" in out and "MAC-active" in out
    for name in ("report.md", "profile.json", "profile.csv") + tuple(
            f"{p}.{s}" for p in ("cycles", "utilization", "roofline") for s in ("png", "svg")):
        assert (report / name).stat().st_size > 0, name
    assert (report / "cycles.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    profile = json.loads((report / "profile.json").read_text())
    layers = profile["layers"]
    assert len(layers) == 3
    # the layers cover the run from the first marker to done, and their counters add up
    assert layers[0]["start"] + sum(layer["cycles"] for layer in layers) == profile["cycles"]
    for key in ("mac_active_cycles", "dram_write_bytes"):
        assert sum(layer[key] for layer in layers) <= profile["counters"][key.replace("_cycles", "")]
    assert sum(layer["macs"] for layer in layers) == profile["macs"] > 0
    peak = profile["config"]["rows"] * profile["config"]["cols"]
    assert profile["mac_utilization"] == pytest.approx(profile["macs"] / (profile["cycles"] * peak))
    rows = list(csv.DictReader(io.StringIO((report / "profile.csv").read_text())))
    assert [int(r["cycles"]) for r in rows] == [layer["cycles"] for layer in layers]

    data = json.loads(trace.read_text())
    validate(data)
    events = data["traceEvents"]
    bundle = Bundle.load(bundle_path)
    est = estimate(bundle.manifest.npu_config, isa.decode_program(bundle.program))

    def cycles(pid, tid, skip=("wait",)):
        return sum(e["args"]["cycles"] for e in events
                   if e["ph"] == "X" and e["pid"] == pid and e["tid"] == tid and e["name"] not in skip)

    assert cycles(MODEL_PID, UNIT_TRACKS["load (DMA read)"]) == est.busy[0]
    # the compute unit's busy cycles: its conv engine's and vector unit's slices, which overlap
    covered: set[int] = set()
    for e in events:
        if (e["ph"] == "X" and e["pid"] == MODEL_PID and e["name"] != "wait"
                and e["tid"] in (UNIT_TRACKS["compute"], UNIT_TRACKS["vector unit"])):
            covered.update(range(e["args"]["start_cycle"], e["args"]["start_cycle"] + e["args"]["cycles"]))
    assert len(covered) == est.busy[1]
    assert cycles(MODEL_PID, UNIT_TRACKS["vector unit"]) > 0
    assert cycles(MODEL_PID, UNIT_TRACKS["store (DMA write)"]) == est.busy[2]
    assert cycles(MODEL_PID, UNIT_TRACKS["layers"]) == est.cycles - est.markers[0][1]
    assert cycles(MEASURED_PID, 1) == sum(layer["cycles"] for layer in layers)
    insns = [e for e in events
             if e["ph"] == "X" and e["pid"] == MODEL_PID and e["tid"] == UNIT_TRACKS["fetch"]]
    assert len(insns) == bundle.manifest.program_instructions and insns[0]["args"]["insn"]
    with pytest.raises(ValueError, match="missing"):
        validate({"traceEvents": [{"ph": "X", "name": "a", "ts": 0, "pid": 1, "tid": 1}]})


def test_profile_formats_agree_and_the_table_fits_80_columns(bundle_path, capsys):
    assert main(["profile", str(bundle_path)]) == 0
    table = capsys.readouterr().out
    assert max(len(line) for line in table.splitlines()) <= 80
    assert main(["profile", str(bundle_path), "--wide"]) == 0
    assert max(len(line) for line in capsys.readouterr().out.splitlines()) > 80
    assert main(["profile", str(bundle_path), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert main(["profile", str(bundle_path), "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [int(r["cycles"]) for r in rows] == [layer["cycles"] for layer in data["layers"]]
    assert f"{data['cycles']:,} cycles" in table


def test_run_on_rtl_records_one_layer(bundle_path, tmp_path, capsys):
    pywellen = pytest.importorskip("pywellen")
    from softnpu.sim.rtl import waves

    report = tmp_path / "report"
    assert main(["run", str(bundle_path), "--backend", "rtl", "--waves", str(tmp_path / "w.fst"),
                 "--window", "layer:1", "--report", str(report), "-q"]) == 0
    (path,) = [p for p in tmp_path.iterdir() if p.suffix in (".fst", ".vcd")]
    assert path.with_suffix(".gtkw").is_file()
    layers = json.loads((report / "profile.json").read_text())["layers"]
    first, last = waves.time_span(path)
    wave = pywellen.Waveform(str(path))
    (count,) = [v.signal for v in wave.all_vars() if v.full_name == f"{waves.TOP}.dut.perf.count_cycles"]
    # the recorded time range is layer 1: from its marker's snapshot to layer 2's
    assert count.value_at(first) == layers[1]["start"]
    assert count.value_at(last) == layers[2]["start"]


def test_recorded_inference_computes_what_the_iss_computes(bundle_path, tmp_path):
    from softnpu.host.bench.waves_run import record_inference
    from softnpu.sim.rtl.waves import Window

    bundle = Bundle.load(bundle_path)
    spec = bundle.manifest.inputs[0]
    inputs = {spec.name: np.random.default_rng(1).integers(-128, 128, spec.shape, dtype=np.int8)}
    outputs, stats, recording = record_inference(bundle, inputs, tmp_path / "w.fst",
                                                 Window.cycles(0, 50), progress=False)
    iss = Runtime.open(bundle, "iss").infer(inputs, trace=True)
    for name, value in iss.outputs.items():
        np.testing.assert_array_equal(outputs[name], value)
    assert stats.counters["mac_active"] == iss.stats.counters["mac_active"]
    assert [layer["id"] for layer in stats.layers] == [layer["id"] for layer in iss.stats.layers]
    assert recording.waves is not None


def test_verify_on_rtl_records_a_window(bundle_path, tmp_path, capsys):
    from softnpu.compiler.bundle import Bundle as _Bundle

    assert _Bundle.load(bundle_path).tflite is not None
    assert main(["verify", str(bundle_path), "--backend", "rtl", "--waves", str(tmp_path / "v.fst"),
                 "--window", "cycles:10:200"]) == 0
    out = capsys.readouterr().out
    assert "PASS" in out and "waveform:" in out
    assert any(p.suffix in (".fst", ".vcd") for p in tmp_path.iterdir())
