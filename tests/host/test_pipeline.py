"""Host stages: image decode errors, keras.applications' normalisation modes, TFLite's
quantization rounding, softmax and top-k, class names."""

import dataclasses
import io

import numpy as np
import pytest

from softnpu.host import pipeline
from softnpu.host.pipeline import InputError, Preprocessor
from tests.host.conftest import png_bytes


def jpeg_bytes(seed=0) -> bytes:
    return png_bytes(40, 30, seed, fmt="JPEG")


@pytest.mark.parametrize("data, message", [
    (b"", "empty image"),
    (b"not an image at all", "not a recognised image format"),
    (b"\x89PNG\r\n\x1a\n" + bytes(30), "cannot decode image"),
])
def test_bad_image_bytes_raise_input_error(data, message):
    with pytest.raises(InputError, match=message):
        pipeline.decode_image(data)


def test_truncated_and_corrupt_jpeg_raise_input_error():
    data = jpeg_bytes()
    with pytest.raises(InputError, match="truncated"):
        pipeline.decode_image(data[:len(data) // 2])
    body = np.random.default_rng(1).integers(0, 256, len(data) - 400, dtype=np.uint8).tobytes()
    with pytest.raises(InputError, match="cannot decode image"):
        pipeline.decode_image(data[:200] + body + data[-200:])


def test_decode_converts_to_the_model_channels():
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((5, 7), 200, np.uint8), "L").save(buf, "PNG")
    assert pipeline.decode_image(buf.getvalue(), 3).shape == (5, 7, 3)
    assert pipeline.decode_image(png_bytes(), 1).shape == (20, 24, 1)


@pytest.mark.parametrize("mode", ["caffe", "torch", "tf"])
def test_normalize_matches_keras_preprocess_input(mode):
    from keras.applications import imagenet_utils

    x = np.random.default_rng(0).uniform(0, 255, (2, 4, 5, 3)).astype(np.float32)
    expected = imagenet_utils.preprocess_input(x.copy(), mode=mode)
    np.testing.assert_allclose(pipeline.normalize(x, mode), expected, rtol=1e-5, atol=1e-5)


def test_quantize_rounds_half_away_from_zero_and_saturates():
    x = np.array([0.5, 1.5, -0.5, -1.5, 2.49, 1000.0, -1000.0])
    np.testing.assert_array_equal(pipeline.quantize(x, 1.0, 0), [1, 2, -1, -2, 2, 127, -128])
    np.testing.assert_array_equal(pipeline.quantize([0.0, 1.0], 1 / 255, -128), [-128, 127])
    np.testing.assert_allclose(pipeline.dequantize(np.array([-128, 127], np.int8), 0.5, -28), [-50, 77.5])


def test_softmax_and_top_k():
    p = pipeline.softmax(np.array([[1.0, 3.0, 2.0, 3.0]]))
    assert p.sum() == pytest.approx(1.0)
    idx, val = pipeline.top_k(p, 3)
    np.testing.assert_array_equal(idx, [[1, 3, 2]])               # ties: lower index first
    assert val[0, 0] == pytest.approx(p[0, 1])
    assert pipeline.top_k(p, 10)[0].shape == (1, 4)


def test_preprocessor_resizes_normalises_and_quantizes(sample):
    pre = Preprocessor.for_manifest(sample.bundle.manifest)
    assert (pre.mode, pre.height, pre.width) == ("unit", 16, 16)
    q = pre(png_bytes(40, 50))
    assert q.shape == (1, 16, 16, 3) and q.dtype == np.int8
    # a white image at the model's size is 1.0 everywhere: the top of the input range
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), 255, np.uint8)).save(buf, "PNG")
    assert np.all(pre(buf.getvalue()) == 127)
    crop = dataclasses.replace(pre, resize="center_crop")
    assert crop(png_bytes(40, 90)).shape == (1, 16, 16, 3)


def test_class_names_fall_back_to_indices(sample):
    m = sample.bundle.manifest
    assert pipeline.class_names(m, 3) == ["class_0", "class_1", "class_2"]
    assert pipeline.class_names(dataclasses.replace(m, labels="digits"), 3) == ["0", "1", "2"]
    names = pipeline.class_names(dataclasses.replace(m, labels="imagenet"), 1000)
    assert len(names) == 1000 and names[282] == "tiger cat" and names[967] == "espresso"


def test_classify_applies_the_manifest_softmax_beta(sample):
    spec = sample.output
    q = np.array([[10, 20, 30]], np.int8)
    logits = pipeline.dequantize(q, spec.scale, spec.zero_point)
    plain = pipeline.classify(q, spec, ["a", "b", "c"], 2)
    stages = [{"op": "dequantize"}, {"op": "softmax", "beta": 2.0}]
    sharp = pipeline.classify(q, spec, ["a", "b", "c"], 2, stages)
    np.testing.assert_allclose(plain.probabilities, pipeline.softmax(logits), rtol=1e-6)
    np.testing.assert_allclose(sharp.probabilities, pipeline.softmax(2 * logits), rtol=1e-6)
    assert sharp.labels == [["c", "b"]] and sharp.classes.tolist() == [[2, 1]]


def test_pipeline_image_to_top_classes(sample):
    from softnpu.host.runtime import Runtime

    runtime = Runtime.open(sample.bundle)
    image = png_bytes(30, 30, seed=5)
    cls, stats = pipeline.Pipeline(runtime, top_k=3)(image)
    q = runtime.infer({"input": Preprocessor.for_manifest(sample.bundle.manifest)(image)}).outputs["logits"]
    expected = pipeline.softmax(pipeline.dequantize(q, sample.output.scale, sample.output.zero_point))
    np.testing.assert_allclose(cls.probabilities, expected, rtol=1e-6)
    assert cls.classes[0].tolist() == np.argsort(-expected[0], kind="stable")[:3].tolist()
    assert cls.labels[0][0] == f"class_{cls.classes[0, 0]}" and stats.cycles > 0
    with pytest.raises(InputError):
        pipeline.Pipeline(runtime)(b"garbage")


def test_a_jpeg_decodes_at_the_dct_scale_nearest_the_model_input():
    from PIL import Image

    from softnpu.host.pipeline import image_size, pixel_budget

    buf = io.BytesIO()
    Image.new("RGB", (1600, 1200), (10, 200, 30)).save(buf, "JPEG")
    data = buf.getvalue()
    assert image_size(data) == (1600, 1200)
    assert image_size(data, (150, 150)) == (200, 150)          # 1/8: still at least 150 high
    assert image_size(data, (300, 300)) == (400, 300)          # 1/4
    assert pipeline.decode_image(data, 3, (150, 150)).shape == (150, 200, 3)
    with pytest.raises(InputError, match="exceeds the limit of 1000 pixels"):
        pipeline.decode_image(data, 3, (150, 150), max_pixels=1000)
    assert pixel_budget(8, 8) == 1 << 20 and pixel_budget(224, 224) == 256 * 224 * 224
    assert pixel_budget(8192, 8192) == pipeline.MAX_IMAGE_PIXELS
