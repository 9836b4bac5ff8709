"""SSD object detectors as Keras models: SSD300 on VGG-16 (Liu et al., 2016) and a tiny SSD for tests.

``ssd_vgg16(input_size=300, num_classes=21)`` is the paper's network: VGG-16's conv1_1..conv5_3,
pool5 3x3 stride 1, fc6 as a 3x3 convolution with dilation 6 (1024 channels), fc7 1x1 (1024),
the extra feature layers conv8_1/conv8_2 (10x10), conv9 (5x5), conv10 (3x3), conv11 (1x1), and
the L2 normalization of conv4_3 with a learned per-channel scale (initialised to 20).  On the six
feature maps (38, 19, 10, 5, 3, 1 at 300x300) 3x3 convolutions predict, per location, 4/6/6/6/4/4
default boxes' class scores and box offsets; reshaped and concatenated they are
``scores`` [1, 8732, num_classes] (logits; background is class 0) and ``boxes`` [1, 8732, 4]
(offsets dx, dy, dw, dh against the default boxes, to be scaled by the variances 0.1, 0.2).

``tiny_ssd`` is an SSD of the same structure (an L2-normalized first feature map, 3x3 heads, the
reshape/concat tail) at a small input, for fast tests on the ``tiny`` NPU configuration.

``detection_spec(model)`` gives what the host needs to decode the outputs (host/detection.py):
feature map sizes, steps, min/max sizes, aspect ratios, variances; the compiler stores it in the
bundle's manifest (postprocess op ``ssd_detect``).

Weights: random (``weights=None``, the offline default; biases randomised from a fixed seed so
that the int8 graph is realistic), or a weights file.
"""

from __future__ import annotations

import functools

import numpy as np

__all__ = ["L2Normalization", "ssd_vgg16", "tiny_ssd", "detection_spec", "ssd_vgg16_spec", "is_ssd",
           "register_layers",
           "ssd_vgg16_feature_maps", "VOC_CLASSES", "SSD300_SPEC", "SSD_SEED"]

SSD_SEED = 300
VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor")

# SSD300's default boxes (the paper's Caffe model, also ssd.pytorch's `voc` config), in pixels of
# a 300x300 input.
SSD300_SPEC = dict(image_size=300, feature_maps=[38, 19, 10, 5, 3, 1], steps=[8, 16, 32, 64, 100, 300],
                   min_sizes=[30, 60, 111, 162, 213, 264], max_sizes=[60, 111, 162, 213, 264, 315],
                   aspect_ratios=[[2], [2, 3], [2, 3], [2, 3], [2], [2]], variances=[0.1, 0.2],
                   clip=True)


@functools.cache
def _l2_layer():
    """The L2Normalization layer class, registered with Keras (once) so saved SSDs load."""
    import keras
    import tensorflow as tf

    @keras.saving.register_keras_serializable(package="softnpu")
    class L2Normalization(keras.layers.Layer):
        """x / ||x||_2 over the channels, times a learned per-channel scale (SSD's conv4_3 norm).

        tf.math.l2_normalize is what the TFLite converter maps to its L2_NORMALIZATION op."""

        def __init__(self, scale: float = 20.0, **kw):
            super().__init__(**kw)
            self.scale = float(scale)

        def build(self, input_shape):
            self.gamma = self.add_weight(name="gamma", shape=(int(input_shape[-1]),),
                                         initializer=keras.initializers.Constant(self.scale))

        def call(self, x):
            return tf.math.l2_normalize(x, axis=-1) * self.gamma

        def get_config(self):
            return {**super().get_config(), "scale": self.scale}

    return L2Normalization


def L2Normalization(scale: float = 20.0, **kw):      # noqa: N802 (a layer constructor)
    return _l2_layer()(scale, **kw)


def _boxes_per_location(aspect_ratios: list[list[int]]) -> list[int]:
    # a square of min_size, a square of sqrt(min_size * max_size), two boxes per aspect ratio
    return [2 + 2 * len(r) for r in aspect_ratios]


def _heads(features, aspect_ratios, num_classes: int):
    from keras import layers

    scores, boxes = [], []
    for k, (f, n) in enumerate(zip(features, _boxes_per_location(aspect_ratios), strict=True)):
        h, w = int(f.shape[1]), int(f.shape[2])
        c = layers.Conv2D(n * num_classes, 3, padding="same", name=f"head{k}_conf")(f)
        b = layers.Conv2D(n * 4, 3, padding="same", name=f"head{k}_loc")(f)
        scores.append(layers.Reshape((h * w * n, num_classes), name=f"head{k}_conf_flat")(c))
        boxes.append(layers.Reshape((h * w * n, 4), name=f"head{k}_loc_flat")(b))
    def cat(xs, name):
        return layers.Concatenate(axis=1, name=name)(xs) if len(xs) > 1 else layers.Identity(name=name)(xs[0])

    return cat(scores, "scores"), cat(boxes, "boxes")


def _randomize_biases(model, seed: int) -> None:
    import keras

    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D) and layer.use_bias:
            layer.bias.assign(rng.normal(0.0, 0.05, layer.bias.shape[-1]).astype(np.float32))


def _check(num_classes: int, input_size: int, minimum: int):
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2 (background and one class), got {num_classes!r}")
    if input_size < minimum:
        raise ValueError(f"input_size must be >= {minimum}, got {input_size}")


def ssd_vgg16(input_size: int = 300, num_classes: int = 21, weights: str | None = None):
    """SSD300 on VGG-16 as a batch-1 Keras model with outputs ``scores``, ``boxes``.

    input_size: the square input side (300 in the paper; any size >= 257 keeps a 1x1 last map:
    the feature maps are whatever the network gives).  weights: None (random, fixed seed) or a
    weights file.
    """
    import keras
    from keras import layers

    _check(num_classes, input_size, 1)
    ssd_vgg16_spec(input_size)              # rejects sizes without a 1x1 last map
    keras.utils.set_random_seed(SSD_SEED)

    def conv(x, ch, name, k=3, **kw):
        return layers.Conv2D(ch, k, padding=kw.pop("padding", "same"), activation="relu", name=name,
                             **kw)(x)

    inp = keras.Input(shape=(input_size, input_size, 3), batch_size=1, name="input")
    x = inp
    for block, (ch, reps) in enumerate(((64, 2), (128, 2), (256, 3), (512, 3)), start=1):
        for i in range(1, reps + 1):
            x = conv(x, ch, f"conv{block}_{i}")
        if block == 4:
            conv4_3 = x
        # ceil mode for pool3 (75 -> 38), as the Caffe model: SAME padding
        x = layers.MaxPooling2D(2, 2, padding="same", name=f"pool{block}")(x)
    for i in range(1, 4):
        x = conv(x, 512, f"conv5_{i}")
    x = layers.MaxPooling2D(3, 1, padding="same", name="pool5")(x)
    x = conv(x, 1024, "fc6", dilation_rate=6)
    fc7 = x = conv(x, 1024, "fc7", k=1)
    x = conv(x, 256, "conv8_1", k=1)
    conv8_2 = x = conv(x, 512, "conv8_2", strides=2)
    x = conv(x, 128, "conv9_1", k=1)
    conv9_2 = x = conv(x, 256, "conv9_2", strides=2)
    x = conv(x, 128, "conv10_1", k=1)
    conv10_2 = x = conv(x, 256, "conv10_2", padding="valid")
    x = conv(x, 128, "conv11_1", k=1)
    conv11_2 = conv(x, 256, "conv11_2", padding="valid")
    norm = L2Normalization(20.0, name="conv4_3_norm")(conv4_3)
    features = [norm, fc7, conv8_2, conv9_2, conv10_2, conv11_2]
    scores, boxes = _heads(features, SSD300_SPEC["aspect_ratios"], num_classes)
    model = keras.Model(inp, [scores, boxes], name="ssd_vgg16")
    if weights == "imagenet":
        raise ValueError("ssd_vgg16: there are no downloadable 'imagenet' weights for the detector; "
                         "pass a weights file (.weights.h5) or None for random weights")
    if weights is not None:
        model.load_weights(weights)
    else:
        _randomize_biases(model, SSD_SEED)
    return model


def tiny_ssd(input_size: int = 32, num_classes: int = 5, weights: str | None = None):
    """A small SSD (three feature maps: input/4 with L2 normalization, input/8, input/16) with
    SSD's heads and output tail; ``scores`` [1, N, num_classes], ``boxes`` [1, N, 4]."""
    import keras
    from keras import layers

    _check(num_classes, input_size, 16)
    if input_size % 16:
        raise ValueError(f"tiny_ssd: input_size must be a multiple of 16, got {input_size}")
    keras.utils.set_random_seed(SSD_SEED)
    inp = keras.Input(shape=(input_size, input_size, 3), batch_size=1, name="input")
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(inp)
    x = layers.MaxPooling2D(2, name="pool1")(x)
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv2")(x)
    f1 = layers.MaxPooling2D(2, name="pool2")(x)
    x = layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="conv3")(f1)
    f2 = x
    x = layers.Conv2D(8, 1, activation="relu", name="conv4_1")(x)
    f3 = layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="conv4_2")(x)
    norm = L2Normalization(20.0, name="f1_norm")(f1)
    scores, boxes = _heads([norm, f2, f3], [[2], [2, 3], [2]], num_classes)
    model = keras.Model(inp, [scores, boxes], name="tiny_ssd")
    if weights is not None:
        model.load_weights(weights)
    else:
        _randomize_biases(model, SSD_SEED)
    return model


def ssd_vgg16_feature_maps(input_size: int) -> list[int]:
    """The six feature map sides of ssd_vgg16 at a square input (38, 19, 10, 5, 3, 1 at 300)."""
    side = input_size
    for _ in range(3):                      # pool1..pool3, SAME
        side = -(-side // 2)
    maps = [side]                           # conv4_3
    side = -(-side // 2)                    # pool4; pool5 and fc6/fc7 keep the size
    maps.append(side)
    for _ in range(2):                      # conv8_2, conv9_2: stride 2, SAME
        side = -(-side // 2)
        maps.append(side)
    for _ in range(2):                      # conv10_2, conv11_2: 3x3 VALID
        side -= 2
        maps.append(side)
    return maps


def ssd_vgg16_spec(input_size: int = 300, num_classes: int = 21) -> dict:
    """ssd_vgg16's default boxes and decoding: SSD300's at 300x300, else the same fractions of the
    image on the feature maps the network has at that size."""
    maps = ssd_vgg16_feature_maps(input_size)
    if maps[-1] < 1:
        raise ValueError(f"ssd_vgg16: input_size {input_size} leaves no 1x1 feature map (>= 268 needed)")
    if input_size == 300:
        spec = {k: (list(v) if isinstance(v, list) else v) for k, v in SSD300_SPEC.items()}
    else:
        f = input_size / 300
        spec = dict(SSD300_SPEC, image_size=input_size, feature_maps=maps,
                    steps=[input_size / m for m in maps],
                    min_sizes=[s * f for s in SSD300_SPEC["min_sizes"]],
                    max_sizes=[s * f for s in SSD300_SPEC["max_sizes"]])
    spec["num_classes"] = int(num_classes)
    return spec


def detection_spec(model) -> dict:
    """The default boxes and decoding of an SSD Keras model built here (``ssd_vgg16`` or
    ``tiny_ssd``), as a JSON-able dict: image_size, feature_maps, steps, min_sizes, max_sizes
    (pixels), aspect_ratios, variances, clip, num_classes.  Scales for a model other than
    ssd_vgg16 go linearly from 0.2 to 0.9 of the image over its maps (the paper's s_min, s_max)."""
    size = int(model.inputs[0].shape[1])
    num_classes = int(model.outputs[0].shape[-1])
    if model.name == "ssd_vgg16":
        return ssd_vgg16_spec(size, num_classes)
    heads = [model.get_layer(f"head{k}_conf") for k in range(_count_heads(model))]
    maps = [int(h.output.shape[1]) for h in heads]
    ratios = {4: [2], 6: [2, 3]}
    aspect = [ratios[int(h.output.shape[-1]) // num_classes] for h in heads]
    n = len(maps)
    scales = [0.2 + (0.9 - 0.2) * k / max(n - 1, 1) for k in range(n + 1)]
    return dict(image_size=size, feature_maps=maps, steps=[size / m for m in maps],
                min_sizes=[s * size for s in scales[:n]], max_sizes=[s * size for s in scales[1:]],
                aspect_ratios=aspect, variances=[0.1, 0.2], clip=True, num_classes=num_classes)


def is_ssd(model) -> bool:
    """Whether a Keras model is an SSD built here (heads named head<k>_conf/_loc, two outputs)."""
    names = {layer.name for layer in model.layers}
    return "head0_conf" in names and "head0_loc" in names and len(model.outputs) == 2


def register_layers() -> None:
    """Make the L2Normalization layer known to keras.models.load_model."""
    _l2_layer()


def _count_heads(model) -> int:
    return sum(1 for layer in model.layers if layer.name.startswith("head") and
               layer.name.endswith("_conf"))
