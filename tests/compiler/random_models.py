"""Seeded random Keras CNNs, converted to int8 TFLite with the project's converter, compiled and
checked bit-exact on the ISS against the TFLite interpreter (reference kernels).

`random_model(seed)` builds a small CNN from the seed alone: a random input size and channel count,
then a few blocks drawn from `BLOCKS` (convolutions with random kernel, stride pair, dilation,
padding, channel count and fused ReLU/ReLU6; max and average pooling; residual ADDs; concatenations
of branches; standalone activations; zero padding; depthwise convolutions; crops), then a head
(global average pooling or flatten, then a dense layer, or none).  `check_seed(seed)` converts,
compiles for an NPU config and verifies.

    python -m tests.compiler.random_models N [--first S] [--config tiny] [--out DIR]

runs N seeds (`nox -s fuzz_models -- N`); a failing seed is printed and its .tflite saved in DIR.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

__all__ = ["BLOCKS", "random_model", "random_tflite", "check_seed", "SeedResult", "main"]


# ----------------------------------------------------------------------------------------------
# Blocks: each takes (rng, keras layers, tensor, name) and returns a tensor
# ----------------------------------------------------------------------------------------------
def _hw(t) -> tuple[int, int]:
    return int(t.shape[1]), int(t.shape[2])


def _channels(t) -> int:
    return int(t.shape[3])


def _pick(rng, options):
    return options[int(rng.integers(len(options)))]


def _bias(rng):
    import keras
    return keras.initializers.RandomUniform(-0.3, 0.3, seed=int(rng.integers(1 << 30)))


def _conv_layer(rng, layers, t, name, filters=None, allow_stride=True):
    """A Conv2D of random kernel, stride pair or dilation, padding, width and fused activation that
    fits the tensor's spatial size."""
    h, w = _hw(t)
    kh, kw = _pick(rng, [(1, 1), (3, 3), (3, 3), (2, 2), (5, 5), (1, 3), (3, 1), (2, 3)])
    strides, dilation = (1, 1), (1, 1)
    roll = rng.random()
    if roll < 0.25 and min(kh, kw) > 1:
        dilation = _pick(rng, [(2, 2), (3, 3), (1, 2), (2, 1)])
    elif roll < 0.6 and allow_stride:
        strides = _pick(rng, [(2, 2), (1, 2), (2, 1), (1, 3), (3, 1), (3, 3), (2, 3)])
    eh, ew = (kh - 1) * dilation[0] + 1, (kw - 1) * dilation[1] + 1
    padding = "valid" if eh <= h and ew <= w and rng.random() < 0.4 else "same"
    filters = filters or int(_pick(rng, [1, 2, 3, 4, 5, 7, 8, 12, 16, 20, 24, 37]))
    activation = _pick(rng, [None, "relu", "relu", "relu6"])
    return layers.Conv2D(filters, (kh, kw), strides=strides, dilation_rate=dilation, padding=padding,
                         activation=activation, bias_initializer=_bias(rng), name=name)(t)


def _conv(rng, layers, t, name):
    return _conv_layer(rng, layers, t, name)


def _pool(rng, layers, t, name):
    h, w = _hw(t)
    k = _pick(rng, [(2, 2), (3, 3), (2, 3), (3, 1)])
    strides = _pick(rng, [None, (1, 1), (2, 2), (1, 2), (3, 2)])
    valid = k[0] <= h and k[1] <= w
    padding = "valid" if valid and rng.random() < 0.5 else "same"
    kind = layers.MaxPooling2D if rng.random() < 0.5 else layers.AveragePooling2D
    return kind(k, strides=strides, padding=padding, name=name)(t)


def _residual(rng, layers, t, name):
    """t + conv(t) (same padding, stride 1, as many channels), with a fused or standalone ReLU."""
    y = _conv_layer(rng, layers, t, f"{name}_conv", filters=_channels(t), allow_stride=False)
    if tuple(y.shape) != tuple(t.shape):
        return y
    out = layers.Add(name=f"{name}_add")([t, y])
    return layers.ReLU(name=f"{name}_relu")(out) if rng.random() < 0.5 else out


def _concat(rng, layers, t, name):
    """2-3 branches of the same spatial size (1x1 or 3x3 convolutions, a 3x3 max pool, the input
    itself) concatenated along channels at whatever offsets their widths give."""
    branches = []
    for k in range(int(rng.integers(2, 4))):
        roll = rng.random()
        if roll < 0.6:
            f = int(_pick(rng, [1, 3, 4, 5, 6, 8, 10, 16]))
            ks = _pick(rng, [1, 3])
            branches.append(layers.Conv2D(f, ks, padding="same", activation=_pick(rng, [None, "relu"]),
                                          bias_initializer=_bias(rng), name=f"{name}_b{k}")(t))
        elif roll < 0.8:
            branches.append(layers.MaxPooling2D(3, strides=1, padding="same", name=f"{name}_p{k}")(t))
        else:
            branches.append(t)
    out = layers.Concatenate(name=name)(branches)
    if rng.random() < 0.3:
        return layers.ReLU(max_value=_pick(rng, [None, 6.0]), name=f"{name}_relu")(out)
    return out


def _activation(rng, layers, t, name):
    return layers.ReLU(max_value=_pick(rng, [None, 6.0, 4.0]), name=name)(t)


def _depthwise(rng, layers, t, name):
    """A DepthwiseConv2D (depth multiplier 1, compiler/depthwise.py) of random kernel, equal strides
    1 or 2, padding and fused activation, as MobileNet/EfficientNet blocks use it."""
    h, w = _hw(t)
    k = int(_pick(rng, [3, 3, 5]))
    stride = int(_pick(rng, [1, 1, 2]))
    padding = "valid" if k <= h and k <= w and rng.random() < 0.3 else "same"
    return layers.DepthwiseConv2D(k, strides=stride, padding=padding,
                                  activation=_pick(rng, [None, "relu", "relu6"]),
                                  bias_initializer=_bias(rng), name=name)(t)


def _zero_pad(rng, layers, t, name):
    top, bottom, left, right = (int(v) for v in rng.integers(0, 3, 4))
    pads = ((top, bottom), (left, right))
    return layers.ZeroPadding2D(pads, name=name)(t)


def _crop(rng, layers, t, name):
    """A Cropping2D (STRIDED_SLICE), at least one row and column left."""
    h, w = _hw(t)
    top, bottom = (int(v) for v in rng.integers(0, max(1, min(3, (h - 1) // 2)) + 1, 2))
    left, right = (int(v) for v in rng.integers(0, max(1, min(3, (w - 1) // 2)) + 1, 2))
    if top + bottom >= h:
        top, bottom = 0, 0
    if left + right >= w:
        left, right = 0, 0
    return layers.Cropping2D(((top, bottom), (left, right)), name=name)(t)


# The block kinds the generator draws from, with their weights.
BLOCKS: list[tuple[str, float, Callable]] = [
    ("conv", 4.0, _conv),
    ("pool", 1.5, _pool),
    ("residual", 1.5, _residual),
    ("concat", 1.5, _concat),
    ("activation", 0.5, _activation),
    ("zero_pad", 0.5, _zero_pad),
    ("depthwise", 1.0, _depthwise),
    ("crop", 0.5, _crop),
]


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------
def random_model(seed: int, max_blocks: int = 5):
    """(Keras model, list of block kinds) built from `seed` alone."""
    import keras

    rng = np.random.default_rng(seed)
    keras.utils.set_random_seed(seed)
    size = rng.random()
    if size < 0.15:             # now and then a larger one: row tiles and K splits on `tiny`
        h, w = int(rng.integers(16, 33)), int(rng.integers(16, 33))
        c = int(_pick(rng, [17, 24, 33, 40]))
    elif size < 0.2:            # or a wide one: rows wider than tiny's input scratchpad, column tiles
        h, w = int(rng.integers(3, 7)), int(rng.integers(170, 300))
        c = int(_pick(rng, [1, 3, 5]))
    else:
        h, w = int(rng.integers(4, 15)), int(rng.integers(4, 15))
        c = int(_pick(rng, [1, 2, 3, 4, 5, 7, 8, 13, 16, 20]))
    x = keras.Input(shape=(h, w, c), batch_size=1, name="input")
    t, kinds = x, []
    weights = np.array([wt for _, wt, _ in BLOCKS])
    for i in range(int(rng.integers(1, max_blocks + 1))):
        k = int(rng.choice(len(BLOCKS), p=weights / weights.sum()))
        name, _, block = BLOCKS[k]
        t = block(rng, keras.layers, t, f"{name}{i}")
        kinds.append(name)
    head = _pick(rng, ["gap_dense", "flatten_dense", "mean", "none"])
    if head == "gap_dense":
        t = keras.layers.Dense(int(rng.integers(2, 12)), bias_initializer=_bias(rng),
                               name="dense")(keras.layers.GlobalAveragePooling2D(name="gap")(t))
    elif head == "flatten_dense":
        t = keras.layers.Flatten(name="flatten")(t)
        t = keras.layers.Dense(int(rng.integers(2, 12)), activation=_pick(rng, [None, "relu"]),
                               bias_initializer=_bias(rng), name="dense")(t)
    elif head == "mean":
        t = keras.layers.GlobalAveragePooling2D(name="gap")(t)
    kinds.append(head)
    return keras.Model(x, t, name=f"random{seed}"), kinds


def random_tflite(seed: int, max_blocks: int = 5) -> tuple[bytes, list[str]]:
    """The seed's model as full-integer int8 TFLite (compiler/convert.py, calibrated on seeded
    uniform inputs in [-1, 1])."""
    from softnpu.compiler import convert

    model, kinds = random_model(seed, max_blocks)
    rng = np.random.default_rng(seed + 1)
    shape = tuple(int(d) for d in model.inputs[0].shape[1:])
    calib = [rng.uniform(-1.0, 1.0, shape).astype(np.float32) for _ in range(8)]
    return convert.to_tflite(model, calib, progress=False), kinds


@dataclasses.dataclass
class SeedResult:
    seed: int
    kinds: list[str]
    ok: bool
    error: str = ""
    seconds: float = 0.0
    tflite: bytes = b""


def check_seed(seed: int, config: str = "tiny", inputs: int = 2, max_blocks: int = 5) -> SeedResult:
    """Build, convert, compile for `config`, run `inputs` random inputs on the ISS and the
    interpreter; ok when every NPU output is bit-exact.  Any exception is a failure (with its
    traceback in `error`)."""
    from softnpu.compiler.compile import compile_tflite
    from softnpu.host.verify import verify_bundle

    start = time.perf_counter()
    tflite, kinds = random_tflite(seed, max_blocks)
    try:
        bundle = compile_tflite(tflite, config, name=f"random{seed}")
        report = verify_bundle(bundle, "iss", inputs=inputs, seed=seed)
        bad = [c for c in report.checks if not c.equal]
        error = "" if not bad and report.checks else \
            f"{len(bad)} of {len(report.checks)} outputs differ: {bad[:3]}"
    except Exception:                       # noqa: BLE001  (the fuzzer reports every failure)
        error = traceback.format_exc()
    return SeedResult(seed, kinds, not error, error, time.perf_counter() - start, tflite)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="random_models", description=__doc__.split("\n\n")[0])
    ap.add_argument("n", nargs="?", type=int, default=200, help="seeds to run (default 200)")
    ap.add_argument("--first", type=int, default=0, help="first seed")
    ap.add_argument("--config", default="tiny", help="NPU preset")
    ap.add_argument("--out", default="build/fuzz_models", help="where failing .tflite files go")
    args = ap.parse_args(argv)
    import absl.logging  # the converter's deprecation chatter, once per model
    absl.logging.set_verbosity(absl.logging.ERROR)
    failures = []
    for seed in range(args.first, args.first + args.n):
        res = check_seed(seed, args.config)
        status = "ok" if res.ok else "FAIL"
        print(f"seed {seed:5d} {status:4s} {res.seconds:5.1f} s  {' '.join(res.kinds)}", flush=True)
        if not res.ok:
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            path = out / f"random{seed}.tflite"
            path.write_bytes(res.tflite)
            error = res.error.strip().replace("\n", "\n  ")
            print(f"  seed {seed} failed; model saved to {path}\n  {error}", flush=True)
            failures.append(seed)
    print(f"{args.n - len(failures)} of {args.n} seeds bit-exact on the ISS ({args.config})"
          + (f"; failing seeds: {failures}" if failures else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
