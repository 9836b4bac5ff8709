"""End to end on a real compiled network: `softnpu compile digits` (the small CNN trained on
scikit-learn's digits) served over gRPC, scored from PNG files; the service's classes equal the
runtime's on the same pixels, and the accuracy is the trained network's."""

import io

import numpy as np
import pytest

from softnpu.host.pipeline import Preprocessor
from softnpu.host.runtime import Runtime
from softnpu.host.serving.client import PredictionClient

COUNT = 64


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    pytest.importorskip("sklearn", reason="compiler.zoo's digits data set comes from scikit-learn")
    from softnpu.compiler.compile import compile_model

    bundle = compile_model("digits", "tiny", progress=False)
    return bundle, bundle.save(tmp_path_factory.mktemp("digits") / "digits.npu")


def _png(gray: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(gray, "L").save(buf, "PNG")
    return buf.getvalue()


def test_digits_scored_over_grpc_match_the_runtime_and_classify_well(digits, repo, serve):
    from softnpu.compiler import zoo

    bundle, path = digits
    repo.register(path, "digits")
    _, x_test, _, y_test = zoo.digits_split()
    pixels = np.floor(x_test[:COUNT] * 255.0 / 16.0 + 0.5).astype(np.uint8)      # 0..16 -> 0..255
    images = [_png(p) for p in pixels]
    server = serve()
    with PredictionClient(server.address, model="digits", timeout=60) as client:
        out = client.predict({"images": images}, ["classes", "labels", "logits_int8"])
    runtime = Runtime.open(bundle)
    pre = Preprocessor.for_manifest(bundle.manifest)
    name = bundle.manifest.outputs[0].name
    direct = np.concatenate([runtime.infer({"input": pre(img)}).outputs[name] for img in images])
    np.testing.assert_array_equal(out["logits_int8"], direct)
    np.testing.assert_array_equal(out["classes"][:, 0], np.argmax(direct, axis=1))
    assert [row[0] for row in out["labels"]] == [str(c) for c in out["classes"][:, 0]]
    accuracy = float(np.mean(out["classes"][:, 0] == y_test[:COUNT]))
    assert accuracy >= 0.85, accuracy
