"""Sharded RTL simulation (host/scale/shards.py): drained boundaries, shards bit-exact against the ISS,
cycles and counters summed against one simulator run of the same program; then a 2-node local Ray
cluster (`ray start --head` + a worker node joined by address) running the same shards and a 4-point
sweep by address, with results equal to the local runs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from softnpu.hdl import isa
from softnpu.host.scale import shards


@pytest.fixture(scope="module")
def digits():
    from softnpu.compiler.compile import compile_model
    from softnpu.host.verify import random_inputs

    bundle = compile_model("digits", "tiny", progress=False)
    return bundle, random_inputs(bundle.manifest, 1, 3)[0]


def test_every_layer_marker_is_a_drained_boundary(digits):
    bundle, _ = digits
    program = isa.decode_program(bundle.program)
    markers = [pc for pc, insn in enumerate(program) if isinstance(insn, isa.Marker)]
    assert shards.drained_boundaries(program) == markers and len(markers) == len(bundle.manifest.layers)
    # a store that does not release the next MARKER leaves a token balance: not a boundary any more
    k = markers[3]
    last_store = max(pc for pc in range(k) if isinstance(program[pc], isa.Store))
    program[last_store].push_prev = False
    assert k not in shards.drained_boundaries(program)


def test_plan_splits_into_contiguous_ranges(digits):
    bundle, _ = digits
    program = isa.decode_program(bundle.program)
    cycles = {rec["id"]: rec["cycles"] for rec in bundle.manifest.layers}
    for n in (1, 2, 3, 7):
        ranges = shards.plan_shards(program, n, cycles)
        assert len(ranges) == n and ranges[0][0] == 0 and ranges[-1][1] == len(program)
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
    with pytest.raises(shards.ShardError, match="only 7 drained layer boundaries"):
        shards.plan_shards(program, 8, cycles)
    sub = shards.shard_program(program, ranges[2][0], ranges[2][1])
    assert isinstance(sub[0], isa.Marker) and not sub[0].pop_next and isinstance(sub[-1], isa.Finish)
    assert program[ranges[2][0]].pop_next          # the bundle's program is left as it was


@pytest.fixture(scope="module")
def local_run(digits):
    bundle, inputs = digits
    return shards.run_sharded(bundle, inputs, 3, use_ray=False, log=lambda m: None)


def test_sharded_rtl_equals_the_monolithic_run(digits, local_run):
    from softnpu.host.runtime import Runtime

    bundle, inputs = digits
    run = local_run
    mono, mono_act, _ = shards.run_monolithic(bundle, run.plan)
    mono_cycles = mono["cycles"]
    assert run.activations == mono_act                          # bit for bit, the whole activation region
    iss = Runtime.open(bundle, "iss")
    try:
        want = iss.infer(inputs).outputs
    finally:
        iss.close()
    for name, y in want.items():
        np.testing.assert_array_equal(run.outputs[name], y)
    # cycles: each of the 2 boundaries costs a cold start and a FINISH, tens of cycles, never less
    assert 0 <= run.cycles - mono_cycles <= 2 * 150
    assert 0 <= run.iss_boundary_cycles <= 2 * 150
    assert [s.iss_cycles for s in run.shards] and sum(run.shard_cycles) == run.cycles
    # per-layer counters: every layer once, MAC work exact, DRAM bytes exact but the 2 added FINISHes
    assert [span["id"] for span in run.layers] == [rec["id"] for rec in bundle.manifest.layers]
    assert sum(span["counters"]["mac_active"] for span in run.layers) == run.counters["mac_active"]
    assert run.counters["mac_active"] == mono["mac_active"]
    assert run.counters["dram_write_bytes"] == mono["dram_write_bytes"]
    assert run.counters["dram_read_bytes"] == mono["dram_read_bytes"] + 2 * isa.INSN_BYTES


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_cluster(monkeypatch):
    """A head node and a worker node joined by address, 1 CPU each, in a temporary folder; `ray start
    --block` keeps each node's processes under one process that this fixture ends.  Token
    authentication is off for this throwaway loopback cluster (drivers on this machine would otherwise
    need the head's token)."""
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    ray_bin = str(Path(sys.executable).parent / "ray")
    port = _free_port()
    address = f"127.0.0.1:{port}"
    tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")       # short: Ray's socket paths have a length limit
    common = ["--block", "--num-cpus=1", "--disable-usage-stats"]
    nodes = [subprocess.Popen([ray_bin, "start", "--head", f"--port={port}", f"--temp-dir={tmp}",
                               "--node-ip-address=127.0.0.1", "--include-dashboard=false", *common],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)]
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the Ray head node did not start in 90 s"
                assert nodes[0].poll() is None, "ray start --head exited"
                time.sleep(0.5)
        nodes.append(subprocess.Popen([ray_bin, "start", f"--address={address}",
                                       "--node-ip-address=127.0.0.1",
                                       *common], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      start_new_session=True))
        yield address
    finally:
        for node in reversed(nodes):
            os.killpg(node.pid, signal.SIGTERM)
        for node in nodes:
            try:
                node.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(node.pid, signal.SIGKILL)
                node.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def test_two_node_cluster_runs_shards_and_a_sweep_by_address(digits, local_run, ray_cluster, tmp_path):
    import ray

    from softnpu.host.scale.sweep import compute_point, load_spec, run_sweep

    ray.init(address=ray_cluster, include_dashboard=False, log_to_driver=False)
    try:
        deadline = time.monotonic() + 60
        while sum(node["Alive"] for node in ray.nodes()) < 2:
            assert time.monotonic() < deadline, "the worker node did not join in 60 s"
            time.sleep(0.5)
        bundle, inputs = digits
        run = shards.run_sharded(bundle, inputs, 3, address=ray_cluster, log=lambda m: None)
        assert run.activations == local_run.activations
        assert run.shard_cycles == local_run.shard_cycles
        assert run.counters == local_run.counters and run.layers == local_run.layers

        spec_file = tmp_path / "spec.json"
        spec_file.write_text(json.dumps({"base": "tiny", "models": ["digits"], "array": [4, 8],
                                         "dram_bus_bytes": [4], "dram_latency": [8, 32]}))
        spec = load_spec(spec_file)
        table = run_sweep(spec, tmp_path / "out", address=ray_cluster, log=lambda m: None)
        assert [r["status"] for r in table] == ["ok"] * 4
        tflite = bundle.tflite
        for row, point in zip(table, spec.points, strict=True):
            local = compute_point(point, tflite)
            assert {k: row[k] for k in ("cycles", "macs", "dram_bytes", "kinds")} == \
                {k: local[k] for k in ("cycles", "macs", "dram_bytes", "kinds")}
    finally:
        ray.shutdown()
