"""Every user mistake gets one line naming the argument or file and what is allowed, never a
traceback; exit code 2 for usage errors, 1 for failures (host/cli/commands.py `main`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests import oracle

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")


def softnpu(*args, cwd, env=None):
    return subprocess.run([sys.executable, "-m", "softnpu", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, env=env or ENV, stdin=subprocess.DEVNULL, timeout=600)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A folder with a compiled tiny bundle, damaged copies of it, a Keras LSTM and bad config files."""
    from softnpu.compiler.compile import compile_tflite

    root = tmp_path_factory.mktemp("cli_errors")
    bundle = compile_tflite(oracle.conv2d(h=6, w=6, cin=3, cout=4), "tiny", name="conv")
    bundle.save(root / "ok.npu")
    manifest = json.loads(bundle.manifest.to_json())
    damaged = {
        "bad_json.npu": {"manifest.json": b'{"model": 3'},
        "bad_field.npu": {"manifest.json": json.dumps({**manifest, "inputs": 5}).encode()},
        "bad_config.npu": {"manifest.json": json.dumps({**manifest, "config": {"rows": "x"}}).encode()},
        "fault.npu": {"program.bin": b"\xff" * 32 + bundle.program[32:]},   # opcode 15 is not defined
    }
    for name, members in damaged.items():
        with zipfile.ZipFile(root / "ok.npu") as src, zipfile.ZipFile(root / name, "w") as dst:
            for member in src.namelist():
                dst.writestr(member, members.get(member, src.read(member)))
    (root / "notazip.npu").write_bytes(b"{")
    (root / "neg.json").write_text('{"rows": -1}')
    (root / "text.json").write_text("rows = 4")
    keras = oracle._keras()
    x = keras.Input((5, 4), batch_size=1)
    keras.Model(x, keras.layers.LSTM(3)(x)).save(root / "lstm.keras")
    (root / "image.png").write_bytes(b"")
    return root


# (arguments, exit code, text the one-line message must contain)
CASES = [
    (["verify", "bad_json.npu"], 1, "bad_json.npu: manifest.json: not valid JSON"),
    (["verify", "bad_field.npu"], 1, "bad_field.npu: manifest.json:"),
    (["verify", "bad_config.npu"], 1, "NPUConfig.rows must be an int"),
    (["verify", "notazip.npu"], 1, "not a bundle"),
    (["verify", "missing.npu"], 2, "bundle missing.npu: no such file"),
    (["verify", "fault.npu"], 1, "ILLEGAL_OPCODE"),
    (["verify", "ok.npu", "--inputs", "0"], 2, "--inputs: must be >= 1, got 0"),
    (["verify", "ok.npu", "--waves", "w.fst"], 2, "--waves needs --backend rtl"),
    (["verify", "ok.npu", "--backend", "rtl", "--waves", "w.fst", "--window", "layer"], 2,
     "--window layer: expected layer:N or cycles:START:END"),
    (["run", "ok.npu", "--window", "layer:1"], 2, "--window needs --waves FILE"),
    (["run", "ok.npu", "--image", "nosuch.png"], 2, "--image nosuch.png: no such file"),
    (["profile", "ok.npu", "--format", "xml"], 2, "invalid choice: 'xml'"),
    (["compile", "resnet50", "--input-size", "0", "-o", "r.npu"], 2, "--input-size: must be >= 1, got 0"),
    (["compile", "ok.npu", "-o", "."], 2, "-o .: is a folder"),
    (["compile", "resnet50", "-o", "nodir/r.npu"], 2, "folder nodir does not exist"),
    (["compile", "nosuch.keras", "-o", "r.npu"], 2, "model nosuch.keras: no such file"),
    (["compile", "resnet50", "--config", "huge", "-o", "r.npu"], 2, "--config: unknown NPU config 'huge'"),
    (["compile", "resnet50", "--config", "neg.json", "-o", "r.npu"], 2, "neg.json: NPUConfig.rows must be"),
    (["compile", "resnet50", "--config", "text.json", "-o", "r.npu"], 2, "text.json: not readable JSON"),
    (["compile", "resnet50", "--input-size", "32", "--weights", "imagenet", "-o", "r.npu"], 1,
     "--weights imagenet: could not be loaded (downloading ImageNet weights needs network access"),
    (["compile", "lstm.keras", "-o", "l.npu", "-q"], 1, "the TFLite converter crashed (SIGSEGV)"),
    (["hdl", "--config", "tiny", "-o", "nodir/npu.v"], 2, "folder nodir does not exist"),
    (["score", "image.png", "--top", "0"], 2, "--top: must be >= 1, got 0"),
    (["score", "nosuch.png"], 2, "image nosuch.png: no such file"),
    (["disasm", "nosuch.bin"], 2, "nosuch.bin: no such file"),
]


@pytest.mark.parametrize("args,code,message", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_mistake_gets_its_message_and_exit_code(work, args, code, message):
    env = dict(ENV, HTTPS_PROXY="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9")   # offline, fast
    run = softnpu(*args, cwd=work, env=env)
    assert "Traceback" not in run.stderr, run.stderr
    assert run.returncode == code, (run.returncode, run.stdout, run.stderr)
    assert message in run.stderr, run.stderr


def test_no_outputs_are_left_behind_by_a_failed_compile(work):
    assert not (work / "r.npu").exists() and not (work / "l.npu").exists()
