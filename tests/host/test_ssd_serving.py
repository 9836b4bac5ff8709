"""A tiny SSD detector served over gRPC: the TF Object Detection API's outputs to a stock TF
Serving client, bit-exact NPU + host tail, malformed requests, the Python client and the CLI."""

from __future__ import annotations

import subprocess
import sys

import grpc
import numpy as np
import pytest

from tests.host.conftest import png_bytes

OD_OUTPUTS = ("detection_boxes", "detection_scores", "detection_classes", "num_detections")


def interpreter_outputs(bundle, x):
    """The model's final int8 outputs from the TFLite interpreter (reference kernels)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interp = Interpreter(model_content=bundle.tflite,
                         experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    interp.allocate_tensors()
    interp.set_tensor(interp.get_input_details()[0]["index"], x)
    interp.invoke()
    return {d["name"]: interp.get_tensor(d["index"]) for d in interp.get_output_details()}


def stock_predict(address, request_inputs, outputs=()):
    """A Predict call as any TF Serving user writes it: generated stub + tf.make_tensor_proto."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "tiny_ssd"
        request.model_spec.signature_name = "serving_default"
        for alias, value in request_inputs.items():
            request.inputs[alias].CopyFrom(tf.make_tensor_proto(value))
        request.output_filter.extend(outputs)
        response = stub.Predict(request, timeout=60)
        return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}


def test_manifest_records_the_split_and_the_detector(ssd_bundle):
    bundle, _ = ssd_bundle
    stages = [s["op"] for s in bundle.manifest.postprocess]
    assert stages == ["host_graph", "ssd_detect"]
    tail = bundle.manifest.postprocess[0]
    assert tail["cuts"][0]["kind"] == "L2_NORMALIZATION"
    # the NPU hands the host the normalized map's input and the other maps' head outputs
    assert len(bundle.manifest.outputs) == 5 and all(len(s.shape) == 4 for s in bundle.manifest.outputs)


def test_npu_and_host_tail_are_bit_exact_with_the_interpreter(ssd_bundle):
    from softnpu.host.verify import verify_bundle

    report = verify_bundle(ssd_bundle[0], "iss", inputs=2, seed=3)
    names = {c.name for c in report.checks}
    assert {"Identity", "Identity_1"} <= names           # the host tail's outputs were checked too
    assert report.equal, [(c.name, c.mismatches) for c in report.checks if not c.equal]


def test_stock_client_gets_the_four_detection_outputs(ssd_repo, serve, ssd_bundle):
    from softnpu.host.detection import Detector
    from softnpu.host.host_graph import HostGraph

    server = serve(root=ssd_repo.root)
    bundle, _ = ssd_bundle
    spec = bundle.manifest.inputs[0]
    x = np.random.default_rng(5).integers(-128, 128, spec.shape, dtype=np.int8)
    out = stock_predict(server.address, {spec.name: x}, OD_OUTPUTS)
    assert set(out) == set(OD_OUTPUTS)
    m = 10
    assert out["detection_boxes"].shape == (1, m, 4) and out["detection_boxes"].dtype == np.float32
    assert out["detection_scores"].shape == (1, m) and out["detection_classes"].shape == (1, m)
    assert out["detection_classes"].dtype == np.float32 and out["num_detections"].dtype == np.float32
    n = int(out["num_detections"][0])
    assert 0 < n <= m
    assert np.all((out["detection_boxes"] >= 0) & (out["detection_boxes"] <= 1))
    assert set(out["detection_classes"][0, :n].astype(int)) <= {1, 2, 3, 4}
    scores = out["detection_scores"][0]
    assert np.all(np.diff(scores[:n]) <= 0) and np.all(scores[n:] == 0)
    # the same detections as the interpreter's outputs decoded on the host
    tail = HostGraph.from_bundle(bundle)
    want = Detector(bundle.manifest.postprocess[1], {s.name: s for s in tail.outputs})(
        interpreter_outputs(bundle, x)).detections.padded(m)
    for k in OD_OUTPUTS:
        np.testing.assert_array_equal(out[k], want[k])


def test_detector_signature_and_unfiltered_predict(ssd_repo, serve):
    from softnpu.host.serving.client import PredictionClient

    server = serve(root=ssd_repo.root)
    with PredictionClient(server.address, model="tiny_ssd") as client:
        meta = client.metadata()
        assert meta["outputs"]["detection_boxes"] == ("DT_FLOAT", [-1, 10, 4])
        assert meta["outputs"]["raw_detection_scores"] == ("DT_FLOAT", [-1, 368, 5])
        assert "logits" not in meta["outputs"]
        out = client.score_image(png_bytes(40, 30, seed=2))
    assert set(OD_OUTPUTS) <= set(out) and out["raw_detection_boxes"].shape == (1, 368, 4)
    np.testing.assert_allclose(out["raw_detection_scores"].sum(axis=-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("inputs, message", [
    ({"images": [b"not an image"]}, "cannot decode image"),
    ({"input": np.zeros((1, 16, 16, 3), np.int8)}, "shape"),
    ({"input": np.full((1, 32, 32, 3), np.nan, np.float32)}, "finite"),
])
def test_malformed_inputs_are_invalid_argument(ssd_repo, serve, ssd_bundle, inputs, message):
    server = serve(root=ssd_repo.root)
    name = ssd_bundle[0].manifest.inputs[0].name
    inputs = {(name if k == "input" else k): v for k, v in inputs.items()}
    with pytest.raises(grpc.RpcError) as err:
        stock_predict(server.address, inputs, OD_OUTPUTS)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in err.value.details()


def test_python_client_returns_detections(ssd_repo, serve):
    from softnpu.host.serving.client import PredictionClient

    server = serve(root=ssd_repo.root)
    image = png_bytes(48, 64, seed=4)
    with PredictionClient(server.address, model="tiny_ssd") as client:
        found = client.detect(image)
        raw = client.score_image(image, ["num_detections", "detection_scores"])
        named = client.detect(image, label_names=["bg", "a", "b", "c", "d"])
    assert len(found) == int(raw["num_detections"][0]) > 0
    assert [d.score for d in found] == pytest.approx(raw["detection_scores"][0, :len(found)].tolist())
    # 5 classes are not VOC's 21: the server names them class_<id>
    assert all(d.label == f"class_{d.class_id}" and 1 <= d.class_id <= 4 for d in found)
    assert [d.label for d in named] == [["bg", "a", "b", "c", "d"][d.class_id] for d in found]
    assert all(0 <= v <= 1 for d in found for v in d.box)


def test_cli_score_detect_draws_boxes(ssd_repo, serve, tmp_path):
    from PIL import Image

    server = serve(root=ssd_repo.root)
    image = tmp_path / "in.png"
    image.write_bytes(png_bytes(60, 80, seed=6))
    out = tmp_path / "boxes.png"
    run = subprocess.run([sys.executable, "-m", "softnpu", "score", "--detect", str(image),
                          "-o", str(out), "--min-score", "0", "--address", server.address,
                          "--model", "tiny_ssd"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "class_" in run.stdout and f"wrote {out}" in run.stdout
    with Image.open(out) as drawn, Image.open(image) as original:
        assert drawn.size == original.size
        assert np.any(np.asarray(drawn.convert("RGB")) != np.asarray(original.convert("RGB")))
    voc = subprocess.run([sys.executable, "-m", "softnpu", "score", "--detect", str(image),
                          "--labels", "voc", "--min-score", "0", "--address", server.address],
                         capture_output=True, text=True, timeout=120)
    assert voc.returncode == 0, voc.stderr
    assert "class_" not in voc.stdout and {"aeroplane", "bicycle", "bird", "boat"} & set(voc.stdout.split())
    bad = subprocess.run([sys.executable, "-m", "softnpu", "score", str(image), "-o", str(out),
                          "--address", server.address], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "needs --detect" in bad.stderr


def test_in_process_pipeline_detects(ssd_bundle):
    from softnpu.host.detection import Detections, Detector
    from softnpu.host.host_graph import HostGraph
    from softnpu.host.pipeline import Pipeline
    from softnpu.host.runtime import Runtime

    bundle, _ = ssd_bundle
    pipe = Pipeline(Runtime.open(bundle, "iss"))
    image = png_bytes(50, 70, seed=8)
    found, stats = pipe(image)
    assert isinstance(found, Detections) and stats.cycles > 0
    assert pipe.names[1:] == ["class_1", "class_2", "class_3", "class_4"]
    x = pipe.preprocess(image)
    tail = HostGraph.from_bundle(bundle)
    want = Detector(bundle.manifest.postprocess[1], {s.name: s for s in tail.outputs})(
        interpreter_outputs(bundle, x)).detections
    np.testing.assert_array_equal(found.boxes, want.boxes)
    np.testing.assert_array_equal(found.classes, want.classes)
    np.testing.assert_array_equal(found.scores, want.scores)


def test_voc_names_by_class_id():
    from types import SimpleNamespace

    from softnpu.host.pipeline import class_names

    names = class_names(SimpleNamespace(labels="voc"), 21)
    assert names[0] == "background" and names[15] == "person" and names[20] == "tvmonitor"
    assert class_names(SimpleNamespace(labels="voc"), 5) == [f"class_{i}" for i in range(5)]


def test_classify_on_a_detector_is_invalid_argument(ssd_repo, serve):
    from tensorflow_serving.apis import classification_pb2, prediction_service_pb2_grpc

    server = serve(root=ssd_repo.root)
    with grpc.insecure_channel(server.address) as channel:
        request = classification_pb2.ClassificationRequest()
        request.model_spec.name = "tiny_ssd"
        request.input.example_list.examples.add()
        with pytest.raises(grpc.RpcError) as err:
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Classify(request, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "is a detector; use Predict" in err.value.details()
