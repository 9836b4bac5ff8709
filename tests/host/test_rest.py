"""TF Serving's REST API and the Prometheus metrics on the REST port: the same answers as gRPC,
the same keys and limits, JSON errors with the HTTP status of the gRPC code."""

from __future__ import annotations

import base64
import json
import socket
import urllib.error
import urllib.request

import numpy as np
import pytest

from softnpu.host.serving.client import PredictionClient, ScoreError
from tests.host.conftest import API_KEY, png_bytes

TIMEOUT = 20
KEY = {"Authorization": f"Bearer {API_KEY}"}


def http(server, path, body=None, headers=KEY, method=None):
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    request = urllib.request.Request(f"http://{server.rest.address}{path}", data=data, headers=headers,
                                     method=method)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            raw = response.read()
            return response.status, raw if path.startswith("/monitoring") else json.loads(raw)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.fixture()
def rest(serve):
    return serve(rest_port=0, api_keys=[API_KEY])


def x_int8(sample, seed=0):
    return np.random.default_rng(seed).integers(-128, 128, sample.input.shape, dtype=np.int8)


def test_status_and_metadata(rest):
    ok = {"error_code": "OK", "error_message": ""}
    assert http(rest, "/v1/models/sample") == (200, {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": ok},
        {"version": "2", "state": "AVAILABLE", "status": ok}]})
    status, body = http(rest, "/v1/models/sample/versions/1")
    assert status == 200 and [s["version"] for s in body["model_version_status"]] == ["1"]
    status, body = http(rest, "/v1/models/sample/metadata")
    assert status == 200 and body["model_spec"]["name"] == "sample" and body["model_spec"]["version"] == "2"
    sig = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert set(sig["inputs"]) == {"images", "input"} and "probabilities" in sig["outputs"]


def test_predict_row_and_columnar_formats_equal_grpc(rest, sample):
    x = x_int8(sample)
    with PredictionClient(rest.address, api_key=API_KEY, model="sample", timeout=TIMEOUT) as client:
        expected = client.predict({"input": x}, ["logits_int8", "classes"])
    status, body = http(rest, "/v1/models/sample:predict", {"instances": x.tolist()})
    assert status == 200
    row = body["predictions"][0]
    assert row["logits_int8"] == expected["logits_int8"][0].tolist()
    assert row["classes"] == expected["classes"][0].tolist() and row["labels"][0].startswith("class_")
    status, body = http(rest, "/v1/models/sample/versions/1:predict", {"inputs": {"input": x.tolist()}})
    assert status == 200 and body["outputs"]["logits_int8"] == expected["logits_int8"].tolist()
    image = base64.b64encode(png_bytes()).decode()
    status, body = http(rest, "/v1/models/sample:predict", {"instances": [{"b64": image}, {"b64": image}]})
    assert status == 200 and len(body["predictions"]) == 2
    assert body["predictions"][0]["classes"] == body["predictions"][1]["classes"]


ERRORS = [
    # (path, body, headers, HTTP status, fragment)
    ("/v1/models/sample:predict", {"instances": [[1]]}, {}, 401, "missing API key"),
    ("/v1/models/sample:predict", {"instances": [[1]]}, {"Authorization": "nope"}, 401, "invalid API key"),
    ("/v1/models/nope:predict", {"instances": [[1]]}, KEY, 404, "Latest(nope)"),
    ("/v1/models/sample/versions/9", None, KEY, 404, "version 9"),
    ("/v1/models/sample:predict", b"{not json", KEY, 400, "not JSON"),
    ("/v1/models/sample:predict", {"instances": [[1, 2]]}, KEY, 400, "shape"),
    ("/v1/models/sample:predict", {"instances": [[1000]]}, KEY, 400, "int8"),
    ("/v1/models/sample:predict", {"instances": [[1]], "inputs": [[1]]}, KEY, 400, "exactly one"),
    ("/v1/models/sample:predict", {"instances": [[1]], "signature_name": "x"}, KEY, 400, "signature key"),
    ("/v2/anything", None, KEY, 404, "no such resource"),
]


@pytest.mark.parametrize("path, body, headers, code, fragment", ERRORS)
def test_errors_are_json_with_the_http_status_of_the_grpc_code(rest, path, body, headers, code, fragment):
    status, answer = http(rest, path, body, headers)
    assert status == code and fragment in answer["error"], answer
    assert str(rest.store.repository.root) not in answer["error"]


def raw_http(rest, head: bytes) -> bytes:
    with socket.create_connection((rest.rest.host, rest.rest.port), timeout=TIMEOUT) as s:
        s.sendall(head)
        answer = b""
        while chunk := s.recv(65536):          # the server closes the connection after it
            answer += chunk
        return answer


def test_a_body_without_length_or_too_large_is_refused_unread(rest):
    # the answer comes although the 17 MiB body is never sent: it is refused from its headers
    answer = raw_http(rest, b"POST /v1/models/sample:predict HTTP/1.1\r\nHost: x\r\n"
                            b"Authorization: " + API_KEY.encode() + b"\r\nContent-Length: 17825792\r\n\r\n")
    assert b" 429 " in answer.split(b"\r\n")[0] and b"exceeds the limit" in answer
    answer = raw_http(rest, b"POST /v1/models/sample:predict HTTP/1.1\r\nHost: x\r\n"
                            b"Authorization: " + API_KEY.encode() + b"\r\n\r\n")
    assert b" 400 " in answer.split(b"\r\n")[0] and b"Content-Length is required" in answer
    # without a key the body is never waited for
    answer = raw_http(rest, b"POST /v1/models/sample:predict HTTP/1.1\r\nHost: x\r\n"
                            b"Content-Length: 1000\r\n\r\n")
    assert b" 401 " in answer.split(b"\r\n")[0] and b"missing API key" in answer


def test_metrics_count_requests_by_model_version_and_status(rest, sample):
    with PredictionClient(rest.address, api_key=API_KEY, model="sample", timeout=TIMEOUT, retries=0) as c:
        c.predict({"input": x_int8(sample)}, ["classes"])
        with pytest.raises(ScoreError):
            c.predict({"input": x_int8(sample)}, model="nope")
    http(rest, "/v1/models/sample:predict", {"instances": x_int8(sample).tolist()})
    status, text = http(rest, "/monitoring/prometheus/metrics", headers={})
    text = text.decode()
    assert status == 200
    assert 'softnpu_requests_total{method="Predict",model="sample",status="OK",version="2"} 2.0' in text
    assert 'softnpu_requests_total{method="Predict",model="nope",status="NOT_FOUND",version=""} 1.0' in text
    assert 'softnpu_device_cycles_count{model="sample",version="2"} 2.0' in text
    assert "softnpu_request_latency_seconds_bucket" in text and "softnpu_queue_depth 0.0" in text
    assert 'softnpu_rejected_total' in text


def test_idle_connections_are_bounded_and_time_out(serve, sample):
    from softnpu.host.serving.rest import RestServer

    server = serve()
    rest = RestServer(server, port=0, read_timeout_s=1.0, max_connections=4).start()
    try:
        idle = [socket.create_connection((rest.host, rest.port), timeout=TIMEOUT) for _ in range(4)]
        refused = socket.create_connection((rest.host, rest.port), timeout=TIMEOUT)
        assert refused.recv(1) == b""                   # closed at once: no thread for it
        for s in idle:                                  # the idle ones are dropped at their timeout
            assert s.recv(1) == b""
            s.close()
        answer = urllib.request.urlopen(f"http://{rest.address}/v1/models/sample", timeout=TIMEOUT)
        assert answer.status == 200
    finally:
        rest.stop()
