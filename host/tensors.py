"""numpy <-> tensorflow.TensorProto, as TF Serving's clients build them (`tf.make_tensor_proto`)
and read them (`tf.make_ndarray`), with errors that say what is wrong with a request tensor.

Both encodings of a TensorProto are read: `tensor_content` (raw little-endian bytes, what
make_tensor_proto writes for arrays) and the typed `*_val` fields (what it writes for lists and
scalars; a single value broadcasts to the whole shape, as in TensorFlow).
"""

from __future__ import annotations

import numpy as np

from softnpu.host.serving.tfs_api import api

tensor_pb2, tensor_shape_pb2, types_pb2 = api.tensor_pb2, api.tensor_shape_pb2, api.types_pb2

__all__ = ["TensorError", "to_proto", "from_proto", "dtype_name", "NUMPY_OF", "DT_OF", "MAX_ELEMENTS"]

MAX_ELEMENTS = 1 << 26          # refuse shapes that would allocate more (a 20-byte proto can ask for 1 TB)

NUMPY_OF = {
    types_pb2.DT_FLOAT: np.float32, types_pb2.DT_DOUBLE: np.float64, types_pb2.DT_HALF: np.float16,
    types_pb2.DT_INT8: np.int8, types_pb2.DT_UINT8: np.uint8, types_pb2.DT_INT16: np.int16,
    types_pb2.DT_UINT16: np.uint16, types_pb2.DT_INT32: np.int32, types_pb2.DT_UINT32: np.uint32,
    types_pb2.DT_INT64: np.int64, types_pb2.DT_UINT64: np.uint64, types_pb2.DT_BOOL: np.bool_,
    types_pb2.DT_STRING: object,
}
DT_OF = {np.dtype(v): k for k, v in NUMPY_OF.items() if v is not object}

_VAL_FIELD = {
    types_pb2.DT_FLOAT: "float_val", types_pb2.DT_DOUBLE: "double_val", types_pb2.DT_HALF: "half_val",
    types_pb2.DT_INT8: "int_val", types_pb2.DT_UINT8: "int_val", types_pb2.DT_INT16: "int_val",
    types_pb2.DT_UINT16: "int_val", types_pb2.DT_INT32: "int_val", types_pb2.DT_UINT32: "uint32_val",
    types_pb2.DT_INT64: "int64_val", types_pb2.DT_UINT64: "uint64_val", types_pb2.DT_BOOL: "bool_val",
    types_pb2.DT_STRING: "string_val",
}


class TensorError(ValueError):
    """A TensorProto that cannot be read: unsupported dtype, bad shape, content of the wrong size."""


def dtype_name(dt: int) -> str:
    try:
        return types_pb2.DataType.Name(dt)
    except ValueError:
        return f"dtype {dt}"


def from_proto(t: tensor_pb2.TensorProto, what: str = "tensor") -> np.ndarray:
    """A TensorProto as a numpy array (DT_STRING: an object array of bytes)."""
    if t.dtype not in NUMPY_OF:
        raise TensorError(f"{what}: {dtype_name(t.dtype)} is not supported")
    if t.tensor_shape.unknown_rank:
        raise TensorError(f"{what}: the shape has unknown rank")
    shape = tuple(d.size for d in t.tensor_shape.dim)
    if any(d < 0 for d in shape):
        raise TensorError(f"{what}: shape {list(shape)} has a negative (unknown) dimension")
    n = 1
    for d in shape:
        n *= d
        if n > MAX_ELEMENTS:
            raise TensorError(f"{what}: shape {list(shape)} has more than {MAX_ELEMENTS} elements")
    if t.dtype == types_pb2.DT_STRING:
        values = list(t.string_val)
        out = np.empty(len(values), dtype=object)
        out[:] = values
        return _fill(out, shape, n, what)
    dtype = np.dtype(NUMPY_OF[t.dtype]).newbyteorder("<")
    if t.tensor_content:
        if len(t.tensor_content) != n * dtype.itemsize:
            raise TensorError(f"{what}: tensor_content has {len(t.tensor_content)} bytes, shape "
                              f"{list(shape)} of {dtype_name(t.dtype)} needs {n * dtype.itemsize}")
        return np.frombuffer(t.tensor_content, dtype).astype(dtype.newbyteorder("="))\
            .reshape(shape)
    values = getattr(t, _VAL_FIELD[t.dtype])
    if t.dtype == types_pb2.DT_HALF:
        flat = np.array(values, np.uint16).view(np.float16)
    else:
        try:
            flat = np.array(values).astype(dtype.newbyteorder("="), casting="unsafe")
        except (OverflowError, ValueError) as exc:
            raise TensorError(f"{what}: {exc}") from None
        if t.dtype in (types_pb2.DT_INT8, types_pb2.DT_UINT8, types_pb2.DT_INT16, types_pb2.DT_UINT16):
            info = np.iinfo(dtype)
            if len(values) and (min(values) < info.min or max(values) > info.max):
                raise TensorError(f"{what}: int_val holds values outside {dtype_name(t.dtype)}'s range")
    return _fill(flat, shape, n, what)


def _fill(flat: np.ndarray, shape: tuple, n: int, what: str) -> np.ndarray:
    if flat.size == n:
        return flat.reshape(shape)
    if flat.size == 1 and n > 0:
        return np.full(shape, flat[0], dtype=flat.dtype)
    raise TensorError(f"{what}: {flat.size} values given for shape {list(shape)} ({n} elements)")


def to_proto(x, dtype: int | None = None) -> tensor_pb2.TensorProto:
    """A numpy array (or bytes, or a list of bytes) as a TensorProto; byte strings -> DT_STRING."""
    if isinstance(x, (bytes, bytearray)):
        x = np.array([bytes(x)], dtype=object)
    elif isinstance(x, (list, tuple)) and x and all(isinstance(v, (bytes, bytearray)) for v in x):
        arr = np.empty(len(x), dtype=object)
        arr[:] = [bytes(v) for v in x]
        x = arr
    x = np.asarray(x)
    shape = tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d)
                                                    for d in x.shape])
    if x.dtype == object or x.dtype.kind in "SU":
        values = [v.encode() if isinstance(v, str) else bytes(v) for v in x.reshape(-1)]
        return tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_shape=shape, string_val=values)
    if dtype is None:
        if x.dtype not in DT_OF:
            raise TensorError(f"numpy dtype {x.dtype} has no TensorFlow dtype here")
        dtype = DT_OF[x.dtype]
    x = np.ascontiguousarray(x, dtype=np.dtype(NUMPY_OF[dtype]).newbyteorder("<"))
    return tensor_pb2.TensorProto(dtype=dtype, tensor_shape=shape, tensor_content=x.tobytes())
