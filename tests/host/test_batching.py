"""Server-side batching (`softnpu serve --enable-batching`, host/serving/batching.py): the same
results as without it for concurrent clients, batches filled up to max_batch_size, a timeout that
flushes a partial batch, errors that stay with their own request, a bounded batch queue, and a
SIGTERM drain that loses nothing queued in a batch."""

from __future__ import annotations

import os
import signal
import threading
import time

import grpc
import numpy as np
import pytest

from softnpu.host.devices.device import DeviceError
from softnpu.host.serving.batching import BatchingError, BatchingParameters
from softnpu.host.serving.client import PredictionClient, ScoreError
from tests.host.conftest import Gate, GatedDevice, joined
from tests.host.test_cli_errors import softnpu
from tests.host.test_hostile import _tensor, raw_predict, wait_until, x_int8

SC = grpc.StatusCode
TIMEOUT = 20


def _batches(server) -> list[tuple[int, int]]:
    """Record (examples, requests) of every batch the server's batcher dispatches."""
    seen: list[tuple[int, int]] = []
    batcher = server.pool.batcher
    metrics = batcher.on_batch

    def record(examples, requests):
        seen.append((examples, requests))
        metrics(examples, requests)
    batcher.on_batch = record
    return seen


def _predict_all(address, inputs: list[np.ndarray], timeouts=None) -> list:
    """One client thread per input, all at once; each slot gets logits or the ScoreError."""
    out = [None] * len(inputs)

    def call(i):
        with PredictionClient(address, model="sample", timeout=(timeouts or {}).get(i, TIMEOUT),
                              retries=0) as client:
            try:
                out[i] = client.predict({"input": inputs[i]}, "logits_int8")
            except ScoreError as err:
                out[i] = err

    with joined([threading.Thread(target=call, args=(i,)) for i in range(len(inputs))]):
        pass
    return out


# ----------------------------------------------------------------------------------------------
# The parameters file
# ----------------------------------------------------------------------------------------------
def test_parameters_in_tf_servings_text_format(tmp_path):
    path = tmp_path / "batching.txt"
    path.write_text("# TF Serving's format\nmax_batch_size { value: 8 }\n"
                    "batch_timeout_micros { value: 2000 }\nmax_enqueued_batches { value: 3 }\n"
                    "num_batch_threads: 2\n")
    assert BatchingParameters.load(path) == BatchingParameters(8, 2000, 3, 2)
    assert BatchingParameters.parse("max_batch_size { value: 4 }") == BatchingParameters(max_batch_size=4)
    for text, message in [
        ("max_batch_size { value: 0 }", "f:1: max_batch_size must be an integer >= 1, got 0"),
        ("\nbatch_timeout_micros { value: -5 }", "f:2: batch_timeout_micros must be an integer >= 0, got -5"),
        ("max_batch_size { value: 8.5 }", "f:1: max_batch_size: '8.5' is not an integer"),
        ("max_batch_size { value: 8 }\nmax_batch_size { value: 4 }", "f:2: max_batch_size is given twice"),
        ("max_batch_siz { value: 8 }", "f:1: unknown field 'max_batch_siz'"),
        ("allowed_batch_sizes: 8", "allowed_batch_sizes is a TF Serving batching parameter this server "
                                   "does not support"),
        ("max_batch_size { value: 8", "f:1: expected '}', got the end of the file"),
    ]:
        with pytest.raises(BatchingError) as info:
            BatchingParameters.parse(text, "f")
        assert message in str(info.value)
    with pytest.raises(BatchingError, match="cannot read the batching parameters file"):
        BatchingParameters.load(tmp_path / "missing.txt")


def test_the_serve_command_names_a_bad_batching_file(tmp_path):
    bad = tmp_path / "b.txt"
    bad.write_text("max_batch_size { value: -1 }\n")
    run = softnpu("serve", "--model-dir", tmp_path, "--port", "0", "--enable-batching",
                  "--batching-parameters-file", bad, cwd=tmp_path)
    assert run.returncode == 1 and f"{bad}:1: max_batch_size must be an integer >= 1, got -1" in run.stderr
    run = softnpu("serve", "--model-dir", tmp_path, "--port", "0", "--batching_parameters_file", bad,
                  cwd=tmp_path)
    assert run.returncode == 1 and "--batching-parameters-file needs --enable-batching" in run.stderr


# ----------------------------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------------------------
def test_batched_results_equal_unbatched_ones_for_concurrent_clients(serve, sample):
    inputs = [x_int8(sample, seed) for seed in range(12)]
    plain = serve(workers=1)
    expected = _predict_all(plain.address, inputs)
    gate = Gate()
    batched = serve(workers=1, device_factory=gate,
                    batching=BatchingParameters(max_batch_size=4, batch_timeout_micros=0))
    seen = _batches(batched)
    first = threading.Thread(target=lambda: _predict_all(batched.address, inputs[:1]))
    first.start()
    gate.wait_entered()                  # one batch runs; the other 11 clients queue behind it
    got = []
    rest = threading.Thread(target=lambda: got.extend(_predict_all(batched.address, inputs[1:])))
    rest.start()
    wait_until(lambda: batched.pool.queued() == 11, what="eleven requests queued")
    gate.open()
    rest.join(TIMEOUT)
    first.join(TIMEOUT)
    for want, have in zip(expected[1:], got, strict=True):
        np.testing.assert_array_equal(have, want)
    assert sorted(seen) == [(1, 1), (3, 3), (4, 4), (4, 4)]        # 11 queued: batches of 4, 4 and 3
    assert batched.pool.counts["completed"] == 12 and batched.pool.counts["failed"] == 0
    text = batched.metrics.exposition().decode()
    assert "softnpu_batch_size_count 4.0" in text and "softnpu_batch_size_sum 12.0" in text


def test_a_full_batch_goes_at_once_and_the_timeout_flushes_a_partial_one(serve, sample):
    server = serve(workers=1, batching=BatchingParameters(max_batch_size=3, batch_timeout_micros=1_000_000))
    seen = _batches(server)
    inputs = [x_int8(sample, seed) for seed in range(3)]
    t0 = time.monotonic()
    _predict_all(server.address, inputs)                # 3 requests: the batch is full, no wait
    full = time.monotonic() - t0
    t0 = time.monotonic()
    out = _predict_all(server.address, inputs[:1])      # 1 request: dispatched by the timeout
    partial = time.monotonic() - t0
    assert out[0].shape == (1, 10)
    assert seen == [(3, 3), (1, 1)]
    assert full < 1.0 <= partial, (full, partial)


class PoisonDevice(GatedDevice):
    """A gated ISS device that faults on inputs whose first byte is -128 (the runtime resets it,
    as after any NPU fault)."""

    def run(self, insn_addr, count, timeout_s=None):
        spec = self.poison_spec
        if self.read_memory(spec.dram, 1)[0] == 0x80:
            self.start(insn_addr, count)
            raise DeviceError(3, 7, "poisoned input (test)")
        return super().run(insn_addr, count, timeout_s)


def test_a_bad_request_fails_alone_and_its_batch_goes_on(serve, sample):
    gate = Gate()

    def factory(config):
        device = PoisonDevice(config, gate.gate, gate.entered, gate.runs)
        device.poison_spec = sample.input
        return device

    server = serve(workers=1, device_factory=factory,
                   batching=BatchingParameters(max_batch_size=8, batch_timeout_micros=0))
    seen = _batches(server)
    good = [x_int8(sample, seed) for seed in range(5)]
    for x in good:
        x.reshape(-1)[0] = 0
    poison = x_int8(sample, 9)
    poison.reshape(-1)[0] = -128
    first = threading.Thread(target=lambda: _predict_all(server.address, good[:1]))
    first.start()
    gate.wait_entered()
    # queued behind the running batch: good, poison, good, a request whose deadline passes, good
    inputs = [good[1], poison, good[2], good[3], good[4]]
    got = []
    rest = threading.Thread(target=lambda: got.extend(_predict_all(server.address, inputs,
                                                                   timeouts={3: 0.5})))
    rest.start()
    # request 3's deadline passes while it waits in the batch: it leaves the batch
    wait_until(lambda: server.pool.queued() + server.pool.counts["expired"] == 5, what="five requests queued")
    wait_until(lambda: server.pool.counts["expired"] == 1, what="request 3 expired")
    gate.open()
    rest.join(TIMEOUT)
    first.join(TIMEOUT)
    assert isinstance(got[1], ScoreError) and got[1].code == SC.INTERNAL
    assert "poisoned input" in got[1].message
    assert isinstance(got[3], ScoreError) and got[3].code == SC.DEADLINE_EXCEEDED
    with PredictionClient(serve(workers=1).address, model="sample", timeout=TIMEOUT) as plain:
        for i in (0, 2, 4):
            np.testing.assert_array_equal(got[i], plain.predict({"input": inputs[i]}, "logits_int8"))
    assert seen == [(1, 1), (4, 4)]                 # request 3 left its batch when its deadline passed
    assert server.pool.counts["expired"] == 1 and server.pool.counts["failed"] == 1


def test_a_full_batch_queue_is_resource_exhausted(serve, sample):
    gate = Gate()
    server = serve(workers=1, device_factory=gate,
                   batching=BatchingParameters(max_batch_size=1, max_enqueued_batches=2))
    held = [threading.Thread(target=raw_predict, args=(server.address, {"input": _tensor(sample)}))
            for _ in range(3)]
    held[0].start()
    gate.wait_entered()                 # the first batch runs; two more are queued behind it
    for t in held[1:]:
        t.start()
    wait_until(lambda: server.pool.queued() == 2, what="two batches queued")
    code, message = raw_predict(server.address, {"input": _tensor(sample)})
    assert code == SC.RESOURCE_EXHAUSTED and "batch queue of sample:2 full (2 batches" in message
    assert server.pool.counts["rejected"] == 1
    gate.open()
    for t in held:
        t.join(TIMEOUT)
    assert server.pool.counts["completed"] == 3


def test_sigterm_drains_requests_queued_in_batches(serve, sample):
    gate = Gate()
    server = serve(workers=1, max_queue=4, device_factory=gate,
                   batching=BatchingParameters(max_batch_size=2, batch_timeout_micros=50_000))
    results, late = [], []

    def call():
        results.append(raw_predict(server.address, {"input": _tensor(sample)}))

    clients = [threading.Thread(target=call) for _ in range(5)]
    for t in clients:
        t.start()

    def terminate():
        try:
            gate.wait_entered()
            batcher = server.pool.batcher       # requests taken into a batch, and waiting in one
            wait_until(lambda: batcher.counts["tasks"] + batcher.queued() == 5, what="five requests accepted")
        finally:
            os.kill(os.getpid(), signal.SIGTERM)
        wait_until(lambda: server.draining, what="draining")
        late.append(raw_predict(server.address, {"input": _tensor(sample)}, timeout=5)[0])
        gate.open()

    killer = threading.Thread(target=terminate)
    killer.start()
    assert server.run_until_signal(grace_s=30) == signal.SIGTERM
    killer.join(TIMEOUT)
    for t in clients:
        t.join(TIMEOUT)
    assert results == [(SC.OK, "")] * 5          # nothing queued in a batch was lost
    assert late == [SC.UNAVAILABLE]
    assert len(gate.runs) == 5


def test_pool_close_fails_what_is_still_queued(sample):
    """Past the grace period, requests still in a batch get PoolClosed (UNAVAILABLE), not a hang."""
    from softnpu.host.serving.models import ServedModel
    from softnpu.host.serving.workers import PoolClosed, WorkerPool

    gate = Gate()
    pool = WorkerPool(1, device_factory=gate, batching=BatchingParameters(max_batch_size=1))
    model = ServedModel(sample.bundle, "sample", 1)
    example = {sample.input.name: x_int8(sample)}
    outcome = []

    def run():
        try:
            outcome.append(len(pool.run(model, [example])))
        except PoolClosed as exc:
            outcome.append(str(exc))

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    gate.wait_entered()
    wait_until(lambda: pool.queued() == 2, what="two queued")
    closer = threading.Thread(target=pool.close, args=(0.4,))
    closer.start()
    time.sleep(0.5)
    gate.open()
    closer.join(TIMEOUT)
    for t in threads:
        t.join(TIMEOUT)
    assert sorted(outcome, key=str) == [1, "the server is shutting down", "the server is shutting down"]


def test_rest_and_grpc_requests_share_a_batch(serve, sample):
    from tests.host.test_rest import http

    x = [x_int8(sample, seed) for seed in range(4)]
    expected = _predict_all(serve(workers=1).address, x)
    gate = Gate()
    server = serve(workers=1, rest_port=0, device_factory=gate, batching=BatchingParameters(max_batch_size=8))
    seen = _batches(server)
    first = threading.Thread(target=lambda: _predict_all(server.address, x[:1]))
    first.start()
    gate.wait_entered()
    answers = []
    rest = threading.Thread(target=lambda: answers.append(http(
        server, "/v1/models/sample:predict", {"instances": [x[1][0].tolist(), x[2][0].tolist()]})))
    rest.start()
    wait_until(lambda: server.pool.queued() == 1, what="the REST request queued")
    grpc_out = []
    other = threading.Thread(target=lambda: grpc_out.extend(_predict_all(server.address, x[3:])))
    other.start()
    wait_until(lambda: server.pool.queued() == 2, what="the gRPC request queued")
    gate.open()
    for t in (first, rest, other):
        t.join(TIMEOUT)
    (status, body), = answers
    assert status == 200
    assert [p["logits_int8"] for p in body["predictions"]] == [e[0].tolist() for e in expected[1:3]]
    np.testing.assert_array_equal(grpc_out[0], expected[3])
    assert seen == [(1, 1), (3, 2)]             # the REST request's 2 examples and the gRPC one
