"""A Python client for `softnpu serve` (or any TensorFlow Serving endpoint), Brainwave-style:

    client = PredictionClient("localhost:8500", api_key=KEY, tls="ca.pem")
    # a server with mutual TLS (`serve --tls-client-ca`) wants a client certificate too:
    client = PredictionClient("localhost:8500", tls="ca.pem", client_cert=("client.pem", "client.key"))
    probabilities = client.score_file("cat.jpg", input_name="images", outputs="probabilities")

The API key goes out as `authorization: Bearer <key>` metadata on every call (an interceptor on
the channel, so no call can forget it).  Calls that fail with UNAVAILABLE (server starting,
restarting, connection reset) are retried with exponential backoff within the call's timeout.
"""

from __future__ import annotations

import dataclasses
import random
import time
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from softnpu.host.serving.tfs_api import api
from softnpu.host.tensors import from_proto, to_proto

__all__ = ["PredictionClient", "ScoreError", "Detection", "DETECTION_OUTPUTS"]

# The TF Object Detection API's outputs (what stock TF Serving detectors return)
DETECTION_OUTPUTS = ["detection_boxes", "detection_scores", "detection_classes", "num_detections"]


@dataclasses.dataclass(frozen=True)
class Detection:
    label: str
    score: float
    box: tuple[float, float, float, float]     # ymin, xmin, ymax, xmax: fractions of the image
    class_id: int


class ScoreError(RuntimeError):
    """A failed call: the gRPC status code and the server's message."""

    def __init__(self, code: grpc.StatusCode, message: str):
        self.code, self.message = code, message
        super().__init__(f"{code.name}: {message}")


class _CallDetails(grpc.ClientCallDetails):
    def __init__(self, details, metadata):
        self.method, self.timeout, self.credentials = details.method, details.timeout, details.credentials
        self.wait_for_ready = getattr(details, "wait_for_ready", None)
        self.compression = getattr(details, "compression", None)
        self.metadata = metadata


class _ApiKey(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
              grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds the API key to the metadata of every call on the channel."""

    def __init__(self, api_key: str):
        self._header = ("authorization", f"Bearer {api_key}")

    def _details(self, details):
        metadata = [m for m in (details.metadata or ()) if m[0] != "authorization"]
        return _CallDetails(details, metadata + [self._header])

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details), request_iterator)


class PredictionClient:
    """Predict / metadata / status / health calls to one server.

    address: HOST:PORT.  api_key: sent on every call.  tls: False (plain), True (system roots) or
    the path of a PEM root certificate (a private CA).  client_cert: (certificate chain, private
    key) PEM files, presented to a server that requires client certificates (mutual TLS); needs
    tls.  timeout: seconds per call, retries included.  model/version: the defaults for calls
    that do not name one (an empty model name asks the server for its only model)."""

    def __init__(self, address: str = "localhost:8500", api_key: str | None = None,
                 tls: bool | str | Path = False, timeout: float = 30.0, model: str = "",
                 version: int | None = None, retries: int = 4, backoff_s: float = 0.1,
                 max_message_mb: float = 64, server_name: str | None = None,
                 client_cert: tuple[str | Path, str | Path] | None = None):
        self.address, self.timeout, self.model, self.version = address, timeout, model, version
        self.retries, self.backoff_s = retries, backoff_s
        size = int(max_message_mb * 1024 * 1024)
        # this client retries UNAVAILABLE itself; reconnect quickly so that a retry can succeed
        options = [("grpc.max_receive_message_length", size), ("grpc.max_send_message_length", size),
                   ("grpc.enable_retries", 0), ("grpc.initial_reconnect_backoff_ms", 100),
                   ("grpc.min_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 2000)]
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        if client_cert is not None and not tls:
            raise ValueError("a client certificate needs TLS: pass tls (True or the server's CA file)")
        if tls:
            roots = None if tls is True else Path(tls).read_bytes()
            cert, key = (Path(client_cert[0]).read_bytes(), Path(client_cert[1]).read_bytes()) \
                if client_cert is not None else (None, None)
            credentials = grpc.ssl_channel_credentials(root_certificates=roots, private_key=key,
                                                       certificate_chain=cert)
            channel = grpc.secure_channel(address, credentials, options)
        else:
            channel = grpc.insecure_channel(address, options)
        self._raw_channel = channel
        if api_key:
            channel = grpc.intercept_channel(channel, _ApiKey(api_key))
        self.channel = channel
        self._predict = api.PredictionServiceStub(channel)
        self._models = api.ModelServiceStub(channel)
        self._health = health_pb2_grpc.HealthStub(channel)

    # -- plumbing ---------------------------------------------------------------------------
    def _call(self, method, request, timeout: float | None = None):
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        attempt = 0
        while True:
            left = deadline - time.monotonic()
            try:
                return method(request, timeout=max(left, 0.001))
            except grpc.RpcError as err:
                code = err.code()
                delay = self.backoff_s * (2 ** attempt) * (0.75 + 0.5 * random.random())
                if code == grpc.StatusCode.UNAVAILABLE and attempt < self.retries and \
                        time.monotonic() + delay < deadline:
                    attempt += 1
                    time.sleep(delay)
                    continue
                raise ScoreError(code, err.details() or "") from None

    def _spec(self, request, model: str | None, version: int | None):
        request.model_spec.name = self.model if model is None else model
        version = self.version if version is None else version
        if version is not None:
            request.model_spec.version.value = int(version)

    # -- calls ------------------------------------------------------------------------------
    def predict(self, inputs: dict, outputs: str | list[str] | None = None, model: str | None = None,
                version: int | None = None, timeout: float | None = None):
        """inputs: alias -> ndarray, bytes (one encoded image) or list of bytes.  Returns
        alias -> ndarray (strings decoded to str), or one array when `outputs` is a str."""
        request = api.predict_pb2.PredictRequest()
        self._spec(request, model, version)
        request.model_spec.signature_name = "serving_default"
        for alias, value in inputs.items():
            request.inputs[alias].CopyFrom(to_proto(value))
        wanted = [outputs] if isinstance(outputs, str) else list(outputs or [])
        request.output_filter.extend(wanted)
        response = self._call(self._predict.Predict, request, timeout)
        result = {}
        for alias, t in response.outputs.items():
            x = from_proto(t, f"output {alias!r}")
            if x.dtype == object:
                x = np.vectorize(lambda b: b.decode(errors="replace"), otypes=[object])(x) if x.size else x
            result[alias] = x
        return result[outputs] if isinstance(outputs, str) else result

    def score_image(self, data: bytes, outputs: str | list[str] | None = None, input_name: str = "images",
                    **kw):
        """Score one encoded image (JPEG, PNG, ...)."""
        return self.predict({input_name: [bytes(data)]}, outputs, **kw)

    def score_file(self, path: str | Path, input_name: str = "images",
                   outputs: str | list[str] | None = None, **kw):
        """Score an image file (Brainwave's `score_file(path, input_name, outputs)`)."""
        return self.score_image(Path(path).read_bytes(), outputs, input_name, **kw)

    def top(self, path_or_bytes, k: int = 5, **kw) -> list[tuple[str, float, int]]:
        """(label, probability, class index) of the best k classes of one image."""
        data = Path(path_or_bytes).read_bytes() if isinstance(path_or_bytes, (str, Path)) else path_or_bytes
        out = self.score_image(data, ["classes", "scores", "labels"], **kw)
        rows = zip(out["labels"][0], out["scores"][0], out["classes"][0], strict=True)
        return [(str(label), float(score), int(c)) for label, score, c in list(rows)[:k]]

    def detect(self, path_or_bytes, min_score: float = 0.0, label_names: list[str] | None = None,
               input_name: str = "images", **kw) -> list[Detection]:
        """The objects a detector finds in one image, best first, with score >= min_score.

        label_names: names by class id (a TF Object Detection label map as a list, id 0 unused);
        then only the API's four standard outputs are asked for, which any TF Serving detector has.
        Without it the class names come from softnpu's `detection_labels` output."""
        data = Path(path_or_bytes).read_bytes() if isinstance(path_or_bytes, (str, Path)) else path_or_bytes
        wanted = DETECTION_OUTPUTS + ([] if label_names is not None else ["detection_labels"])
        out = self.score_image(data, wanted, input_name, **kw)
        n = int(out["num_detections"][0])
        found = []
        for k in range(n):
            score = float(out["detection_scores"][0, k])
            if score < min_score:
                continue
            cid = int(out["detection_classes"][0, k])
            if label_names is not None:
                label = label_names[cid] if 0 <= cid < len(label_names) else f"class_{cid}"
            else:
                label = str(out["detection_labels"][0, k])
            found.append(Detection(label, score, tuple(float(v) for v in out["detection_boxes"][0, k]), cid))
        return found

    def classify(self, examples: list[dict], model: str | None = None, version: int | None = None,
                 timeout: float | None = None) -> list[list[tuple[str, float]]]:
        """TF Serving's Classify: (label, score) of the top classes for each example.  An example
        is a dict of features: bytes (an encoded image, as `images`), a list of bytes, or an array
        of numbers (floats: float_list in the model's float domain; integers: int64_list)."""
        request = api.classification_pb2.ClassificationRequest()
        self._spec(request, model, version)
        for features in examples:
            example = request.input.example_list.examples.add()
            for key, value in features.items():
                feature = example.features.feature[key]
                if isinstance(value, (bytes, bytearray)):
                    feature.bytes_list.value.append(bytes(value))
                elif isinstance(value, (list, tuple)) and value and isinstance(value[0], (bytes, bytearray)):
                    feature.bytes_list.value.extend(bytes(v) for v in value)
                else:
                    x = np.asarray(value).reshape(-1)
                    if x.dtype.kind in "iu":
                        feature.int64_list.value.extend(int(v) for v in x)
                    elif x.dtype.kind == "f":
                        feature.float_list.value.extend(float(v) for v in x)
                    else:
                        raise TypeError(f"feature {key!r}: bytes, a list of bytes or numbers, got {x.dtype}")
        response = self._call(self._predict.Classify, request, timeout)
        return [[(c.label, c.score) for c in row.classes] for row in response.result.classifications]

    def metadata(self, model: str | None = None, version: int | None = None,
                 timeout: float | None = None) -> dict:
        """{'model', 'version', 'inputs', 'outputs'}: aliases -> (dtype name, shape)."""
        request = api.get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._spec(request, model, version)
        response = self._call(self._predict.GetModelMetadata, request, timeout)
        sigmap = api.get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(sigmap)
        sig = sigmap.signature_def["serving_default"]

        def table(infos):
            return {k: (api.types_pb2.DataType.Name(v.dtype), [d.size for d in v.tensor_shape.dim])
                    for k, v in infos.items()}
        return {"model": response.model_spec.name, "version": response.model_spec.version.value,
                "inputs": table(sig.inputs), "outputs": table(sig.outputs)}

    def status(self, model: str | None = None, version: int | None = None,
               timeout: float | None = None) -> list[tuple[int, str, str]]:
        """(version, state name, error message) of each version of a model."""
        request = api.get_model_status_pb2.GetModelStatusRequest()
        self._spec(request, model, version)
        response = self._call(self._models.GetModelStatus, request, timeout)
        State = api.get_model_status_pb2.ModelVersionStatus.State
        return [(s.version, State.Name(s.state), s.status.error_message)
                for s in response.model_version_status]

    def health(self, service: str = "", timeout: float | None = None) -> str:
        """SERVING, NOT_SERVING, ... of a service ("" = the whole server)."""
        response = self._call(self._health.Check, health_pb2.HealthCheckRequest(service=service), timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def close(self):
        self._raw_channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
