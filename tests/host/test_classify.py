"""Classify for classifier models (gRPC and REST `:classify`): tf.Examples carrying an encoded
image (bytes_list under `images`) or the input tensor (float_list under the input's name), with or
without a context, answer the same classes and scores as Predict; Regress and MultiInference are
UNIMPLEMENTED with a message naming the method."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    inference_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from softnpu.host.serving.client import PredictionClient
from tests.host.conftest import png_bytes

SC = grpc.StatusCode
TIMEOUT = 20


@pytest.fixture()
def server(serve):
    return serve(rest_port=0)


def image_example(data: bytes) -> example_pb2.Example:
    example = example_pb2.Example()
    example.features.feature["images"].CopyFrom(
        feature_pb2.Feature(bytes_list=feature_pb2.BytesList(value=[data])))
    return example


def tensor_example(x: np.ndarray, name="input") -> example_pb2.Example:
    example = example_pb2.Example()
    example.features.feature[name].CopyFrom(
        feature_pb2.Feature(float_list=feature_pb2.FloatList(value=x.reshape(-1).tolist())))
    return example


def classify(address, examples=(), context=None, model="sample"):
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = model
    if context is not None:
        request.input.example_list_with_context.context.CopyFrom(context)
        request.input.example_list_with_context.examples.extend(examples)
    else:
        request.input.example_list.examples.extend(examples)
    with grpc.insecure_channel(address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Classify(request, timeout=TIMEOUT)
    assert response.model_spec.name == model and response.model_spec.version.value == 2
    return [[(c.label, c.score) for c in row.classes] for row in response.result.classifications]


def predicted(server, inputs) -> list[list[tuple[str, float]]]:
    with PredictionClient(server.address, model="sample", timeout=TIMEOUT) as client:
        out = client.predict(inputs, ["labels", "scores"])
    return [[(str(label), float(score)) for label, score in zip(labels, scores, strict=True)]
            for labels, scores in zip(out["labels"], out["scores"], strict=True)]


def same(got, expected):
    assert [[label for label, _ in row] for row in got] == [[label for label, _ in row] for row in expected]
    np.testing.assert_allclose([[s for _, s in row] for row in got],
                               [[s for _, s in row] for row in expected], rtol=1e-6)


def floats(sample, seed):
    # the model's float input domain: the int8 range through its quantization
    spec = sample.input
    q = np.random.default_rng(seed).integers(-128, 128, spec.shape)
    return ((q - spec.zero_point) * spec.scale).astype(np.float32)


def test_classify_images_and_tensors_answers_as_predict(server, sample):
    a, b = png_bytes(seed=1), png_bytes(seed=2)
    got = classify(server.address, [image_example(a), image_example(b)])
    assert len(got) == 2 and len(got[0]) == 5 and got[0][0][0].startswith("class_")
    same(got, predicted(server, {"images": [a, b]}))
    x = floats(sample, 5)
    same(classify(server.address, [tensor_example(x)]), predicted(server, {"input": x}))


def test_python_client_and_the_vendored_messages(server, sample):
    from softnpu.host.serving import tfs_api

    a = png_bytes(seed=9)
    x = floats(sample, 10)
    with PredictionClient(server.address, model="sample", timeout=TIMEOUT) as client:
        got = client.classify([{"images": a}, {"input": x}])
    same(got, classify(server.address, [image_example(a), tensor_example(x)]))
    light = tfs_api.vendored()          # what the client install (no TensorFlow) sends
    request = light.classification_pb2.ClassificationRequest()
    request.model_spec.name = "sample"
    request.input.example_list.examples.add().features.feature["images"].bytes_list.value.append(a)
    with grpc.insecure_channel(server.address) as channel:
        response = light.PredictionServiceStub(channel).Classify(request, timeout=TIMEOUT)
    same([[(c.label, c.score) for c in response.result.classifications[0].classes]], got[:1])


def test_a_context_gives_every_example_its_features(server):
    a, b = png_bytes(seed=3), png_bytes(seed=4)
    own = image_example(b)                   # an example's own feature wins over the context's
    got = classify(server.address, [example_pb2.Example(), own], context=image_example(a))
    same(got, predicted(server, {"images": [a, b]}))


def test_a_context_is_priced_once_per_example_before_it_is_copied(serve):
    from softnpu.host.serving.limits import Limits

    server = serve(limits=Limits(max_request_bytes=1 << 20))
    big = png_bytes(128, 128, seed=5)                   # ~49 KB: fits once, not 40 times
    assert len(classify(server.address, [example_pb2.Example()], context=image_example(big))) == 1
    for count, fragment in ((40, f"limit of {1 << 20} bytes per request"), (65, "65 examples")):
        with pytest.raises(grpc.RpcError) as info:
            classify(server.address, [example_pb2.Example()] * count, context=image_example(big))
        assert info.value.code() == SC.INVALID_ARGUMENT and fragment in info.value.details(), info.value
    assert server.limits.inflight_bytes == 0


def test_bad_examples_are_invalid_argument(server, sample):
    both = tensor_example(floats(sample, 0))
    both.features.feature["images"].CopyFrom(image_example(png_bytes()).features.feature["images"])
    cases = {"unknown feature": ([tensor_example(floats(sample, 0), "pixels")], "'pixels' is not an input"),
             "wrong size": ([tensor_example(np.zeros(7, np.float32))], "has 7 values"),
             "no examples": ([], "no examples"),
             "undecodable image": ([image_example(png_bytes()), image_example(b"not an image")],
                                   "cannot decode image"),
             "image and tensor": ([image_example(png_bytes()), both], "example 1: input 'input' given twice")}
    for what, (examples, fragment) in cases.items():
        with pytest.raises(grpc.RpcError) as info:
            classify(server.address, examples)
        assert info.value.code() == SC.INVALID_ARGUMENT, (what, info.value)
        assert fragment in info.value.details(), (what, info.value.details())


def test_regress_and_multi_inference_are_unimplemented(server):
    regress = regression_pb2.RegressionRequest()
    regress.model_spec.name = "sample"
    multi = inference_pb2.MultiInferenceRequest()
    multi.tasks.add().model_spec.name = "sample"
    with grpc.insecure_channel(server.address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for method, request in (("Regress", regress), ("MultiInference", multi)):
            with pytest.raises(grpc.RpcError) as info:
                getattr(stub, method)(request, timeout=TIMEOUT)
            assert info.value.code() == SC.UNIMPLEMENTED, method
            assert info.value.details().startswith(f"{method} is not implemented: "), info.value.details()
            assert "Predict" in info.value.details()
        # the server keeps serving
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "sample"
        request.inputs["images"].CopyFrom(_images([png_bytes()]))
        assert stub.Predict(request, timeout=TIMEOUT).model_spec.version.value == 2


def _images(items):
    from softnpu.host.tensors import to_proto

    return to_proto(items)


def rest(server, path, body):
    request = urllib.request.Request(f"http://{server.rest.address}{path}", data=json.dumps(body).encode())
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_rest_classify_as_tf_serving_answers(server, sample):
    a, b = png_bytes(seed=6), png_bytes(seed=7)
    x = floats(sample, 8)
    body = {"examples": [{"images": {"b64": base64.b64encode(a).decode()}},
                         {"images": [{"b64": base64.b64encode(b).decode()}]},
                         {"input": x.reshape(-1).tolist()}]}
    status, answer = rest(server, "/v1/models/sample:classify", body)
    assert status == 200, answer
    got = [[(label, score) for label, score in row] for row in answer["result"]]
    same(got, classify(server.address, [image_example(a), image_example(b), tensor_example(x)]))
    status, answer = rest(server, "/v1/models/sample/versions/1:classify",
                          {"context": {"images": {"b64": base64.b64encode(a).decode()}}, "examples": [{}]})
    assert status == 200 and len(answer["result"]) == 1
    same([[tuple(c) for c in answer["result"][0]]], [got[0]])
    for body, code, fragment in (({"examples": [{"images": [True]}]}, 400, "must be a number"),
                                 ({"examples": []}, 400, "non-empty list"),
                                 ({"examples": [{}] * 65}, 400, "65 examples; at most 64"),
                                 ({"examples": [{"images": {"b64": "***"}}]}, 400, "not base64")):
        status, answer = rest(server, "/v1/models/sample:classify", body)
        assert status == code and fragment in answer["error"], (body, answer)
    status, answer = rest(server, "/v1/models/sample:regress", {"examples": [{}]})
    assert status == 501 and answer["error"].startswith("Regress is not implemented")
