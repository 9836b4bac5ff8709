"""The bundle format: what `softnpu compile` writes (`*.npu`, a zip) and the host runtime loads.

Members:
  manifest.json  model name and version, the NPUConfig it targets, input/output tensors (names,
                 shapes, dtypes, quantization, DRAM address and layout), host stages before and
                 after the NPU, the DRAM memory map, and one record per lowered layer
  program.bin    the encoded NPU program (hdl/isa.py), placed at memory_map.program
  weights.bin    every constant (weights, parameters), placed at memory_map.weights
  model.tflite   optional: the int8 .tflite the compiler consumed (the oracle of `softnpu verify`)

This is the "service definition" of the Brainwave flow: a pipeline of stages, some on the host,
one on the NPU.  Activations on the device are channel-blocked ([C/b][H][W][b] int8, b = cols).
"""

from __future__ import annotations

import dataclasses
import json
import zipfile
import zlib
from pathlib import Path
from typing import Any

from softnpu.hdl.config import NPUConfig

__all__ = ["FORMAT_VERSION", "TensorSpec", "Manifest", "Bundle", "BundleError"]

FORMAT_VERSION = 1
MANIFEST, PROGRAM, WEIGHTS = "manifest.json", "program.bin", "weights.bin"
TFLITE = "model.tflite"


class BundleError(ValueError):
    """A file that is not a valid bundle; says which member and what is wrong."""


@dataclasses.dataclass
class TensorSpec:
    """A model input or output as the host sees it (shape in TFLite's NHWC / [1, N] order)."""
    name: str
    shape: list[int]
    dtype: str                      # "int8" on the device side
    scale: float
    zero_point: int
    dram: int                       # device byte address of the blocked tensor
    layout: str = "blocked"         # "blocked": [C/b][H][W][b]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Manifest:
    model: str
    version: int
    config: dict[str, Any]                      # NPUConfig.to_dict()
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    memory_map: dict[str, int]                  # program, weights, weights_bytes, activations, end
    program_instructions: int
    preprocess: dict[str, Any] = dataclasses.field(default_factory=dict)   # e.g. resize, mode
    postprocess: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # dequantize, softmax
    layers: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    labels: str | None = None                   # name of a bundled class list ("imagenet")
    source: str = ""                            # what was compiled (zoo name or file)
    format_version: int = FORMAT_VERSION

    @property
    def npu_config(self) -> NPUConfig:
        return NPUConfig.from_dict(self.config)

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        return json.dumps(data, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BundleError(f"{MANIFEST}: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise BundleError(f"{MANIFEST}: expected a JSON object, got {type(data).__name__}")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise BundleError(f"{MANIFEST}: format_version {version!r}, this softnpu reads "
                              f"{FORMAT_VERSION}")
        try:
            data["inputs"] = [TensorSpec(**t) for t in data["inputs"]]
            data["outputs"] = [TensorSpec(**t) for t in data["outputs"]]
            manifest = cls(**data)
        except KeyError as exc:
            raise BundleError(f"{MANIFEST}: missing field {exc}") from None
        except (TypeError, ValueError) as exc:
            raise BundleError(f"{MANIFEST}: {exc}") from None
        try:
            NPUConfig.from_dict(manifest.config)        # it must target a valid NPU config
        except (TypeError, ValueError) as exc:
            raise BundleError(f"{MANIFEST}: the bundle's NPU config is not one this softnpu builds ({exc}); "
                              f"compile the model again with `softnpu compile`") from None
        return manifest


@dataclasses.dataclass
class Bundle:
    manifest: Manifest
    program: bytes
    weights: bytes
    tflite: bytes | None = None     # the model the compiler consumed, if the bundle carries it

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as z:
            z.writestr(MANIFEST, self.manifest.to_json())
            z.writestr(PROGRAM, self.program)
            # int8 weights barely deflate (a few percent) and cost most of a compile's time to try:
            # stored, still CRC-checked on load
            z.writestr(WEIGHTS, self.weights, compress_type=zipfile.ZIP_STORED)
            if self.tflite is not None:
                z.writestr(TFLITE, self.tflite, compress_type=zipfile.ZIP_STORED)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Bundle:
        path = Path(path)
        if not path.exists():
            raise BundleError(f"{path}: no such file")
        if not zipfile.is_zipfile(path):
            raise BundleError(f"{path}: not a bundle (not a zip file)")
        try:
            with zipfile.ZipFile(path) as z:
                names = set(z.namelist())
                missing = {MANIFEST, PROGRAM, WEIGHTS} - names
                if missing:
                    raise BundleError(f"{path}: missing {sorted(missing)}")
                try:
                    manifest = Manifest.from_json(z.read(MANIFEST).decode())
                except UnicodeDecodeError:
                    raise BundleError(f"{path}: {MANIFEST} is not UTF-8 text") from None
                except BundleError as exc:
                    raise BundleError(f"{path}: {exc}") from None
                bundle = cls(manifest, z.read(PROGRAM), z.read(WEIGHTS),
                             z.read(TFLITE) if TFLITE in names else None)
        except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
            raise BundleError(f"{path}: a damaged bundle ({exc})") from None
        expected = manifest.program_instructions * 32
        if len(bundle.program) != expected:
            raise BundleError(f"{path}: {PROGRAM} has {len(bundle.program)} bytes, the manifest says "
                              f"{manifest.program_instructions} instructions ({expected} bytes)")
        if len(bundle.weights) != manifest.memory_map.get("weights_bytes", len(bundle.weights)):
            raise BundleError(f"{path}: {WEIGHTS} size does not match memory_map.weights_bytes")
        return bundle
