"""Hostile callers and broken repositories (issue 14): stalled unauthenticated calls, per-peer
limits, broadcast and pixel bombs, corrupt versions, dead workers, SIGTERM with a queue.  Each case
gets its status code, and authorised calls and health checks keep working throughout."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from softnpu.host.serving.auth import CallGuard, env_api_keys, peer_host
from softnpu.host.serving.client import PredictionClient, ScoreError
from softnpu.host.serving.repository import ModelRepository
from tests.host.conftest import API_KEY

SC = grpc.StatusCode
ATTACK_RSS_MIB = 100        # how far the server process's high-water mark may rise above its warm peak (one
                            # authorised Predict served: the device and its numba/onnxruntime kernels loaded)
                            # through every attack; the bombs took 500+ MiB each
TIMEOUT = 20
PREDICT = "/tensorflow.serving.PredictionService/Predict"


def stalled_calls(address: str, count: int, metadata=None, timeout: float = 30):
    """`count` Predict calls that send their headers and never a message (what ~50 idle sockets
    of a stock client do); returns (futures, release) where release() ends them."""
    channel = grpc.insecure_channel(address)
    release = threading.Event()

    def never():
        release.wait(timeout)
        return
        yield

    call = channel.stream_unary(PREDICT, request_serializer=predict_pb2.PredictRequest.SerializeToString,
                                response_deserializer=predict_pb2.PredictResponse.FromString)
    futures = [call.future(never(), timeout=timeout, metadata=metadata) for _ in range(count)]

    def stop():
        release.set()
        for f in futures:
            f.cancel()
        channel.close()
    return futures, stop


def code_of(future, timeout=TIMEOUT) -> grpc.StatusCode:
    try:
        future.result(timeout=timeout)
        return SC.OK
    except grpc.FutureTimeoutError:
        return None                 # still running: stalled
    except grpc.RpcError as err:
        return err.code()


def wait_until(predicate, timeout=TIMEOUT, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def x_int8(sample, seed=0):
    return np.random.default_rng(seed).integers(-128, 128, sample.input.shape, dtype=np.int8)


# ----------------------------------------------------------------------------------------------
# Authentication before the message; per-peer limit
# ----------------------------------------------------------------------------------------------
def test_stalled_unauthenticated_calls_are_refused_before_their_message(serve, sample):
    server = serve(workers=1, max_queue=2, api_keys=[API_KEY])      # 14 handler threads
    futures, stop = stalled_calls(server.address, 60)
    try:
        # every one is answered although none sent its message: none holds a thread
        assert {code_of(f) for f in futures} == {SC.UNAUTHENTICATED}
        assert server.guard.rejected["unauthenticated"] == 60
        more, stop_more = stalled_calls(server.address, 60)
        with PredictionClient(server.address, api_key=API_KEY, model="sample", timeout=TIMEOUT,
                              retries=0) as client:
            assert client.health() == "SERVING"
            out = client.predict({"input": x_int8(sample)}, ["logits_int8"])
            assert out["logits_int8"].shape == (1, 10)
        assert {code_of(f) for f in more} == {SC.UNAUTHENTICATED}
        stop_more()
    finally:
        stop()


def test_one_peer_holds_at_most_its_limit_of_calls(serve, sample):
    server = serve(workers=1, max_queue=2, api_keys=[API_KEY], max_calls_per_peer=2)
    key = [("authorization", f"Bearer {API_KEY}")]
    held, release = stalled_calls(server.address, 2, metadata=key)
    try:
        wait_until(lambda: server.guard.peers.calls("ipv4:127.0.0.1") == 2, what="two calls held")
        extra, stop_extra = stalled_calls(server.address, 3, metadata=key)
        assert {code_of(f) for f in extra} == {SC.RESOURCE_EXHAUSTED}
        stop_extra()
        with PredictionClient(server.address, api_key=API_KEY, model="sample", retries=0) as client:
            with pytest.raises(ScoreError) as info:
                client.predict({"input": x_int8(sample)}, ["logits_int8"])
            assert info.value.code == SC.RESOURCE_EXHAUSTED and "limit 2 per peer" in info.value.message
    finally:
        release()
    wait_until(lambda: server.guard.peers.calls() == 0, what="slots released")
    with PredictionClient(server.address, api_key=API_KEY, model="sample", timeout=TIMEOUT) as client:
        assert client.predict({"input": x_int8(sample)}, ["logits_int8"])["logits_int8"].shape == (1, 10)
        assert client.health() == "SERVING"


def test_a_call_that_ends_without_its_message_is_invalid_argument(serve):
    server = serve(api_keys=[API_KEY])
    channel = grpc.insecure_channel(server.address)
    call = channel.stream_unary(PREDICT, request_serializer=predict_pb2.PredictRequest.SerializeToString,
                                response_deserializer=predict_pb2.PredictResponse.FromString)
    with pytest.raises(grpc.RpcError) as info:
        call(iter(()), timeout=TIMEOUT, metadata=[("authorization", API_KEY)])
    assert info.value.code() == SC.INVALID_ARGUMENT
    channel.close()
    wait_until(lambda: server.guard.peers.calls() == 0, what="slot released")


def test_keys_from_the_environment_and_peer_hosts():
    assert env_api_keys({"SOFTNPU_API_KEYS": " a, b\nc "}) == ["a", "b", "c"]
    assert env_api_keys({}) == []
    assert peer_host("ipv4:127.0.0.1:5555") == "ipv4:127.0.0.1"
    assert peer_host("ipv6:[::1]:5555") == "ipv6:[::1]"
    assert peer_host("unix:/tmp/s") == "unix:/tmp/s"
    with pytest.raises(ValueError, match="must not be empty"):
        CallGuard([""])


# ----------------------------------------------------------------------------------------------
# A `softnpu serve` process whose peak memory is measured
# ----------------------------------------------------------------------------------------------
class ServeProcess:
    def __init__(self, root, *args, env=None):
        cmd = [sys.executable, "-m", "softnpu", "serve", "--model-dir", str(root), "--port", "0",
               *args]
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1", **(env or {}))
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=env)
        self.lines = []
        self.address = None
        while self.address is None:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"softnpu serve did not start: {''.join(self.lines)}")
            self.lines.append(line)
            match = re.search(r"gRPC on (\S+),", line)
            self.address = match.group(1) if match else None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)

    def peak_rss_mib(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
        return kb / 1024

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(5)


@pytest.fixture(scope="module")
def served(tmp_path_factory, bundle_path, sample):
    """`softnpu serve` in a process of its own, keys from $SOFTNPU_API_KEYS, the sample model
    (16x16x3 input) as `sample`."""
    repo = ModelRepository(tmp_path_factory.mktemp("served") / "models")
    repo.register(bundle_path, "sample")
    server = ServeProcess(repo.root, "--workers", "1", "--max-queue", "4",
                          env={"SOFTNPU_API_KEYS": f"other,{API_KEY}"})
    with authorised(server.address) as client:
        client.predict({"input": x_int8(sample)}, ["logits_int8"])
    server.warm_peak_mib = server.peak_rss_mib()
    yield server
    server.stop()


def authorised(address):
    return PredictionClient(address, api_key=API_KEY, model="sample", timeout=TIMEOUT, retries=0)


def raw_predict(address, inputs: dict, timeout=TIMEOUT):
    """A stock stub sending hand-made TensorProtos (what a hostile client can send)."""
    with grpc.insecure_channel(address) as channel:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "sample"
        for alias, t in inputs.items():
            request.inputs[alias].CopyFrom(t)
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        try:
            stub.Predict(request, timeout=timeout, metadata=[("authorization", API_KEY)])
            return SC.OK, ""
        except grpc.RpcError as err:
            return err.code(), err.details()


def proto(dtype, shape, **values):
    dims = [tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in shape]
    return tensor_pb2.TensorProto(dtype=dtype, tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=dims),
                                  **values)


def big_png(side=8192) -> bytes:
    """A 1-bit PNG of side x side: tiny on the wire, side^2 * 3 bytes once decoded to RGB."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("1", (side, side)).save(buf, "PNG", optimize=True)
    return buf.getvalue()


def big_jpeg(side=2048) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (side, side), (200, 30, 60)).save(buf, "JPEG")
    return buf.getvalue()


BOMBS = [
    # (id, inputs, status, fragment of the message)
    ("double broadcast", {"input": proto(types_pb2.DT_DOUBLE, [1 << 21], double_val=[1.5])},
     SC.INVALID_ARGUMENT, "takes at most 64 examples"),
    ("float broadcast 4-D", {"input": proto(types_pb2.DT_FLOAT, [1 << 14, 16, 16, 3], float_val=[0.0])},
     SC.INVALID_ARGUMENT, "takes at most 64 examples"),
    ("string broadcast", {"images": proto(types_pb2.DT_STRING, [1 << 21], string_val=[b"x" * 200])},
     SC.INVALID_ARGUMENT, "at most 64 encoded images"),
    ("pixel bomb", {"images": proto(types_pb2.DT_STRING, [1], string_val=[big_png()])},
     SC.INVALID_ARGUMENT, "exceeds sample's pixel budget"),
    ("pixel bombs", {"images": proto(types_pb2.DT_STRING, [64], string_val=[big_png(4096)])},
     SC.INVALID_ARGUMENT, "pixel budget of 1048576 pixels"),
]


@pytest.mark.parametrize("name", [b[0] for b in BOMBS])
def test_bombs_are_refused_before_they_are_decoded(served, sample, name):
    _, inputs, code, fragment = next(b for b in BOMBS if b[0] == name)
    got, message = raw_predict(served.address, inputs)
    assert got == code and fragment in message, (got, message)
    with authorised(served.address) as client:
        assert client.health() == "SERVING"
        assert client.predict({"input": x_int8(sample)}, ["logits_int8"])["logits_int8"].shape == (1, 10)
    assert served.peak_rss_mib() < served.warm_peak_mib + ATTACK_RSS_MIB


def test_a_large_jpeg_is_decoded_at_a_reduced_scale(served):
    # 2048x2048 = 4 Mpx is over a 16x16 model's budget of 1 Mpx, but a JPEG decodes at 1/8 scale
    with authorised(served.address) as client:
        assert client.score_image(big_jpeg(), outputs="classes").shape == (1, 5)
    png = big_png(2048)
    got, message = raw_predict(served.address, {"images": proto(types_pb2.DT_STRING, [1], string_val=[png])})
    assert got == SC.INVALID_ARGUMENT and "2048x2048 pixels" in message


def test_stalled_calls_leave_a_served_process_working(served, sample):
    futures, stop = stalled_calls(served.address, 50)
    try:
        assert {code_of(f) for f in futures} == {SC.UNAUTHENTICATED}
        with authorised(served.address) as client:
            assert client.health() == "SERVING"
            assert client.predict({"input": x_int8(sample)}, ["classes"])["classes"].shape == (1, 5)
    finally:
        stop()
    assert served.peak_rss_mib() < served.warm_peak_mib + ATTACK_RSS_MIB


def test_in_flight_bytes_are_bounded_and_released(serve, sample):
    from softnpu.host.serving.limits import Limits
    from tests.host.conftest import Gate

    gate = Gate()
    one = Limits(max_batch=64).cost(_model(serve), {"input": _tensor(sample)})
    server = serve(workers=1, device_factory=gate, limits=Limits(max_inflight_bytes=one + one // 2))
    held = threading.Thread(target=lambda: raw_predict(server.address, {"input": _tensor(sample)}))
    held.start()
    try:
        gate.wait_entered()
        assert server.limits.inflight_bytes == one
        code, message = raw_predict(server.address, {"input": _tensor(sample)})
        assert code == SC.RESOURCE_EXHAUSTED and "retry later" in message
    finally:
        gate.open()
        held.join(TIMEOUT)
    wait_until(lambda: server.limits.inflight_bytes == 0, what="the reservation released")
    assert raw_predict(server.address, {"input": _tensor(sample)})[0] == SC.OK
    small = serve(limits=Limits(max_request_bytes=4096))
    code, message = raw_predict(small.address, {"input": _tensor(sample)})
    assert code == SC.INVALID_ARGUMENT and "limit of 4096 bytes per request" in message


def _tensor(sample):
    import tensorflow as tf

    return tf.make_tensor_proto(x_int8(sample))


def _model(serve):
    server = serve()
    return server.store.get("sample")


# ----------------------------------------------------------------------------------------------
# A repository that survives bad files
# ----------------------------------------------------------------------------------------------
def bad_crc(bundle_path) -> bytes:
    """The bundle with one byte of its weights member flipped: the zip directory is intact, the
    member's CRC-32 is not."""
    import zipfile

    data = bytearray(bundle_path.read_bytes())
    with zipfile.ZipFile(bundle_path) as z:
        info = z.getinfo("weights.bin")
    data[info.header_offset + 30 + len(info.filename) + info.compress_size // 2] ^= 0xFF
    return bytes(data)


def corrupt_versions(bundle_path) -> dict[str, bytes]:
    good = bundle_path.read_bytes()
    return {"truncated": good[:len(good) // 2],
            "random": np.random.default_rng(3).integers(0, 256, 4096, np.uint8).tobytes(),
            "bad crc": bad_crc(bundle_path),
            "empty": b""}


def put(repo, name, version, data: bytes):
    path = repo.root / name / str(version) / "model.npu"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_corrupt_newest_versions_leave_the_last_good_one_serving(serve, repo, sample, bundle_path, caplog):
    server = serve(api_keys=[API_KEY])
    with authorised(server.address) as client:
        assert client.status() == [(1, "AVAILABLE", ""), (2, "AVAILABLE", "")]
        for version, (kind, data) in enumerate(corrupt_versions(bundle_path).items(), start=3):
            path = put(repo, "sample", version, data)
            wait_until(lambda: version in [s[0] for s in client.status()],   # noqa: B023
                       what=f"version {version} listed")               # the listing is re-read each second
            out = client.predict({"input": x_int8(sample)}, ["logits_int8"])       # latest
            assert out["logits_int8"].shape == (1, 10), kind
            assert server.store.get("sample").version == 2, kind
            states = {v: (state, error) for v, state, error in client.status()}
            state, error = states[version]
            assert state == "END" and error.startswith(f"sample/{version}/model.npu: "), (kind, error)
            assert str(repo.root) not in error
            assert any(str(path) in r.getMessage() and "not servable" in r.getMessage()
                       for r in caplog.records), f"{kind}: no log line names {path}"
            with pytest.raises(ScoreError) as info:
                client.predict({"input": x_int8(sample)}, ["logits_int8"], version=version)
            assert info.value.code == SC.NOT_FOUND and f"Specific(sample, {version})" in info.value.message
            assert client.health() == "SERVING"
        assert "bad CRC-32" in states[5][1]
        # a good file written over a bad version is served from then on
        put(repo, "sample", 6, bundle_path.read_bytes())
        wait_until(lambda: client.predict({"input": x_int8(sample)}, ["logits_int8"]) is not None
                   and server.store.get("sample").version == 6, what="version 6 served")


def test_a_server_starts_with_bad_files_and_names_them(tmp_path, bundle_path, sample):
    repo = ModelRepository(tmp_path / "models")
    repo.register(bundle_path, "sample")
    put(repo, "sample", 2, bad_crc(bundle_path))
    put(repo, "junk", 1, b"PK\x03\x04 not a zip")
    server = ServeProcess(repo.root, env={"SOFTNPU_API_KEYS": API_KEY})
    try:
        with authorised(server.address) as client:
            out = client.predict({"input": x_int8(sample)}, ["logits_int8"])
            assert out["logits_int8"].shape == (1, 10)
            assert [s[:2] for s in client.status()] == [(1, "AVAILABLE"), (2, "END")]
            assert client.status("junk")[0][1] == "END"
            with pytest.raises(ScoreError) as info:
                client.predict({"input": x_int8(sample)}, model="junk")
            assert info.value.code == SC.NOT_FOUND and "Latest(junk)" in info.value.message
            assert "sample" not in info.value.message         # no other model's name
    finally:
        server.stop()
    log = "".join(server.lines)
    assert str(repo.root / "sample" / "2" / "model.npu") in log and "bad CRC-32" in log
    assert str(repo.root / "junk" / "1" / "model.npu") in log


def test_unloaded_versions_release_their_memory(serve, repo, sample):
    import gc
    import weakref

    server = serve(workers=2)
    with PredictionClient(server.address, model="sample", timeout=TIMEOUT) as client:
        for _ in range(2):          # both workers place version 2
            client.predict({"input": x_int8(sample)}, ["logits_int8"])
        model = server.store.get("sample", 2)
        held = weakref.ref(model)
        bundle = weakref.ref(model.bundle)
        assert any(model.key in w.runtimes for w in server.pool._all)
        del model
        repo.remove("sample", 2)
        server.store.refresh()
        gc.collect()
        assert held() is None and bundle() is None, gc.get_referrers(held() or bundle())
        assert client.predict({"input": x_int8(sample)}, ["logits_int8"])["logits_int8"].shape == (1, 10)
        assert [s[:2] for s in client.status()] == [(1, "AVAILABLE")]


# ----------------------------------------------------------------------------------------------
# Lifecycle: supervised workers, draining on SIGTERM
# ----------------------------------------------------------------------------------------------
def test_a_worker_that_dies_idle_is_restarted_before_the_next_request(serve, sample):
    import signal

    server = serve(workers=1, backend="iss-process")
    with PredictionClient(server.address, model="sample", timeout=TIMEOUT, retries=0) as client:
        client.predict({"input": x_int8(sample)}, ["logits_int8"])             # the device starts
        (device,) = server.pool._all[0].devices.values()
        os.kill(device.proc.pid, signal.SIGKILL)
        wait_until(lambda: server.pool.counts["restarted"] == 1, what="the watcher's restart")
        assert device.restarts == 1 and device.alive()
        assert client.health() == "SERVING"
        out = client.predict({"input": x_int8(sample)}, ["logits_int8"])       # no retry needed
        assert out["logits_int8"].shape == (1, 10)
        assert device.restarts == 1 and server.pool.counts["failed"] == 0


def test_sigterm_drains_queued_and_running_requests(serve, sample):
    import signal

    from tests.host.conftest import Gate

    gate = Gate()
    server = serve(workers=1, max_queue=4, device_factory=gate)
    results, late = [], []

    def call():
        results.append(raw_predict(server.address, {"input": _tensor(sample)}))

    clients = [threading.Thread(target=call) for _ in range(4)]
    for t in clients:
        t.start()

    def terminate():
        try:
            gate.wait_entered()
            wait_until(lambda: server.pool.queued() == 3, what="three requests queued")
        finally:
            os.kill(os.getpid(), signal.SIGTERM)
        wait_until(lambda: server.draining, what="draining")
        late.append(raw_predict(server.address, {"input": _tensor(sample)}, timeout=5)[0])
        gate.open()

    killer = threading.Thread(target=terminate)
    killer.start()
    assert server.run_until_signal(grace_s=30) == signal.SIGTERM      # returns once drained
    killer.join(TIMEOUT)
    for t in clients:
        t.join(TIMEOUT)
    assert results == [(SC.OK, "")] * 4          # nothing queued was lost
    assert late == [SC.UNAVAILABLE]              # new calls were refused meanwhile
    assert len(gate.runs) == 4


# ----------------------------------------------------------------------------------------------
# TF Serving's status codes; messages that give nothing away
# ----------------------------------------------------------------------------------------------
def test_status_codes_are_tf_servings_and_messages_name_no_path_or_other_model(serve, repo, sample):
    from softnpu.host.serving.client import PredictionClient as Client

    server = serve()
    x = {"input": x_int8(sample)}

    def failure(call):
        with pytest.raises(ScoreError) as info:
            call()
        return info.value.code, info.value.message

    with Client(server.address, timeout=TIMEOUT, retries=0) as c:
        cases = {
            "unknown model": (lambda: c.predict(x, model="nope"), SC.NOT_FOUND, "Latest(nope)"),
            "unknown version": (lambda: c.predict(x, model="sample", version=7), SC.NOT_FOUND,
                                "Specific(sample, 7)"),
            "empty name": (lambda: c.predict(x, model=""), SC.NOT_FOUND, "name one"),
            "unknown input": (lambda: c.predict({"pixels": x["input"]}, model="sample"),
                              SC.INVALID_ARGUMENT, "'pixels'"),
            "status of unknown model": (lambda: c.status("nope"), SC.NOT_FOUND, "model nope"),
            "metadata of unknown version": (lambda: c.metadata("sample", 7), SC.NOT_FOUND,
                                            "Specific(sample, 7)"),
        }
        for name, (call, code, fragment) in cases.items():
            got, message = failure(call)
            assert got == code and fragment in message, (name, got, message)
            assert str(repo.root) not in message and "broken" not in message, (name, message)
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = "sample", "predict_images"
    request.inputs["input"].CopyFrom(_tensor(sample))
    with grpc.insecure_channel(server.address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Predict(request, timeout=TIMEOUT)
        assert info.value.code() == SC.FAILED_PRECONDITION
        request.model_spec.signature_name, request.model_spec.version_label = "", "stable"
        with pytest.raises(grpc.RpcError) as info:
            stub.Predict(request, timeout=TIMEOUT)
        assert info.value.code() == SC.INVALID_ARGUMENT and "version label" in info.value.details()
