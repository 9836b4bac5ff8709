"""Fixtures for the host tests: the sample classifier bundle (host/sample.py, built with
compiler/emit.py), a model repository holding it, servers on free ports, devices that can be
held at a gate, and a test CA with a server certificate for TLS."""

from __future__ import annotations

import contextlib
import io
import shutil
import subprocess
import threading

import numpy as np
import pytest

from softnpu.host.devices.device import IssDevice
from softnpu.host.sample import build_sample
from softnpu.host.serving.repository import ModelRepository

API_KEY = "test-key-0123"


@pytest.fixture(scope="session")
def sample():
    return build_sample("tiny", seed=0)


@pytest.fixture(scope="session")
def bundle_path(sample, tmp_path_factory):
    return sample.bundle.save(tmp_path_factory.mktemp("bundle") / "sample.npu")


@pytest.fixture(scope="session")
def broken_bundle_path(sample, tmp_path_factory):
    """The sample with its second instruction zeroed: the NPU faults with ILLEGAL_OPCODE at 1."""
    import copy

    bundle = copy.deepcopy(sample.bundle)
    bundle.program = bundle.program[:32] + bytes(32) + bundle.program[64:]
    return bundle.save(tmp_path_factory.mktemp("broken") / "broken.npu")


@pytest.fixture()
def repo(tmp_path, bundle_path, broken_bundle_path):
    r = ModelRepository(tmp_path / "models")
    r.register(bundle_path, "sample")                 # version 1
    r.register(bundle_path, "sample")                 # version 2
    r.register(broken_bundle_path, "broken")
    return r


def png_bytes(h=20, w=24, seed=0, fmt="PNG") -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt)
    return buf.getvalue()


class GatedDevice(IssDevice):
    """An ISS device whose runs wait at a gate (a test hook for a slow device, not a sleep)."""

    def __init__(self, config, gate: threading.Event, entered: threading.Semaphore, runs: list):
        super().__init__(config)
        self.gate, self.entered, self.runs = gate, entered, runs

    def start(self, insn_addr, count, irq=True):
        self.entered.release()
        if not self.gate.wait(10):
            raise AssertionError("test gate was never opened")
        self.runs.append(count)
        super().start(insn_addr, count, irq)


class Gate:
    """A device factory whose devices block until `open()`; `entered` counts runs that began."""

    def __init__(self):
        self.gate = threading.Event()
        self.entered = threading.Semaphore(0)
        self.runs: list[int] = []

    def __call__(self, config):
        return GatedDevice(config, self.gate, self.entered, self.runs)

    def wait_entered(self, timeout=10):
        assert self.entered.acquire(timeout=timeout), "no request reached the device"

    def open(self):
        self.gate.set()


@pytest.fixture()
def serve(repo):
    """serve(**server_kwargs) -> a started host.service.Server on a free port (stopped after)."""
    from softnpu.host.serving.service import Server

    servers = []

    def start(**kw):
        kw.setdefault("port", 0)
        server = Server(kw.pop("root", repo.root), **kw).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop(0.2)


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory):
    """(ca.pem, server.pem, server.key) for localhost/127.0.0.1, made with the openssl CLI."""
    openssl = shutil.which("openssl")
    assert openssl is not None, "the TLS tests need the openssl CLI (Debian package openssl)"
    d = tmp_path_factory.mktemp("tls")

    def run(*args):
        subprocess.run([openssl, *args], cwd=d, check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=softnpu test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=localhost")
    (d / "ext.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n"
                               "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
                               "extendedKeyUsage=serverAuth\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf")
    return d / "ca.pem", d / "server.pem", d / "server.key"


@contextlib.contextmanager
def joined(threads, timeout=30):
    for t in threads:
        t.start()
    try:
        yield
    finally:
        for t in threads:
            t.join(timeout)
            assert not t.is_alive(), "a client thread hung"


@pytest.fixture(scope="session")
def ssd_bundle(tmp_path_factory):
    """A tiny SSD (compiler/ssd.py tiny_ssd: 32x32 input, 5 classes, 368 default boxes, an
    L2-normalized first feature map) compiled for the `tiny` NPU: the NPU runs the backbone and
    most heads, the host the L2 normalization, its heads and the reshape/concat tail."""
    from softnpu.compiler import convert, ssd
    from softnpu.compiler.compile import compile_tflite

    model = ssd.tiny_ssd(32, 5)
    spec = ssd.detection_spec(model)
    calib = [np.random.default_rng(i).uniform(-120, 140, (1, 32, 32, 3)).astype(np.float32) for i in range(4)]
    data = convert.to_tflite(model, calib, progress=False)
    spec.update(score_threshold=0.05, max_detections=10)
    bundle = compile_tflite(data, "tiny", name="tiny_ssd", source="tiny_ssd", labels="voc", detection=spec,
                            preprocess={"mode": "caffe", "resize": "stretch"})
    return bundle, bundle.save(tmp_path_factory.mktemp("ssd") / "tiny_ssd.npu")


@pytest.fixture()
def ssd_repo(tmp_path, ssd_bundle):
    r = ModelRepository(tmp_path / "ssd_models")
    r.register(ssd_bundle[1], "tiny_ssd")
    return r
