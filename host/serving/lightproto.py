"""Load TensorFlow Serving's protobuf modules without starting TensorFlow.

`tensorflow_serving.apis.*_pb2` import `tensorflow.core.*_pb2`, which are plain generated protobuf
modules, but importing anything under `tensorflow` first runs `tensorflow/__init__.py`: the whole
runtime, seconds of start-up for a client that only builds messages.  `preload()` imports the
message modules through a finder that stands namespace packages in for TensorFlow's packages, so
their `__init__.py` never runs.

Only for processes that will not use TensorFlow itself (`softnpu score`, `softnpu serve`: the
runtime, the compiler's bundle reader and the ISS use numpy only): afterwards `import tensorflow`
in the same process finds the stand-in, whose attributes raise an error saying so.  When
TensorFlow is already imported, `preload()` does nothing.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys

__all__ = ["preload"]

_MODULES = (
    "tensorflow.core.framework.tensor_pb2", "tensorflow.core.framework.tensor_shape_pb2",
    "tensorflow.core.framework.types_pb2", "tensorflow.core.protobuf.meta_graph_pb2",
    "tensorflow_serving.apis.predict_pb2", "tensorflow_serving.apis.prediction_service_pb2_grpc",
    "tensorflow_serving.apis.model_service_pb2_grpc", "tensorflow_serving.apis.get_model_metadata_pb2",
    "tensorflow_serving.apis.get_model_status_pb2", "tensorflow_serving.apis.classification_pb2",
)


class _NamespaceFinder(importlib.abc.MetaPathFinder):
    """Every package under `tensorflow` as a namespace package (its __init__.py not run)."""

    def __init__(self, root: str):
        self.root = root

    def find_spec(self, name, path, target=None):
        if name != "tensorflow" and not name.startswith("tensorflow."):
            return None
        directory = os.path.join(self.root, *name.split(".")[1:])
        if not os.path.isdir(directory):
            return None                     # a module: the normal finders load it
        spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
        spec.submodule_search_locations = [directory]
        return spec


def preload() -> bool:
    """Import the serving protos without TensorFlow's runtime; False if TensorFlow is loaded or
    absent (then the normal imports apply)."""
    if "tensorflow" in sys.modules:
        return False
    spec = importlib.util.find_spec("tensorflow")
    if spec is None or not spec.submodule_search_locations:
        return False
    finder = _NamespaceFinder(list(spec.submodule_search_locations)[0])
    sys.meta_path.insert(0, finder)
    try:
        for name in _MODULES:
            importlib.import_module(name)
    finally:
        sys.meta_path.remove(finder)
    sys.modules["tensorflow"].__getattr__ = _not_loaded      # PEP 562: say why tf.X is missing
    return True


def _not_loaded(name: str):
    raise AttributeError(f"tensorflow.{name}: this process loaded only TensorFlow's protobuf modules "
                         "(host.lightproto.preload), not TensorFlow")
