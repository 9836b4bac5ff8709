"""The RTL simulation harness: the NPU's Verilog (from hdl/npu.py) beside an AXI4 memory model
whose storage is the DPI-C byte array Python reaches in bulk (sim/rtl/axi_mem.sv, sim/dpi_mem.*),
built once per (config, sources) hash by sim/rtl/build.py.

`build(config)` returns the cached build folder; cocotb test modules then drive it through
sim/rtl/device.py.  The harness top, `npu_sim_top`, has the clock, reset, the AXI4-Lite CSR port,
the interrupt and the debug signals as its ports; the design inside stays private to Verilator.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

from amaranth.back import verilog

from softnpu.hdl.config import NPUConfig
from softnpu.hdl.npu import NPU
from softnpu.sim.rtl import build as rtl_build
from softnpu.sim.rtl import toolchain

__all__ = ["TOPLEVEL", "verilog_sources", "build", "run"]

TOPLEVEL = "npu_sim_top"
HDL_DIR = Path(__file__).resolve().parent.parent.parent / "hdl"
AXI_MEM_SV = Path(__file__).resolve().parent / "axi_mem.sv"
# $dumpoff/$dumpon for the waveform window (waves builds only: it needs the dumper that $dumpvars adds)
DPI_TRACE_CPP = Path(__file__).resolve().parent / "dpi_trace.cpp"
_AXIL = ("awaddr", "awvalid", "awready", "wdata", "wvalid", "wready", "bvalid", "bready", "araddr",
         "arvalid", "arready", "rdata", "rvalid", "rready")
_AXIL_WIDTH = {"awaddr": 16, "araddr": 16, "wdata": 32, "rdata": 32}
_AXIL_OUT = {"awready", "wready", "bvalid", "arready", "rdata", "rvalid"}
_AXI = ("araddr", "arlen", "arvalid", "arready", "rdata", "rlast", "rvalid", "rready", "awaddr", "awlen",
        "awvalid", "awready", "wdata", "wstrb", "wlast", "wvalid", "wready", "bvalid", "bready")
DEBUG = {**{f"{u}_{k}": 1 for u in ("load", "compute", "store") for k in ("busy", "stall")},
         **{f"{u}_pc": 32 for u in ("fetch", "load", "compute", "store")},
         "running": 1, "marker": 1, "marker_id": 16}         # port name -> bits
# The waveform window's inputs (sim/rtl/waves.py); present in every build, used in waves builds.
TRACE_INPUTS = {"trace_arm": 1, "trace_by_marker": 1, "trace_marker": 16, "trace_start": 64,
                "trace_length": 64}


def _window(waves: bool) -> str:
    """The waveform window of a waves build (see sim/rtl/waves.py for what the inputs mean).

    Decided at falling edges, where the state of the cycle has settled, so that Python never wakes
    per cycle: the trace opens ($dumpfile/$dumpvars, every signal from the top) or resumes when the
    window starts and pauses when it ends.  Verilator ignores $dumpoff/$dumpon: sim/rtl/dpi_trace.cpp
    does their work.  `trace_cycle` follows the NPU's `cycles` counter (cycles since CTRL.start).
    """
    if not waves:
        return ""
    return f"""
    // -- waveform window (sim/rtl/waves.py, sim/rtl/dpi_trace.cpp) --
    import "DPI-C" context function void softnpu_trace_pause(input bit pause);
    import "DPI-C" context function void softnpu_trace_close();
    string trace_path;
    bit trace_opened = 1'b0, trace_dumping = 1'b0, trace_in_layer = 1'b0, trace_want;
    logic [63:0] trace_cycle = 64'd0;
    initial if (!$value$plusargs("softnpu_waves=%s", trace_path)) trace_path = "waves.fst";
    always @(posedge clk) trace_cycle <= debug_running ? trace_cycle + 64'd1 : 64'd0;
    always @(negedge clk) begin
        if (!debug_running) trace_in_layer = 1'b0;
        else if (debug_marker) trace_in_layer = (debug_marker_id == trace_marker);
        trace_want = trace_arm && debug_running && (trace_by_marker ? trace_in_layer
            : (trace_cycle >= trace_start
               && (trace_length == 64'd0 || trace_cycle - trace_start < trace_length)));
        if (trace_want && !trace_dumping) begin
            if (!trace_opened) begin
                $dumpfile(trace_path);
                $dumpvars(0, {TOPLEVEL});
                trace_opened = 1'b1;
            end else softnpu_trace_pause(1'b0);
            trace_dumping = 1'b1;
        end else if (!trace_want && trace_dumping) begin
            softnpu_trace_pause(1'b1);
            trace_dumping = 1'b0;
        end
    end
    final if (trace_opened) softnpu_trace_close();
"""


def _range(width: int) -> str:
    """A declaration's range: none for one bit, so that waveform viewers name the signal plainly
    (a `[0:0]` wire appears as `name[0:0]` in GTKWave)."""
    return "" if width == 1 else f"[{width - 1}:0] "


def harness_widths(config: NPUConfig) -> dict[str, int]:
    """Bits of every port and AXI wire of the harness top, by name (what sim/rtl/waves.py lists)."""
    bus = config.dram_bus_bytes
    axi = {"araddr": 32, "arlen": 8, "rdata": 8 * bus, "awaddr": 32, "awlen": 8, "wdata": 8 * bus,
           "wstrb": bus}
    return {"clk": 1, "rst": 1, "irq": 1, "backpressure": 1,
            **{f"s_axil_{n}": _AXIL_WIDTH.get(n, 1) for n in _AXIL},
            **{f"debug_{n}": w for n, w in DEBUG.items()}, **TRACE_INPUTS,
            **{f"axi_{n}": axi.get(n, 1) for n in _AXI}}


def _harness(config: NPUConfig, waves: bool = False) -> str:
    bus = config.dram_bus_bytes
    widths = harness_widths(config)
    ports = ["input wire rst", "output wire irq", "input wire backpressure"]
    for name in _AXIL:
        port = f"s_axil_{name}"
        ports.append(f"{'output' if name in _AXIL_OUT else 'input'} wire {_range(widths[port])}{port}")
    for name in DEBUG:
        ports.append(f"output wire {_range(widths[f'debug_{name}'])}debug_{name}")
    for name, width in TRACE_INPUTS.items():
        ports.append(f"input wire {_range(width)}{name}")
    wires = "\n".join(f"    wire {_range(widths[f'axi_{n}'])}axi_{n};" for n in _AXI)
    conns = [".clk(clk)", ".rst(rst)", ".irq(irq)"]
    conns += [f".m_axi__{n}(axi_{n})" for n in _AXI]
    conns += [f".s_axil__{n}(s_axil_{n})" for n in _AXIL]
    conns += [f".debug__{n}(debug_{n})" for n in DEBUG]
    mem = ", ".join(f".{n}(axi_{n})" for n in _AXI)
    return f"""// generated by sim/rtl/harness.py for NPU config {config.name!r}
`timescale 1ns/1ps
module {TOPLEVEL}(
    {(','+chr(10)+'    ').join(ports)}
);
    // The clock runs in the simulator (needs --timing), so Python is never woken per cycle;
    // measured 2.2x faster than cocotb's GPI clock on the smoke design.
    logic clk = 1'b0;
    initial forever #5 clk = ~clk;
{wires}
    npu dut(
        {(','+chr(10)+'        ').join(conns)}
    );
    softnpu_axi_mem #(.DATA_BYTES({bus}), .LATENCY({config.dram_latency})) memory(
        .clk(clk), .rst(rst), .backpressure(backpressure), {mem}
    );{_window(waves)}
endmodule
"""


def verilog_sources(config: NPUConfig, out_dir: str | Path, waves: bool = False) -> list[Path]:
    """Write the NPU's Verilog, the harness top (with the waveform window if `waves`) and the memory
    model into `out_dir`.  No source locations in the Verilog: a build does not depend on where
    the checkout is."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    npu_v = out_dir / "npu.v"
    npu_v.write_text(verilog.convert(NPU(config), name="npu", emit_src=False))
    top = out_dir / "npu_sim_top.sv"
    top.write_text(_harness(config, waves))
    mem = out_dir / "axi_mem.sv"
    mem.write_text(AXI_MEM_SV.read_text())
    return [npu_v, mem, top]


def _source_key(config: NPUConfig, waves: bool) -> str:
    """A hash of everything the generated Verilog comes from (hdl/ and the harness sources) and of the
    toolchain that builds it, so a cached build is found without running Amaranth again."""
    digest = hashlib.sha256(config.to_json().encode() + json.dumps(toolchain.fingerprint(waves),
                                                                  sort_keys=True).encode())
    for path in sorted(HDL_DIR.glob("*.py")) + [Path(__file__), AXI_MEM_SV, DPI_TRACE_CPP]:
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:24]


def build(config: NPUConfig, waves: bool = False) -> Path:
    """The cached simulator of the NPU at `config` (builds it the first time: tens of seconds for
    `tiny`, minutes for `default`)."""
    index = rtl_build.cache_root() / "by-source" / _source_key(config, waves)
    if index.is_file():
        build_dir = Path(index.read_text().strip())
        if (build_dir / rtl_build._META).is_file():
            return build_dir
    with tempfile.TemporaryDirectory(prefix="softnpu_rtl_") as tmp:
        from softnpu.progress import activity

        with activity(f"Amaranth: generating the NPU's Verilog ({config.name}, {config.rows}x{config.cols})"):
            sources = verilog_sources(config, tmp, waves)
        build_dir = rtl_build.build(sources, TOPLEVEL, {"npu_config": config.to_dict()}, waves,
                                    cpp_sources=[DPI_TRACE_CPP] if waves else [], extra_args=["--timing"])
    index.parent.mkdir(parents=True, exist_ok=True)
    index.write_text(str(build_dir))
    return build_dir


def run(build_dir: Path, test_module: str, config: NPUConfig, testcase: str | None = None,
        extra_env: dict[str, str] | None = None, waves: str | Path | None = None, **kwargs):
    """Run cocotb tests of `test_module` on a build, with the DPI memory sized to the config.

    `waves` names the trace file that the harness's window writes (a waves build; the window's
    inputs are set by the test, see sim/rtl/waves.py); without a window nothing is written."""
    env = {"SOFTNPU_MEM_BYTES": str(config.dram_bytes), "SOFTNPU_NPU_CONFIG": config.to_json(),
           **(extra_env or {})}
    plusargs = list(kwargs.pop("plusargs", ()))
    if waves is not None:
        if not rtl_build.build_info(build_dir)["waves"]:
            raise ValueError(f"waves={waves!s} asked of {build_dir}, which was built without waves=True")
        plusargs.append(f"+softnpu_waves={Path(waves).resolve()}")
    return rtl_build.run(build_dir, test_module, testcase=testcase, extra_env=env, plusargs=plusargs,
                         **kwargs)
