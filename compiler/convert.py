"""Keras -> full-integer int8 TFLite flatbuffer.

``to_tflite(keras_model, calib=None, progress=True, preprocess=None) -> bytes`` runs the TFLite
converter with Optimize.DEFAULT and a representative data set: per-channel symmetric int8 weights,
per-tensor asymmetric int8 activations, int32 biases, int8 model input and output, and a fixed batch
of 1 (the model is traced through a concrete function whose input signature is the model's input
shape with batch 1, whatever batch the Keras model declares).

The converter's chatter on file descriptors 1 and 2 (MLIR pass listings, absl logs) is captured and
dropped; when conversion fails, the captured text is attached to the raised ``ConversionError``.
Nothing is cached here.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

__all__ = ["ConversionError", "to_tflite", "default_calibration", "load_calib_dir", "capture_fds"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


class ConversionError(RuntimeError):
    """The TFLite converter failed; ``log`` holds what it printed."""

    def __init__(self, message: str, log: str = ""):
        super().__init__(message + (f"\n--- converter output ---\n{log.strip()}" if log.strip() else ""))
        self.log = log


@contextlib.contextmanager
def capture_fds() -> Iterator[list[str]]:
    """Redirect OS-level stdout and stderr (fds 1 and 2) to a temporary file for the block.

    Yields a list that, after the block, holds the captured text as its single element.
    """
    import sys

    result: list[str] = []
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        saved = [os.dup(1), os.dup(2)]
        try:
            os.dup2(tmp.fileno(), 1)
            os.dup2(tmp.fileno(), 2)
            yield result
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            tmp.seek(0)
            result.append(tmp.read().decode("utf-8", errors="replace"))


def default_calibration(input_shape, count: int = 4, seed: int = 0) -> list[np.ndarray]:
    """A deterministic representative set for a model whose input domain is unknown: smooth random
    images in 0..255 of the model's input shape (HxWxC, batch dimension dropped)."""
    from softnpu.compiler.zoo import smooth_images

    shape = tuple(int(d) for d in input_shape if d is not None)
    if len(shape) == 4:
        shape = shape[1:]
    if len(shape) != 3 or shape[0] != shape[1]:
        rng = np.random.default_rng(seed)
        return [rng.uniform(0, 255, shape).astype(np.float32) for _ in range(count)]
    return list(smooth_images(count, shape[0], shape[2], seed=seed))


def load_calib_dir(directory, input_shape, limit: int = 64) -> list[np.ndarray]:
    """Images of a directory (sorted by name, at most ``limit``), decoded and resized (bilinear) to
    the model's HxW, as float32 0..255 with the model's channel count."""
    from PIL import Image

    h, w, c = (int(d) for d in tuple(input_shape)[-3:])
    files = sorted(p for p in Path(directory).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {directory}")
    images = []
    for path in files[:limit]:
        with Image.open(path) as img:
            img = img.convert("L" if c == 1 else "RGB").resize((w, h), Image.BILINEAR)
            arr = np.asarray(img, dtype=np.float32)
        images.append(arr[..., None] if c == 1 else arr)
    return images


def _input_shape(keras_model) -> tuple[int, ...]:
    shape = tuple(keras_model.inputs[0].shape)
    if any(d is None for d in shape[1:]):
        raise ValueError(f"model input shape {shape} must be static (apart from the batch)")
    return (1,) + tuple(int(d) for d in shape[1:])


def to_tflite(keras_model, calib: Iterable | None = None, progress: bool = True,
              preprocess: Callable[[np.ndarray], np.ndarray] | None = None) -> bytes:
    """Convert a single-input Keras model to a full-integer int8 TFLite flatbuffer (batch 1).

    calib: float images ([1,]HxWxC) in the model's input domain, or raw images when ``preprocess``
    is given; None -> ``default_calibration`` (then ``preprocess``).  progress: show a spinner with
    the elapsed time on the terminal (rich) while converting.
    """
    import tensorflow as tf

    if len(keras_model.inputs) != 1:
        raise ValueError(f"to_tflite: expected a single-input model, got {len(keras_model.inputs)}")
    shape = _input_shape(keras_model)
    images = list(default_calibration(shape) if calib is None else calib)
    if not images:
        raise ValueError("to_tflite: empty calibration set")
    samples = []
    for img in images:
        x = np.asarray(img, dtype=np.float32)
        if preprocess is not None:
            x = np.asarray(preprocess(x), dtype=np.float32)
        samples.append(x.reshape(shape))

    def representative():
        for x in samples:
            yield [x]

    @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32, name="input")])
    def serve(x):
        return keras_model(x, training=False)

    concrete = serve.get_concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete])
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8

    name = getattr(keras_model, "name", "model")
    with _status(f"converting {name} to int8 TFLite", progress):
        log: list[str] = []
        try:
            with capture_fds() as log, warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
                result = converter.convert()
        except Exception as exc:
            text = log[0] if log else ""
            raise ConversionError(f"TFLite conversion of {name} failed: {exc}", text) from exc
    return bytes(result)


@contextlib.contextmanager
def _status(message: str, enabled: bool):
    """A rich spinner with elapsed seconds, on the real terminal even while fds 1/2 are redirected."""
    import sys

    if not enabled or not sys.stderr.isatty():
        yield
        return
    from rich.console import Console

    # Write to a duplicate of the terminal's fd, which survives the redirection of fd 2.
    tty = os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1)
    console = Console(file=tty, force_terminal=True)
    start = time.monotonic()
    stop = threading.Event()
    try:
        with console.status(f"{message} ...") as status:
            def tick():
                while not stop.wait(0.5):
                    status.update(f"{message} ... {time.monotonic() - start:.0f} s")
            thread = threading.Thread(target=tick, daemon=True)
            thread.start()
            try:
                yield
            finally:
                stop.set()
                thread.join()
        console.print(f"{message}: done in {time.monotonic() - start:.1f} s")
    finally:
        tty.close()
