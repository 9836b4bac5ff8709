"""Waveforms of RTL runs: FST (VCD where FST can't be compiled, with a warning saying why), of a
whole run or only a window of it (a range of cycles, or one layer: from its MARKER to the next),
beside a GTKWave save file (.gtkw) that groups the signals by unit.

    from softnpu.sim.rtl.jobs import run_jobs
    from softnpu.sim.rtl.waves import Window, record
    rec = record(config, [job], "out/waves/conv.fst", Window.layer(2))   # rec.waves, rec.gtkw
    run_jobs(config, jobs, waves="out/all.fst", window=Window.cycles(1000, 500))

    python -m sim.waves -o out/waves [--config tiny] [--layer ID | --cycles START LENGTH]

How a window is recorded: the simulator is built with tracing (`rtl_harness.build(waves=True)`)
but started without cocotb's runtime --trace, so nothing is dumped by default.  The harness top
(sim/rtl/harness.py) watches the NPU's debug ports itself, at every falling clock edge, in the
simulator: it counts the run's cycles as the NPU's `cycles` counter does and follows the MARKER
strobes.  When the window starts it opens the trace with $dumpfile/$dumpvars (the path comes as
the plusarg +softnpu_waves=PATH) and when it ends it pauses it; Verilator ignores $dumpoff and
$dumpon, so sim/rtl/dpi_trace.cpp does their work through DPI-C.  Python only sets the window's
inputs before a run and is never woken per cycle.

Limits: one trace file per simulator process; a window that never opens (a start beyond the run,
a marker id the program lacks) writes no file; the FST time unit is 1 ps (one cycle = 10 000);
between the windows of several runs the file holds the values of the last dumped step.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import warnings
from pathlib import Path

from softnpu.hdl.config import NPUConfig
from softnpu.sim.rtl import toolchain

__all__ = ["Window", "Recording", "UNIT_SIGNALS", "wave_path", "wave_format", "record", "finish",
           "read_signals", "design_widths", "time_span", "write_gtkw", "gtkw_signals"]

TOP = "npu_sim_top"
DUT = f"{TOP}.dut"


@dataclasses.dataclass(frozen=True)
class Window:
    """What to record of a run.  Cycles count from the run's start as the NPU's `cycles` counter
    does (0 = the cycle after CTRL.start); a run ends the window in any case.

    * `start`, `length`: cycles [start, start+length) (length None: to the run's end);
    * `marker`: the layer whose MARKER has this id, until the next MARKER retires;
    * `job`: the index of the job of a batch to record (None: every job).
    """

    start: int = 0
    length: int | None = None
    marker: int | None = None
    job: int | None = None

    def __post_init__(self):
        for name in ("start", "length", "marker", "job"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise TypeError(f"Window.{name} must be an int, got {value!r}")
        if self.start < 0 or self.start >= 1 << 64:
            raise ValueError(f"Window.start must be a cycle in [0, 2**64), got {self.start}")
        if self.length is not None and not 1 <= self.length < 1 << 64:
            raise ValueError(f"Window.length must be a positive number of cycles, got {self.length}")
        if self.marker is not None:
            if not 0 <= self.marker < 1 << 16:
                raise ValueError(f"Window.marker must be a 16-bit MARKER id, got {self.marker}")
            if self.start or self.length is not None:
                raise ValueError(f"Window(marker={self.marker}) is a layer: start={self.start} and "
                                 f"length={self.length} do not apply")
        if self.job is not None and self.job < 0:
            raise ValueError(f"Window.job must be a job index >= 0, got {self.job}")

    @classmethod
    def cycles(cls, start: int, length: int | None = None, job: int | None = None) -> Window:
        return cls(start=start, length=length, job=job)

    @classmethod
    def layer(cls, marker: int, job: int | None = None) -> Window:
        return cls(marker=marker, job=job)

    def applies_to(self, job_index: int) -> bool:
        return self.job is None or self.job == job_index

    def describe(self) -> str:
        if self.marker is not None:
            what = f"the layer of MARKER {self.marker} (to the next MARKER)"
        elif self.start == 0 and self.length is None:
            what = "the whole run"
        else:
            end = "the run's end" if self.length is None else f"cycle {self.start + self.length}"
            what = f"cycles {self.start} to {end}"
        return what + (" of every job" if self.job is None else f" of job {self.job}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Window:
        return cls(**json.loads(text))


@dataclasses.dataclass
class Recording:
    waves: Path | None          # None: the window never opened
    gtkw: Path | None
    results: list


def wave_format() -> str:
    """"fst", or "vcd" where the FST writer can't be compiled (see sim.toolchain.fst_available)."""
    return toolchain.wave_format(True)


def wave_path(path: str | Path) -> Path:
    """The file a recording into `path` writes: `path` with the suffix of the format this machine
    can write (.fst; .vcd, with a RuntimeWarning saying why, where lz4/zlib headers are missing)."""
    path = Path(path)
    fmt = wave_format()
    if fmt == "vcd":
        warnings.warn(f"writing VCD instead of FST: {toolchain.fst_available()[1]}", RuntimeWarning,
                      stacklevel=2)
    return path.with_suffix(f".{fmt}")


def record(config: NPUConfig, jobs: list, path: str | Path, window: Window | None = None,
           **kwargs) -> Recording:
    """Run `jobs` (sim.rtl_jobs.Job) on the waves build of `config`, recording `window` (default:
    every run whole) into `path` (its suffix set by `wave_path`) and a .gtkw beside it."""
    from softnpu.sim.rtl.jobs import run_jobs

    target = wave_path(path)
    results = run_jobs(config, jobs, waves=target, window=window, **kwargs)
    gtkw = target.with_suffix(".gtkw")
    return Recording(target if target.is_file() else None, gtkw if gtkw.is_file() else None, results)


def finish(path: Path, window: Window, n_jobs: int, build_dir: Path | None = None,
           config: NPUConfig | None = None) -> Path | None:
    """After a run: the .gtkw beside the trace file, or a warning that the window never opened.

    The save file lists the signals found in the trace (read back: VCD here, FST with pywellen);
    without an FST reader, those of the build's Verilog."""
    if not path.is_file():
        warnings.warn(f"no waveform written to {path}: the window ({window.describe()}) never opened "
                      f"in {n_jobs} job(s)", RuntimeWarning, stacklevel=3)
        return None
    try:
        return write_gtkw(path, read_signals(path), only_present=True, span=time_span(path))
    except ImportError:
        if build_dir is None or config is None:
            raise
        return write_gtkw(path, design_widths(build_dir, config), only_present=False)


# ----------------------------------------------------------------------------------------------
# Signals by unit (names as in the generated Verilog: Amaranth's signal names, hierarchical by
# submodule), for the GTKWave save file.  Paths are below the harness top.
# ----------------------------------------------------------------------------------------------
UNIT_SIGNALS: dict[str, list[str]] = {
    "run control": ["clk", "rst", "irq", "debug_running", "debug_marker", "debug_marker_id",
                    "dut.run_control.running", "dut.run_control.done", "dut.run_control.error",
                    "dut.run_control.error_code", "dut.run_control.error_pc", "dut.run_control.deadlock_pc"],
    "fetch": ["dut.fetch.fsm_state", "dut.fetch.pc", "dut.fetch.word", "dut.fetch.finished",
              "dut.fetch.exhausted", "dut.fetch.blocked", "dut.fetch.fault", "dut.fetch.fault_code"],
    "load": ["debug_load_busy", "debug_load_stall", "debug_load_pc", "dut.load.fsm_state",
             "dut.load.blk", "dut.load.y", "dut.load.x", "dut.load.ptr", "dut.load.burst.requesting",
             "dut.load.burst.row", "dut.load.burst.row_addr", "dut.load.burst.row_left",
             "dut.load.burst.in_flight", "dut.load.burst.sent", "dut.load.inp_w__en",
             "dut.load.wgt_w__en", "dut.load.param_w__en", "dut.load_queue.level",
             "dut.tokens_compute_load.count"],
    "compute": ["debug_compute_busy", "debug_compute_stall", "debug_compute_pc", "dut.compute.fsm_state",
                "dut.compute.conv.state", "dut.compute.conv.oh", "dut.compute.conv.ow",
                "dut.compute.conv.tci",
                "dut.compute.conv.ki", "dut.compute.conv.kj", "dut.compute.conv.array.x",
                "dut.compute.conv.array.w", "dut.compute.conv.array.dots", "dut.compute.vector.fsm_state",
                "dut.compute.vector.vblk", "dut.compute.vector.vi", "dut.compute.mac_active",
                "dut.compute.acc_w__en", "dut.compute.acc_w__addr", "dut.compute.out_w__en",
                "dut.compute.out_w__addr", "dut.compute.marker", "dut.compute.marker_id",
                "dut.compute_queue.level", "dut.tokens_load_compute.count", "dut.tokens_store_compute.count"],
    "store": ["debug_store_busy", "debug_store_stall", "debug_store_pc", "dut.store.fsm_state",
              "dut.store.ptr", "dut.store.burst.requesting", "dut.store.burst.row",
              "dut.store.burst.row_addr", "dut.store.burst.row_left", "dut.store.burst.in_flight",
              "dut.store.burst.sent", "dut.store.out_r__addr",
              "dut.store_queue.level",
              "dut.tokens_compute_store.count"],
    "CSR": [f"s_axil_{n}" for n in ("awaddr", "awvalid", "awready", "wdata", "wvalid", "wready", "bvalid",
                                    "bready", "araddr", "arvalid", "arready", "rdata", "rvalid", "rready")]
    + ["dut.csr.insn_addr", "dut.csr.insn_count", "dut.perf.trace_count"],
    "memory port": ["dut.arbiter.owner", "dut.arbiter.order.level"] + [f"axi_{n}" for n in (
        "araddr", "arlen", "arvalid", "arready", "rdata", "rlast", "rvalid", "rready", "awaddr", "awlen",
        "awvalid", "awready", "wdata", "wstrb", "wlast", "wvalid", "wready", "bvalid", "bready")],
    "counters": [f"dut.perf.count_{n}" for n in ("cycles", "load_busy", "load_stall", "compute_busy",
                                            "compute_stall", "store_busy", "store_stall", "mac_active",
                                            "dram_read_bytes", "dram_write_bytes")],
}


def read_signals(path: str | Path) -> dict[str, int]:
    """Every signal in a trace file: hierarchical name (scopes joined by '.') -> width in bits.

    VCD is parsed here; FST needs the `pywellen` package (the test extras pin it)."""
    path = Path(path)
    if path.suffix == ".vcd":
        return _vcd_signals(path)
    wellen = _pywellen()
    return {var.full_name: var.bitwidth for var in wellen.Waveform(str(path)).all_vars()}


def design_widths(build_dir: str | Path, config: NPUConfig) -> dict[str, int]:
    """Bits of the signals of a build, named as in its traces, from its Verilog: the harness top's
    ports and wires, and every wire and reg of the NPU's modules (Amaranth names a submodule's
    Verilog module by its path, `npu.fetch` for the instance `dut.fetch`)."""
    from softnpu.sim.rtl.harness import harness_widths

    out = {f"{TOP}.{name}": width for name, width in harness_widths(config).items()}
    module = None
    for line in (Path(build_dir) / "src" / "npu.v").read_text().splitlines():
        if line.startswith("module "):
            module = line.split()[1].lstrip("\\").split("(")[0]
            prefix = DUT + module[len("npu"):]
            continue
        match = _DECLARATION.match(line)
        if module and match:
            msb, lsb, name = match.groups()
            out[f"{prefix}.{name}"] = int(msb) - int(lsb) + 1 if msb is not None else 1
    return out


_DECLARATION = re.compile(r"^\s+(?:input|output|inout|wire|reg)\s+(?:signed\s+)?(?:\[(\d+):(\d+)\]\s+)?"
                          r"([A-Za-z_][A-Za-z0-9_]*)\s*[;=]")


def time_span(path: str | Path, signal: str = f"{TOP}.clk") -> tuple[int, int]:
    """The first and last time steps of a trace file that change `signal`, in the file's time unit
    (ps for Verilator's traces: one cycle is 10 000)."""
    path = Path(path)
    if path.suffix == ".vcd":
        return _vcd_span(path)
    wellen = _pywellen()
    waveform = wellen.Waveform(str(path))
    var = next((v for v in waveform.all_vars() if v.full_name == signal), None)
    if var is None:
        raise KeyError(f"{signal} is not in {path}")
    times: list[int] = []
    waveform.stream_time_steps(lambda t, *_: times.append(t), [var])
    if not times:
        raise ValueError(f"{path} has no time steps")
    return times[0], times[-1]


def _pywellen():
    try:
        import pywellen
    except ImportError:
        raise ImportError("reading FST needs the pywellen package (pip install -e .[test])") from None
    return pywellen


def _vcd_signals(path: Path) -> dict[str, int]:
    scopes: list[str] = []
    out = {}
    with path.open() as f:
        for line in f:
            words = line.split()
            if not words:
                continue
            if words[0] == "$scope":
                scopes.append(words[2])
            elif words[0] == "$upscope":
                scopes.pop()
            elif words[0] == "$var":
                out[".".join([*scopes, words[4]])] = int(words[2])
            elif words[0] == "$enddefinitions":
                break
    return out


def _vcd_span(path: Path) -> tuple[int, int]:
    first = last = None
    with path.open() as f:
        for line in f:
            if line.startswith("#"):
                t = int(line[1:])
                first = t if first is None else first
                last = t
    if first is None:
        raise ValueError(f"{path} has no time steps")
    return first, last


# ----------------------------------------------------------------------------------------------
# GTKWave save file
# ----------------------------------------------------------------------------------------------
_GROUP_BEGIN, _GROUP_END = "@800200", "@1000200"        # GTKWave's group flags (pyvcd writes them)


def write_gtkw(waves: str | Path, widths: dict[str, int], only_present: bool = True,
               span: tuple[int, int] | None = None) -> Path:
    """Write `<waves>.gtkw` beside the trace: one collapsible group per unit (UNIT_SIGNALS), vectors
    named with their range as GTKWave names them (`pc[31:0]`).

    `widths` maps full signal names to bits (read_signals or design_widths); with `only_present`
    the signals missing from it are left out.  `span` (first and last time step, time_span) zooms
    the view onto the recorded window."""
    from vcd.gtkw import GTKWSave

    waves = Path(waves).resolve()
    out = waves.with_suffix(".gtkw")
    with open(out, "w") as file:
        save = GTKWSave(file)
        save.dumpfile(str(waves))
        save.savefile(str(out))
        save.timestart(span[0] if span else 0)
        save.size(1400, 900)
        save.signals_width(300)
        save.sst_expanded(True)
        if span and span[1] > span[0]:
            # GTKWave shows 2**-zoom time units per 200 pixels (calczoom); the wave pane is ~800 pixels
            save.zoom_markers(-math.log2((span[1] - span[0]) * 200 / 800), span[0])
        for group, names in UNIT_SIGNALS.items():
            with save.group(group):
                for name in names:
                    full = f"{TOP}.{name}"
                    if only_present and full not in widths:
                        continue
                    width = widths.get(full, 1)
                    save.trace(full if width == 1 else f"{full}[{width - 1}:0]",
                               datafmt="bin" if width == 1 else "hex")
    return out


def gtkw_signals(gtkw: str | Path) -> dict[str, list[str]]:
    """The signals of a save file by group (without bit ranges): what a test checks against the trace."""
    groups: dict[str, list[str]] = {}
    current = None
    pending = None
    for line in Path(gtkw).read_text().splitlines():
        if line.startswith("@"):
            pending = line
        elif line.startswith("-"):
            if pending == _GROUP_BEGIN:
                current = line[1:]
                groups[current] = []
            elif pending == _GROUP_END:
                current = None
        elif current is not None and not line.startswith("["):
            groups[current].append(re.sub(r"\[\d+:\d+\]$", "", line))
    return groups


# ----------------------------------------------------------------------------------------------
# An example: `nox -s waves`
# ----------------------------------------------------------------------------------------------
def example_job(config: NPUConfig):
    """A small program of three layers, each opened by a MARKER (ids 1, 2, 3): a 3x3 convolution
    (4x4 outputs of one channel block), the same convolution again, and a 2x2 max pool of its output."""
    import numpy as np

    from softnpu.hdl import isa
    from softnpu.hdl.isa import Buffer, ConvMode
    from softnpu.sim.rtl.jobs import Job

    b = config.cols
    side, out = 6, 4
    X, W, P, Y, PROGRAM = 0x1000, 0x4000, 0x8000, 0x10000, 0x0
    rng = np.random.default_rng(7)
    x = rng.integers(-128, 128, (side, side, b), dtype=np.int8)
    w = rng.integers(-127, 128, (9, config.rows, b), dtype=np.int8)
    params = np.zeros((3, config.rows), np.int32)
    params[1], params[2] = 1 << 30, -8
    requant = dict(zero_point=0, act_min=-128, act_max=127)

    def conv(layer, first):
        return [
            isa.Marker(id=layer, pop_next=not first, push_prev=True),
            isa.Load(buffer=Buffer.INP, sram=0, dram=X, blocks=1, rows=side, cols=side, row_stride=side * b,
                     pop_next=True, push_next=True),
            isa.Conv(mode=ConvMode.MAC, accumulate=0, out_blocks=1, in_blocks=1, kh=3, kw=3, stride_h=1,
                     stride_w=1, out_h=out, out_w=out, acc=0, inp=0, wgt=0, inp_row=side,
                     inp_block=side * side, pop_prev=True),
            isa.Requant(out=0, acc=0, param=0, blocks=1, count=out * out, push_next=True, **requant),
            isa.Store(sram=0, dram=Y, blocks=1, rows=out, cols=out, row_stride=out * b, pop_prev=True,
                      push_prev=True),
        ]

    program = [isa.Load(buffer=Buffer.PARAM, sram=0, dram=P, blocks=1, rows=1, cols=3),
               isa.Load(buffer=Buffer.WGT, sram=0, dram=W, blocks=1, rows=1, cols=9)]
    program += conv(1, True) + conv(2, False)
    program += [
        isa.Marker(id=3, pop_next=True, push_prev=True),
        isa.Load(buffer=Buffer.INP, sram=0, dram=Y, blocks=1, rows=out, cols=out, row_stride=out * b,
                 pop_next=True, push_next=True),
        isa.Conv(mode=ConvMode.MAX, accumulate=0, out_blocks=1, in_blocks=1, kh=2, kw=2, stride_h=2,
                 stride_w=2, out_h=out // 2, out_w=out // 2, acc=0, inp=0, wgt=0, inp_row=out,
                 inp_block=out * out, pop_prev=True),
        isa.Narrow(out=0, acc=0, blocks=1, count=(out // 2) ** 2, divisor=1, act_min=-128, act_max=127,
                   push_next=True),
        isa.Store(sram=0, dram=Y + 0x1000, blocks=1, rows=out // 2, cols=out // 2, row_stride=out // 2 * b,
                  pop_prev=True),
        isa.Finish(),
    ]
    image = [(X, x.tobytes()), (W, w.tobytes()), (P, params.tobytes()),
             (PROGRAM, isa.encode_program(program))]
    return Job("waves-example", image, PROGRAM, len(program), [(Y + 0x1000, (out // 2) ** 2 * b)],
               max_cycles=200_000)


def main(argv=None) -> int:
    from softnpu.hdl.config import preset

    parser = argparse.ArgumentParser(description="Record a windowed waveform of a small program.")
    parser.add_argument("-o", "--out", default="out/waves", help="folder to write into")
    parser.add_argument("--config", default="tiny")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--layer", type=int, default=2, help="MARKER id of the layer to record (default 2)")
    group.add_argument("--cycles", type=int, nargs=2, metavar=("START", "LENGTH"))
    args = parser.parse_args(argv)
    config = preset(args.config)
    window = Window.cycles(*args.cycles) if args.cycles else Window.layer(args.layer)
    name = f"example_{config.name}_" + (f"cycles{args.cycles[0]}+{args.cycles[1]}" if args.cycles
                                        else f"layer{args.layer}")
    rec = record(config, [example_job(config)], Path(args.out) / f"{name}.fst", window)
    result = rec.results[0]
    if result.counters is None:
        raise SystemExit(f"the example program did not complete: fault {result.fault}, {result.error}")
    print(f"recorded {window.describe()} of a {result.counters['cycles']}-cycle run "
          f"(config {config.name}, trace markers {[m for m, _ in result.trace]})")
    if rec.waves is None:
        raise SystemExit("the window never opened: nothing was written")
    first, last = time_span(rec.waves)
    print(f"  waves    {rec.waves} ({rec.waves.stat().st_size:,} bytes, {first / 1000:.0f} to "
          f"{last / 1000:.0f} ns)")
    print(f"  gtkwave  {rec.gtkw}")
    print(f"  view:    gtkwave {rec.waves} {rec.gtkw}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
