"""`softnpu sweep`: design-space exploration over NPU configs x networks, one Ray task per point.

The SPEC (JSON or YAML) gives lists per NPUConfig field over a `base` preset, and the networks:

    base: default                 # preset the points start from
    models: [resnet50]            # zoo names
    input_size: 64                # square input side (an int or a list: part of the grid)
    array: [8, 16, 32]            # rows = cols (the MAC array is square); or `rows` and `cols`
    inp_depth: [2048, 4096]
    dram_bus_bytes: [8, 16]
    dram_latency: [32, 64]
    verify: iss                   # optional: iss or rtl (the --verify option overrides it)

Every other key must be an NPUConfig field (hdl/config.py); a scalar is a list of one.  The points
are the cross product, less the combinations that are not a valid config (a bus wider than the
array, rows != cols), which are listed as skipped.  Each point compiles the network for its config
(compiler/compile.py) and reads the cycle model's figures from the manifest: cycles, latency at
clock_mhz, MAC utilization, DRAM bytes, and cycles and utilization per layer kind; `verify` also
runs the bundle on the ISS or the RTL against the TFLite interpreter, bit for bit, with the measured cycles.

Results go to OUT: `points/<id>.json` per finished point (the sweep is resumable: a point whose
file exists is not computed again), `results.csv` and `results.json` (the table, failed points
included with their error), and the plots `pareto.png` and `utilization_by_kind.png`.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import itertools
import json
import os
import signal
import time
from pathlib import Path

from softnpu import __version__
from softnpu.hdl.config import PRESETS, NPUConfig

__all__ = ["SpecError", "SweepSpec", "Point", "load_spec", "run_sweep", "compute_point", "pareto_front",
           "write_tables", "best_points"]

_RESERVED = ("base", "models", "input_size", "verify")
_FIELDS = {f.name: f for f in dataclasses.fields(NPUConfig) if f.name != "name"}
# fault injection for the tests: "INDEX:TIMES[,...]" kills the worker of the INDEX-th point to compute
# on its first TIMES attempts (SIGKILL, as the OOM killer or a lost node would)
KILL_ENV = "SOFTNPU_SWEEP_KILL"


class SpecError(ValueError):
    """A sweep spec that cannot be run: names the file, the key and the value."""


@dataclasses.dataclass(frozen=True)
class Point:
    config: NPUConfig
    model: str
    input_size: int
    verify: str | None
    varied: tuple[tuple[str, object], ...]       # the spec's fields and this point's values

    @property
    def id(self) -> str:
        key = json.dumps(dict(config={k: v for k, v in self.config.to_dict().items() if k != "name"},
                              model=self.model, input_size=self.input_size, verify=self.verify,
                              softnpu=__version__), sort_keys=True)
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    def params(self) -> dict:
        """What identifies the point to a person: the varied fields, the network, the input size."""
        return dict(self.varied, model=self.model, input_size=self.input_size)


@dataclasses.dataclass
class SweepSpec:
    path: str
    points: list[Point]
    models: list[str]
    skipped: list[str] = dataclasses.field(default_factory=list)   # combinations that are no config


def _read(path: Path) -> dict:
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(f"sweep spec {path}: {exc.strerror or exc}") from None
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:                 # yaml.YAMLError, json.JSONDecodeError
        raise SpecError(f"sweep spec {path}: not valid {path.suffix[1:].upper() or 'JSON'}: "
                        f"{str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise SpecError(f"sweep spec {path}: expected a mapping of fields to lists, "
                        f"got {type(data).__name__}")
    return data


def _values(path, key, value) -> list:
    values = value if isinstance(value, list) else [value]
    if not values:
        raise SpecError(f"sweep spec {path}: {key}: an empty list gives no points")
    return values


def load_spec(path: str | os.PathLike, verify: str | None = None) -> SweepSpec:
    """Parse and validate a spec: every field known, every value a valid NPUConfig value, every
    combination a valid config; SpecError names what is wrong."""
    from softnpu.compiler import zoo

    path = Path(path)
    data = _read(path)
    base_name = data.get("base", "default")
    if base_name not in PRESETS:
        raise SpecError(f"sweep spec {path}: base {base_name!r} is not a preset "
                        f"({', '.join(sorted(PRESETS))})")
    base = PRESETS[base_name]
    models = _values(path, "models", data.get("models", ["resnet50"]))
    for m in models:
        if m not in zoo.NETWORKS:
            raise SpecError(f"sweep spec {path}: models: {m!r} is not a zoo network "
                            f"({', '.join(zoo.NETWORKS)})")
    sizes = _values(path, "input_size", data.get("input_size", [None]))
    for s in sizes:
        if s is not None and (not isinstance(s, int) or isinstance(s, bool) or s < 1):
            raise SpecError(f"sweep spec {path}: input_size: {s!r} is not a positive integer")
    verify = verify or data.get("verify")
    if verify not in (None, "iss", "rtl"):
        raise SpecError(f"sweep spec {path}: verify: {verify!r}; expected iss or rtl")
    grid: list[tuple[str, list]] = []
    for key, value in data.items():
        if key in _RESERVED:
            continue
        if key != "array" and key not in _FIELDS:
            raise SpecError(f"sweep spec {path}: unknown config field {key!r}; fields are array (rows = "
                            f"cols), {', '.join(sorted(_FIELDS))}")
        values = _values(path, key, value)
        for v in values:
            try:                              # each value alone, on a base wide enough for any bus
                changes = {"rows": v, "cols": v} if key in ("array", "rows", "cols") else {key: v}
                _config(base.replace(rows=256, cols=256) if key not in ("array", "rows", "cols") else base,
                        changes)
            except (TypeError, ValueError) as exc:
                raise SpecError(f"sweep spec {path}: {key}: value {v!r} is not valid: {exc}") from None
        grid.append((key, values))
    points, skipped = [], []
    for combo in itertools.product(*(values for _, values in grid)):
        varied = tuple(zip((k for k, _ in grid), combo, strict=True))
        changes = {}
        for key, v in varied:
            changes.update({"rows": v, "cols": v} if key == "array" else {key: v})
        try:
            cfg = _config(base, changes, name=_name(base_name, varied))
        except (TypeError, ValueError) as exc:     # fields valid alone, not together: skipped
            skipped.append(f"{dict(varied)}: {exc}")
            continue
        for model, size in itertools.product(models, sizes):
            points.append(Point(cfg, model, size or zoo.default_input_size(model), verify, varied))
    if not points:
        raise SpecError(f"sweep spec {path}: no combination is a valid config; " + "; ".join(skipped[:3]))
    return SweepSpec(str(path), points, models, skipped)


def _config(base: NPUConfig, changes: dict, name: str | None = None) -> NPUConfig:
    return base.replace(**changes, **({"name": name} if name else {}))


def _name(base: str, varied) -> str:
    short = {"array": "a", "rows": "r", "cols": "c", "dram_bus_bytes": "bus", "dram_latency": "lat"}
    parts = [f"{short.get(k, k.replace('_depth', ''))}{v}" for k, v in varied]
    return "-".join([base] + parts)


# ----------------------------------------------------------------------------------------------
# One point (runs in a Ray worker)
# ----------------------------------------------------------------------------------------------
def _maybe_killed(index: int, kill: str | None, attempts_dir: str | None) -> None:
    if not kill or attempts_dir is None:
        return
    for item in kill.split(","):
        target, _, times = item.partition(":")
        if int(target) != index:
            continue
        marker = Path(attempts_dir) / f"attempts-{index}"
        attempt = int(marker.read_text()) + 1 if marker.exists() else 1
        marker.write_text(str(attempt))
        if attempt <= int(times or 1):
            os.kill(os.getpid(), signal.SIGKILL)


def compute_point(point: Point, tflite: bytes, index: int = 0, kill: str | None = None,
                  attempts_dir: str | None = None) -> dict:
    """The figures of one point: compile for its config, totals and per-kind figures from the
    manifest's cycle model, and the verification on a device if asked."""
    from softnpu.compiler.compile import compile_tflite, summary

    _maybe_killed(index, kill, attempts_dir)
    t0 = time.perf_counter()
    cfg = point.config
    bundle = compile_tflite(tflite, cfg, name=f"{point.model}_{point.input_size}")
    compile_s = time.perf_counter() - t0
    s = summary(bundle.manifest)
    kinds: dict[str, dict] = {}
    for rec in bundle.manifest.layers:
        k = kinds.setdefault(rec["kind"], dict(layers=0, macs=0, cycles=0))
        k["layers"] += 1
        k["macs"] += int(rec["macs"])
        k["cycles"] += int(rec["cycles"])
    for k in kinds.values():
        k["utilization"] = k["macs"] / max(k["cycles"] * cfg.macs_per_cycle, 1)
    row = dict(id=point.id, status="ok", config=cfg.name, **point.params(),
               macs_per_cycle=cfg.macs_per_cycle, cycles=s["cycles"], latency_ms=s["seconds"] * 1e3,
               macs=s["macs"], utilization=s["utilization"], dram_bytes=s["dram_bytes"],
               instructions=bundle.manifest.program_instructions,
               scratchpad_bytes=sum(cfg.scratchpad_bytes().values()), compile_s=compile_s,
               kinds=kinds, npu_config=cfg.to_dict())
    if point.verify:
        from softnpu.host.verify import verify_bundle

        t1 = time.perf_counter()
        report = verify_bundle(bundle, point.verify, inputs=1, seed=0)
        row.update(verify=point.verify, verified=report.equal, measured_cycles=report.cycles[0],
                   verify_s=time.perf_counter() - t1)
    return row


# ----------------------------------------------------------------------------------------------
# The sweep
# ----------------------------------------------------------------------------------------------
def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)


def run_sweep(spec: SweepSpec, out_dir: str | os.PathLike, *, address: str | None = None,
              workers: int | None = None, log=print) -> list[dict]:
    """Run every point not already in `out_dir/points/`; returns the table (every point of the spec,
    finished, resumed or failed) and writes results.csv, results.json and the plots."""
    from softnpu.compiler.compile import zoo_tflite
    from softnpu.host.scale.scaleout import check_address, run_tasks

    if address:
        check_address(address)               # before minutes of conversion
    out = Path(out_dir)
    (out / "points").mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict] = {}
    todo: list[Point] = []
    for p in spec.points:
        f = out / "points" / f"{p.id}.json"
        if f.exists():
            try:
                rows[p.id] = json.loads(f.read_text())
                continue
            except json.JSONDecodeError:
                f.unlink()                    # a torn write: compute it again
        todo.append(p)
    if rows:
        log(f"resuming: {len(rows)} of {len(spec.points)} points already in {out / 'points'}")
    tflites = {}
    for p in todo:
        key = (p.model, p.input_size)
        if key not in tflites:
            log(f"converting {p.model} at {p.input_size}x{p.input_size} to int8 TFLite (cached)")
            tflites[key] = zoo_tflite(p.model, p.input_size, progress=False)
    kill = os.environ.get(KILL_ENV)
    attempts = None
    if kill:
        attempts = out / ".attempts"
        attempts.mkdir(exist_ok=True)
        attempts = str(attempts)
    args = [(p, tflites[(p.model, p.input_size)], i, kill, attempts) for i, p in enumerate(todo)]
    where = f"the Ray cluster at {address}" if address else "Ray (embedded)"
    if todo:
        log(f"{len(todo)} points on {where}")
    failed = 0
    for i, outcome in run_tasks(compute_point, args, address=address, workers=workers):
        p = todo[i]
        if outcome.ok:
            row = outcome.value
            _write_atomic(out / "points" / f"{p.id}.json", json.dumps(row, sort_keys=True))
            log(f"  done {p.config.name} x {p.model}@{p.input_size}: {row['cycles']:,} cycles, "
                f"{row['latency_ms']:.3f} ms, MAC utilization {row['utilization']:.1%}")
        else:
            failed += 1
            row = dict(id=p.id, status="failed", config=p.config.name, **p.params(), error=outcome.error,
                       npu_config=p.config.to_dict())
            log(f"  FAILED {p.config.name} x {p.model}@{p.input_size} {p.params()}: {outcome.error}")
        rows[p.id] = row
    table = [rows[p.id] for p in spec.points]
    write_tables(table, out)
    from softnpu.host.scale.sweep_plots import write_sweep_plots

    write_sweep_plots([r for r in table if r["status"] == "ok"], out)
    if failed:
        log(f"{failed} of {len(spec.points)} points failed (kept out of points/, so a rerun tries them "
            "again); the others are saved")
    return table


_COLUMNS = ("id", "status", "config", "model", "input_size", "macs_per_cycle", "rows", "cols", "inp_depth",
            "wgt_depth", "acc_depth", "out_depth", "param_depth", "dram_bus_bytes", "dram_latency",
            "clock_mhz", "cycles", "latency_ms", "macs", "utilization", "dram_bytes", "instructions",
            "scratchpad_bytes", "verify", "verified", "measured_cycles", "error")


def write_tables(table: list[dict], out: Path) -> None:
    """results.json (every record whole) and results.csv (one flat row per point, the config's
    fields and util_<KIND> per layer kind)."""
    _write_atomic(out / "results.json", json.dumps(table, indent=1, sort_keys=True) + "\n")
    kinds = sorted({k for r in table for k in r.get("kinds", {})})
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(list(_COLUMNS) + [f"util_{k}" for k in kinds])
    for r in table:
        flat = dict(r.get("npu_config", {}), **{k: v for k, v in r.items() if k != "npu_config"})
        writer.writerow([flat.get(c, "") for c in _COLUMNS]
                        + [r.get("kinds", {}).get(k, {}).get("utilization", "") for k in kinds])
    _write_atomic(out / "results.csv", buf.getvalue())


def pareto_front(rows: list[dict]) -> list[dict]:
    """The points no other point beats on both MAC count and latency (per model and input size),
    by increasing MAC count."""
    front = []
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["input_size"]), []).append(r)
    for group in groups.values():
        best = None
        for r in sorted(group, key=lambda r: (r["macs_per_cycle"], r["latency_ms"])):
            if best is None or r["latency_ms"] < best:
                front.append(r)
                best = r["latency_ms"]
    return front


def best_points(table: list[dict], count: int = 5) -> str:
    """The fastest points per network and the Pareto front, as text."""
    ok = [r for r in table if r["status"] == "ok"]
    lines = []
    for model, size in sorted({(r["model"], r["input_size"]) for r in ok}):
        group = sorted((r for r in ok if (r["model"], r["input_size"]) == (model, size)),
                       key=lambda r: r["latency_ms"])
        lines.append(f"{model} at {size}x{size}: the {min(count, len(group))} fastest of {len(group)} points")
        for r in group[:count]:
            checked = ""
            if "verified" in r:
                checked = (f"  {r['verify']}: {'bit-exact' if r['verified'] else 'MISMATCH'}, "
                           f"{r['measured_cycles']:,} cycles")
            lines.append(f"  {r['config']:<36s} {r['latency_ms']:9.3f} ms {r['cycles']:>12,} cycles  "
                         f"MAC util {r['utilization']:6.1%}  DRAM {r['dram_bytes'] / 2**20:8.2f} MiB"
                         + checked)
    front = pareto_front(ok)
    if front:
        lines.append("Pareto front (MACs per cycle vs latency): " + ", ".join(
            f"{r['config']} ({r['macs_per_cycle']} MACs, {r['latency_ms']:.3f} ms)" for r in front))
    failed = [r for r in table if r["status"] != "ok"]
    for r in failed:
        params = {k: r[k] for k in r if k not in ("id", "status", "error", "npu_config", "config")}
        lines.append(f"failed: {r['config']} {params}: {r['error']}")
    return "\n".join(lines)
