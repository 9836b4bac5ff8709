"""TensorFlow Serving's API messages and stubs for the client, with or without TensorFlow installed.

With `tensorflow-serving-api` installed (the full install), these are its generated modules.
Without it (`pip install 'softnpu[client]'`), the same messages are built from `tfs_api.desc`, a
FileDescriptorSet of TensorFlow Serving's Predict/Classify/GetModelMetadata/GetModelStatus protos and their
dependencies taken from the installed generated modules (`python -m softnpu.host.serving.tfs_api --write`;
a test checks it is current), in a private descriptor pool so it never clashes with TensorFlow's;
the wire format is the same, so the server cannot tell the two apart.

    from softnpu.host.serving.tfs_api import api
    request = api.predict_pb2.PredictRequest()
    stub = api.PredictionServiceStub(channel)
"""

from __future__ import annotations

import functools
import importlib.util
import sys
import types
from pathlib import Path

__all__ = ["api", "DESCRIPTOR_SET", "vendored"]

DESCRIPTOR_SET = Path(__file__).with_name("tfs_api.desc")
_ROOTS = ("tensorflow_serving.apis.prediction_service_pb2", "tensorflow_serving.apis.model_service_pb2",
          "tensorflow_serving.apis.predict_pb2", "tensorflow_serving.apis.get_model_metadata_pb2",
          "tensorflow_serving.apis.get_model_status_pb2")
# module name -> (proto file, messages and enums it exposes)
_MODULES = {
    "types_pb2": ("tensorflow/core/framework/types.proto", ["DataType"]),
    "tensor_pb2": ("tensorflow/core/framework/tensor.proto", ["TensorProto"]),
    "tensor_shape_pb2": ("tensorflow/core/framework/tensor_shape.proto", ["TensorShapeProto"]),
    "predict_pb2": ("tensorflow_serving/apis/predict.proto", ["PredictRequest", "PredictResponse"]),
    "feature_pb2": ("tensorflow/core/example/feature.proto",
                    ["Feature", "Features", "BytesList", "FloatList", "Int64List"]),
    "example_pb2": ("tensorflow/core/example/example.proto", ["Example"]),
    "classification_pb2": ("tensorflow_serving/apis/classification.proto",
                           ["ClassificationRequest", "ClassificationResponse"]),
    "get_model_metadata_pb2": ("tensorflow_serving/apis/get_model_metadata.proto",
                               ["GetModelMetadataRequest", "GetModelMetadataResponse", "SignatureDefMap"]),
    "get_model_status_pb2": ("tensorflow_serving/apis/get_model_status.proto",
                             ["GetModelStatusRequest", "GetModelStatusResponse", "ModelVersionStatus"]),
}
_SERVICES = {
    "PredictionServiceStub": ("tensorflow.serving.PredictionService", {
        "Predict": ("predict_pb2", "PredictRequest", "PredictResponse"),
        "Classify": ("classification_pb2", "ClassificationRequest", "ClassificationResponse"),
        "GetModelMetadata": ("get_model_metadata_pb2", "GetModelMetadataRequest",
                             "GetModelMetadataResponse")}),
    "ModelServiceStub": ("tensorflow.serving.ModelService", {
        "GetModelStatus": ("get_model_status_pb2", "GetModelStatusRequest", "GetModelStatusResponse")}),
}


def _installed() -> types.SimpleNamespace:
    # Imported as they are: a process that will not run TensorFlow (`softnpu score`, `serve`) calls
    # host/lightproto.preload() first, so that these imports skip TensorFlow's runtime.
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

    return types.SimpleNamespace(
        types_pb2=types_pb2, tensor_pb2=tensor_pb2, tensor_shape_pb2=tensor_shape_pb2,
        predict_pb2=predict_pb2, feature_pb2=feature_pb2, example_pb2=example_pb2,
        classification_pb2=classification_pb2,
        get_model_metadata_pb2=get_model_metadata_pb2, get_model_status_pb2=get_model_status_pb2,
        PredictionServiceStub=prediction_service_pb2_grpc.PredictionServiceStub,
        ModelServiceStub=model_service_pb2_grpc.ModelServiceStub, vendored=False)


def vendored() -> types.SimpleNamespace:
    """The messages and stubs built from tfs_api.desc in a private pool."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    from google.protobuf.internal import enum_type_wrapper

    pool = descriptor_pool.DescriptorPool()
    for proto in descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR_SET.read_bytes()).file:
        pool.Add(proto)
    ns = types.SimpleNamespace(vendored=True)
    for module, (filename, names) in _MODULES.items():
        fd = pool.FindFileByName(filename)
        mod = types.SimpleNamespace(DESCRIPTOR=fd)
        for name in names:
            if name in fd.message_types_by_name:
                setattr(mod, name, message_factory.GetMessageClass(fd.message_types_by_name[name]))
            else:
                enum = enum_type_wrapper.EnumTypeWrapper(fd.enum_types_by_name[name])
                setattr(mod, name, enum)
                for value in fd.enum_types_by_name[name].values:        # module-level constants
                    setattr(mod, value.name, value.number)
        setattr(ns, module, mod)
    for stub, (service, methods) in _SERVICES.items():
        calls = {m: (getattr(getattr(ns, mod), req), getattr(getattr(ns, mod), rsp))
                 for m, (mod, req, rsp) in methods.items()}
        setattr(ns, stub, _stub_class(stub, service, calls))
    return ns


def _stub_class(name: str, service: str, methods: dict):
    def __init__(self, channel):
        for method, (request, response) in methods.items():
            setattr(self, method, channel.unary_unary(f"/{service}/{method}",
                                                      request_serializer=request.SerializeToString,
                                                      response_deserializer=response.FromString))
    return type(name, (), {"__init__": __init__, "__doc__": f"A client stub of {service}."})


@functools.lru_cache(maxsize=1)
def _load() -> types.SimpleNamespace:
    if importlib.util.find_spec("tensorflow_serving") is not None:
        return _installed()
    return vendored()


class _Lazy:
    def __getattr__(self, name):
        return getattr(_load(), name)


api = _Lazy()


def descriptor_set() -> bytes:
    """The FileDescriptorSet of the installed generated modules (and their dependencies)."""
    from google.protobuf import descriptor_pb2

    from softnpu.host.serving import lightproto

    lightproto.preload()
    files: dict[str, descriptor_pb2.FileDescriptorProto] = {}

    def walk(fd):
        if fd.name in files:
            return
        for dep in fd.dependencies:
            walk(dep)
        proto = descriptor_pb2.FileDescriptorProto()
        fd.CopyToProto(proto)
        files[fd.name] = proto

    for module in _ROOTS:
        walk(importlib.import_module(module).DESCRIPTOR)
    return descriptor_pb2.FileDescriptorSet(file=list(files.values())).SerializeToString(deterministic=True)


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        DESCRIPTOR_SET.write_bytes(descriptor_set())
        print(f"{DESCRIPTOR_SET} ({DESCRIPTOR_SET.stat().st_size} bytes)")
    else:
        print("usage: python -m softnpu.host.serving.tfs_api --write", file=sys.stderr)
        sys.exit(2)
