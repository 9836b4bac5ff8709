"""host.client: the API key goes out on every call, UNAVAILABLE is retried, tensors convert
both ways as TensorFlow's own make_tensor_proto / make_ndarray do."""

import socket
import threading
from concurrent import futures

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2

from softnpu.host.serving.client import PredictionClient, ScoreError
from softnpu.host.tensors import TensorError, from_proto, to_proto
from tests.host.conftest import png_bytes


class _Recorder(grpc.ServerInterceptor):
    def __init__(self):
        self.calls = []

    def intercept_service(self, continuation, details):
        self.calls.append((details.method, dict(details.invocation_metadata)))
        return continuation(details)


def test_api_key_is_sent_on_every_call():
    recorder = _Recorder()
    server = grpc.server(futures.ThreadPoolExecutor(2), interceptors=[recorder])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with PredictionClient(f"127.0.0.1:{port}", api_key="k-123", model="m", retries=0, timeout=5) as c:
            calls = (lambda: c.predict({"x": np.zeros(3, np.float32)}), lambda: c.score_image(png_bytes()),
                     c.metadata, c.status, c.health)
            for call in calls:
                with pytest.raises(ScoreError) as info:
                    call()
                assert info.value.code == grpc.StatusCode.UNIMPLEMENTED     # no services: only recording
    finally:
        server.stop(0)
    methods = [m.rsplit("/", 1)[1] for m, _ in recorder.calls]
    assert methods == ["Predict", "Predict", "GetModelMetadata", "GetModelStatus", "Check"]
    assert all(md.get("authorization") == "Bearer k-123" for _, md in recorder.calls)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unavailable_is_retried_until_the_server_is_up(serve):
    port = _free_port()
    started = []
    timer = threading.Timer(0.5, lambda: started.append(serve(port=port)))
    timer.start()
    try:
        with PredictionClient(f"127.0.0.1:{port}", model="sample", retries=8, backoff_s=0.05,
                              timeout=20) as c:
            assert c.metadata()["model"] == "sample"
    finally:
        timer.join(10)
    assert started


def test_unavailable_gives_up_after_the_retries():
    with PredictionClient(f"127.0.0.1:{_free_port()}", retries=2, backoff_s=0.01, timeout=5) as c:
        with pytest.raises(ScoreError) as info:
            c.health()
    assert info.value.code == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("value", [
    np.arange(-5, 7, dtype=np.int8).reshape(3, 4), np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3),
    np.array([1.5, -2.25], np.float16), np.array([[1, 2]], np.int64), np.array([True, False]),
    np.array(3.0, np.float64),
])
def test_tensors_round_trip_with_tensorflow(value):
    np.testing.assert_array_equal(tf.make_ndarray(to_proto(value)), value)
    np.testing.assert_array_equal(from_proto(tf.make_tensor_proto(value)), value)
    # the typed *_val encoding (what make_tensor_proto writes for scalars, other clients for lists)
    field = {"float32": "float_val", "float64": "double_val", "float16": "half_val", "int64": "int64_val",
             "int8": "int_val", "bool": "bool_val"}[value.dtype.name]
    listed = tensor_pb2.TensorProto(dtype=tf.as_dtype(value.dtype).as_datatype_enum,
                                    tensor_shape=tf.TensorShape(value.shape).as_proto())
    flat = value.reshape(-1)
    getattr(listed, field).extend(flat.view(np.uint16).tolist() if field == "half_val" else flat.tolist())
    np.testing.assert_array_equal(from_proto(listed), value)


def test_string_tensors_and_broadcast():
    images = [b"\x89PNG-a", b"\xff\xd8-b"]
    assert list(from_proto(tf.make_tensor_proto(images))) == images
    assert list(tf.make_ndarray(to_proto(images))) == images
    filled = tf.make_tensor_proto(7, dtype=tf.int8, shape=[2, 3])
    np.testing.assert_array_equal(from_proto(filled), np.full((2, 3), 7, np.int8))


def test_bad_tensors_are_refused():
    t = tf.make_tensor_proto(np.zeros((2, 2), np.int8))
    t.tensor_content = t.tensor_content[:3]
    with pytest.raises(TensorError, match="tensor_content has 3 bytes"):
        from_proto(t)
    t = tf.make_tensor_proto([1, 2, 3], dtype=tf.int32)
    t.tensor_content = b""
    t.int_val[:] = [1, 2, 3]
    t.tensor_shape.dim[0].size = 5
    with pytest.raises(TensorError, match="3 values given for shape"):
        from_proto(t)
    t.dtype = types_pb2.DT_RESOURCE
    with pytest.raises(TensorError, match="DT_RESOURCE is not supported"):
        from_proto(t)
    t = tf.make_tensor_proto([1], dtype=tf.int32)
    t.dtype = types_pb2.DT_INT8
    t.int_val[:] = [300]
    with pytest.raises(TensorError, match="outside"):
        from_proto(t)
