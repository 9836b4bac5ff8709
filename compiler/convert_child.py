"""Keras file -> int8 TFLite in a child process, so that a converter crash is an error, not our death.

The TFLite converter is native code; some Keras layers (an LSTM, for one) make it die with a
segmentation fault, which would end `softnpu compile` (or a server that compiles) with no message.
``keras_file_to_tflite`` runs ``python -m softnpu.compiler.convert_child MODEL OUT [--calib DIR]``
and turns a non-zero exit or a signal into a ``ConversionError`` that names the model file.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from softnpu.compiler.convert import ConversionError, _status

__all__ = ["keras_file_to_tflite"]

_FAILED = 3          # exit code of a conversion that failed with a Python exception (message on stderr)


def keras_file_to_tflite(path: str | Path, calib: str | Path | None = None,
                         progress: bool = True) -> tuple[bytes, dict | None]:
    """Load a .keras/.h5 model and convert it to int8 TFLite (compiler/convert.py `to_tflite`) in a
    child process; calibration images from the folder `calib`, else convert.py's default set.
    Returns the flatbuffer and, for an SSD of compiler/ssd.py, its detection spec (else None)."""
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="softnpu_convert_") as tmp:
        out = Path(tmp) / "model.tflite"
        cmd = [sys.executable, "-m", "softnpu.compiler.convert_child", str(path), str(out)]
        if calib is not None:
            cmd += ["--calib", str(calib)]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3")}
        with _status(f"converting {path.name} to int8 TFLite", progress):
            run = subprocess.run(cmd, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
        if run.returncode == 0 and out.exists():
            spec = out.with_suffix(".detection.json")
            return out.read_bytes(), (json.loads(spec.read_text()) if spec.exists() else None)
    log = run.stderr.strip()
    if run.returncode < 0:
        name = signal.Signals(-run.returncode).name
        raise ConversionError(f"{path}: the TFLite converter crashed ({name}) on this model; it likely "
                              "holds a layer the int8 converter cannot handle (recurrent layers, for "
                              "one): softnpu compiles CNNs (convolutions, pooling, dense, add, "
                              "concatenate, ...)", log[-4000:])
    if run.returncode == _FAILED:
        message = log.splitlines()[-1] if log else "conversion failed"
        raise ConversionError(f"{path}: {message}")
    raise ConversionError(f"{path}: the conversion process exited with code {run.returncode}", log[-4000:])


def _main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Convert a Keras model file to int8 TFLite.")
    parser.add_argument("model")
    parser.add_argument("output")
    parser.add_argument("--calib")
    args = parser.parse_args(argv)
    try:
        import keras

        from softnpu.compiler import convert, ssd

        ssd.register_layers()           # the SSD's custom layers (L2 normalization)
        model = keras.models.load_model(args.model, compile=False)
        images = convert.load_calib_dir(args.calib, model.inputs[0].shape) if args.calib else None
        data = convert.to_tflite(model, images, progress=False)
        if ssd.is_ssd(model):
            Path(args.output).with_suffix(".detection.json").write_text(json.dumps(ssd.detection_spec(model)))
    except Exception as exc:
        print(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", file=sys.stderr)
        return _FAILED
    Path(args.output).write_bytes(data)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
