"""Sharded RTL simulation of one network: layer ranges on separate simulators, in parallel.

The compiler separates layers by a MARKER that waits for the previous layer's last STORE and
releases the next layer's first LOAD (compiler/emit.py): when the MARKER of a layer starts, every
load, compute and store of the layers before it has retired and no dependency token is in flight
but the one that MARKER pops.  `drained_boundaries` checks this on the program itself (token
counts per channel), so a program that does not follow the protocol is never split unsafely.

A shard is the instructions of a range of layers, from its MARKER to the next shard's, run as a
program of its own: its first MARKER pops nothing (the token it waited for belongs to the previous
shard) and a FINISH ends it (the last shard keeps the program's).  The ISS runs the shards one after
the other from the input's memory image: the image before each shard is that shard's starting point
on the RTL, the image after it what the RTL must write, bit for bit (the activation region).  The
RTL shards run in parallel (a Ray task or a process each); their cycles and per-layer counters add
up.

Boundary effect: in one run, the fetch unit reads a layer's first instructions while the previous
layer drains, so they wait in the queues when its MARKER fires; a shard starts with empty queues and
ends with a FINISH.  Each boundary therefore adds the shard's cold start (fetch and queue of its first
instructions) and its FINISH; `ShardedRun.boundary_cycles` is the difference, and the ISS's model of
the same split predicts it (`iss_boundary_cycles`).
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from softnpu.compiler.bundle import Bundle
from softnpu.compiler.layout import to_blocked
from softnpu.hdl import isa
from softnpu.hdl.config import NPUConfig

__all__ = ["ShardError", "Shard", "ShardPlan", "ShardedRun", "drained_boundaries", "plan_shards",
           "shard_program",
           "prepare_shards", "run_sharded"]


class ShardError(RuntimeError):
    """A shard's RTL result differs from the ISS's, or its simulation failed: names the shard."""


@dataclasses.dataclass
class Shard:
    index: int
    start: int                       # first instruction (a MARKER) in the bundle's program
    end: int                         # one past the last
    layers: list[int]                # marker ids
    image: bytes                     # device memory [0, memory_map end) before the shard (ISS)
    expected: bytes                  # the activation region after the shard (ISS)
    program: bytes                   # the shard's encoded program
    iss_cycles: int


@dataclasses.dataclass
class ShardedRun:
    plan: ShardPlan
    shards: list[Shard]
    cycles: int                      # RTL, summed over the shards
    counters: dict[str, int]         # RTL counters, summed
    layers: list[dict]               # per layer: id, name, start (in its shard), cycles, counters
    outputs: dict[str, np.ndarray]   # int8, in the manifest's shapes
    activations: bytes               # the activation region after the last shard (RTL)
    shard_cycles: list[int]
    shard_wall_s: list[float]
    iss_cycles: int                  # the ISS's monolithic run
    iss_shard_cycles: int            # the ISS's sum over the shards
    wall_s: float                    # the whole call: ISS preparation and RTL shards
    rtl_wall_s: float                # the RTL shards alone (in parallel), Verilator build included

    @property
    def iss_boundary_cycles(self) -> int:
        return self.iss_shard_cycles - self.iss_cycles


_CHANNELS = {(isa.Queue.LOAD, "push_next"): "lc", (isa.Queue.COMPUTE, "push_prev"): "cl",
             (isa.Queue.COMPUTE, "push_next"): "cs", (isa.Queue.STORE, "push_prev"): "sc",
             (isa.Queue.LOAD, "pop_next"): "cl", (isa.Queue.COMPUTE, "pop_prev"): "lc",
             (isa.Queue.COMPUTE, "pop_next"): "sc", (isa.Queue.STORE, "pop_prev"): "cs"}


def drained_boundaries(program: list[isa.Insn]) -> list[int]:
    """Indices of the MARKERs at which the NPU is drained: every token pushed before it (in program
    order) was popped before it, except the store->compute token the MARKER itself pops.  In a
    compiler-generated program every pop follows its push in program order, so program order gives
    the tokens in flight."""
    tokens = dict.fromkeys(("lc", "cl", "cs", "sc"), 0)
    found = []
    for pc, insn in enumerate(program):
        if isinstance(insn, isa.Marker):
            waiting = dict(tokens, sc=tokens["sc"] - int(insn.pop_next))
            if pc == 0 or (not any(waiting.values()) and insn.pop_next):
                found.append(pc)
        for flag in ("pop_prev", "pop_next", "push_prev", "push_next"):
            if getattr(insn, flag):
                tokens[_CHANNELS[(insn.QUEUE, flag)]] += 1 if flag.startswith("push") else -1
    return found


def plan_shards(program: list[isa.Insn], count: int, layer_cycles: dict[int, int]) -> list[tuple[int, int]]:
    """Split the program at drained MARKERs into `count` instruction ranges of about equal modelled
    cycles (`layer_cycles`: the manifest's per-layer estimate by marker id)."""
    bounds = drained_boundaries(program)
    if not bounds or bounds[0] != 0:
        raise ShardError("the program does not start with a layer MARKER: it cannot be split")
    if count > len(bounds):
        raise ShardError(f"--shards {count}: the program has only {len(bounds)} drained layer boundaries")
    weights = [layer_cycles.get(program[pc].id, 1) for pc in bounds]
    total = sum(weights)
    cuts, acc = [0], 0
    for k, w in enumerate(weights[:-1]):
        acc += w
        # cut after layer k once this shard holds its share, keeping a layer for every later shard
        later_room = len(bounds) - (k + 1) >= count - len(cuts)
        if len(cuts) < count and acc >= total * len(cuts) / count and later_room:
            cuts.append(k + 1)
    while len(cuts) < count:                     # few, very unequal layers: cut the last ones
        cuts.append(next(k for k in range(len(bounds) - 1, 0, -1) if k not in cuts))
        cuts.sort()
    starts = [bounds[k] for k in cuts]
    return list(zip(starts, starts[1:] + [len(program)], strict=True))


def shard_program(program: list[isa.Insn], start: int, end: int) -> list[isa.Insn]:
    """The instructions [start, end) as a program of their own (see the module docstring)."""
    insns = [isa.decode(i.encode()) for i in program[start:end]]       # copies
    insns[0].pop_next = False
    if not isinstance(insns[-1], isa.Finish):
        insns.append(isa.Finish())
    return insns


def _initial_image(bundle: Bundle, inputs: dict[str, np.ndarray], iss) -> None:
    from softnpu.host.runtime import tensor_hwc

    mm = bundle.manifest.memory_map
    iss.write(mm["program"], bundle.program)
    iss.write(mm["weights"], bundle.weights)
    b = bundle.manifest.npu_config.cols
    for spec in bundle.manifest.inputs:
        x = np.asarray(inputs[spec.name], np.int8).reshape(tensor_hwc(spec))
        iss.write(spec.dram, to_blocked(x, b))


@dataclasses.dataclass
class ShardPlan:
    shards: list[Shard]
    iss_cycles: int                  # the ISS's monolithic run of the (prefix of the) program
    shard_addr: int                  # where each shard's program is placed
    instructions: int                # of the monolithic program at memory_map["program"]


def prepare_shards(bundle: Bundle, inputs: dict[str, np.ndarray], count: int,
                   layers: int | None = None) -> ShardPlan:
    """Plan the shards and run them on the ISS in sequence: each shard's starting image and expected
    activations.  `layers`: only the network's first layers (a prefix ending at a drained boundary),
    for benchmarks that cannot afford the whole network."""
    from softnpu.sim.iss import ISS

    manifest = bundle.manifest
    config = manifest.npu_config
    mm = manifest.memory_map
    program = isa.decode_program(bundle.program)
    if layers is not None:
        bounds = drained_boundaries(program)
        if not 0 < layers < len(bounds):
            raise ShardError(f"layers={layers}: the program has {len(bounds)} layers at drained boundaries")
        program = program[:bounds[layers]] + [isa.Finish()]
    ranges = plan_shards(program, count, {rec["id"]: rec["cycles"] for rec in manifest.layers})
    end = mm["end"]
    shard_addr = -(-end // 4096) * 4096
    longest = max(e - s + 1 for s, e in ranges) * isa.INSN_BYTES
    if shard_addr + longest > config.dram_bytes:
        raise ShardError(f"no room for a shard's program after the bundle's memory map ({end:#x} + "
                         f"{longest} bytes > device memory {config.dram_bytes:#x})")
    iss = ISS(config)
    _initial_image(bundle, inputs, iss)
    iss.write(mm["program"], isa.encode_program(program))
    mono = ISS(config)
    mono.write(0, iss.read(0, end))
    iss_cycles = mono.run(mm["program"], len(program)).cycles
    act = mm["activations_bytes"]
    shards = []
    for k, (s, e) in enumerate(ranges):
        before = iss.read(0, end).tobytes()
        encoded = isa.encode_program(shard_program(program, s, e))
        iss.write(shard_addr, encoded)
        stats = iss.run(shard_addr, len(encoded) // isa.INSN_BYTES)
        expected = iss.read(0, act).tobytes()
        layers = [i.id for i in program[s:e] if isinstance(i, isa.Marker)]
        shards.append(Shard(k, s, e, layers, before, expected, encoded, stats.cycles))
    final = iss.read(0, act)
    if not np.array_equal(final, mono.read(0, act)):
        raise ShardError("the ISS's shards, run in sequence, end with other activations than its "
                         "monolithic run: the split is not at drained boundaries")
    return ShardPlan(shards, iss_cycles, shard_addr, len(program))


def _run_shard(config: NPUConfig, shard: Shard, shard_addr: int, act_bytes: int, max_cycles: int):
    """One shard on the RTL (runs in a Ray task or a pool process): its JobResult."""
    from softnpu.sim.rtl.jobs import Job, run_jobs

    job = Job(f"shard{shard.index}", [(0, shard.image), (shard_addr, shard.program)], shard_addr,
              len(shard.program) // isa.INSN_BYTES, [(0, act_bytes)], max_cycles=max_cycles)
    return run_jobs(config, [job])[0]


def _outputs(manifest, activations: np.ndarray) -> dict[str, np.ndarray]:
    """The int8 outputs in the manifest's shapes, read from the activation region (as the runtime)."""
    from softnpu.compiler.layout import from_blocked
    from softnpu.host.runtime import tensor_hwc

    b = manifest.npu_config.cols
    out = {}
    for spec in manifest.outputs:
        h, w, c = tensor_hwc(spec)
        cb = -(-c // b)
        raw = activations[spec.dram:spec.dram + cb * h * w * b].view(np.int8)
        out[spec.name] = from_blocked(raw.reshape(cb, h, w, b), c).reshape(spec.shape)
    return out


def run_sharded(bundle: Bundle, inputs: dict[str, np.ndarray], count: int, *, use_ray: bool = True,
                address: str | None = None, workers: int | None = None, layers: int | None = None,
                plan: ShardPlan | None = None, log=print) -> ShardedRun:
    """Run the bundle on the RTL as `count` shards in parallel, each checked bit for bit against the
    ISS; ShardError names a shard whose activations differ or whose simulation failed."""
    from softnpu.host.runtime import layer_spans
    from softnpu.host.scale.scaleout import run_tasks
    from softnpu.sim.rtl import harness as rtl_harness

    t0 = time.perf_counter()
    manifest = bundle.manifest
    config = manifest.npu_config
    mm = manifest.memory_map
    plan = plan or prepare_shards(bundle, inputs, count, layers)
    t_rtl = time.perf_counter()
    shards, iss_cycles, shard_addr = plan.shards, plan.iss_cycles, plan.shard_addr
    log(f"{len(shards)} shards at layers " + ", ".join(
        f"[{s.layers[0]}..{s.layers[-1]}] ({s.iss_cycles:,} ISS cycles)" for s in shards))
    if address is None:
        rtl_harness.build(config)            # once, before the shards (they share the cache)
    budget = max(s.iss_cycles for s in shards) * 4 + 1_000_000
    args = [(config, s, shard_addr, mm["activations_bytes"], budget) for s in shards]
    results = [None] * len(shards)
    for i, outcome in run_tasks(_run_shard, args, use_ray=use_ray, address=address, workers=workers or count):
        if not outcome.ok:
            layers = shards[i].layers
            raise ShardError(f"shard {i} (layers {layers[0]}..{layers[-1]}): {outcome.error}")
        results[i] = outcome.value
    counters: dict[str, int] = {}
    layers: list[dict] = []
    for shard, res in zip(shards, results, strict=True):
        where = f"shard {shard.index} (layers {shard.layers[0]}..{shard.layers[-1]}, instructions " \
                f"{shard.start}..{shard.end - 1})"
        if res.fault or res.error:
            raise ShardError(f"{where}: the RTL {'faulted ' + str(res.fault) if res.fault else res.error}")
        got = np.frombuffer(res.regions[0], np.uint8)
        want = np.frombuffer(shard.expected, np.uint8)
        if not np.array_equal(got, want):
            bad = np.flatnonzero(got != want)
            raise ShardError(f"{where}: the RTL's activations differ from the ISS's in {bad.size} bytes, "
                             f"first at address {int(bad[0]):#x}")
        for k, v in res.counters.items():
            counters[k] = counters.get(k, 0) + v
        layers += [dict(span, shard=shard.index) for span in layer_spans(manifest, res.trace, res.counters)]
    activations = results[-1].regions[0]
    outputs = _outputs(manifest, np.frombuffer(activations, np.uint8))
    return ShardedRun(plan, shards, counters["cycles"], counters, layers, outputs, activations,
                      [r.counters["cycles"] for r in results],
                      [r.wall_s for r in results], iss_cycles, sum(s.iss_cycles for s in shards),
                      time.perf_counter() - t0, time.perf_counter() - t_rtl)


def run_monolithic(bundle: Bundle, plan: ShardPlan) -> tuple[dict[str, int], bytes, float]:
    """The whole (prefix of the) program in one RTL simulator from the first shard's image (the
    benchmark's and the tests' reference): (counters, activation region after it, wall seconds)."""
    from softnpu.sim.rtl.jobs import Job, run_jobs

    mm = bundle.manifest.memory_map
    t0 = time.perf_counter()
    job = Job("monolithic", [(0, plan.shards[0].image)], mm["program"], plan.instructions,
              [(0, mm["activations_bytes"])], max_cycles=plan.iss_cycles * 4 + 1_000_000)
    res = run_jobs(bundle.manifest.npu_config, [job])[0]
    if res.fault or res.error:
        raise ShardError(f"the monolithic RTL run failed: {res.fault or res.error}")
    return res.counters, res.regions[0], time.perf_counter() - t0
