"""Mutual TLS (`serve --tls-client-ca`): gRPC and REST require a client certificate signed by the
configured CA.  A client without one, or with one from another CA, is refused at the handshake;
`softnpu score --tls-client-cert/--tls-client-key` and PredictionClient(client_cert=...) get in.
Certificates are made with the openssl CLI, as conftest's `tls_files` are."""

from __future__ import annotations

import json
import logging
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest

from softnpu.host.serving.client import PredictionClient, ScoreError
from tests.host.conftest import png_bytes

SC = grpc.StatusCode
TIMEOUT = 20


@pytest.fixture(scope="module")
def certs(tls_files, tmp_path_factory):
    """{ca, server, server_key, client, client_key, rogue, rogue_key}: `client` signed by the
    server's CA, `rogue` by a CA of its own."""
    ca, server, server_key = tls_files
    d = tmp_path_factory.mktemp("mtls")
    openssl = shutil.which("openssl")

    def run(*args):
        subprocess.run([openssl, *args], cwd=d, check=True, capture_output=True, timeout=60)

    (d / "client.cnf").write_text("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n"
                                  "extendedKeyUsage=clientAuth\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-keyout", "rogue_ca.key", "-out", "rogue_ca.pem", "-days", "2",
        "-subj", "/CN=another CA")
    for name, issuer in (("client", (ca, ca.parent / "ca.key")),
                         ("rogue", (d / "rogue_ca.pem", d / "rogue_ca.key"))):
        run("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN=softnpu {name}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", str(issuer[0]), "-CAkey", str(issuer[1]),
            "-CAcreateserial", "-CAserial", str(d / f"{name}.srl"), "-out", f"{name}.pem", "-days", "2",
            "-extfile", "client.cnf")
    return {"ca": ca, "server": server, "server_key": server_key, "client": d / "client.pem",
            "client_key": d / "client.key", "rogue": d / "rogue.pem", "rogue_key": d / "rogue.key"}


@pytest.fixture()
def mtls_server(serve, certs):
    return serve(tls_cert=certs["server"], tls_key=certs["server_key"], tls_client_ca=certs["ca"],
                 rest_port=0)


def x_int8(sample, seed=0):
    return np.random.default_rng(seed).integers(-128, 128, sample.input.shape, dtype=np.int8)


def test_grpc_needs_a_client_certificate_from_the_ca(mtls_server, certs, sample):
    address = f"localhost:{mtls_server.port}"
    assert mtls_server.mutual_tls
    with PredictionClient(address, tls=certs["ca"], client_cert=(certs["client"], certs["client_key"]),
                          model="sample", timeout=TIMEOUT) as client:
        assert client.predict({"input": x_int8(sample)}, "logits_int8").shape == (1, 10)
        assert client.health() == "SERVING"
    refused = {"no certificate": None, "another CA's": (certs["rogue"], certs["rogue_key"])}
    for what, cert in refused.items():
        with PredictionClient(address, tls=certs["ca"], client_cert=cert, model="sample", timeout=5,
                              retries=0) as client:
            for call in (lambda: client.predict({"input": x_int8(sample)}, "logits_int8"),  # noqa: B023
                         client.health):       # health checks need no key, but a certificate
                with pytest.raises(ScoreError) as info:
                    call()
                assert info.value.code == SC.UNAVAILABLE, (what, info.value)


def https(server, certs, path, cert=None, raw=False):
    context = ssl.create_default_context(cafile=str(certs["ca"]))
    if cert is not None:
        context.load_cert_chain(*map(str, cert))
    url = f"https://localhost:{server.rest.port}{path}"
    with urllib.request.urlopen(url, timeout=TIMEOUT, context=context) as response:
        data = response.read()
        return response.status, data if raw else json.loads(data)


def test_rest_needs_a_client_certificate_from_the_ca(mtls_server, certs, caplog):
    status, body = https(mtls_server, certs, "/v1/models/sample", (certs["client"], certs["client_key"]))
    assert status == 200 and [s["state"] for s in body["model_version_status"]] == ["AVAILABLE"] * 2
    status, _ = https(mtls_server, certs, "/monitoring/prometheus/metrics",
                      (certs["client"], certs["client_key"]), raw=True)
    assert status == 200
    def refusals():
        return [r.getMessage() for r in caplog.records if r.getMessage().startswith("REST connection from")]

    with caplog.at_level(logging.DEBUG, logger="softnpu.serve"):
        for cert in (None, (certs["rogue"], certs["rogue_key"])):
            # refused in the handshake: the client sees an alert or the connection closed
            with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
                https(mtls_server, certs, "/v1/models/sample", cert)
        deadline = time.monotonic() + TIMEOUT          # the server logs on its connection's thread
        while len(refusals()) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert len(refusals()) == 2 and all("CERTIFICATE" in line for line in refusals()), refusals()


def test_score_cli_with_a_client_certificate(mtls_server, certs, tmp_path):
    from softnpu.host.cli.commands import main

    image = tmp_path / "photo.png"
    image.write_bytes(png_bytes(seed=3))
    args = ["score", str(image), "--address", f"localhost:{mtls_server.port}", "--model", "sample",
            "--tls-ca", str(certs["ca"]), "--timeout", "10"]
    assert main(args + ["--tls-client-cert", str(certs["client"]),
                        "--tls-client-key", str(certs["client_key"])]) == 0
    with pytest.raises(SystemExit, match="UNAVAILABLE"):
        main(args)
    with pytest.raises(SystemExit, match="go together"):
        main(args + ["--tls-client-cert", str(certs["client"])])
    with pytest.raises(SystemExit, match="needs TLS"):
        main(["score", str(image), "--address", "localhost:1", "--tls-client-cert", str(certs["client"]),
              "--tls-client-key", str(certs["client_key"])])


def test_client_certificates_need_tls(repo, certs):
    from softnpu.host.cli.commands import main
    from softnpu.host.serving.service import Server

    with pytest.raises(ValueError, match="need TLS"):
        Server(repo.root, port=0, tls_client_ca=certs["ca"])
    with pytest.raises(SystemExit, match="need TLS"):
        main(["serve", "--model-dir", str(repo.root), "--port", "0", "--tls-client-ca", str(certs["ca"])])
    with pytest.raises(ValueError, match="needs TLS"):
        PredictionClient("localhost:1", client_cert=(certs["client"], certs["client_key"]))
