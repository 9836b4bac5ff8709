"""The gRPC service, driven by a stock TensorFlow Serving client (generated stubs +
tf.make_tensor_proto / tf.make_ndarray) and by host.client: answers equal the in-process runtime;
every failure is the right gRPC status; auth, TLS, queueing, deadlines, concurrency."""

import threading

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from softnpu.host.pipeline import Preprocessor, dequantize, quantize, softmax
from softnpu.host.runtime import Runtime
from softnpu.host.serving.client import PredictionClient, ScoreError
from tests.host.conftest import API_KEY, Gate, joined, png_bytes

TIMEOUT = 20
SC = grpc.StatusCode


def stock_predict(address, inputs, model="sample", version=None, signature="", outputs=(), metadata=None,
                  timeout=TIMEOUT, credentials=None):
    """What a TF Serving user writes: generated stub, make_tensor_proto, make_ndarray."""
    channel = grpc.secure_channel(address, credentials) if credentials else grpc.insecure_channel(address)
    with channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model
        request.model_spec.signature_name = signature
        if version is not None:
            request.model_spec.version.value = version
        for alias, value in inputs.items():
            request.inputs[alias].CopyFrom(value if isinstance(value, tensor_pb2.TensorProto)
                                           else tf.make_tensor_proto(value))
        request.output_filter.extend(outputs)
        response = stub.Predict(request, timeout=timeout, metadata=metadata)
    return response, {alias: tf.make_ndarray(t) for alias, t in response.outputs.items()}


def status_of(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def x_int8(sample, seed):
    return np.random.default_rng(seed).integers(-128, 128, sample.input.shape, dtype=np.int8)


@pytest.fixture(scope="module")
def runtime(sample):
    return Runtime.open(sample.bundle)


def test_stock_client_gets_the_in_process_runtime_answer(serve, sample, runtime):
    server = serve(workers=1)
    x = x_int8(sample, 0)
    response, out = stock_predict(server.address, {"input": x})
    expected = runtime.infer({"input": x}).outputs["logits"]
    np.testing.assert_array_equal(out["logits_int8"], expected)
    spec = sample.output
    np.testing.assert_allclose(out["logits"], dequantize(expected, spec.scale, spec.zero_point))
    np.testing.assert_allclose(out["probabilities"], softmax(out["logits"]), rtol=1e-6)
    order = np.argsort(-out["probabilities"][0], kind="stable")[:5]
    np.testing.assert_array_equal(out["classes"][0], order)
    np.testing.assert_allclose(out["scores"][0], out["probabilities"][0][order])
    assert [s.decode() for s in out["labels"][0]] == [f"class_{i}" for i in order]
    assert out["npu_cycles"][0] > 0 and out["npu_latency_ms"][0] > 0 and out["device_ms"][0] > 0
    assert (response.model_spec.name, response.model_spec.version.value) == ("sample", 2)
    assert response.model_spec.signature_name == "serving_default"


def test_float_and_uint8_inputs_are_quantized_with_the_input_parameters(serve, sample, runtime):
    server = serve()
    spec = sample.input
    xf = np.random.default_rng(1).uniform(0, 1, spec.shape).astype(np.float32)
    _, out = stock_predict(server.address, {"input": xf}, outputs=["logits_int8"])
    q = quantize(xf, spec.scale, spec.zero_point)
    np.testing.assert_array_equal(out["logits_int8"], runtime.infer({"input": q}).outputs["logits"])
    assert list(out) == ["logits_int8"]
    pixels = np.random.default_rng(2).integers(0, 256, spec.shape, dtype=np.uint8)
    _, out = stock_predict(server.address, {"images": pixels}, outputs=["logits_int8"])
    q = quantize(pixels / 255.0, spec.scale, spec.zero_point)
    np.testing.assert_array_equal(out["logits_int8"], runtime.infer({"input": q}).outputs["logits"])


def test_encoded_images_in_a_batch(serve, sample, runtime):
    server = serve()
    images = [png_bytes(20, 24, seed=3), png_bytes(32, 32, seed=4, fmt="JPEG")]
    _, out = stock_predict(server.address, {"images": tf.make_tensor_proto(images)},
                           outputs=["logits_int8", "classes"])
    pre = Preprocessor.for_manifest(sample.bundle.manifest)
    expected = np.concatenate([runtime.infer({"input": pre(img)}).outputs["logits"] for img in images])
    np.testing.assert_array_equal(out["logits_int8"], expected)
    assert out["classes"].shape == (2, 5)
    _, one = stock_predict(server.address, {"images": tf.make_tensor_proto(images[0])},   # a scalar string
                           outputs=["logits_int8"])
    np.testing.assert_array_equal(one["logits_int8"], expected[:1])


def test_an_unloadable_bundle_is_reported_not_served(serve, repo, sample):
    bad = repo.root / "junk" / "1" / "model.npu"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    server = serve()
    x = {"input": x_int8(sample, 0)}
    code, message = status_of(lambda: stock_predict(server.address, x, model="junk"))
    assert code == SC.NOT_FOUND and "Latest(junk)" in message and "GetModelStatus" in message
    with PredictionClient(server.address, timeout=TIMEOUT) as client:
        ((version, state, error),) = client.status("junk")
    assert (version, state) == (1, "END") and error.startswith("junk/1/model.npu: not a valid zip")
    assert str(repo.root) not in message + error


def test_version_selection_latest_by_default(serve, sample):
    server = serve()
    x = x_int8(sample, 5)
    assert stock_predict(server.address, {"input": x})[0].model_spec.version.value == 2
    assert stock_predict(server.address, {"input": x}, version=1)[0].model_spec.version.value == 1
    code, message = status_of(lambda: stock_predict(server.address, {"input": x}, model=""))
    assert code == SC.NOT_FOUND and "name one" in message          # two models: an empty name is ambiguous


def _proto(dtype, shape, content=b"", **vals):
    return tensor_pb2.TensorProto(
        dtype=dtype, tensor_content=content, **vals,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d)
                                                            for d in shape]))


def _jpeg():
    return png_bytes(40, 30, seed=9, fmt="JPEG")


def _corrupt_jpeg():
    data = _jpeg()
    return data[:200] + np.random.default_rng(1).integers(0, 256, len(data) - 400, np.uint8).tobytes() + \
        data[-200:]


GOOD = np.zeros((1, 16, 16, 3), np.int8)
BAD_REQUESTS = [
    # (test id, request kwargs, status, fragment of the message)
    # TF Serving's codes: NOT_FOUND for servables only, FAILED_PRECONDITION for a signature
    ("unknown model", dict(model="nope"), SC.NOT_FOUND, "Servable not found for request: Latest(nope)"),
    ("unknown version", dict(version=9), SC.NOT_FOUND, "Specific(sample, 9)"),
    ("unknown signature", dict(signature="predict_images"), SC.FAILED_PRECONDITION,
     "signature key 'predict_images' not found"),
    ("unknown input", dict(inputs={"pixels": GOOD}), SC.INVALID_ARGUMENT,
     "input 'pixels' is not in signature"),
    ("wrong dtype", dict(inputs={"input": GOOD.astype(np.int32)}), SC.INVALID_ARGUMENT, "dtype int32"),
    ("wrong shape", dict(inputs={"input": np.zeros((1, 8, 8, 3), np.int8)}), SC.INVALID_ARGUMENT,
     "shape [1, 8, 8, 3]"),
    ("empty batch", dict(inputs={"input": np.zeros((0, 16, 16, 3), np.int8)}), SC.INVALID_ARGUMENT, "empty"),
    ("no inputs", dict(inputs={}), SC.INVALID_ARGUMENT, "no inputs"),
    ("empty image", dict(inputs={"images": [b""]}), SC.INVALID_ARGUMENT, "empty image"),
    ("not an image", dict(inputs={"images": [b"hello"]}), SC.INVALID_ARGUMENT, "not a recognised image"),
    ("truncated jpeg", dict(inputs={"images": [_jpeg()[:300]]}), SC.INVALID_ARGUMENT, "truncated"),
    ("corrupt jpeg", dict(inputs={"images": [_corrupt_jpeg()]}), SC.INVALID_ARGUMENT, "cannot decode image"),
    ("unknown output", dict(outputs=["embeddings"]), SC.INVALID_ARGUMENT, "['embeddings']"),
    ("content size", dict(inputs={"input": _proto(types_pb2.DT_INT8, [1, 16, 16, 3], b"\0" * 10)}),
     SC.INVALID_ARGUMENT, "tensor_content has 10 bytes"),
    ("huge shape", dict(inputs={"input": _proto(types_pb2.DT_INT8, [1 << 20, 16, 16, 3], int_val=[0])}),
     SC.INVALID_ARGUMENT, "takes at most 64 examples"),
    ("nan", dict(inputs={"input": np.full((1, 16, 16, 3), np.nan, np.float32)}), SC.INVALID_ARGUMENT,
     "finite"),
    ("given twice", dict(inputs={"input": GOOD, "images": GOOD}), SC.INVALID_ARGUMENT, "given twice"),
    ("device fault", dict(model="broken"), SC.INTERNAL, "ILLEGAL_OPCODE"),
]


def test_every_bad_request_gets_its_status_and_the_server_survives(serve, sample, runtime):
    server = serve(workers=1)
    for name, kw, code, fragment in BAD_REQUESTS:
        kw = dict(kw)
        inputs = kw.pop("inputs", {"input": GOOD})
        got, message = status_of(lambda: stock_predict(server.address, inputs, **kw))  # noqa: B023
        assert got == code, f"{name}: {got} {message}"
        assert fragment.lower() in message.lower(), f"{name}: {message!r}"
    x = x_int8(sample, 6)
    _, out = stock_predict(server.address, {"input": x})
    np.testing.assert_array_equal(out["logits_int8"], runtime.infer({"input": x}).outputs["logits"])
    assert server.pool.counts["failed"] == 1                 # only the device fault reached a device


def test_oversize_message_is_resource_exhausted(serve):
    server = serve(max_message_mb=1)
    big = np.zeros((1, 2 * 1024 * 1024), np.uint8).tobytes()
    code, message = status_of(lambda: stock_predict(server.address, {"images": [big]}))
    assert code == SC.RESOURCE_EXHAUSTED and "larger than max" in message


def test_api_keys(serve, sample, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text(f"# service keys\n{API_KEY}\n\nother-key\n")
    from softnpu.host.serving.service import load_api_keys

    server = serve(api_keys=load_api_keys(keys))
    x = {"input": x_int8(sample, 0)}
    code, message = status_of(lambda: stock_predict(server.address, x))
    assert code == SC.UNAUTHENTICATED and "missing API key" in message
    code, message = status_of(lambda: stock_predict(server.address, x, metadata=[("authorization", "wrong")]))
    assert code == SC.UNAUTHENTICATED and message == "invalid API key"
    for value in (f"Bearer {API_KEY}", "other-key"):
        stock_predict(server.address, x, metadata=[("authorization", value)])
    # every RPC is protected, health checks excepted
    with PredictionClient(server.address, model="sample", retries=0, timeout=TIMEOUT) as anonymous:
        assert anonymous.health() == "SERVING"
        for call in (anonymous.metadata, anonymous.status):
            with pytest.raises(ScoreError) as info:
                call()
            assert info.value.code == SC.UNAUTHENTICATED
        assert _reflection_services(anonymous.channel, None) == SC.UNAUTHENTICATED
    with PredictionClient(server.address, api_key=API_KEY, model="sample", timeout=TIMEOUT) as client:
        # the client sends the key on every kind of call
        assert client.metadata()["model"] == "sample"
        assert client.status() == [(1, "AVAILABLE", ""), (2, "AVAILABLE", "")]
        assert client.score_file(_write(tmp_path, png_bytes()), outputs="classes").shape == (1, 5)
        assert client.predict(x, outputs=["logits_int8"])["logits_int8"].shape == (1, 10)
        services = _reflection_services(client.channel, None)
        assert "tensorflow.serving.PredictionService" in services and "grpc.health.v1.Health" in services


def _write(tmp_path, data, name="img.png"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _reflection_services(channel, metadata):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    try:
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        responses = stub.ServerReflectionInfo(iter([request]), timeout=TIMEOUT, metadata=metadata)
        return [s.name for r in responses for s in r.list_services_response.service]
    except grpc.RpcError as err:
        return err.code()


def test_tls_with_a_private_ca(serve, sample, tls_files, tmp_path):
    ca, cert, key = tls_files
    server = serve(tls_cert=cert, tls_key=key, api_keys=[API_KEY])
    address = f"localhost:{server.port}"
    with PredictionClient(address, api_key=API_KEY, tls=ca, model="sample", timeout=TIMEOUT) as client:
        assert client.top(png_bytes(), k=3)[0][0].startswith("class_")
    credentials = grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
    stock_predict(address, {"input": x_int8(sample, 1)}, credentials=credentials,
                  metadata=[("authorization", API_KEY)])
    with PredictionClient(address, api_key=API_KEY, model="sample", retries=0, timeout=5) as plaintext:
        with pytest.raises(ScoreError) as info:
            plaintext.metadata()
        assert info.value.code == SC.UNAVAILABLE
    # the CLI's client side: `softnpu score --tls-ca`
    from softnpu.host.cli.commands import main

    assert main(["score", str(_write(tmp_path, png_bytes())), "--address", address, "--tls-ca", str(ca),
                 "--api-key", API_KEY, "--model", "sample", "--top", "2", "--timeout", "20"]) == 0


def test_concurrent_clients_get_their_own_answers(serve, sample, runtime):
    server = serve(workers=2, max_queue=32)
    inputs = [x_int8(sample, 100 + i) for i in range(24)]
    expected = [runtime.infer({"input": x}).outputs["logits"] for x in inputs]
    got, errors = {}, []

    def client(ids):
        try:
            with PredictionClient(server.address, model="sample", timeout=TIMEOUT) as c:
                for i in ids:
                    got[i] = c.predict({"input": inputs[i]}, outputs="logits_int8")
        except Exception as exc:       # reported below: an assert in a thread would be lost
            errors.append(exc)

    with joined([threading.Thread(target=client, args=(range(k, 24, 6),)) for k in range(6)]):
        pass
    assert not errors
    for i in range(24):
        np.testing.assert_array_equal(got[i], expected[i])
    assert server.pool.counts["completed"] == 24


def test_full_queue_is_resource_exhausted(serve, sample):
    gate = Gate()
    server = serve(workers=1, max_queue=1, device_factory=gate)
    x = {"input": x_int8(sample, 0)}
    outcomes = []

    def request():
        try:
            stock_predict(server.address, x)
            outcomes.append("ok")
        except grpc.RpcError as err:
            outcomes.append(err.code())

    first, second = threading.Thread(target=request), threading.Thread(target=request)
    with joined([first]):
        gate.wait_entered()                       # the worker holds the first request at the device
        with joined([second]):
            _wait_until(lambda: server.pool.queued() == 1)
            code, message = status_of(lambda: stock_predict(server.address, x))
            assert code == SC.RESOURCE_EXHAUSTED and "queue full" in message
            gate.open()
    assert outcomes == ["ok", "ok"]
    assert server.pool.counts["rejected"] == 1


def test_deadline_exceeded_and_expired_jobs_skip_the_device(serve, sample):
    gate = Gate()
    server = serve(workers=1, max_queue=4, device_factory=gate)
    x = {"input": x_int8(sample, 0)}
    code, _ = status_of(lambda: stock_predict(server.address, x, timeout=0.5))
    assert code == SC.DEADLINE_EXCEEDED                       # held at the device past its deadline
    gate.wait_entered()
    code, _ = status_of(lambda: stock_predict(server.address, x, timeout=0.3))
    assert code == SC.DEADLINE_EXCEEDED                       # waited in the queue past its deadline
    gate.open()
    stock_predict(server.address, x)
    _wait_until(lambda: server.pool.counts["expired"] == 1)
    assert len(gate.runs) == 2                                # the expired job never ran


def _wait_until(predicate, timeout=10):
    import time

    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.005)


def test_metadata_status_and_classify(serve, sample):
    server = serve()
    with grpc.insecure_channel(server.address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        request.model_spec.name = "sample"
        response = stub.GetModelMetadata(request, timeout=TIMEOUT)
        sigmap = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(sigmap)
        sig = sigmap.signature_def["serving_default"]
        assert sig.inputs["images"].dtype == types_pb2.DT_STRING
        assert [d.size for d in sig.inputs["input"].tensor_shape.dim] == [-1, 16, 16, 3]
        assert {"logits", "probabilities", "classes", "scores", "labels"} <= set(sig.outputs)
        request.metadata_field[:] = ["bogus"]
        assert status_of(lambda: stub.GetModelMetadata(request, timeout=TIMEOUT))[0] == SC.INVALID_ARGUMENT

        models = model_service_pb2_grpc.ModelServiceStub(channel)
        req = get_model_status_pb2.GetModelStatusRequest()
        req.model_spec.name = "sample"
        req.model_spec.version.value = 1
        status = models.GetModelStatus(req, timeout=TIMEOUT).model_version_status
        available = get_model_status_pb2.ModelVersionStatus.AVAILABLE
        assert [(s.version, s.state) for s in status] == [(1, available)]
        req.model_spec.name = "missing"
        assert status_of(lambda: models.GetModelStatus(req, timeout=TIMEOUT))[0] == SC.NOT_FOUND

        request = classification_pb2.ClassificationRequest()
        request.model_spec.name = "sample"
        for seed in (1, 2):
            example = example_pb2.Example()
            example.features.feature["images"].CopyFrom(
                feature_pb2.Feature(bytes_list=feature_pb2.BytesList(value=[png_bytes(seed=seed)])))
            request.input.example_list.examples.append(example)
        result = stub.Classify(request, timeout=TIMEOUT).result
        assert len(result.classifications) == 2
        assert len(result.classifications[0].classes) == 5
        assert result.classifications[0].classes[0].label.startswith("class_")


def test_a_model_registered_while_serving_is_found(serve, repo, bundle_path, sample):
    server = serve()
    x = {"input": x_int8(sample, 0)}
    assert status_of(lambda: stock_predict(server.address, x, model="late"))[0] == SC.NOT_FOUND
    repo.register(bundle_path, "late")
    assert stock_predict(server.address, x, model="late")[0].model_spec.name == "late"


def test_score_cli_prints_labels_and_probabilities(serve, tmp_path, capsys):
    from softnpu.host.cli.commands import main

    server = serve(api_keys=[API_KEY])
    path = _write(tmp_path, png_bytes(seed=7), "photo.png")
    assert main(["score", str(path), "--address", server.address, "--model", "sample", "--top", "3",
                 "--api-key", API_KEY, "--timeout", "20"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[:3]] == ["1.", "2.", "3."]
    assert lines[0].split()[1].startswith("class_") and 0 < float(lines[0].split()[2]) <= 1
    assert "cycles" in lines[3]
    with pytest.raises(SystemExit, match="UNAUTHENTICATED"):
        main(["score", str(path), "--address", server.address, "--model", "sample", "--timeout", "20"])


def test_a_port_in_use_is_a_clear_error(repo):
    import socket

    from softnpu.host.serving.service import Server

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(OSError, match="cannot listen on 127.0.0.1:"):
            Server(repo.root, port=s.getsockname()[1])


def test_every_request_gets_an_access_log_line(serve, sample, caplog):
    import logging

    server = serve(workers=1)
    with caplog.at_level(logging.INFO, logger="softnpu.access"):
        stock_predict(server.address, {"input": x_int8(sample, 0)})
        with pytest.raises(grpc.RpcError):
            stock_predict(server.address, {"input": np.zeros((1, 3, 3, 3), np.int8)})
    lines = [r.getMessage() for r in caplog.records if r.name == "softnpu.access"]
    assert any(" Predict sample:latest OK " in line for line in lines), lines
    assert any(" Predict sample:latest INVALID_ARGUMENT " in line for line in lines), lines
