"""`softnpu serve`: TensorFlow Serving's gRPC API in front of NPU devices.

Services: tensorflow.serving.PredictionService (Predict, Classify, GetModelMetadata; Regress and
MultiInference answer UNIMPLEMENTED),
tensorflow.serving.ModelService (GetModelStatus), grpc.health.v1.Health and server reflection;
with `rest_port`, TF Serving's REST API and Prometheus metrics (host/serving/rest.py,
host/serving/metrics.py).
docs/serving.md is the operator's guide.
Stock TF Serving clients work unchanged (generated stubs from tensorflow-serving-api, tensors
from tf.make_tensor_proto); see host/serving/models.py for the signature.

Every RPC except health checks needs an API key when keys are configured (`authorization`
metadata: `Bearer <key>` or the bare key), checked with a per-peer call limit before the request
is read (host/serving/auth.py).  A request is priced from its shapes and image headers before anything
is decoded (host/serving/limits.py), then passes a bounded queue to a pool of device workers (with
`batching`, a batcher that runs requests for one model version together: host/serving/batching.py);
every failure is a gRPC status whose message says what is wrong:

  INVALID_ARGUMENT    bad tensor (dtype, shape, content), undecodable image, unknown input or output
                      alias, unknown version label, Classify on a non-classifier, a request over a size
                      limit (elements per input, image pixels, bytes per request: host/serving/limits.py)
  NOT_FOUND           unknown model or version, a version outside the model's version policy or
                      that failed to load (GetModelStatus says why), a label's version that is not
                      loaded; messages name the model asked for, never a path or another model
  FAILED_PRECONDITION unknown signature
  UNAUTHENTICATED     missing or wrong API key
  RESOURCE_EXHAUSTED  request queue full; in-flight request memory over its budget; too many
                      concurrent calls from one peer; message larger than --max-message-mb
  DEADLINE_EXCEEDED   the caller's deadline passed before the device finished
  INTERNAL            an NPU fault (with its error code and instruction) or a bug (logged)
  UNAVAILABLE         the server is shutting down; a device process died or hung (it restarts:
                      retrying is right)
  UNIMPLEMENTED       Regress, MultiInference
"""

from __future__ import annotations

import logging
import signal
import threading
import time
import types
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
from google.protobuf import any_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from tensorflow.core.framework import tensor_shape_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2,
    prediction_service_pb2_grpc,
)

from softnpu.host.devices.device import DeviceError, DeviceLost, DeviceTimeout
from softnpu.host.pipeline import InputError
from softnpu.host.serving.auth import CallGuard, load_api_keys
from softnpu.host.serving.batching import BatchingParameters
from softnpu.host.serving.limits import LimitExceeded, Limits
from softnpu.host.serving.metrics import ServingMetrics
from softnpu.host.serving.models import (
    LAYER_CYCLES,
    MAX_BATCH,
    SIGNATURE,
    ModelLoadError,
    ModelNotFound,
    ServedModel,
    Unsupported,
)
from softnpu.host.serving.store import ModelStore
from softnpu.host.serving.workers import JobExpired, PoolClosed, QueueFull, WorkerPool
from softnpu.host.tensors import TensorError, from_proto, to_proto

__all__ = ["Server", "load_api_keys", "PREDICTION_SERVICE", "MODEL_SERVICE"]

log = logging.getLogger("softnpu.serve")
access_log = logging.getLogger("softnpu.access")

PREDICTION_SERVICE = prediction_service_pb2.DESCRIPTOR.services_by_name["PredictionService"].full_name
MODEL_SERVICE = model_service_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name
_DT = {"float32": types_pb2.DT_FLOAT, "int8": types_pb2.DT_INT8, "int64": types_pb2.DT_INT64,
       "string": types_pb2.DT_STRING}
_OK, _FAILED_PRECONDITION = 0, 9          # tensorflow.error.Code values in StatusProto


# ----------------------------------------------------------------------------------------------
# Errors -> gRPC status
# ----------------------------------------------------------------------------------------------
_CODE_OF = (
    (ModelNotFound, grpc.StatusCode.NOT_FOUND),
    (ModelLoadError, grpc.StatusCode.FAILED_PRECONDITION),
    (InputError, grpc.StatusCode.INVALID_ARGUMENT),
    (TensorError, grpc.StatusCode.INVALID_ARGUMENT),
    (QueueFull, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (LimitExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (JobExpired, grpc.StatusCode.DEADLINE_EXCEEDED),
    (PoolClosed, grpc.StatusCode.UNAVAILABLE),
    (DeviceError, grpc.StatusCode.INTERNAL),
    (DeviceTimeout, grpc.StatusCode.INTERNAL),
    (DeviceLost, grpc.StatusCode.UNAVAILABLE),
    (Unsupported, grpc.StatusCode.UNIMPLEMENTED),
)


def _access(method: str, request, context, code: grpc.StatusCode, start: float) -> None:
    """One access-log line per request (logger `softnpu.access`, INFO): peer, method, model,
    status, milliseconds."""
    if not access_log.isEnabledFor(logging.INFO):
        return
    spec = getattr(request, "model_spec", None)
    model = f"{spec.name}:{spec.version.value or spec.version_label or 'latest'}" \
        if spec is not None and spec.name else "-"
    access_log.info("%s %s %s %s %.1fms", context.peer(), method, model, code.name,
                    (time.perf_counter() - start) * 1e3)


def _observe(servicer, method: str, request, code: grpc.StatusCode, start: float, response=None):
    """The call in the server's metrics (host/serving/metrics.py), when it keeps them."""
    metrics = getattr(servicer, "metrics", None)
    if metrics is None:
        return
    spec = getattr(response, "model_spec", None) or getattr(request, "model_spec", None)
    name, version = (spec.name, spec.version.value) if spec is not None else ("", "")
    metrics.observe(method, name, version, code.name, time.perf_counter() - start)


def _rpc(method):
    """Run a handler; turn any exception into the gRPC status of its kind (never let one out)."""
    def wrapper(self, request, context):
        start = time.perf_counter()
        try:
            response = method(self, request, context)
            _access(method.__name__, request, context, grpc.StatusCode.OK, start)
            _observe(self, method.__name__, request, grpc.StatusCode.OK, start, response)
            return response
        except Exception as exc:
            code = next((c for kind, c in _CODE_OF if isinstance(exc, kind)), None)
            if code is None:
                log.exception("%s failed", method.__name__)
                # a bug's message may hold server paths or state: the log has it, the caller not
                code, message = grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__}); " \
                    "the server's log has the details"
            else:
                message = str(exc)
                if isinstance(exc, (DeviceError, DeviceTimeout, DeviceLost)):
                    message = f"device fault: {exc}"
                    log.error("%s: %s", method.__name__, message)
        _access(method.__name__, request, context, code, start)
        _observe(self, method.__name__, request, code, start)
        context.abort(code, message)
    wrapper.__name__ = method.__name__
    return wrapper


# ----------------------------------------------------------------------------------------------
# Services
# ----------------------------------------------------------------------------------------------
def _model_spec(model: ServedModel, signature: str = SIGNATURE):
    spec = predict_pb2.PredictRequest().model_spec
    spec.name, spec.signature_name = model.name, signature
    spec.version.value = model.version
    return spec


def _tensor_info(alias: str, dtype: str, shape: list[int]) -> meta_graph_pb2.TensorInfo:
    return meta_graph_pb2.TensorInfo(
        name=alias, dtype=_DT[dtype],
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in shape]))


def signature_def(model: ServedModel) -> meta_graph_pb2.SignatureDef:
    sig = meta_graph_pb2.SignatureDef(method_name="tensorflow/serving/predict")
    for alias, (dtype, shape) in model.input_signature().items():
        sig.inputs[alias].CopyFrom(_tensor_info(alias, dtype, shape))
    for alias, a in model.aliases.items():
        sig.outputs[alias].CopyFrom(_tensor_info(alias, a.dtype, a.shape))
    return sig


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, store: ModelStore, pool: WorkerPool, request_timeout_s: float,
                 limits: Limits | None = None):
        self.store, self.pool, self.request_timeout_s = store, pool, request_timeout_s
        self.limits = limits or Limits()
        self.metrics = None         # a host.metrics.ServingMetrics, set by Server

    def _model(self, spec) -> ServedModel:
        model = self.store.get(spec.name, spec.version.value if spec.HasField("version") else None,
                               label=spec.version_label)
        if spec.signature_name not in ("", SIGNATURE):
            raise ModelLoadError(f"Serving signature key {spec.signature_name!r} not found in "
                                 f"{model.name}:{model.version} (signatures: {SIGNATURE!r})")
        return model

    def _run(self, model: ServedModel, examples: list[dict], context, trace: bool = False) -> list:
        remaining = context.time_remaining()
        budget = self.request_timeout_s if remaining is None else min(remaining, self.request_timeout_s)
        results = self.pool.run(model, examples, time.monotonic() + budget,
                                cancelled=lambda: not context.is_active(), trace=trace)
        if self.metrics is not None:
            self.metrics.device_cycles(model.name, model.version, sum(r.stats.cycles for r in results))
        return results

    @_rpc
    def Predict(self, request, context):
        model = self._model(request.model_spec)
        self.limits.admit(model, request.inputs, context)      # before anything is decoded
        tensors = {alias: from_proto(t, f"input {alias!r}") for alias, t in request.inputs.items()}
        examples = model.examples(tensors)
        wanted = list(request.output_filter)
        _check_aliases(model, wanted)       # before the device time is spent
        # the marker trace costs a CSR read per layer and counter: only when it is asked for
        trace = not wanted or LAYER_CYCLES in wanted
        results = self._run(model, examples, context, trace)
        response = predict_pb2.PredictResponse()
        response.model_spec.CopyFrom(_model_spec(model))
        for alias, value in model.outputs(results, wanted).items():
            response.outputs[alias].CopyFrom(to_proto(value))
        return response

    @_rpc
    def Classify(self, request, context):
        model = self._model(request.model_spec)
        if not model.classifier:
            what = "a detector" if model.detector is not None else \
                f"not a classifier (its output is {model.manifest.outputs[0].shape})"
            raise InputError(f"{model.name}:{model.version} is {what}; use Predict")
        listed = _input_examples(request.input, model, self.limits.max_batch)
        self.limits.admit(model, None, context, examples=listed)       # before anything is decoded
        examples = []
        for i, example in enumerate(listed):
            tensors = _example_tensors(model, example, i)
            try:
                examples += model.examples(tensors)
            except InputError as exc:
                raise InputError(f"example {i}: {exc}") from None
        if not examples:
            raise InputError("no examples in input.example_list")
        results = self._run(model, examples, context)
        out = model.outputs(results, ["labels", "scores"])
        response = classification_pb2.ClassificationResponse()
        response.model_spec.CopyFrom(_model_spec(model, "serving_default"))
        for labels, scores in zip(out["labels"], out["scores"], strict=True):
            c = response.result.classifications.add()
            for label, score in zip(labels, scores, strict=True):
                c.classes.add(label=label.decode(), score=float(score))
        return response

    @_rpc
    def Regress(self, request, context):
        raise Unsupported("Regress is not implemented: softnpu serves classifiers and detectors "
                          "(Predict for every model, Classify for classifiers)")

    @_rpc
    def MultiInference(self, request, context):
        raise Unsupported("MultiInference is not implemented: call Classify (classifiers) or Predict "
                          "once per task")

    @_rpc
    def GetModelMetadata(self, request, context):
        model = self._model(request.model_spec)
        fields = list(request.metadata_field)
        if fields != ["signature_def"]:
            raise InputError(f"metadata_field {fields}: only ['signature_def'] is available")
        sigmap = get_model_metadata_pb2.SignatureDefMap()
        sigmap.signature_def[SIGNATURE].CopyFrom(signature_def(model))
        packed = any_pb2.Any()
        packed.Pack(sigmap)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.CopyFrom(_model_spec(model))
        response.metadata["signature_def"].CopyFrom(packed)
        return response


def _check_aliases(model: ServedModel, wanted: list[str]):
    unknown = [w for w in wanted if w not in model.aliases]
    if unknown:
        raise InputError(f"output_filter {unknown}: not in signature {SIGNATURE!r} of "
                         f"{model.name}:{model.version} (outputs: {list(model.aliases)})")


class _WithContext:
    """An example with its context's features: a view of both messages' features (an example's
    own feature wins); nothing is copied, so a large context costs its bytes once until the
    request is priced (each example then decodes its own copy, and is priced so)."""

    def __init__(self, feature: dict):
        self.features = types.SimpleNamespace(feature=feature)


def _input_examples(request_input, model: ServedModel, max_count: int):
    """The examples of a ClassificationRequest's input (example_list's, or example_list_with_context's
    with the context's features), their number checked before anything is built from them."""
    with_context = request_input.HasField("example_list_with_context")
    listed = request_input.example_list_with_context if with_context else request_input.example_list
    if len(listed.examples) > max_count:
        raise InputError(f"{len(listed.examples)} examples; {model.name} takes at most {max_count} "
                         "per request")
    if not with_context:
        return listed.examples
    shared = dict(listed.context.features.feature)
    return [_WithContext({**shared, **dict(e.features.feature)}) for e in listed.examples]


def _example_tensors(model: ServedModel, example, index: int) -> dict[str, np.ndarray]:
    """A tf.Example's features as request tensors: `images` (bytes_list) or the input by name
    (float_list or int64_list, flattened in the input's shape)."""
    out = {}
    for key, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        if kind == "bytes_list":
            arr = np.empty(len(feature.bytes_list.value), dtype=object)
            arr[:] = list(feature.bytes_list.value)
            out[key] = arr
        elif kind in ("float_list", "int64_list"):
            if key not in model.inputs:
                raise InputError(f"example {index}: feature {key!r} is not an input of {model.name} "
                                 f"(inputs: {sorted(model.input_signature())})")
            values = np.asarray(getattr(feature, kind).value,
                                np.float32 if kind == "float_list" else np.int64)
            shape = model.inputs[key].shape
            if values.size != int(np.prod(shape)):
                raise InputError(f"example {index}: feature {key!r} has {values.size} values, input "
                                 f"shape {shape} needs {int(np.prod(shape))}")
            if kind == "int64_list":
                if values.size and (values.min() < -128 or values.max() > 127):
                    raise InputError(f"example {index}: feature {key!r} int64 values must be int8")
                values = values.astype(np.int8)
            out[key] = values.reshape(shape)
        else:
            raise InputError(f"example {index}: feature {key!r} is empty")
    return out


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, store: ModelStore):
        self.store = store
        self.metrics = None         # a host.metrics.ServingMetrics, set by Server

    @_rpc
    def GetModelStatus(self, request, context):
        spec = request.model_spec
        version = spec.version.value if spec.HasField("version") else None
        response = get_model_status_pb2.GetModelStatusResponse()
        State = get_model_status_pb2.ModelVersionStatus.State
        for v, error in self.store.status(spec.name, version, label=spec.version_label):
            s = response.model_version_status.add(version=v)
            s.state = State.AVAILABLE if error is None else State.END
            s.status.error_code = _OK if error is None else _FAILED_PRECONDITION
            s.status.error_message = error or ""
        return response


# ----------------------------------------------------------------------------------------------
# The server
# ----------------------------------------------------------------------------------------------
class Server:
    """A configured gRPC server; `start()` binds, `port` tells where (port 0 picks a free one)."""

    def __init__(self, store: ModelStore | str | Path, *, host: str = "127.0.0.1", port: int = 8500,
                 workers: int = 1, backend: str = "iss", device_factory=None, api_keys=None,
                 tls_cert: str | Path | None = None, tls_key: str | Path | None = None,
                 tls_client_ca: str | Path | None = None,
                 max_queue: int = 16, max_message_mb: float = 16, request_timeout_s: float = 60.0,
                 run_timeout_s: float | None = 60.0, top_k: int = 5,
                 max_calls_per_peer: int | None = None, limits: Limits | None = None,
                 rest_port: int | None = None, batching: BatchingParameters | None = None):
        self.store = store if isinstance(store, ModelStore) else ModelStore(store, top_k=top_k)
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("TLS needs both a certificate and a key file")
        if tls_client_ca is not None and tls_cert is None:
            raise ValueError("client certificates (tls_client_ca) need TLS: give a certificate and key too")
        # read before anything starts (OSError names the file)
        pem = {what: Path(path).read_bytes() for what, path in
               (("key", tls_key), ("cert", tls_cert), ("client_ca", tls_client_ca)) if path is not None}
        if max_message_mb <= 0:
            raise ValueError(f"max_message_mb must be positive, got {max_message_mb}")
        self.pool = WorkerPool(workers, max_queue, backend, device_factory, run_timeout_s, batching)
        self.store.on_unload.append(self.pool.retire)     # unloaded versions release their weights
        # one peer may fill the workers and the queue and see QueueFull; the others keep threads
        per_peer = workers + max_queue + 2 if max_calls_per_peer is None else max_calls_per_peer
        threads = 2 * (workers + max_queue) + 8
        max_bytes = int(max_message_mb * 1024 * 1024)
        self.guard = CallGuard(api_keys, per_peer or None)
        self.limits = limits or Limits(max_batch=MAX_BATCH)
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="grpc"),
            interceptors=[self.guard], maximum_concurrent_rpcs=2 * threads,
            options=[("grpc.max_receive_message_length", max_bytes),
                     ("grpc.max_send_message_length", max_bytes),
                     ("grpc.so_reuseport", 0)])
        self.metrics = ServingMetrics(queue_depth=self.pool.queued,
                                      inflight_bytes=lambda: self.limits.inflight_bytes,
                                      rejected=lambda: dict(self.guard.rejected),
                                      restarted=lambda: self.pool.counts["restarted"])
        if self.pool.batcher is not None:
            self.pool.batcher.on_batch = self.metrics.batch
        self.predictions = PredictionServicer(self.store, self.pool, request_timeout_s, self.limits)
        self.models = ModelServicer(self.store)
        self.predictions.metrics = self.models.metrics = self.metrics
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(self.predictions, self._server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(self.models, self._server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection(
            (PREDICTION_SERVICE, MODEL_SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME), self._server)
        address = f"{host}:{port}"
        try:
            if tls_cert is not None:
                # with a client CA: mutual TLS, a client without a certificate it signed is refused
                creds = grpc.ssl_server_credentials([(pem["key"], pem["cert"])],
                                                    root_certificates=pem.get("client_ca"),
                                                    require_client_auth="client_ca" in pem)
                self.port = self._server.add_secure_port(address, creds)
            else:
                self.port = self._server.add_insecure_port(address)
        except RuntimeError:
            self.port = 0
        if not self.port:
            self.pool.close(0.1)
            raise OSError(f"cannot listen on {address} (in use, or not an address of this host)")
        self.host = host
        self.tls = tls_cert is not None
        self.mutual_tls = tls_client_ca is not None
        self.draining = False
        self.rest = None
        if rest_port is not None:
            from softnpu.host.serving.rest import RestServer
            try:
                self.rest = RestServer(self, host, rest_port, max_body_bytes=max_bytes,
                                       request_timeout_s=request_timeout_s,
                                       tls=(str(tls_cert), str(tls_key),
                                            str(tls_client_ca) if tls_client_ca else None)
                                       if self.tls else None)
            except OSError as exc:
                self.pool.close(0.1)
                raise OSError(f"cannot listen on {host}:{rest_port} for REST: {exc.strerror}") from None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> Server:
        self._server.start()
        if self.rest is not None:
            self.rest.start()
        self.pool.watch()
        self.store.watch()              # the model config file's poller, when there is one
        for service in ("", PREDICTION_SERVICE, MODEL_SERVICE):
            self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        return self

    def stop(self, grace_s: float = 2.0):
        """Drain: health says NOT_SERVING and new calls are refused at once, while every call
        already accepted (queued for a device or running on one) has `grace_s` to finish; then
        what is left is cancelled and the workers stop."""
        deadline = time.monotonic() + grace_s
        self.draining = True
        self.health.enter_graceful_shutdown()
        done = self._server.stop(grace_s)
        if self.rest is not None:
            self.rest.stop()            # new REST calls refused; running ones finish on their threads
        done.wait(grace_s + 1.0)
        self.pool.settle(deadline)      # REST calls still queued or running
        self.pool.close(timeout_s=1.0)
        self.store.close()

    def run_until_signal(self, grace_s: float, signals=(signal.SIGINT, signal.SIGTERM)) -> int:
        """Serve until one of `signals`, then drain (`stop(grace_s)`); returns the signal's number.
        From the main thread only (Python delivers signals there)."""
        received: list[int] = []
        stopping = threading.Event()

        def handler(signum, frame):
            received.append(signum)
            stopping.set()

        previous = {sig: signal.signal(sig, handler) for sig in signals}
        try:
            while not stopping.wait(0.5):
                pass
            log.info("%s: draining for up to %.1f s (%d request(s) waiting for a device)",
                     signal.Signals(received[0]).name, grace_s, self.pool.queued())
            self.stop(grace_s)
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)
        return received[0]

    def wait(self, timeout_s: float | None = None) -> bool:
        return self._server.wait_for_termination(timeout_s)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop(0.5)
