"""Build a Verilog design into a cached cocotb/Verilator simulator, and run cocotb tests against it.

A build is keyed by a hash of everything that changes its output: the Verilog source text, the
caller's configuration (``build_key_parts``, e.g. ``NPUConfig.to_dict()``), the DPI memory sources
and the toolchain (simulator version, flags; see :func:`sim.toolchain.fingerprint`). It lives in
``$SOFTNPU_CACHE/rtl/<hash>`` (default ``~/.cache/softnpu/rtl/<hash>``) and is made once: parallel
pytest workers wait on a file lock for the one that builds, and a build counts as finished only
once its metadata file is written last, so a crashed build is redone, never used.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from xml.etree import ElementTree

from softnpu.sim.rtl import toolchain

__all__ = ["RTLBuildError", "RTLTestFailure", "build", "build_info", "build_key", "cache_root", "run"]

_META = "softnpu_build.json"


class RTLBuildError(RuntimeError):
    """Verilator or the C++ compiler rejected the design."""


class RTLTestFailure(AssertionError):
    """A cocotb test failed (or the simulator died) in :func:`run`."""


def cache_root() -> Path:
    """Folder holding one sub-folder per build: ``$SOFTNPU_CACHE/rtl`` (softnpu/cache.py)."""
    from softnpu.cache import cache_dir

    return cache_dir("rtl")


def _sources_text(sources: Iterable[str | os.PathLike]) -> list[tuple[str, str]]:
    out = []
    for src in sources:
        path = Path(src)
        if not path.is_file():
            raise FileNotFoundError(f"Verilog source {path} does not exist")
        out.append((path.name, path.read_text()))
    names = [name for name, _ in out]
    if len(set(names)) != len(names):
        raise ValueError(f"Verilog sources must have distinct file names, got {names}")
    return out


def build_key(
    top_verilog_sources: Sequence[str | os.PathLike],
    toplevel: str,
    build_key_parts: object,
    waves: bool = False,
    public_flat_rw: bool = False,
    extra_args: Sequence[str] = (),
    cpp_sources: Sequence[str | os.PathLike] = (),
) -> str:
    """The hex hash naming a build (see the module docstring for what goes into it)."""
    payload = {
        "toplevel": toplevel,
        "sources": _sources_text(top_verilog_sources),
        "dpi_mem": _sources_text([*toolchain.DPI_MEM_SOURCES, toolchain.DPI_MEM_CPP]),
        "config": build_key_parts,
        "toolchain": toolchain.fingerprint(waves),
        "public_flat_rw": public_flat_rw,
        "extra_args": list(extra_args),
    }
    if cpp_sources:           # (only when given, so that the keys of other builds stay as they were)
        payload["cpp_sources"] = _sources_text(cpp_sources)
    try:
        blob = json.dumps(payload, sort_keys=True)
    except TypeError as e:
        raise TypeError(f"build_key_parts must be JSON-serializable, got {build_key_parts!r}: {e}") from None
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


@contextmanager
def _locked(lock_path: Path):
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _is_built(build_dir: Path) -> bool:
    meta = build_dir / _META
    if not meta.is_file():
        return False
    toplevel = json.loads(meta.read_text())["toplevel"]
    return (build_dir / toplevel).is_file()


def build(
    top_verilog_sources: Sequence[str | os.PathLike],
    toplevel: str,
    build_key_parts: object = None,
    waves: bool = False,
    *,
    public_flat_rw: bool = False,
    extra_args: Sequence[str] = (),
    cpp_sources: Sequence[str | os.PathLike] = (),
) -> Path:
    """Build (or reuse) a simulator of ``toplevel`` from ``top_verilog_sources``; return its folder.

    ``build_key_parts`` is any JSON-serializable description of what the sources were generated
    from (a config dict, parameters): it is part of the cache key and recorded in the build.
    ``waves`` compiles tracing in (FST, or VCD when lz4 headers are missing). The DPI memory
    (sim/rtl/dpi_mem.sv, sim/rtl/dpi_mem.cpp) is always compiled in. ``public_flat_rw`` restores cocotb's
    default of exposing every signal to VPI (slower; for measurements and debugging).
    ``extra_args`` are more Verilator arguments (``+define+NAME``, ``-GPARAM=value``, ``--timing``).
    ``cpp_sources`` are more C++ files compiled into the executable (DPI-C functions); like the
    Verilog sources, their names and text (not their paths) are part of the key.
    """
    key = build_key(top_verilog_sources, toplevel, build_key_parts, waves, public_flat_rw, extra_args,
                    cpp_sources)
    root = cache_root()
    build_dir = root / key
    if _is_built(build_dir):
        return build_dir
    with _locked(root / ".locks" / f"{key}.lock"):
        if _is_built(build_dir):  # another worker built it while we waited
            return build_dir
        if build_dir.exists():  # left over by a failed or killed build
            shutil.rmtree(build_dir)
        build_dir.mkdir(parents=True)
        from softnpu.progress import activity

        parts = build_key_parts if isinstance(build_key_parts, dict) else {}
        what = (parts.get("npu_config") or {}).get("name") or parts.get("name")
        description = (f"Verilator: building {toplevel}" + (f" ({what})" if what else "")
                       + (" with waveform tracing" if waves else ""))
        with activity(description, _expected_build_s(root, toplevel, waves)):
            _build_into(build_dir, key, top_verilog_sources, toplevel, build_key_parts, waves, public_flat_rw,
                        extra_args, cpp_sources)
    return build_dir


def _expected_build_s(root: Path, toplevel: str, waves: bool) -> float | None:
    """The median time of the earlier finished builds of `toplevel` in the cache (None: none yet)."""
    times = []
    for meta in root.glob(f"*/{_META}"):
        try:
            info = json.loads(meta.read_text())
        except (OSError, ValueError):
            continue
        if info.get("toplevel") == toplevel and (info.get("waves") is not None) == waves:
            times.append(float(info.get("build_seconds", 0)))
    return sorted(times)[len(times) // 2] if times else None


def _build_into(
    build_dir, key, sources, toplevel, build_key_parts, waves, public_flat_rw, extra_args, cpp_sources=()
) -> None:
    # Build from copies so the build is self-contained (the sources are often temporary files).
    # The metadata file, written last, marks the build finished (see _is_built).
    src_dir = build_dir / "src"
    src_dir.mkdir()
    copies = []
    for name, text in _sources_text([*toolchain.DPI_MEM_SOURCES, *sources]):
        (src_dir / name).write_text(text)
        copies.append(src_dir / name)
    cpp_copies = []
    for name, text in _sources_text(cpp_sources):
        (src_dir / name).write_text(text)
        cpp_copies.append(str(src_dir / name))
    runner = toolchain.get_runner(public_flat_rw=public_flat_rw)
    log = build_dir / "build.log"
    t0 = time.monotonic()
    try:
        runner.build(
            sources=copies,
            hdl_toplevel=toplevel,
            build_args=[*toolchain.build_args(waves), *extra_args, *cpp_copies],
            build_dir=build_dir,
            waves=waves,
            timescale=("1ns", "1ps"),
            log_file=log,
        )
    except (RuntimeError, SystemExit) as e:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:]) if log.is_file() else ""
        raise RTLBuildError(
            f"building {toplevel} in {build_dir} failed: {e}\n--- build.log tail ---\n{tail}"
        ) from None
    meta = {
        "toplevel": toplevel,
        "key": key,
        "config": build_key_parts,
        "toolchain": toolchain.fingerprint(waves),
        "waves": toolchain.wave_format(waves),
        "public_flat_rw": public_flat_rw,
        "extra_args": list(extra_args),
        "build_seconds": round(time.monotonic() - t0, 2),
    }
    (build_dir / _META).write_text(json.dumps(meta, indent=2, sort_keys=True))


def build_info(build_dir: str | os.PathLike) -> dict:
    """The metadata recorded with a build (toplevel, config, toolchain, build time in seconds)."""
    meta = Path(build_dir) / _META
    if not meta.is_file():
        raise FileNotFoundError(f"{build_dir} is not a finished softnpu RTL build (no {_META})")
    return json.loads(meta.read_text())


def _failures(results_xml: Path) -> tuple[int, list[str]]:
    tests, failures = 0, []
    for case in ElementTree.parse(results_xml).getroot().iter("testcase"):
        tests += 1
        for bad in (*case.findall("failure"), *case.findall("error")):
            detail = (bad.get("message") or "") + ("\n" + bad.text if bad.text else "")
            failures.append(f"{case.get('classname', '')}.{case.get('name')}: {detail.strip()}")
    return tests, failures


def run(
    build_dir: str | os.PathLike,
    test_module: str,
    testcase: str | Sequence[str] | None = None,
    extra_env: Mapping[str, str] | None = None,
    *,
    test_dir: str | os.PathLike | None = None,
    waves: str | os.PathLike | None = None,
    seed: int | None = None,
    plusargs: Sequence[str] = (),
) -> Path | None:
    """Run the cocotb tests of ``test_module`` (an importable module name) against a build.

    ``testcase`` picks tests by name (default: all). ``test_dir`` is where the simulator runs and
    writes ``results.xml`` and ``sim.log``; by default a temporary folder, removed after a passing
    run and kept (and named in the error) after a failing one.
    ``waves`` is a trace file to write (the build must have been made with ``waves=True``): every
    time step of the run, dumped by cocotb's simulator main.  ``plusargs`` (``+name=value``) reach
    the HDL's ``$value$plusargs``.
    Returns the results XML path (None for a temporary ``test_dir``); raises
    :class:`RTLTestFailure` with cocotb's failure messages if any test failed or the simulator died.
    """
    build_dir = Path(build_dir).resolve()
    info = build_info(build_dir)
    if waves is not None and not info["waves"]:
        raise ValueError(f"waves={waves!s} asked of {build_dir}, which was built without waves=True")
    temporary = test_dir is None
    if temporary:
        test_dir = tempfile.mkdtemp(prefix=f"softnpu-run-{info['toplevel']}-")
    test_dir = Path(test_dir).resolve()
    test_dir.mkdir(parents=True, exist_ok=True)
    results = test_dir / "results.xml"
    log = test_dir / "sim.log"
    results.unlink(missing_ok=True)
    runner = toolchain.get_runner(public_flat_rw=info["public_flat_rw"])
    crash = None
    try:
        runner.test(
            test_module=test_module,
            hdl_toplevel=info["toplevel"],
            hdl_toplevel_lang="verilog",
            testcase=testcase,
            extra_env=dict(extra_env or {}),
            build_dir=build_dir,
            test_dir=test_dir,
            results_xml=str(results),
            waves=waves is not None,
            test_args=["--trace-file", str(Path(waves).resolve())] if waves is not None else [],
            seed=seed,
            plusargs=list(plusargs),
            log_file=log,
        )
    except SystemExit as e:  # cocotb's runner exits when a test fails under pytest
        crash = f"simulator exited with {e.code}"
    except RuntimeError as e:  # the simulator process itself failed (crash, $fatal)
        crash = f"simulator failed: {e}"
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:]) if log.is_file() else ""
    if not results.is_file():
        raise RTLTestFailure(f"{test_module} on {build_dir.name}: {crash or 'no results'}; "
                             f"log {log}\n--- sim.log tail ---\n{tail}")
    tests, failures = _failures(results)
    if failures or tests == 0:
        what = "\n\n".join(failures) if failures else f"no test matched {testcase!r}"
        raise RTLTestFailure(f"{len(failures)} of {tests} cocotb tests failed in {test_module} "
                             f"(log {log}):\n{what}")
    if crash:
        raise RTLTestFailure(f"{test_module}: all tests passed but {crash}; log {log}\n{tail}")
    if temporary:
        shutil.rmtree(test_dir, ignore_errors=True)
        return None
    return results
