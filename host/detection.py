"""SSD post-processing on the host (float): default boxes, box decoding, per-class NMS, top-N.

The NPU (and the host tail of compiler/host_split.py) produce, per default box, class scores
(logits, class 0 = background) and box offsets.  This stage turns them into detections in the
TensorFlow Object Detection API's form:

* ``prior_boxes(spec)``: SSD's default boxes, [N, 4] (cx, cy, w, h) as fractions of the image.
  Per feature map k of side f_k (step s_k pixels), per cell (row i, column j), centred at
  ((j + 0.5) s_k, (i + 0.5) s_k) / image_size: a square of min_size_k, a square of
  sqrt(min_size_k * max_size_k), and for each aspect ratio r two boxes (min_size_k sqrt(r) wide,
  min_size_k / sqrt(r) high, and transposed).  ``clip``: corners clipped to [0, 1] (Caffe's
  PriorBox).  The order (row, column, box) is the order of the heads' reshape.
* ``decode_boxes``: SSD's centre-size decoding with variances (0.1, 0.2):
  cx = p_cx + 0.1 dx p_w, cy = p_cy + 0.1 dy p_h, w = p_w exp(0.2 dw), h = p_h exp(0.2 dh); the
  exponent is capped at log(1000/16) (as torchvision does) so a wild offset cannot overflow; the
  boxes come out as (ymin, xmin, ymax, xmax) clipped to [0, 1].
* ``non_max_suppression``: greedy, with TensorFlow's conventions (tf.image.non_max_suppression):
  candidates with score > score_threshold, by score descending (equal scores: lower index first);
  a candidate is dropped when its IoU with a kept box is > iou_threshold; boxes with no area have
  IoU 0 with everything.
* ``detect``: softmax over the classes, per foreground class NMS (at most ``max_per_class``), then
  the ``max_detections`` best over all classes (tf.image.combined_non_max_suppression).
* ``Detector``: the manifest's ``ssd_detect`` stage applied to a model's int8 outputs.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

__all__ = ["DetectionSpec", "Detections", "Detector", "DetectorOutput", "detection_stage", "prior_boxes",
           "decode_boxes", "iou", "non_max_suppression", "detect", "softmax", "SCORE_THRESHOLD",
           "IOU_THRESHOLD", "MAX_PER_CLASS", "MAX_DETECTIONS"]

# The SSD paper's evaluation settings (ssd.pytorch: conf_thresh 0.01, nms_thresh 0.45, top_k 200)
SCORE_THRESHOLD = 0.01
IOU_THRESHOLD = 0.45
MAX_PER_CLASS = 200
MAX_DETECTIONS = 100
_MAX_LOG_SCALE = math.log(1000.0 / 16)


@dataclasses.dataclass(frozen=True)
class DetectionSpec:
    """How an SSD's outputs decode: the manifest's ``ssd_detect`` stage (compiler/ssd.py)."""
    image_size: float
    feature_maps: tuple[int, ...]
    steps: tuple[float, ...]
    min_sizes: tuple[float, ...]
    max_sizes: tuple[float, ...]
    aspect_ratios: tuple[tuple[float, ...], ...]
    num_classes: int
    variances: tuple[float, float] = (0.1, 0.2)
    clip: bool = True

    def __post_init__(self):
        n = len(self.feature_maps)
        for field in ("steps", "min_sizes", "max_sizes", "aspect_ratios"):
            if len(getattr(self, field)) != n:
                raise ValueError(f"detection spec: {field} has {len(getattr(self, field))} entries, "
                                 f"feature_maps has {n}")
        if self.num_classes < 2:
            raise ValueError(f"detection spec: num_classes must be >= 2, got {self.num_classes}")
        if len(self.variances) != 2 or min(self.variances) <= 0:
            raise ValueError(f"detection spec: variances must be two positive numbers, got {self.variances}")

    @classmethod
    def from_dict(cls, d: dict) -> DetectionSpec:
        try:
            return cls(image_size=float(d["image_size"]),
                       feature_maps=tuple(int(f) for f in d["feature_maps"]),
                       steps=tuple(float(s) for s in d["steps"]),
                       min_sizes=tuple(float(s) for s in d["min_sizes"]),
                       max_sizes=tuple(float(s) for s in d["max_sizes"]),
                       aspect_ratios=tuple(tuple(float(r) for r in rs) for rs in d["aspect_ratios"]),
                       num_classes=int(d["num_classes"]),
                       variances=tuple(float(v) for v in d.get("variances", (0.1, 0.2))),
                       clip=bool(d.get("clip", True)))
        except KeyError as exc:
            raise ValueError(f"detection spec: missing {exc}") from None

    @property
    def boxes_per_location(self) -> list[int]:
        return [2 + 2 * len(r) for r in self.aspect_ratios]

    @property
    def num_priors(self) -> int:
        return sum(f * f * n for f, n in zip(self.feature_maps, self.boxes_per_location, strict=True))


def prior_boxes(spec: DetectionSpec) -> np.ndarray:
    """SSD's default boxes, float32 [N, 4] (cx, cy, w, h), fractions of the image."""
    out = []
    for f, step, smin, smax, ratios in zip(spec.feature_maps, spec.steps, spec.min_sizes,
                                           spec.max_sizes, spec.aspect_ratios, strict=True):
        shapes = [(smin, smin), (math.sqrt(smin * smax),) * 2]
        for r in ratios:
            shapes += [(smin * math.sqrt(r), smin / math.sqrt(r)), (smin / math.sqrt(r), smin * math.sqrt(r))]
        wh = np.asarray(shapes, np.float64) / spec.image_size                     # [n, 2] (w, h)
        centres = (np.arange(f, dtype=np.float64) + 0.5) * step / spec.image_size
        cy, cx = np.meshgrid(centres, centres, indexing="ij")                   # [f, f]
        boxes = np.empty((f, f, len(shapes), 4))
        boxes[..., 0], boxes[..., 1] = cx[..., None], cy[..., None]
        boxes[..., 2:] = wh
        out.append(boxes.reshape(-1, 4))
    priors = np.concatenate(out)
    if spec.clip:
        lo = np.clip(priors[:, :2] - priors[:, 2:] / 2, 0, 1)
        hi = np.clip(priors[:, :2] + priors[:, 2:] / 2, 0, 1)
        priors = np.concatenate([(lo + hi) / 2, hi - lo], axis=1)
    return priors.astype(np.float32)


def decode_boxes(offsets: np.ndarray, priors: np.ndarray, variances=(0.1, 0.2)) -> np.ndarray:
    """Box offsets [N, 4] (dx, dy, dw, dh) against priors [N, 4] (cx, cy, w, h) -> float32 [N, 4]
    (ymin, xmin, ymax, xmax) clipped to [0, 1]."""
    d = np.asarray(offsets, np.float64)
    p = np.asarray(priors, np.float64)
    if d.shape != p.shape or d.ndim != 2 or d.shape[1] != 4:
        raise ValueError(f"decode_boxes: offsets {d.shape} and priors {p.shape} must both be [N, 4]")
    v0, v1 = variances
    cx = p[:, 0] + v0 * d[:, 0] * p[:, 2]
    cy = p[:, 1] + v0 * d[:, 1] * p[:, 3]
    w = p[:, 2] * np.exp(np.minimum(v1 * d[:, 2], _MAX_LOG_SCALE))
    h = p[:, 3] * np.exp(np.minimum(v1 * d[:, 3], _MAX_LOG_SCALE))
    boxes = np.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], axis=1)
    return np.clip(boxes, 0.0, 1.0).astype(np.float32)


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one box with each of boxes ([4] and [N, 4], corners in either order), float32, as
    TensorFlow's NMS computes it (0 when either box has no area)."""
    a = np.asarray(box, np.float32)
    b = np.asarray(boxes, np.float32).reshape(-1, 4)
    ay0, ay1 = min(a[0], a[2]), max(a[0], a[2])
    ax0, ax1 = min(a[1], a[3]), max(a[1], a[3])
    by0, by1 = np.minimum(b[:, 0], b[:, 2]), np.maximum(b[:, 0], b[:, 2])
    bx0, bx1 = np.minimum(b[:, 1], b[:, 3]), np.maximum(b[:, 1], b[:, 3])
    area_a = (ay1 - ay0) * (ax1 - ax0)
    area_b = (by1 - by0) * (bx1 - bx0)
    ih = np.maximum(np.minimum(ay1, by1) - np.maximum(ay0, by0), np.float32(0))
    iw = np.maximum(np.minimum(ax1, bx1) - np.maximum(ax0, bx0), np.float32(0))
    inter = ih * iw
    union = area_a + area_b - inter
    valid = (area_a > 0) & (area_b > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(valid, inter / np.where(valid, union, 1), np.float32(0)).astype(np.float32)


def non_max_suppression(boxes: np.ndarray, scores: np.ndarray, max_output_size: int,
                        iou_threshold: float = IOU_THRESHOLD,
                        score_threshold: float = float("-inf")) -> np.ndarray:
    """Indices (int64, best first) of the boxes greedy NMS keeps; see the module docstring."""
    boxes = np.asarray(boxes, np.float32)
    scores = np.asarray(scores, np.float32)
    if boxes.ndim != 2 or boxes.shape[1] != 4 or scores.shape != (len(boxes),):
        raise ValueError(f"non_max_suppression: boxes {boxes.shape} must be [N, 4] and scores "
                         f"{scores.shape} [N]")
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"non_max_suppression: iou_threshold must be in [0, 1], got {iou_threshold}")
    candidates = np.flatnonzero(scores > np.float32(score_threshold))
    order = candidates[np.argsort(-scores[candidates], kind="stable")]
    keep: list[int] = []
    for i in order:
        if len(keep) >= max_output_size:
            break
        if keep and np.any(iou(boxes[i], boxes[keep]) > np.float32(iou_threshold)):
            continue
        keep.append(int(i))
    return np.asarray(keep, dtype=np.int64)


@dataclasses.dataclass
class Detections:
    """Detections of one image, best first: boxes [K, 4] (ymin, xmin, ymax, xmax, fractions of the
    image), scores [K], classes [K] (model class index; 0 is background, so 1..num_classes-1)."""
    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)

    def padded(self, max_detections: int) -> dict[str, np.ndarray]:
        """The TF Object Detection API's outputs for a batch of one: detection_boxes [1, M, 4],
        detection_scores [1, M], detection_classes [1, M] (float32), num_detections [1] (float32),
        zero-padded to M = max_detections."""
        k = min(len(self), max_detections)
        boxes = np.zeros((1, max_detections, 4), np.float32)
        scores = np.zeros((1, max_detections), np.float32)
        classes = np.zeros((1, max_detections), np.float32)
        boxes[0, :k], scores[0, :k], classes[0, :k] = self.boxes[:k], self.scores[:k], self.classes[:k]
        return {"detection_boxes": boxes, "detection_scores": scores, "detection_classes": classes,
                "num_detections": np.asarray([k], np.float32)}


def softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def detect(probabilities: np.ndarray, boxes: np.ndarray, *, score_threshold: float = SCORE_THRESHOLD,
           iou_threshold: float = IOU_THRESHOLD, max_per_class: int = MAX_PER_CLASS,
           max_detections: int = MAX_DETECTIONS, background: int | None = 0) -> Detections:
    """Per-class NMS over class probabilities [N, C] and decoded boxes [N, 4], then the best
    ``max_detections`` over the classes (ties: lower class, then lower box index first)."""
    probabilities = np.asarray(probabilities, np.float32)
    boxes = np.asarray(boxes, np.float32)
    if probabilities.ndim != 2 or boxes.shape != (len(probabilities), 4):
        raise ValueError(f"detect: probabilities {probabilities.shape} must be [N, C] and boxes "
                         f"{boxes.shape} [N, 4]")
    if max_per_class < 0 or max_detections < 0:
        raise ValueError("detect: max_per_class and max_detections must be >= 0")
    found_boxes, found_scores, found_classes = [], [], []
    for c in range(probabilities.shape[1]):
        if c == background:
            continue
        keep = non_max_suppression(boxes, probabilities[:, c], max_per_class, iou_threshold, score_threshold)
        found_boxes.append(boxes[keep])
        found_scores.append(probabilities[keep, c])
        found_classes.append(np.full(len(keep), c, np.int64))
    if not found_scores:
        return Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))
    scores = np.concatenate(found_scores)
    order = np.argsort(-scores, kind="stable")[:max_detections]
    return Detections(np.concatenate(found_boxes)[order], scores[order], np.concatenate(found_classes)[order])


# ----------------------------------------------------------------------------------------------
# The stage: a detector's int8 outputs -> detections
# ----------------------------------------------------------------------------------------------
def detection_stage(postprocess: list[dict]) -> dict | None:
    """The manifest's ``ssd_detect`` postprocess stage, if the model is an SSD detector."""
    return next((p for p in postprocess or [] if p.get("op") == "ssd_detect"), None)


@dataclasses.dataclass
class DetectorOutput:
    detections: Detections
    probabilities: np.ndarray      # float32 [N, C], softmax of the dequantized class scores
    boxes: np.ndarray              # float32 [N, 4], every default box decoded (ymin, xmin, ymax, xmax)


class Detector:
    """The postprocess stage of an SSD: dequantize, softmax, decode against the default boxes,
    per-class NMS, top-N.  ``specs``: the model's final int8 outputs by name (objects with
    ``shape``, ``scale``, ``zero_point``); the stage names the class-score and box-offset ones.
    Thresholds come from the stage (``score_threshold``, ``iou_threshold``, ``max_per_class``,
    ``max_detections``) or the SSD paper's defaults."""

    def __init__(self, stage: dict, specs: dict):
        self.spec = DetectionSpec.from_dict(stage)
        missing = [k for k in ("scores", "boxes") if stage.get(k) not in specs]
        if missing:
            raise ValueError(f"ssd_detect stage: its {missing} output(s) are not outputs of the model "
                             f"({sorted(specs)})")
        self.scores_spec, self.boxes_spec = specs[stage["scores"]], specs[stage["boxes"]]
        n = self.spec.num_priors
        if list(self.scores_spec.shape) != [1, n, self.spec.num_classes] or \
                list(self.boxes_spec.shape) != [1, n, 4]:
            raise ValueError(f"ssd_detect stage: outputs {list(self.scores_spec.shape)} and "
                             f"{list(self.boxes_spec.shape)} do not match {n} default boxes and "
                             f"{self.spec.num_classes} classes")
        self.priors = prior_boxes(self.spec)
        self.score_threshold = float(stage.get("score_threshold", SCORE_THRESHOLD))
        self.iou_threshold = float(stage.get("iou_threshold", IOU_THRESHOLD))
        self.max_per_class = int(stage.get("max_per_class", MAX_PER_CLASS))
        self.max_detections = int(stage.get("max_detections", MAX_DETECTIONS))

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    def __call__(self, tensors: dict[str, np.ndarray]) -> DetectorOutput:
        """One image's int8 outputs by name -> its detections."""
        s, b = self.scores_spec, self.boxes_spec
        logits = (np.asarray(tensors[s.name], np.float32).reshape(-1, self.num_classes)
                  - np.float32(s.zero_point)) * np.float32(s.scale)
        offsets = (np.asarray(tensors[b.name], np.float32).reshape(-1, 4) - np.float32(b.zero_point)) \
            * np.float32(b.scale)
        probs = softmax(logits)
        boxes = decode_boxes(offsets, self.priors, self.spec.variances)
        found = detect(probs, boxes, score_threshold=self.score_threshold, iou_threshold=self.iou_threshold,
                       max_per_class=self.max_per_class, max_detections=self.max_detections)
        return DetectorOutput(found, probs, boxes)
