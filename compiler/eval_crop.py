"""The ImageNet evaluation crop, in one place: the host pipeline applies it to every image a classifier
is served (manifest.preprocess `resize: center_crop`), the compiler to the photographs it calibrates
and tests EfficientNet-Lite0 with, so that both see the same pixels.

The recipe is the one of TensorFlow's reference EfficientNet evaluation: take the centre of the image,
`CROP_FRACTION` (224/256) of its short side, with the model input's aspect ratio, then resize that
square to the model input with the interpolation the model was trained with (`bicubic` for
EfficientNet, `bilinear` otherwise: manifest.preprocess `interpolation`).  Pixels in, pixels out
(uint8, HxWxC); normalisation is a separate stage.
"""

from __future__ import annotations

import numpy as np

__all__ = ["CROP_FRACTION", "INTERPOLATIONS", "center_crop", "resize_stretch"]

CROP_FRACTION = 0.875
INTERPOLATIONS = ("bilinear", "bicubic")


def _resample(interpolation: str):
    from PIL import Image

    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"preprocess interpolation {interpolation!r} is not one of {INTERPOLATIONS}")
    return Image.Resampling.BICUBIC if interpolation == "bicubic" else Image.Resampling.BILINEAR


def _image(pixels: np.ndarray):
    from PIL import Image

    pixels = np.asarray(pixels, dtype=np.uint8)
    return Image.fromarray(pixels.squeeze(-1) if pixels.ndim == 3 and pixels.shape[-1] == 1 else pixels)


def _array(img) -> np.ndarray:
    out = np.asarray(img, dtype=np.uint8)
    return out[..., None] if out.ndim == 2 else out


def center_crop(pixels: np.ndarray, height: int, width: int,
                interpolation: str = "bilinear") -> np.ndarray:
    """uint8 HxWxC -> uint8 height x width x C: the centre CROP_FRACTION of the image (at the target's
    aspect ratio), resized to the target."""
    resample = _resample(interpolation)
    img = _image(pixels)
    factor = CROP_FRACTION * min(img.width / width, img.height / height)
    crop_w, crop_h = max(1, int(round(width * factor))), max(1, int(round(height * factor)))
    left, top = (img.width - crop_w + 1) // 2, (img.height - crop_h + 1) // 2
    img = img.crop((left, top, left + crop_w, top + crop_h))
    if (img.height, img.width) != (height, width):
        img = img.resize((width, height), resample)
    return _array(img)


def resize_stretch(pixels: np.ndarray, height: int, width: int,
                   interpolation: str = "bilinear") -> np.ndarray:
    """uint8 HxWxC -> uint8 height x width x C, the whole image resized (a detector sees all of it)."""
    resample = _resample(interpolation)
    img = _image(pixels)
    if (img.height, img.width) != (height, width):
        img = img.resize((width, height), resample)
    return _array(img)
