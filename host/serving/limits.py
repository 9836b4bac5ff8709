"""What a request may cost, decided from its shapes and image headers before anything is allocated.

A TensorProto is a promise: a 53-byte DT_DOUBLE tensor with one `double_val` and a shape of 2^21
elements decodes (TensorFlow broadcasts the single value) to 16 MiB and more in the conversions
after it; a 191 KiB PNG of 8192x8192 decodes to 192 MiB of RGB.  `Limits.admit` prices a request
from what it declares, and refuses it before a byte of it is decoded:

  per input    the elements must fit the model: at most MAX_BATCH examples of the input's shape
               (INVALID_ARGUMENT, naming the input and the model);
  per image    the pixels (a JPEG's after DCT scaling) within the model's pixel budget
               (pipeline.pixel_budget; INVALID_ARGUMENT);
  per request  decoded bytes at most `max_request_bytes` (INVALID_ARGUMENT: it never fits);
  in flight    what every admitted request still holds, at most `max_inflight_bytes`
               (RESOURCE_EXHAUSTED: retry later).  The reservation lasts until the call ends.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping

import numpy as np
from tensorflow.core.framework import types_pb2

from softnpu.host.pipeline import InputError, image_size, pixel_budget
from softnpu.host.tensors import NUMPY_OF

__all__ = ["Limits", "LimitExceeded", "MiB"]

MiB = 1024 * 1024
# bytes held per element while an input is converted to int8 (float64 quotient, its sign and
# floor temporaries, the int8 result) on top of the decoded tensor
_CONVERT_BYTES = 3 * 8 + 1
# bytes held per decoded pixel: RGB(A) raster, the converted copy, the float normalisation
_PIXEL_BYTES = 4 + 3 + 3 * 4


class LimitExceeded(RuntimeError):
    """The server holds too much for in-flight requests now (gRPC RESOURCE_EXHAUSTED)."""


class Limits:
    """Request size limits of one server.  Sizes in bytes."""

    def __init__(self, max_request_bytes: int = 128 * MiB, max_inflight_bytes: int = 512 * MiB,
                 max_batch: int = 64):
        for name, value in (("max_request_bytes", max_request_bytes),
                            ("max_inflight_bytes", max_inflight_bytes), ("max_batch", max_batch)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.max_request_bytes, self.max_inflight_bytes = max_request_bytes, max_inflight_bytes
        self.max_batch = max_batch
        self._inflight = 0
        self._lock = threading.Lock()
        self.refused = 0

    @property
    def inflight_bytes(self) -> int:
        return self._inflight

    # -- pricing ------------------------------------------------------------------------------
    def _check_elements(self, model, alias: str, n: int, per_example: int, shape: list[int]):
        limit = self.max_batch * per_example
        if n > limit:
            raise InputError(f"input {alias!r}: shape {shape} has {n} elements; {model.name} takes at "
                             f"most {self.max_batch} examples of {per_example} elements ({limit})")

    def _image_cost(self, model, alias: str, items: Iterable[bytes]) -> int:
        pre = model.preprocessor
        if pre is None:
            return 0            # ServedModel refuses encoded images for this model
        budget = pixel_budget(pre.height, pre.width)
        cost = 0
        for i, data in enumerate(items):
            width, height = image_size(data, pre.target_size())
            if width * height > budget:
                raise InputError(f"input {alias!r}: image {i} of {width}x{height} pixels exceeds "
                                 f"{model.name}'s pixel budget of {budget} pixels (input "
                                 f"{pre.height}x{pre.width})")
            cost += width * height * _PIXEL_BYTES
        return cost

    def cost(self, model, inputs: Mapping[str, object]) -> int:
        """Bytes that decoding and converting `inputs` (alias -> TensorProto) will hold; raises
        InputError for what can never be served."""
        total = 0
        signature = model.input_signature()
        for alias, t in inputs.items():
            dims = [d.size for d in t.tensor_shape.dim]
            if t.dtype not in NUMPY_OF or any(d < 0 for d in dims) or t.tensor_shape.unknown_rank:
                continue        # tensors.from_proto says what is wrong, allocating nothing
            n = 1
            for d in dims:
                n *= d          # Python ints: no overflow
            if t.dtype == types_pb2.DT_STRING:
                count = len(t.string_val)
                if n > self.max_batch or count > self.max_batch:
                    raise InputError(f"input {alias!r}: {max(n, count)} strings; {model.name} takes at "
                                     f"most {self.max_batch} encoded images per request")
                if count not in (1, n):
                    continue    # tensors.from_proto refuses the mismatch, allocating nothing
                # one value broadcast to n elements is n images of that value (parsed once)
                repeat = n if count == 1 else 1
                total += repeat * (2 * sum(len(v) for v in t.string_val)
                                   + self._image_cost(model, alias, t.string_val))
                continue
            name = alias if alias in model.inputs else (next(iter(model.inputs))
                                                        if len(model.inputs) == 1 else None)
            if name is not None and (alias in signature or alias == "images"):
                per_example = int(np.prod(model.inputs[name].shape[1:]))
                self._check_elements(model, alias, n, per_example, dims)
            itemsize = np.dtype(NUMPY_OF[t.dtype]).itemsize
            decoded = n * itemsize
            if decoded > self.max_request_bytes:
                raise InputError(f"input {alias!r}: shape {dims} of {types_pb2.DataType.Name(t.dtype)} "
                                 f"decodes to {decoded} bytes, more than the limit of "
                                 f"{self.max_request_bytes} bytes per request")
            total += decoded + n * _CONVERT_BYTES
        if total > self.max_request_bytes:
            raise InputError(f"the request's inputs need {total} bytes to decode and convert, more "
                             f"than the limit of {self.max_request_bytes} bytes per request")
        return total

    # -- admission ----------------------------------------------------------------------------
    def reserve(self, nbytes: int) -> None:
        with self._lock:
            if self._inflight + nbytes > self.max_inflight_bytes:
                self.refused += 1
                raise LimitExceeded(f"in-flight requests hold {self._inflight} of "
                                    f"{self.max_inflight_bytes} bytes, this one needs {nbytes}; "
                                    "retry later")
            self._inflight += nbytes

    def release(self, nbytes: int) -> None:
        with self._lock:
            self._inflight -= nbytes

    def example_cost(self, model, examples) -> int:
        """Bytes that the images in tf.Examples (Classify's input) will hold when decoded."""
        if len(examples) > self.max_batch:
            raise InputError(f"{len(examples)} examples; {model.name} takes at most {self.max_batch} "
                             "per request")
        total = 0
        for i, example in enumerate(examples):
            for key, feature in example.features.feature.items():
                if feature.WhichOneof("kind") == "bytes_list":
                    values = feature.bytes_list.value
                    total += 2 * sum(len(v) for v in values)
                    total += self._image_cost(model, f"example {i} feature {key}", values)
        if total > self.max_request_bytes:
            raise InputError(f"the request's examples need {total} bytes to decode, more than the "
                             f"limit of {self.max_request_bytes} bytes per request")
        return total

    def admit(self, model, inputs: Mapping[str, object] | None, context, examples=None) -> int:
        """Price `inputs` (or Classify's `examples`) and reserve their bytes until the call
        (`context`) ends.  Raises InputError (never fits) or LimitExceeded (not now)."""
        nbytes = self.cost(model, inputs) if examples is None else self.example_cost(model, examples)
        self.reserve(nbytes)
        if not context.add_callback(lambda: self.release(nbytes)):
            self.release(nbytes)
        return nbytes

