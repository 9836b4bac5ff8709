"""Host stages around the NPU, Brainwave-style: preprocess -> NPU -> postprocess.

preprocess:  encoded image (JPEG/PNG/...) -> decoded with Pillow -> resized to the model input ->
             normalised as keras.applications' `preprocess_input` does (manifest.preprocess
             `mode`) -> quantized with the input tensor's scale and zero point (int8, NHWC).
postprocess: int8 output -> dequantized -> softmax (float) -> top-k classes with their names; or,
             for a detector, host/detection.py (boxes, per-class NMS), after the host tail of a
             cut graph (host/host_graph.py) when there is one.

Floating point lives only here, never on the NPU.  Every bad input raises `InputError` with a
message that says what is wrong.
"""

from __future__ import annotations

import dataclasses
import io
import warnings

import numpy as np

from softnpu.compiler import eval_crop
from softnpu.compiler.bundle import Manifest, TensorSpec

__all__ = ["InputError", "MODES", "decode_image", "image_size", "pixel_budget", "normalize", "quantize",
           "dequantize", "softmax", "top_k", "Preprocessor", "class_names", "Classification",
           "classify", "Pipeline"]

# keras.applications.imagenet_utils.preprocess_input, by mode; "unit" is x/255 (zoo.py digits),
# "raw" leaves 0..255 as it is.
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN, _TORCH_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
MODES = ("caffe", "torch", "tf", "lite", "unit", "raw")
MAX_IMAGE_PIXELS = 64 * 1024 * 1024           # decompression-bomb guard, whatever the model
MIN_IMAGE_PIXELS = 1024 * 1024                # ... and the pixel budget of one model's input:
IMAGE_PIXEL_FACTOR = 256                      # see pixel_budget()


class InputError(ValueError):
    """A request input that cannot be used: bad image bytes, wrong dtype, shape or name."""


def pixel_budget(height: int, width: int) -> int:
    """The most pixels an encoded image for a model input of height x width may decode to (after
    JPEG's DCT scaling): IMAGE_PIXEL_FACTOR times the input, at least MIN_IMAGE_PIXELS, at most
    MAX_IMAGE_PIXELS.  An 8x8 model takes 1024x1024 images, a 224x224 one 3584x3584 (JPEGs up to
    8 times larger on each side, drafted down)."""
    return int(min(MAX_IMAGE_PIXELS, max(MIN_IMAGE_PIXELS, IMAGE_PIXEL_FACTOR * height * width)))


def _open(data: bytes, size: tuple[int, int] | None):
    """A lazily decoding Pillow image (the header only is read), drafted for a JPEG so that it
    decodes at the smallest DCT scale that is still at least `size` (height, width)."""
    from PIL import Image

    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InputError(f"an image must be bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise InputError("empty image (0 bytes)")
    img = Image.open(io.BytesIO(bytes(data)))
    if size is not None and img.format == "JPEG":
        img.draft(img.mode, (size[1], size[0]))
    return img


def image_size(data: bytes, size: tuple[int, int] | None = None) -> tuple[int, int]:
    """(width, height) an encoded image decodes to (drafted towards `size` (height, width) when it
    is a JPEG), from its header alone: nothing is decoded."""
    try:
        with _open(data, size) as img:
            return img.size
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"cannot decode image ({len(data)} bytes): "
                         f"{'not a recognised image format' if 'identify' in str(exc) else exc}") from None


def decode_image(data: bytes, channels: int = 3, size: tuple[int, int] | None = None,
                 max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Encoded image bytes -> uint8 [H, W, channels] (RGB, or L for one channel).

    size: (height, width) the image is going to be resized to; a JPEG is decoded at the smallest
    DCT scale (1, 1/2, 1/4, 1/8) still at least that large.  max_pixels is checked on the header,
    before anything is decoded."""
    from PIL import Image

    fmt = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with _open(data, size) as img:
                if img.width * img.height > max_pixels:
                    raise InputError(f"image of {img.width}x{img.height} pixels exceeds the limit of "
                                     f"{max_pixels} pixels")
                fmt = img.format
                img.load()
                img = img.convert("L" if channels == 1 else "RGB")
                pixels = np.asarray(img, dtype=np.uint8)
                return pixels[..., None] if pixels.ndim == 2 else pixels
    except InputError:
        raise
    except Exception as exc:    # Pillow raises OSError, SyntaxError, ValueError... for bad data
        kind = "not a recognised image format" if "identify" in str(exc) else str(exc)
        raise InputError(f"cannot decode image ({len(data)} bytes"
                         f"{', ' + fmt if fmt else ''}): {kind}") from None


def _resize(pixels: np.ndarray, height: int, width: int, method: str,
            interpolation: str = "bilinear") -> np.ndarray:
    if method == "center_crop":
        return eval_crop.center_crop(pixels, height, width, interpolation)
    if method == "stretch":
        return eval_crop.resize_stretch(pixels, height, width, interpolation)
    raise ValueError(f"preprocess resize {method!r} is not one of 'stretch', 'center_crop'")


def normalize(x: np.ndarray, mode: str) -> np.ndarray:
    """Pixels in 0..255 (float, [..., C], RGB order) -> the model's float input domain."""
    x = np.asarray(x, np.float32)
    if mode == "caffe":
        if x.shape[-1] != 3:
            raise ValueError("preprocess mode 'caffe' needs 3 channels")
        return x[..., ::-1] - np.array(_CAFFE_MEAN_BGR, np.float32)
    if mode == "torch":
        if x.shape[-1] != 3:
            raise ValueError("preprocess mode 'torch' needs 3 channels")
        return (x / 255.0 - np.array(_TORCH_MEAN, np.float32)) / np.array(_TORCH_STD, np.float32)
    if mode == "tf":
        return x / 127.5 - 1.0
    if mode == "lite":      # EfficientNet-Lite (compiler/efficientnet.py)
        return (x - 127.0) / 128.0
    if mode == "unit":
        return x / 255.0
    if mode == "raw":
        return x
    raise ValueError(f"unknown preprocess mode {mode!r}; expected one of {MODES}")


def quantize(x: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """float -> int8 as TFLite's QUANTIZE: round half away from zero, add zero point, saturate."""
    q = np.asarray(x, np.float64) / scale
    q = np.sign(q) * np.floor(np.abs(q) + 0.5)
    return np.clip(q + zero_point, -128, 127).astype(np.int8)


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return ((np.asarray(q, np.float32) - np.float32(zero_point)) * np.float32(scale)).astype(np.float32)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return (e / e.sum(axis=axis, keepdims=True)).astype(np.float32)


def top_k(p: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of the k largest entries of each row of [N, C], largest first
    (ties: lower index first)."""
    p = np.asarray(p).reshape(len(p), -1)
    k = max(1, min(int(k), p.shape[1]))
    idx = np.argsort(-p, axis=1, kind="stable")[:, :k]
    return idx.astype(np.int64), np.take_along_axis(p, idx, axis=1)


def class_names(manifest: Manifest, count: int) -> list[str]:
    """Names of the model's classes (compiler/labels.py: ImageNet-1k, digits), else "class_<i>"."""
    from softnpu.compiler.labels import class_names as names_of

    return names_of(manifest.labels, count)


@dataclasses.dataclass(frozen=True)
class Preprocessor:
    """The preprocess stage of one model input (from manifest.preprocess and the input spec)."""
    spec: TensorSpec
    mode: str = "raw"
    height: int = 0
    width: int = 0
    resize: str = "stretch"
    interpolation: str = "bilinear"

    @classmethod
    def for_manifest(cls, manifest: Manifest, index: int = 0) -> Preprocessor:
        spec = manifest.inputs[index]
        if len(spec.shape) != 4:
            raise ValueError(f"input {spec.name!r} of shape {spec.shape} is not an image (NHWC)")
        pre = manifest.preprocess or {}
        size = pre.get("size", spec.shape[1:3])
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        if (height, width) != tuple(spec.shape[1:3]):
            raise ValueError(f"preprocess size {size} differs from input {spec.name!r} shape {spec.shape}")
        mode = pre.get("mode", "raw")
        if mode not in MODES:
            raise ValueError(f"unknown preprocess mode {mode!r}; expected one of {MODES}")
        interpolation = pre.get("interpolation", "bilinear")
        if interpolation not in eval_crop.INTERPOLATIONS:
            raise ValueError(f"unknown preprocess interpolation {interpolation!r}; expected one of "
                             f"{eval_crop.INTERPOLATIONS}")
        return cls(spec, mode, height, width, pre.get("resize", "stretch"), interpolation)

    def target_size(self) -> tuple[int, int]:
        """(height, width) an image is resized to before cropping (what a JPEG is drafted to)."""
        if self.resize == "center_crop":
            side = max(self.height, self.width) / eval_crop.CROP_FRACTION
            return (int(np.ceil(side)), int(np.ceil(side)))
        return (self.height, self.width)

    def __call__(self, data: bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
        """Encoded image -> int8 [1, H, W, C] ready for the NPU.  The service holds an image to
        `pixel_budget(height, width)` from its header before it gets here (host/serving/limits.py)."""
        pixels = decode_image(data, self.spec.shape[3], self.target_size(), max_pixels)
        pixels = _resize(pixels, self.height, self.width, self.resize, self.interpolation)
        return quantize(normalize(pixels, self.mode), self.spec.scale, self.spec.zero_point)[None]


@dataclasses.dataclass
class Classification:
    logits: np.ndarray           # float32 [N, C], dequantized
    probabilities: np.ndarray    # float32 [N, C]
    classes: np.ndarray          # int64 [N, k]
    scores: np.ndarray           # float32 [N, k]
    labels: list[list[str]]      # [N][k]


def classify(q: np.ndarray, spec: TensorSpec, names: list[str], k: int = 5,
             postprocess: list[dict] | None = None) -> Classification:
    """The postprocess stage of a classifier output (int8 [N, C])."""
    q = np.asarray(q).reshape(len(q), -1)
    logits = dequantize(q, spec.scale, spec.zero_point)
    stages = postprocess or [{"op": "dequantize"}, {"op": "softmax"}]
    soft = next((p for p in stages if p.get("op") == "softmax"), None)
    probs = softmax(logits * np.float32(soft.get("beta", 1.0))) if soft is not None else logits
    classes, scores = top_k(probs, k)
    labels = [[names[i] if i < len(names) else f"class_{i}" for i in row] for row in classes]
    return Classification(logits, probs, classes, scores.astype(np.float32), labels)


class Pipeline:
    """preprocess -> NPU -> (host tail) -> postprocess for a single-input image model on a runtime
    (host.runtime.Runtime): Brainwave's service definition, in process.  A classifier returns a
    `Classification`, a detector (an `ssd_detect` stage) `host.detection.Detections`."""

    def __init__(self, runtime, top_k: int = 5):
        from softnpu.host.detection import Detector, detection_stage
        from softnpu.host.host_graph import HostGraph

        manifest = runtime.manifest
        self.runtime, self.top_k = runtime, top_k
        self.preprocess = Preprocessor.for_manifest(manifest)
        self.host_graph = HostGraph.from_bundle(runtime.bundle)
        finals = self.host_graph.outputs if self.host_graph is not None else manifest.outputs
        stage = detection_stage(manifest.postprocess)
        self.detector = Detector(stage, {s.name: s for s in finals}) if stage is not None else None
        self.output = finals[0]
        if self.detector is None and len(self.output.shape) != 2:
            raise ValueError(f"output {self.output.name!r} of shape {self.output.shape} is not a "
                             "classifier's [1, classes], and the model has no detection stage")
        self.names = class_names(manifest, self.detector.num_classes if self.detector is not None
                                 else self.output.shape[-1])

    def __call__(self, image: bytes):
        """Encoded image -> (Classification or Detections, host.runtime.Stats)."""
        result = self.runtime.infer({self.preprocess.spec.name: self.preprocess(image)})
        outputs = self.host_graph(result.outputs) if self.host_graph is not None else result.outputs
        if self.detector is not None:
            return self.detector(outputs).detections, result.stats
        return (classify(outputs[self.output.name], self.output, self.names, self.top_k,
                         self.runtime.manifest.postprocess), result.stats)
