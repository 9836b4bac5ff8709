"""SSD post-processing (host/detection.py): hand-computed cases and TensorFlow's NMS as the oracle."""

from __future__ import annotations

import math

import numpy as np
import pytest

from softnpu.compiler.ssd import SSD300_SPEC
from softnpu.host.detection import (
    DetectionSpec,
    decode_boxes,
    detect,
    iou,
    non_max_suppression,
    prior_boxes,
)


def ssd300() -> DetectionSpec:
    return DetectionSpec.from_dict(dict(SSD300_SPEC, num_classes=21))


# ----------------------------------------------------------------------------------------------
# Default boxes
# ----------------------------------------------------------------------------------------------
def test_ssd300_has_8732_default_boxes():
    spec = ssd300()
    assert spec.boxes_per_location == [4, 6, 6, 6, 4, 4]
    assert spec.num_priors == 8732
    assert prior_boxes(spec).shape == (8732, 4)


def test_first_cell_boxes_by_hand():
    p = prior_boxes(ssd300())
    c = 0.5 * 8 / 300                            # centre of cell (0, 0) of the 38x38 map
    s, s2 = 30 / 300, math.sqrt(30 * 60) / 300
    r = math.sqrt(2)
    want = [(c, c, s, s), (c, c, s2, s2), (c, c, s * r, s / r), (c, c, s / r, s * r)]
    for got, (cx, cy, w, h) in zip(p[:4], want, strict=True):
        # clipped at the image's top-left corner: the box keeps [0, cx + w/2]
        x0, x1 = max(cx - w / 2, 0), min(cx + w / 2, 1)
        y0, y1 = max(cy - h / 2, 0), min(cy + h / 2, 1)
        np.testing.assert_allclose(got, [(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], rtol=1e-6)


def test_boxes_follow_row_column_box_order():
    p = prior_boxes(DetectionSpec.from_dict(dict(SSD300_SPEC, num_classes=21, clip=False)))
    # box 4 (the second cell of row 0) is centred one step to the right, same row
    np.testing.assert_allclose(p[4, :2], [1.5 * 8 / 300, 0.5 * 8 / 300], rtol=1e-6)
    # the first box of row 1
    np.testing.assert_allclose(p[38 * 4, :2], [0.5 * 8 / 300, 1.5 * 8 / 300], rtol=1e-6)
    # the last map: one cell in the centre, 4 boxes, the largest clipped to the image
    last = prior_boxes(ssd300())[-4:]
    np.testing.assert_allclose(last[:, :2], 0.5, rtol=1e-6)
    np.testing.assert_allclose(last[0, 2:], 264 / 300, rtol=1e-6)
    np.testing.assert_allclose(last[1, 2:], math.sqrt(264 * 315) / 300, rtol=1e-6)
    # 264 * sqrt(2) = 373 pixels wide: clipped to the image's width
    np.testing.assert_allclose(last[2, 2:], [1.0, 264 / math.sqrt(2) / 300], rtol=1e-6)


def test_priors_without_clipping_can_leave_the_image():
    spec = DetectionSpec.from_dict(dict(SSD300_SPEC, num_classes=21, clip=False))
    p = prior_boxes(spec)
    assert (p[:, 2] > 1).any()
    assert np.all(prior_boxes(ssd300())[:, 2:] <= 1)


def test_spec_rejects_inconsistent_lists():
    with pytest.raises(ValueError, match="steps has 5 entries"):
        DetectionSpec.from_dict(dict(SSD300_SPEC, steps=[8, 16, 32, 64, 100], num_classes=21))
    with pytest.raises(ValueError, match="missing 'num_classes'"):
        DetectionSpec.from_dict(dict(SSD300_SPEC))


# ----------------------------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------------------------
def test_decode_zero_offsets_gives_the_prior():
    priors = np.array([[0.5, 0.5, 0.2, 0.4]], np.float32)
    np.testing.assert_allclose(decode_boxes(np.zeros((1, 4)), priors), [[0.3, 0.4, 0.7, 0.6]], rtol=1e-6)


def test_decode_by_hand_with_variances():
    priors = np.array([[0.5, 0.5, 0.2, 0.4]], np.float32)
    # dx = 1 moves the centre by 0.1 * w; dw = 5 scales w by exp(0.2 * 5) = e
    got = decode_boxes(np.array([[1.0, -2.0, 5.0, 0.0]]), priors)
    cx, cy, w, h = 0.5 + 0.1 * 0.2, 0.5 - 0.2 * 0.4, 0.2 * math.e, 0.4
    np.testing.assert_allclose(got, [[cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2]], rtol=1e-6)


def test_decode_clips_and_caps_huge_offsets():
    priors = np.array([[0.5, 0.5, 0.2, 0.2]], np.float32)
    got = decode_boxes(np.array([[0.0, 0.0, 1e6, 1e6]]), priors)
    assert np.all(np.isfinite(got))
    np.testing.assert_array_equal(got, [[0, 0, 1, 1]])


# ----------------------------------------------------------------------------------------------
# NMS by hand
# ----------------------------------------------------------------------------------------------
BOXES = np.array([[0, 0, 1, 1],          # 0
                  [0, 0.1, 1, 1.1],      # 1: IoU 0.9 / 1.1 = 0.818 with 0
                  [0, 2, 1, 3],          # 2: far away
                  [0, 0, 1, 2]],         # 3: IoU exactly 0.5 with 0
                 np.float32)


def test_iou_by_hand():
    np.testing.assert_allclose(iou(BOXES[0], BOXES), [1.0, 0.9 / 1.1, 0.0, 0.5], rtol=1e-6)
    # corners in either order; a box without area overlaps nothing
    assert iou([1, 1, 0, 0], BOXES[:1])[0] == 1.0
    assert iou([0, 0, 0, 1], BOXES[:1])[0] == 0.0


def test_overlapping_box_is_suppressed():
    keep = non_max_suppression(BOXES[:3], np.array([0.9, 0.8, 0.7]), 10, iou_threshold=0.5)
    assert keep.tolist() == [0, 2]


def test_iou_equal_to_threshold_is_kept():
    keep = non_max_suppression(BOXES[[0, 3]], np.array([0.9, 0.8]), 10, iou_threshold=0.5)
    assert keep.tolist() == [0, 1]
    keep = non_max_suppression(BOXES[[0, 3]], np.array([0.9, 0.8]), 10, iou_threshold=0.49)
    assert keep.tolist() == [0]


def test_equal_scores_lower_index_wins():
    keep = non_max_suppression(BOXES[:2], np.array([0.5, 0.5]), 10, iou_threshold=0.5)
    assert keep.tolist() == [0]
    keep = non_max_suppression(BOXES[[1, 0]], np.array([0.5, 0.5]), 10, iou_threshold=0.5)
    assert keep.tolist() == [0]          # now box 1 of BOXES has index 0 and wins


def test_score_threshold_is_strict_and_empty_results():
    keep = non_max_suppression(BOXES, np.array([0.3, 0.2, 0.1, 0.3]), 10, 0.5, score_threshold=0.3)
    assert keep.size == 0 and keep.dtype == np.int64
    assert non_max_suppression(np.zeros((0, 4)), np.zeros(0), 10).size == 0
    d = detect(np.full((4, 3), 1 / 3, np.float32), BOXES, score_threshold=0.5)
    assert len(d) == 0 and d.boxes.shape == (0, 4)
    out = d.padded(5)
    assert out["num_detections"].tolist() == [0.0]
    assert out["detection_boxes"].shape == (1, 5, 4) and not out["detection_boxes"].any()


def test_more_candidates_than_max_output():
    boxes = np.array([[0, 3 * i, 1, 3 * i + 1] for i in range(8)], np.float32)     # disjoint
    scores = np.linspace(0.1, 0.8, 8).astype(np.float32)
    keep = non_max_suppression(boxes, scores, 3)
    assert keep.tolist() == [7, 6, 5]


def test_detect_per_class_nms_and_top_n():
    # box 0 and 1 overlap: class 1 keeps only box 0, class 2 prefers box 1 and suppresses box 0
    probs = np.array([[0.1, 0.6, 0.3],
                      [0.1, 0.2, 0.7],
                      [0.5, 0.45, 0.05],
                      [1.0, 0.0, 0.0]], np.float32)
    d = detect(probs, BOXES, score_threshold=0.1, iou_threshold=0.5, max_detections=10)
    got = [(c, round(float(s), 4)) for c, s in zip(d.classes.tolist(), d.scores, strict=True)]
    assert got == [(2, 0.7), (1, 0.6), (1, 0.45)]
    np.testing.assert_array_equal(d.boxes[0], BOXES[1])
    d = detect(probs, BOXES, score_threshold=0.1, iou_threshold=0.5, max_detections=2)
    assert d.classes.tolist() == [2, 1]
    out = d.padded(4)
    assert out["detection_classes"].dtype == np.float32
    np.testing.assert_array_equal(out["detection_classes"], [[2, 1, 0, 0]])
    assert out["num_detections"].tolist() == [2.0]


def test_detect_rejects_bad_shapes():
    with pytest.raises(ValueError, match="must be \\[N, C\\]"):
        detect(np.zeros((4, 3)), np.zeros((5, 4)))


# ----------------------------------------------------------------------------------------------
# Against TensorFlow on random inputs
# ----------------------------------------------------------------------------------------------
def random_boxes(rng, n):
    centre = rng.uniform(0, 1, (n, 2))
    size = rng.uniform(0.05, 0.5, (n, 2))
    return np.clip(np.concatenate([centre - size / 2, centre + size / 2], axis=1), 0, 1).astype(np.float32)


@pytest.mark.parametrize("seed", range(6))
def test_nms_matches_tensorflow(seed):
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    boxes = random_boxes(rng, n)
    scores = rng.uniform(0, 1, n).astype(np.float32)
    if seed % 2:
        scores = np.round(scores, 1)        # many equal scores
    iou_t, score_t, k = float(rng.uniform(0.2, 0.8)), float(rng.uniform(0, 0.5)), int(rng.integers(1, 60))
    want = tf.image.non_max_suppression(boxes, scores, k, iou_t, score_t).numpy()
    got = non_max_suppression(boxes, scores, k, iou_t, score_t)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("seed", range(4))
def test_detect_matches_combined_non_max_suppression(seed):
    import tensorflow as tf

    rng = np.random.default_rng(100 + seed)
    n, classes = int(rng.integers(20, 400)), int(rng.integers(2, 8))
    spec = DetectionSpec(image_size=64, feature_maps=(4, 2), steps=(16, 32), min_sizes=(12, 30),
                         max_sizes=(30, 50), aspect_ratios=((2,), (2, 3)), num_classes=classes)
    priors = prior_boxes(spec)
    n = len(priors)
    boxes = decode_boxes(rng.normal(0, 2, (n, 4)), priors)
    logits = rng.normal(0, 2, (n, classes)).astype(np.float32)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
    per_class, total, iou_t, score_t = 20, 30, 0.45, 0.05
    d = detect(probs, boxes, score_threshold=score_t, iou_threshold=iou_t, max_per_class=per_class,
               max_detections=total)
    tf_boxes, tf_scores, tf_classes, tf_n = tf.image.combined_non_max_suppression(
        boxes[None, :, None, :], probs[None, :, 1:], per_class, total, iou_t, score_t, clip_boxes=False)
    k = int(tf_n.numpy()[0])
    assert len(d) == k
    np.testing.assert_allclose(d.scores, tf_scores.numpy()[0, :k], rtol=1e-6)
    np.testing.assert_array_equal(d.classes - 1, tf_classes.numpy()[0, :k].astype(np.int64))
    np.testing.assert_allclose(d.boxes, tf_boxes.numpy()[0, :k], rtol=1e-6)
