"""Read a PyTorch state dict saved in the legacy (pre-1.6, non-zip) format, without PyTorch.

The legacy format of `torch.save` is a sequence of pickles followed by raw storage bytes:

1. the magic number 0x1950a86a20f9469cfc6c, 2. the protocol version (1001), 3. system info (byte
order, sizes of short/int/long), 4. the object itself, in which every tensor is a call of
`torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)` and every storage a persistent id
`('storage', torch.FloatStorage, key, location, numel[, view_metadata])`, 5. the list of storage keys
in the order their bytes follow, 6. per storage: its element count (int64, little endian) and its
elements.

`load_state_dict(path)` returns {name: numpy array} (C-contiguous copies).  Only the classes such a
file references are resolved (an allow list); anything else in the pickle is refused, so loading a
file runs no code from it.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
from pathlib import Path

import numpy as np

__all__ = ["load_state_dict", "LegacyFormatError"]

MAGIC = 0x1950A86A20F9469CFC6C
PROTOCOL = 1001

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16, "CharStorage": np.int8,
    "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class LegacyFormatError(ValueError):
    """The file is not a legacy-format PyTorch state dict this reader understands."""


class _Storage:
    def __init__(self, dtype, numel: int):
        self.dtype, self.numel, self.data = np.dtype(dtype), numel, None


class _TensorRef:
    """A tensor whose storage bytes come later in the file."""

    def __init__(self, storage: _Storage, offset: int, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, int(offset), tuple(size), tuple(stride)

    def materialize(self) -> np.ndarray:
        flat = self.storage.data
        if flat is None:
            raise LegacyFormatError("a tensor refers to a storage whose bytes are missing")
        if not self.size:
            return flat[self.offset:self.offset + 1].reshape(()).copy()
        item = flat.itemsize
        view = np.lib.stride_tricks.as_strided(flat[self.offset:], shape=self.size,
                                               strides=[s * item for s in self.stride])
        return np.ascontiguousarray(view)


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    return _TensorRef(storage, offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, hooks=None):
    return data


class _StorageType:
    def __init__(self, name: str):
        self.name = name


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, storages: dict):
        super().__init__(file)
        self.storages = storages

    def find_class(self, module: str, name: str):
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise LegacyFormatError(f"the pickle references {module}.{name}, which a state dict does not need")

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            raise LegacyFormatError(f"unexpected persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid[:5]
        if len(pid) > 5 and pid[5] is not None:
            raise LegacyFormatError("storage views are not supported")
        if not isinstance(storage_type, _StorageType):
            raise LegacyFormatError(f"unexpected storage type {storage_type!r}")
        if key not in self.storages:
            self.storages[key] = _Storage(_STORAGE_DTYPES[storage_type.name], int(numel))
        return self.storages[key]


def _flatten(obj, refs: list) -> None:
    if isinstance(obj, _TensorRef):
        refs.append(obj)
    elif isinstance(obj, dict):
        for v in obj.values():
            _flatten(v, refs)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _flatten(v, refs)


def _materialize(obj):
    if isinstance(obj, _TensorRef):
        return obj.materialize()
    if isinstance(obj, dict):
        return collections.OrderedDict((k, _materialize(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialize(v) for v in obj)
    return obj


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """The state dict of a legacy-format `torch.save` file as {name: numpy array}."""
    data = Path(path).read_bytes()
    if data[:2] == b"PK":
        raise LegacyFormatError(f"{path} is a zip-format (PyTorch >= 1.6) checkpoint, not the legacy format")
    f = io.BytesIO(data)
    try:
        magic = pickle.load(f)
        protocol = pickle.load(f)
        sys_info = pickle.load(f)
    except Exception as exc:
        raise LegacyFormatError(f"{path}: not a legacy PyTorch file ({exc})") from None
    if magic != MAGIC or protocol != PROTOCOL:
        raise LegacyFormatError(f"{path}: magic {magic!r} / protocol {protocol!r} are not legacy PyTorch's")
    if not sys_info.get("little_endian", True):
        raise LegacyFormatError(f"{path}: saved on a big-endian machine")
    storages: dict = {}
    obj = _Unpickler(f, storages).load()
    keys = pickle.load(f)
    for key in keys:
        storage = storages.get(key)
        if storage is None:
            raise LegacyFormatError(f"{path}: storage {key!r} is not referenced by the state dict")
        (numel,) = struct.unpack("<q", f.read(8))
        nbytes = numel * storage.dtype.itemsize
        raw = f.read(nbytes)
        if len(raw) != nbytes:
            raise LegacyFormatError(f"{path}: truncated storage {key!r} ({len(raw)} of {nbytes} bytes)")
        storage.data = np.frombuffer(raw, dtype=storage.dtype.newbyteorder("<")).astype(storage.dtype)
    result = _materialize(obj)
    if not isinstance(result, dict):
        raise LegacyFormatError(f"{path}: holds a {type(result).__name__}, not a state dict")
    return dict(result)
