"""Published CNN architectures outside the zoo (keras.applications, random weights: this machine has no
download), converted to int8 TFLite, compiled for an NPU config and checked bit-exact on the ISS
against the TFLite interpreter; an architecture with an op the NPU has no lowering for must fail with
the compiler's UnsupportedOp naming it, never a traceback or a wrong result.

    python -m tests.compiler.published_models [--size 96] [--config default] [NAME ...]

(`nox -s published_models`).  Prints one line per architecture and a summary table.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# name -> keras.applications constructor; the ops each needs beyond the zoo's are in the comment
ARCHITECTURES = {
    "MobileNet": "MobileNet",                    # depthwise, ReLU6
    "MobileNetV2": "MobileNetV2",                # depthwise, ReLU6, inverted residuals
    "MobileNetV3Small": "MobileNetV3Small",      # hard-swish (HARD_SWISH): not on the NPU
    "ResNet50V2": "ResNet50V2",                  # pre-activation, max pool after PAD
    "InceptionV3": "InceptionV3",                # 1x7/7x1 kernels, concatenations
    "Xception": "Xception",                      # separable convolutions
    "InceptionResNetV2": "InceptionResNetV2",    # scaled residuals
    "DenseNet169": "DenseNet169",
    "VGG19": "VGG19",
    "NASNetMobile": "NASNetMobile",              # Cropping2D (STRIDED_SLICE)
    "EfficientNetB0": "EfficientNetB0",          # swish, squeeze-excite (LOGISTIC): not on the NPU
    "ConvNeXtTiny": "ConvNeXtTiny",              # LayerNorm, GELU, SUB: not on the NPU
}


def check(name: str, size: int, config: str) -> tuple[str, str, float]:
    """(name, outcome, seconds): 'bit-exact', 'MISMATCH', 'unsupported: ...' or 'ERROR: ...'."""
    import keras

    from softnpu.compiler import convert
    from softnpu.compiler.compile import compile_tflite
    from softnpu.compiler.ir import UnsupportedOp
    from softnpu.host.verify import verify_bundle

    start = time.perf_counter()
    try:
        keras.utils.set_random_seed(0)
        model = getattr(keras.applications, ARCHITECTURES[name])(input_shape=(size, size, 3), weights=None)
        calib = np.random.default_rng(0).uniform(-1, 1, (4, size, size, 3)).astype(np.float32)
        bundle = compile_tflite(convert.to_tflite(model, calib, progress=False), config, name=name)
        report = verify_bundle(bundle, "iss", inputs=1, seed=1)
        outcome = "bit-exact" if report.equal else "MISMATCH"
    except UnsupportedOp as exc:
        outcome = f"unsupported: {exc.kind}"
    except Exception as exc:            # reported, and the run fails: a traceback is a bug here
        outcome = f"ERROR: {type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
    return name, outcome, time.perf_counter() - start


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help=f"architectures (default: all of {', '.join(ARCHITECTURES)})")
    ap.add_argument("--size", type=int, default=96, help="square input side (default 96)")
    ap.add_argument("--config", default="default", help="NPU config (default 'default')")
    args = ap.parse_args(argv)
    unknown = [n for n in args.names if n not in ARCHITECTURES]
    if unknown:
        ap.error(f"unknown architecture(s) {unknown}; known: {list(ARCHITECTURES)}")
    rows = []
    for name in args.names or ARCHITECTURES:
        rows.append(check(name, args.size, args.config))
        print(f"{rows[-1][0]:18s} {rows[-1][1]:40s} {rows[-1][2]:6.0f} s", flush=True)
    print(f"\n{args.size}x{args.size}, config {args.config!r}: "
          f"{sum(r[1] == 'bit-exact' for r in rows)} bit-exact, "
          f"{sum(r[1].startswith('unsupported') for r in rows)} with an op the NPU cannot run (named), "
          f"{sum(r[1] == 'MISMATCH' or r[1].startswith('ERROR') for r in rows)} failures")
    return 1 if any(r[1] == "MISMATCH" or r[1].startswith("ERROR") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
