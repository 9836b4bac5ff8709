"""`softnpu serve` and `softnpu score` as a user runs them: separate processes, a real port,
SIGTERM to stop; both start without TensorFlow's runtime (host/lightproto.py)."""

import os
import re
import signal
import subprocess
import sys
import threading

import pytest

from tests.host.conftest import API_KEY, png_bytes

ENV = dict(os.environ, PYTHONUNBUFFERED="1")


@pytest.fixture()
def server_process(repo):
    cmd = [sys.executable, "-m", "softnpu.host.cli", "serve", "--model-dir", str(repo.root), "--port", "0",
           "--api-key", API_KEY, "--workers", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    watchdog = threading.Timer(60, proc.kill)           # a server that never prints must not hang us
    watchdog.start()
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            match = re.search(r"gRPC on (\S+),", line)
            if match:
                yield proc, match.group(1), lines
                break
        else:
            pytest.fail(f"serve exited early: {proc.wait(10)} {''.join(lines)} {proc.stderr.read()}")
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_serve_and_score_processes(server_process, tmp_path):
    proc, address, lines = server_process
    assert any("sample:2" in line for line in lines) and any("broken:1" in line for line in lines)
    image = tmp_path / "photo.png"
    image.write_bytes(png_bytes(seed=11))
    run = subprocess.run([sys.executable, "-m", "softnpu.host.cli", "score", str(image), "--address", address,
                          "--model", "sample", "--top", "2", "--api-key", API_KEY],
                         capture_output=True, text=True, timeout=60, env=ENV)
    assert run.returncode == 0, run.stderr
    out = run.stdout.splitlines()
    assert out[0].startswith(" 1. class_") and out[1].startswith(" 2. class_") and "cycles" in out[2]
    run = subprocess.run([sys.executable, "-m", "softnpu.host.cli", "score", str(image), "--address", address,
                          "--model", "sample"], capture_output=True, text=True, timeout=60, env=ENV)
    assert run.returncode != 0 and "UNAUTHENTICATED" in run.stderr
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    assert "stopped" in proc.stdout.read()


def test_lightproto_loads_the_serving_protos_without_tensorflow():
    code = ("import sys; from softnpu.host import lightproto; assert lightproto.preload(); "
            "from softnpu.host.tensors import to_proto, from_proto; import numpy as np; "
            "x = np.arange(6, dtype=np.int8).reshape(2, 3); assert (from_proto(to_proto(x)) == x).all(); "
            "from softnpu.host.client import PredictionClient; "
            "assert 'tensorflow.python' not in sys.modules, 'TensorFlow runtime was imported'; "
            "import tensorflow as tf\n"
            "try:\n    tf.constant\nexcept AttributeError as e:\n    print(e)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=ENV)
    assert run.returncode == 0, run.stderr
    assert "loaded only TensorFlow's protobuf modules" in run.stdout
