"""TensorFlow Serving's REST API on a second port, in front of the same servicers as gRPC.

  GET  /v1/models/{m}[/versions/{v}|/labels/{l}]            model status (GetModelStatus as JSON)
  GET  /v1/models/{m}[/versions/{v}|/labels/{l}]/metadata   signature (GetModelMetadata as JSON)
  POST /v1/models/{m}[/versions/{v}|/labels/{l}]:predict    {"instances": [...]} (row format) or
                                                            {"inputs": ...} (columnar), "signature_name"
  POST /v1/models/{m}[/versions/{v}|/labels/{l}]:classify   {"examples": [{feature: value}], "context"}
                                                            (Classify: classifiers)
  POST /v1/models/{m}[...]:regress                          UNIMPLEMENTED (501), as gRPC's Regress
  GET  /monitoring/prometheus/metrics                       Prometheus metrics (host/serving/metrics.py)

Values as TF Serving reads them: {"b64": "..."} is an encoded image (DT_STRING), JSON integers
are the signature's int8, other numbers the model's float input domain.  Answers: row format
{"predictions": [...]} (one value per example when one output is present, else one object per
example), columnar {"outputs": {...}}; strings decode as UTF-8; :classify answers {"result":
[[[label, score], ...] per example]}, its feature values being TF Serving's: numbers (integers:
int64_list, the signature's int8; others: float_list, the model's float domain), strings and
{"b64": ...} (bytes_list: an encoded image under `images`).  Errors are {"error": message}
with the HTTP status of the gRPC code.  A request is the gRPC request translated: the same API
keys (`Authorization: Bearer <key>`), per-peer limit, size limits and queue apply, and the body
must declare its length (at most `max_body_bytes`) and arrive within `read_timeout_s`; at most
`max_connections` connections are open at once.  With
TLS configured for gRPC, REST uses the same certificate, and with a client CA it requires client
certificates signed by it too (mutual TLS).
"""

from __future__ import annotations

import base64
import http.server
import json
import logging
import re
import ssl
import sys
import threading
import time

import grpc
import numpy as np
from google.protobuf import json_format
from tensorflow.core.example import example_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    predict_pb2,
    regression_pb2,
)

from softnpu.host.serving.auth import peer_host
from softnpu.host.serving.metrics import CONTENT_TYPE, METRICS_PATH
from softnpu.host.tensors import from_proto, to_proto

__all__ = ["RestServer", "HTTP_STATUS"]

log = logging.getLogger("softnpu.serve")

HTTP_STATUS = {
    grpc.StatusCode.OK: 200, grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400, grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401, grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.ALREADY_EXISTS: 409, grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429, grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNIMPLEMENTED: 501, grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
_MODEL_PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)"
                         r"(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
                         r"(?P<rest>/metadata|:predict|:classify|:regress)?$")
_CALLS = (":predict", ":classify", ":regress")


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code, self.message = code, message


class _Context:
    """What the servicers ask of a gRPC context, for a REST call."""

    def __init__(self, peer: str, timeout_s: float):
        self._peer, self._deadline = peer, time.monotonic() + timeout_s
        self._callbacks = []

    def peer(self) -> str:
        return self._peer

    def time_remaining(self) -> float:
        return max(0.0, self._deadline - time.monotonic())

    def is_active(self) -> bool:
        return True

    def add_callback(self, callback) -> bool:
        self._callbacks.append(callback)
        return True

    def abort(self, code, message):
        raise _Abort(code, message)

    def end(self):
        for callback in self._callbacks:
            callback()


def _value(x):
    """JSON value -> ndarray (int8, float32, or an object array of bytes for {"b64": ...})."""
    def unb64(v):
        if isinstance(v, dict):
            if set(v) != {"b64"} or not isinstance(v["b64"], str):
                raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, 'an object value must be {"b64": "..."}')
            try:
                return base64.b64decode(v["b64"], validate=True)
            except ValueError:
                raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "b64 value is not base64") from None
        if isinstance(v, list):
            return [unb64(e) for e in v]
        return v

    if isinstance(x, dict) or (isinstance(x, list) and x and isinstance(x[0], dict)):
        items = unb64(x)
        arr = np.empty(len(items) if isinstance(items, list) else (), dtype=object)
        arr[...] = items if isinstance(items, list) else items
        return arr
    try:
        arr = np.asarray(x)
    except ValueError:
        raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "a value is a ragged list") from None
    if arr.dtype.kind in "iu":
        if arr.size and (arr.min() < -128 or arr.max() > 127):
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT,
                         "integer values are int8 (the signature's dtype): -128..127")
        return arr.astype(np.int8)
    if arr.dtype.kind in "fb":
        return arr.astype(np.float32)
    raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"values of kind {arr.dtype} are not numbers")


def _default_input(model, value) -> str:
    if isinstance(value, dict) or (isinstance(value, list) and value and isinstance(value[0], dict)):
        return "images"
    if len(model.inputs) != 1:
        raise _Abort(grpc.StatusCode.INVALID_ARGUMENT,
                     f"{model.name} has {len(model.inputs)} inputs: name them")
    return next(iter(model.inputs))


def _inputs(body: dict, model) -> tuple[dict, bool]:
    """(alias -> ndarray, row format?) of a predict body."""
    if ("instances" in body) == ("inputs" in body):
        raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, 'send exactly one of "instances" and "inputs"')
    if "inputs" in body:
        inputs = body["inputs"]
        if isinstance(inputs, dict) and "b64" not in inputs:
            return {k: _value(v) for k, v in inputs.items()}, False
        return {_default_input(model, inputs): _value(inputs)}, False
    rows = body["instances"]
    if not isinstance(rows, list) or not rows:
        raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, '"instances" must be a non-empty list')
    if all(isinstance(r, dict) and "b64" not in r for r in rows):
        keys = set(rows[0])
        if any(set(r) != keys for r in rows):
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "every instance must name the same inputs")
        return {k: _value([r[k] for r in rows]) for k in keys}, True
    return {_default_input(model, rows[0]): _value(rows)}, True


def _json(x: np.ndarray):
    if x.dtype == object:
        def text(b):
            try:
                return b.decode()
            except UnicodeDecodeError:
                return {"b64": base64.b64encode(b).decode()}
        return np.vectorize(text, otypes=[object])(x).tolist() if x.size else x.tolist()
    return x.tolist()


class RestServer:
    """The REST API of a host.service.Server on its own port (port 0 picks a free one)."""

    def __init__(self, server, host: str = "127.0.0.1", port: int = 8501, max_body_bytes: int = 16 << 20,
                 read_timeout_s: float = 10.0, request_timeout_s: float = 60.0, tls=None,
                 max_connections: int = 64):
        self.server, self.max_body_bytes, self.request_timeout_s = server, max_body_bytes, request_timeout_s
        rest = self

        class Handler(_Handler):
            timeout = read_timeout_s            # a connection that stalls loses its thread
            owner = rest

        self.httpd = _BoundedHTTPServer((host, port), Handler)
        self.httpd.slots = threading.BoundedSemaphore(max_connections)
        self.httpd.daemon_threads = True
        # tls: (certificate chain, key[, client CA]); the handshake runs on the call's thread
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(tls[0], tls[1])
            if len(tls) > 2 and tls[2]:             # mutual TLS: a client certificate signed by this CA
                context.load_verify_locations(cafile=tls[2])
                context.verify_mode = ssl.CERT_REQUIRED
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True,
                                                    do_handshake_on_connect=False)
        self.host, self.port = host, self.httpd.server_address[1]
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> RestServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        daemon=True, name="softnpu-rest")
        self._thread.start()
        return self

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)

    # -- the calls ------------------------------------------------------------------------------
    def authenticate(self, headers) -> None:
        """Raise UNAUTHENTICATED unless the headers carry a valid key (when keys are required)."""
        value = headers.get("Authorization")
        denial = self.server.guard.denial([("authorization", value)] if value else [])
        if denial is not None:
            raise _Abort(grpc.StatusCode.UNAUTHENTICATED, denial)

    def call(self, method: str, path: str, headers, body: bytes | None, peer: str) -> tuple[int, object]:
        if method == "GET" and path == METRICS_PATH:
            return 200, self.server.metrics.exposition()
        match = _MODEL_PATH.match(path)
        if match is None:
            raise _Abort(grpc.StatusCode.NOT_FOUND, f"no such resource: {path}")
        self.authenticate(headers)
        name, version, rest = match["name"], int(match["version"] or 0), match["rest"]
        label = match["label"] or ""
        if (method == "POST") != (rest in _CALLS):
            raise _Abort(grpc.StatusCode.UNIMPLEMENTED, f"{method} {path} is not a call of this API")
        peers = self.server.guard.peers
        if peers is not None and not peers.acquire(peer):
            raise _Abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                         f"too many concurrent calls from {peer} (limit {peers.limit} per peer)")
        context = _Context(peer, self.request_timeout_s)
        try:
            if rest == ":predict":
                return 200, self._predict(name, version, label, body, context)
            if rest == ":classify":
                return 200, self._classify(name, version, label, body, context)
            if rest == ":regress":
                request = regression_pb2.RegressionRequest()
                _spec(request, name, version, label)
                self.server.predictions.Regress(request, context)
            if rest == "/metadata":
                return 200, self._metadata(name, version, label, context)
            request = get_model_status_pb2.GetModelStatusRequest()
            _spec(request, name, version, label)
            response = self.server.models.GetModelStatus(request, context)
            return 200, json_format.MessageToDict(response, preserving_proto_field_name=True,
                                                  always_print_fields_with_no_presence=True)
        finally:
            context.end()
            if peers is not None:
                peers.release(peer)

    def _metadata(self, name, version, label, context):
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        _spec(request, name, version, label)
        response = self.server.predictions.GetModelMetadata(request, context)
        sigmap = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(sigmap)
        spec = json_format.MessageToDict(response.model_spec, preserving_proto_field_name=True)
        return {"model_spec": spec, "metadata": {"signature_def": json_format.MessageToDict(
            sigmap, preserving_proto_field_name=True)}}

    def _predict(self, name, version, label, body: bytes, context):
        payload = _body(body)
        request = predict_pb2.PredictRequest()
        _spec(request, name, version, label)
        request.model_spec.signature_name = str(payload.get("signature_name", ""))
        try:
            model = self.server.store.get(name, version or None, label=label)
        except (LookupError, ValueError):   # the servicer refuses the request with its code (and logs it)
            model = None
        if model is not None:
            inputs, rows = _inputs(payload, model)
            for alias, value in inputs.items():
                request.inputs[alias].CopyFrom(to_proto(value))
        response = self.server.predictions.Predict(request, context)
        outputs = {alias: from_proto(t) for alias, t in response.outputs.items()}
        if not rows:
            return {"outputs": {alias: _json(x) for alias, x in outputs.items()}}
        if len(outputs) == 1:
            return {"predictions": _json(next(iter(outputs.values())))}
        columns = {alias: _json(x) for alias, x in outputs.items()}
        n = len(next(iter(columns.values())))
        return {"predictions": [{alias: column[i] for alias, column in columns.items()} for i in range(n)]}

    def _classify(self, name, version, label, body: bytes, context):
        payload = _body(body)
        examples = payload.get("examples")
        if not isinstance(examples, list) or not examples:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, '"examples" must be a non-empty list of objects')
        limit = self.server.limits.max_batch
        if len(examples) > limit:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT,
                         f"{len(examples)} examples; at most {limit} per request")
        request = classification_pb2.ClassificationRequest()
        _spec(request, name, version, label)
        request.model_spec.signature_name = str(payload.get("signature_name", ""))
        if "context" in payload:
            listed = request.input.example_list_with_context
            listed.context.CopyFrom(_example(payload["context"], "context"))
        else:
            listed = request.input.example_list
        for i, example in enumerate(examples):
            listed.examples.append(_example(example, f"example {i}"))
        response = self.server.predictions.Classify(request, context)
        return {"result": [[[c.label, c.score] for c in classification.classes]
                           for classification in response.result.classifications]}


def _body(body: bytes) -> dict:
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"the body is not JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "the body must be a JSON object")
    return payload


def _spec(request, name: str, version: int, label: str) -> None:
    request.model_spec.name = name
    if version:
        request.model_spec.version.value = version
    elif label:
        request.model_spec.version_label = label


def _example(features, where: str) -> example_pb2.Example:
    """A JSON object of features as a tf.Example, as TF Serving reads one: a value or a list of
    integers (int64_list), of numbers (float_list), of strings or {"b64": ...} (bytes_list)."""
    if not isinstance(features, dict):
        raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"{where}: an example is a JSON object of features")
    example = example_pb2.Example()
    for key, value in features.items():
        values = value if isinstance(value, list) else [value]
        feature = example.features.feature[key]
        if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            if any(not -2 ** 63 <= v < 2 ** 63 for v in values):
                raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"{where}: feature {key!r}: an integer "
                             "out of int64's range")
            feature.int64_list.value.extend(values)
        elif values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            feature.float_list.value.extend(float(v) for v in values)
        elif values and all(isinstance(v, (str, dict)) for v in values):
            feature.bytes_list.value.extend(_bytes(v, f"{where}: feature {key!r}") for v in values)
        else:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"{where}: feature {key!r} must be a number, "
                         'a string, {"b64": ...} or a non-empty list of one kind of them')
    return example


def _bytes(value, where: str) -> bytes:
    if isinstance(value, str):
        return value.encode()
    if set(value) != {"b64"} or not isinstance(value["b64"], str):
        raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f'{where}: an object value must be {{"b64": "..."}}')
    try:
        return base64.b64decode(value["b64"], validate=True)
    except ValueError:
        raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"{where}: b64 value is not base64") from None


class _BoundedHTTPServer(http.server.ThreadingHTTPServer):
    """At most `slots` connections with a thread each; one more is closed at once (a client that
    opens connections and sends nothing holds a thread for read_timeout_s, and only so many)."""

    slots: threading.BoundedSemaphore

    def process_request(self, request, client_address):
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self.slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request, client_address):
        # a failed TLS handshake (no client certificate, an unknown CA) or a dropped connection:
        # the client's doing, one debug line instead of a traceback on stderr
        exc = sys.exc_info()[1]
        if isinstance(exc, (ssl.SSLError, ConnectionError, TimeoutError)):
            log.debug("REST connection from %s: %s", client_address[0], exc)
        else:
            log.error("REST connection from %s failed", client_address[0], exc_info=exc)


class _Handler(http.server.BaseHTTPRequestHandler):
    owner: RestServer
    protocol_version = "HTTP/1.1"
    server_version = "softnpu-serve"

    def log_message(self, fmt, *args):      # the access log is the servicers' (softnpu.access)
        pass

    def _answer(self, status: int, payload):
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", CONTENT_TYPE if isinstance(payload, bytes) else "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self, method: str):
        peer = peer_host(f"ipv4:{self.client_address[0]}:{self.client_address[1]}")
        try:
            body = None
            if method == "POST":
                try:
                    self.owner.authenticate(self.headers)      # before a byte of the body is read
                except _Abort:
                    self.close_connection = True
                    raise
                length = self.headers.get("Content-Length")
                if length is None or not length.isdigit():
                    self.close_connection = True
                    raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "Content-Length is required")
                if int(length) > self.owner.max_body_bytes:
                    self.close_connection = True
                    raise _Abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"body of {length} bytes exceeds the "
                                 f"limit of {self.owner.max_body_bytes} bytes")
                body = self.rfile.read(int(length))
            status, payload = self.owner.call(method, self.path, self.headers, body, peer)
        except _Abort as exc:
            status, payload = HTTP_STATUS.get(exc.code, 500), {"error": exc.message}
        except Exception as exc:             # a bug: logged, never the details to the caller
            log.exception("REST %s %s failed", method, self.path)
            status, payload = 500, {"error": f"internal error ({type(exc).__name__}); the server's "
                                             "log has the details"}
        self._answer(status, payload)

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")
