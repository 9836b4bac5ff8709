"""Fixtures shared by every test package: zoo models converted to int8 TFLite, cached.

Converting a zoo network takes 10-60 s, so every converted model is cached twice:

* in memory for the test session (``tflite_model`` fixture);
* on disk, by ``compiler.compile.zoo_tflite`` (``$SOFTNPU_CACHE``, default ``~/.cache/softnpu``, in
  ``tflite/``; the key hashes the network, input size, library versions and the sources of
  compiler/zoo.py and compiler/convert.py).  ``SOFTNPU_NO_CACHE=1`` skips reading it.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest


def convert_zoo(name: str, size: int) -> bytes:
    """The zoo network at ``size`` as int8 TFLite (calibrated on zoo.calibration_images), cached."""
    from softnpu.compiler.compile import zoo_tflite

    return zoo_tflite(name, size, progress=False)


_MEMO: dict[tuple[str, int], bytes] = {}


@pytest.fixture(scope="session")
def tflite_model():
    """tflite_model(name, size) -> bytes, converted once per session (and cached on disk)."""
    def get(name: str, size: int) -> bytes:
        key = (name, size)
        if key not in _MEMO:
            _MEMO[key] = convert_zoo(name, size)
        return _MEMO[key]
    return get


_INTERPRETERS: dict[str, object] = {}


def _interpreter(model: bytes):
    """An interpreter (reference kernels, all tensors kept) on the model without its host tail."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from softnpu.compiler.tflite_import import drop_host_tail

    key = hashlib.sha1(model).hexdigest()
    if key not in _INTERPRETERS:
        interp = Interpreter(model_content=drop_host_tail(model),
                             experimental_op_resolver_type=OpResolverType.BUILTIN_REF,
                             experimental_preserve_all_tensors=True)
        interp.allocate_tensors()
        _INTERPRETERS.clear()           # keep one: the zoo models are tens of MB each
        _INTERPRETERS[key] = interp
    return _INTERPRETERS[key]


def interpreter_tensors(model: bytes, x: np.ndarray) -> dict[int, np.ndarray]:
    """Run the TFLite interpreter (reference kernels) and return every tensor it holds by index.

    Trailing SOFTMAX/DEQUANTIZE ops are dropped first (BUILTIN_REF's int8 SOFTMAX can abort the
    process on small input scales); the reference executor runs them as float host stages.
    """
    interp = _interpreter(model)
    inp = interp.get_input_details()[0]
    interp.set_tensor(inp["index"], x.reshape(inp["shape"]).astype(inp["dtype"]))
    interp.invoke()
    out = {}
    for detail in interp.get_tensor_details():
        try:
            out[detail["index"]] = np.array(interp.get_tensor(detail["index"]))
        except ValueError:
            pass
    return out
