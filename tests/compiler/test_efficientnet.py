"""efficientnet_lite0 (compiler/efficientnet.py, compiler/torch_legacy.py, compiler/labels.py): the
legacy PyTorch reader, the pretrained Keras model on real photographs, and the int8 network through
the NPU (ISS) bit-exact with the interpreter, its top-1 equal to the float model's on every bundled
photo.  `nox -s efficientnet` runs this file and prints the top-1 table."""

from __future__ import annotations

import collections
import io
import pickle
import struct

import numpy as np
import pytest

from softnpu.compiler import efficientnet, labels, torch_legacy
from softnpu.compiler.compile import compile_model, compile_tflite, zoo_tflite
from softnpu.host.verify import verify_bundle

CATS, CUPS = range(281, 286), (967, 968, 504)


# ----------------------------------------------------------------------------------------------
# The legacy-format reader
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def fake_torch(monkeypatch):
    """Modules named torch and torch._utils holding stand-ins, so that pickle writes the global
    references torch.save's legacy path writes (torch.FloatStorage, torch._utils._rebuild_tensor_v2)."""
    import sys
    import types

    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")
    torch.FloatStorage = type("FloatStorage", (), {"__module__": "torch"})

    def _rebuild_tensor_v2(*args):
        raise AssertionError("only pickled, never called")

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return torch, utils


def _legacy_file(fake_torch, tensors: dict) -> bytes:
    """torch.save's legacy format of {name: (float32 storage, offset, size, stride)}."""
    torch, utils = fake_torch

    class Storage:
        def __init__(self, key, flat):
            self.key, self.flat = key, flat

    class Tensor:
        def __init__(self, storage, offset, size, stride):
            self.args = (storage, offset, size, stride, False, collections.OrderedDict())

        def __reduce__(self):
            return utils._rebuild_tensor_v2, self.args

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, Storage):
                return ("storage", torch.FloatStorage, obj.key, "cpu", obj.flat.size)
            return None

    storages = [Storage(str(i), flat) for i, (flat, *_) in enumerate(tensors.values())]
    obj = collections.OrderedDict((name, Tensor(s, *rest)) for s, (name, (_, *rest))
                                  in zip(storages, tensors.items(), strict=True))
    out = io.BytesIO()
    for head in (torch_legacy.MAGIC, torch_legacy.PROTOCOL, {"little_endian": True}):
        pickle.dump(head, out, protocol=2)
    Pickler(out, protocol=2).dump(obj)
    pickle.dump([s.key for s in storages], out, protocol=2)
    for s in storages:
        out.write(struct.pack("<q", s.flat.size) + s.flat.astype("<f4").tobytes())
    return out.getvalue()


def test_legacy_reader_rebuilds_strided_tensors(tmp_path, fake_torch):
    flat = np.arange(24, dtype=np.float32)
    path = tmp_path / "w.pth"
    path.write_bytes(_legacy_file(fake_torch, {"a": (flat, 0, (2, 3, 4), (12, 4, 1)),
                                               "t": (flat, 2, (4, 3), (1, 4)),      # a transposed view
                                               "s": (flat, 5, (), ())}))
    sd = torch_legacy.load_state_dict(path)
    np.testing.assert_array_equal(sd["a"], flat.reshape(2, 3, 4))
    np.testing.assert_array_equal(sd["t"], flat[2:14].reshape(3, 4).T)
    assert sd["s"].shape == () and sd["s"] == 5


def test_legacy_reader_refuses_foreign_globals(tmp_path):
    path = tmp_path / "evil.pth"
    out = io.BytesIO()
    for head in (torch_legacy.MAGIC, torch_legacy.PROTOCOL, {"little_endian": True}):
        pickle.dump(head, out, protocol=2)
    pickle.dump(collections.OrderedDict(x=print), out, protocol=2)   # builtins.print
    path.write_bytes(out.getvalue())
    with pytest.raises(torch_legacy.LegacyFormatError, match=r"builtin\w*\.print"):
        torch_legacy.load_state_dict(path)


# ----------------------------------------------------------------------------------------------
# The float model
# ----------------------------------------------------------------------------------------------
def test_every_pretrained_weight_is_used():
    sd = efficientnet.state_dict()
    model = efficientnet.build_keras(64)
    loaded = sum(int(np.prod(w.shape)) for w in model.weights)
    in_file = sum(v.size for k, v in sd.items() if not k.endswith("num_batches_tracked"))
    assert loaded == in_file


@pytest.fixture(scope="module")
def float_top1():
    model = efficientnet.build_keras(224)
    photos = efficientnet.photos(224)
    probs = {name: model(efficientnet.preprocess(img)[None], training=False).numpy()[0]
             for name, img in photos.items()}
    return photos, probs


def test_float_model_recognises_the_cat_and_the_espresso(float_top1):
    _, probs = float_top1
    assert int(np.argmax(probs["chelsea"])) in CATS
    assert int(np.argmax(probs["coffee"])) in CUPS


def test_imagenet_class_names():
    names = labels.imagenet_class_names()
    assert len(names) == 1000
    assert names[281] == "tabby" and names[967] == "espresso" and names[0] == "tench"
    assert labels.class_names("digits", 10)[3] == "3"
    assert labels.class_names(None, 3) == ["class_0", "class_1", "class_2"]


# ----------------------------------------------------------------------------------------------
# The int8 network on the NPU
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["iss", "rtl"])
def test_efficientnet_on_tiny_is_bit_exact(backend):
    """The whole network at 32x32 on the tiny config (every layer tiled hardest), on the ISS and on the
    RTL (cocotb/Verilator)."""
    bundle = compile_tflite(zoo_tflite("efficientnet_lite0", 32, progress=False), "tiny", name="eff32")
    kinds = [rec["kind"] for rec in bundle.manifest.layers]
    assert kinds.count("DEPTHWISE_CONV_2D") == 16 and kinds.count("ADD") == 9
    report = verify_bundle(bundle, backend, inputs=1, seed=5)
    assert report.equal, [c for c in report.checks if not c.equal]


def test_int8_npu_top1_on_the_photos(float_top1):
    """224x224, default config: every bundled photo through the NPU (ISS); the int8 logits equal the
    interpreter's; the top-1 class equals the float Keras model's; chelsea is a cat, coffee a cup."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from softnpu.compiler.tflite_import import drop_host_tail
    from softnpu.host.pipeline import quantize
    from softnpu.host.runtime import Runtime

    photos, probs = float_top1
    bundle = compile_model("efficientnet_lite0", "default", progress=False)
    m = bundle.manifest
    assert m.labels == "imagenet" and m.preprocess["mode"] == "lite"
    spec, out = m.inputs[0], m.outputs[0]
    interp = Interpreter(model_content=drop_host_tail(bundle.tflite),
                         experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    interp.allocate_tensors()
    runtime = Runtime.open(bundle, "iss")
    names = labels.class_names(m.labels, 1000)
    rows = []
    for name, image in photos.items():
        x = quantize(efficientnet.preprocess(image), spec.scale, spec.zero_point).reshape(spec.shape)
        result = runtime.infer({spec.name: x})
        logits = result.outputs[out.name].reshape(-1)
        interp.set_tensor(interp.get_input_details()[0]["index"], x)
        interp.invoke()
        np.testing.assert_array_equal(logits, interp.get_tensor(interp.get_output_details()[0]["index"])
                                      .reshape(-1))
        order = np.argsort(-probs[name], kind="stable")
        rows.append((name, order, probs[name], int(np.argmax(logits)), result.stats.cycles))
    print(f"\n{'photo':11s} {'float Keras top-1 (p, margin to top-2)':46s} {'int8 NPU top-1 (ISS)':26s} "
          f"{'NPU cycles':>10s}")
    for name, order, p, q, cycles in rows:
        f = int(order[0])
        print(f"{name:11s} {f:4d} {names[f][:22]:22s} p={p[f]:.3f} +{p[f] - p[order[1]]:.3f}   "
              f"{q:4d} {names[q][:20]:20s} {cycles:10,d}{'' if f == q else '  DIFFERS'}")
    top = {name: q for name, _, _, q, _ in rows}
    assert top["chelsea"] in CATS and top["coffee"] in CUPS
    assert [q for *_, q, _ in rows] == [int(order[0]) for _, order, *_ in rows], \
        "int8 top-1 differs from the float model's (table above)"


def test_served_image_is_cropped_as_the_photos_are():
    """The pipeline a served JPEG/PNG goes through (host/pipeline.py, the manifest's preprocess) gives the
    int8 input that efficientnet.photos() + preprocess give: the top-1 table above is what serving sees."""
    import io

    from PIL import Image

    from softnpu.compiler.bundle import Manifest, TensorSpec
    from softnpu.host.pipeline import Preprocessor, quantize

    spec = TensorSpec("input", [1, 224, 224, 3], "int8", 1 / 128, -1, dram=0)
    manifest = Manifest(model="eff", version=1, config={}, inputs=[spec], outputs=[], memory_map={},
                        program_instructions=0,
                        preprocess={"size": 224, "mode": "lite", "resize": "center_crop",
                                    "interpolation": efficientnet.INTERPOLATION})
    pre = Preprocessor.for_manifest(manifest)
    for name, source in efficientnet._photo_sources().items():
        buf = io.BytesIO()
        Image.fromarray(np.asarray(source(), np.uint8)).save(buf, "PNG")
        want = quantize(efficientnet.preprocess(efficientnet.photos(224, [name])[name]), spec.scale,
                        spec.zero_point)
        np.testing.assert_array_equal(pre(buf.getvalue())[0], want, err_msg=name)
