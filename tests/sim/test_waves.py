"""Waveforms of RTL runs (sim/rtl/waves.py) at the `tiny` config: a layer window and a cycle window are
recorded, hold the signals of every unit named in the GTKWave save file, and are bounded to the
window (first and last time steps, size against a whole-run trace); one job of a batch; a window
that never opens; the VCD format.

Reading FST back needs pywellen (test extras)."""

import warnings

import pytest

from softnpu.hdl.config import preset
from softnpu.sim.rtl import waves
from softnpu.sim.rtl.bench import conv_program
from softnpu.sim.rtl.waves import Window

pywellen = pytest.importorskip("pywellen")

CFG = preset("tiny")
CYCLE_NS = 10
PS = 1000                    # Verilator's trace unit is 1 ps
TOP = waves.TOP
UNITS = ("fetch", "load", "compute", "store", "CSR", "memory port")


def _conv_job():
    job, _ = conv_program(CFG, convs=4, blocks=2, out=6)       # ~6000 cycles
    return job


def _values(path, names):
    """name -> Signal of a trace file (FST or VCD)."""
    wave = pywellen.Waveform(str(path))
    found = {v.full_name: v.signal for v in wave.all_vars() if v.full_name in names}
    missing = set(names) - set(found)
    assert not missing, f"{sorted(missing)} not in {path}"
    return found


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return tmp_path_factory.mktemp("waves")


@pytest.fixture(scope="module")
def layer(out):
    return waves.record(CFG, [waves.example_job(CFG)], out / "layer.fst", Window.layer(2))


@pytest.fixture(scope="module")
def whole(out):
    return waves.record(CFG, [_conv_job()], out / "whole.fst")


@pytest.fixture(scope="module")
def window(out):
    # job 0 is the example program, job 1 the convolution: only job 1's cycles 300..500 are recorded
    return waves.record(CFG, [waves.example_job(CFG), _conv_job()], out / "cycles.fst",
                        Window.cycles(300, 200, job=1))


def test_window_validation():
    with pytest.raises(ValueError, match="layer"):
        Window(marker=2, start=5)
    with pytest.raises(ValueError, match="length"):
        Window.cycles(0, 0)
    with pytest.raises(ValueError, match="16-bit"):
        Window.layer(1 << 16)
    with pytest.raises(TypeError, match="start"):
        Window(start=1.5)
    assert Window.from_json(Window.cycles(3, 4, job=1).to_json()) == Window.cycles(3, 4, job=1)
    assert Window.layer(2).applies_to(5) and not Window.cycles(0, job=1).applies_to(0)


def test_layer_window_holds_every_unit_and_starts_at_its_marker(layer):
    assert layer.results[0].counters is not None, layer.results[0]
    assert layer.waves.suffix == f".{waves.wave_format()}" and layer.waves.stat().st_size > 0
    present = waves.read_signals(layer.waves)
    groups = waves.gtkw_signals(layer.gtkw)
    assert set(UNITS) <= set(groups)
    for unit in UNITS:
        names = [f"{n}" for n in groups[unit]]
        assert len(names) >= 4, f"{unit}: {names}"
        assert all(n in present for n in names), f"{unit}: {[n for n in names if n not in present]}"
    assert f"{TOP}.dut.fetch.pc" in present and f"{TOP}.dut.compute.mac_active" in present
    first, last = waves.time_span(layer.waves)
    sig = _values(layer.waves, {f"{TOP}.debug_marker", f"{TOP}.debug_marker_id",
                                f"{TOP}.dut.perf.count_cycles"})
    # opens in the cycle MARKER 2 retires and ends with the cycle MARKER 3 retires
    assert sig[f"{TOP}.debug_marker"].value_at(first) == 1
    assert sig[f"{TOP}.debug_marker_id"].value_at(first) == 2
    assert sig[f"{TOP}.debug_marker"].value_at(last) == 1
    assert sig[f"{TOP}.debug_marker_id"].value_at(last) == 3
    # the trace buffer's snapshots of markers 2 and 3 bound the window, to the cycle
    snapshots = {marker: values["cycles"] for marker, values in layer.results[0].trace}
    assert sig[f"{TOP}.dut.perf.count_cycles"].value_at(first) == snapshots[2]
    assert sig[f"{TOP}.dut.perf.count_cycles"].value_at(last) == snapshots[3]


def test_cycle_window_is_bounded(window, whole):
    assert [r.counters is not None for r in window.results] == [True, True]
    first, last = waves.time_span(window.waves)
    assert last - first <= 200 * CYCLE_NS * PS
    sig = _values(window.waves, {f"{TOP}.dut.perf.count_cycles", f"{TOP}.dut.csr.insn_count"})
    assert sig[f"{TOP}.dut.perf.count_cycles"].value_at(first) == 300
    assert sig[f"{TOP}.dut.perf.count_cycles"].value_at(last) == 500
    # it is job 1's run (the convolution program), not job 0's
    assert sig[f"{TOP}.dut.csr.insn_count"].value_at(first) == _conv_job().insn_count
    # a whole-run trace of the same program is many times larger
    cycles = whole.results[0].counters["cycles"]
    whole_first, whole_last = waves.time_span(whole.waves)
    assert whole_last - whole_first >= (cycles - 1) * CYCLE_NS * PS
    assert window.waves.stat().st_size * 8 < whole.waves.stat().st_size, \
        (window.waves.stat().st_size, whole.waves.stat().st_size)


def test_gtkw_groups_signals_by_unit(layer):
    text = layer.gtkw.read_text()
    assert f'[dumpfile] "{layer.waves.resolve()}"' in text
    groups = waves.gtkw_signals(layer.gtkw)
    assert f"{TOP}.dut.fetch.pc" in groups["fetch"]
    assert f"{TOP}.dut.load.burst.row_addr" in groups["load"]
    assert f"{TOP}.dut.store.burst.row_addr" in groups["store"]
    assert f"{TOP}.axi_araddr" in groups["memory port"]
    assert f"{TOP}.s_axil_awaddr" in groups["CSR"]
    assert f"{TOP}.dut.fetch.pc[31:0]" in text          # vectors carry their range, as GTKWave names them
    first, _ = waves.time_span(layer.waves)
    assert f"[timestart] {first}" in text               # the view opens on the window


def test_a_window_that_never_opens_writes_nothing(out):
    with pytest.warns(RuntimeWarning, match="never opened"):
        rec = waves.record(CFG, [waves.example_job(CFG)], out / "none.fst", Window.layer(99))
    assert rec.waves is None and rec.gtkw is None
    assert rec.results[0].counters is not None


def test_vcd_when_asked(out, monkeypatch):
    monkeypatch.setenv("SOFTNPU_WAVE_FORMAT", "vcd")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rec = waves.record(CFG, [waves.example_job(CFG)], out / "layer_vcd.fst", Window.layer(2))
    assert any("SOFTNPU_WAVE_FORMAT=vcd" in str(w.message) for w in caught), [str(w.message) for w in caught]
    assert rec.waves.suffix == ".vcd" and rec.waves.read_text().startswith("$")
    present = waves.read_signals(rec.waves)
    for unit in UNITS:
        assert all(n in present for n in waves.gtkw_signals(rec.gtkw)[unit]), unit
    first, last = waves.time_span(rec.waves)
    snapshots = {marker: values["cycles"] for marker, values in rec.results[0].trace}
    assert (last - first) <= (snapshots[3] - snapshots[2]) * CYCLE_NS * PS


def test_widths_from_the_verilog_match_the_trace(layer):
    """Without an FST reader the save file is written from the build's Verilog: same names, same
    widths as the trace holds."""
    from softnpu.sim.rtl import harness as rtl_harness

    from_verilog = waves.design_widths(rtl_harness.build(CFG, waves=True), CFG)
    in_trace = waves.read_signals(layer.waves)
    for names in waves.UNIT_SIGNALS.values():
        for name in names:
            full = f"{TOP}.{name}"
            assert from_verilog.get(full) == in_trace[full], full
    written = waves.write_gtkw(layer.waves.with_name("from_verilog.fst"), from_verilog, only_present=False)
    def signal_lines(path):
        lines = path.read_text().splitlines()
        return lines[next(i for i, line in enumerate(lines) if line.startswith("@")):]

    assert signal_lines(written) == signal_lines(layer.gtkw)
