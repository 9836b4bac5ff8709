"""Hostile callers and broken repositories (issue 14): stalled unauthenticated calls, per-peer
limits, broadcast and pixel bombs, corrupt versions, dead workers, SIGTERM with a queue.  Each case
gets its status code, and authorised calls and health checks keep working throughout."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import predict_pb2

from softnpu.host.auth import CallGuard, env_api_keys, peer_host
from softnpu.host.client import PredictionClient, ScoreError
from tests.host.conftest import API_KEY

SC = grpc.StatusCode
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
