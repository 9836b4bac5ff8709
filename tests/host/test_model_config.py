"""TF Serving's model config file: parsing (text format and JSON, clear errors), version policies
(latest N / all / specific) deciding what is servable and what stays in memory, version labels
over gRPC and REST, a file re-read while serving (models added and removed, policies and labels
changed; a bad file logged and the config in force kept), and the `serve` flags."""

from __future__ import annotations

import gc
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import weakref

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from softnpu.host.serving.model_config import ConfigError, VersionPolicy, load_model_config
from softnpu.host.serving.models import ModelNotFound, UnknownLabel
from softnpu.host.serving.repository import ModelRepository
from softnpu.host.serving.store import ModelStore
from softnpu.host.tensors import to_proto

SC = grpc.StatusCode
TIMEOUT = 20


def layout(root, bundle_path, versions=(1, 2, 3), name="sample", data=None):
    """root/name/V/model.npu for each version (the sample bundle, or `data` for some)."""
    for v in versions:
        path = root / name / str(v) / "model.npu"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data[v] if data and v in data else bundle_path.read_bytes())
    return root / name


def config_text(*models) -> str:
    """model_config_list text: models are (name, base_path, policy text, {label: version})."""
    out = ["model_config_list {"]
    for name, base, policy, labels in models:
        out += ["  config {", f'    name: "{name}"', f'    base_path: "{base}"',
                '    model_platform: "softnpu"']
        if policy:
            out.append(f"    model_version_policy {{ {policy} }}")
        out += [f'    version_labels {{ key: "{k}" value: {v} }}' for k, v in labels.items()]
        out.append("  }")
    return "\n".join(out + ["}", ""])


def write(path, text):
    path.write_text(text)
    return path


def x_int8(sample, seed=0):
    return np.random.default_rng(seed).integers(-128, 128, sample.input.shape, dtype=np.int8)


# ----------------------------------------------------------------------------------------------
# The file
# ----------------------------------------------------------------------------------------------
def test_text_format_and_json_give_the_same_models(tmp_path, bundle_path):
    layout(tmp_path, bundle_path, name="a")
    layout(tmp_path, bundle_path, name="b")
    layout(tmp_path, bundle_path, name="c")
    text = config_text(("a", "a", "latest { num_versions: 2 }", {"stable": 1, "canary": 3}),
                       ("b", str(tmp_path / "b"), "all {}", {}),
                       ("c", "c", "specific { versions: 1 versions: 3 }", {"stable": 3}),
                       ("d", "a", "", {}))
    models = load_model_config(write(tmp_path / "models.config", text))
    assert list(models) == ["a", "b", "c", "d"]
    assert models["a"].base_path == tmp_path / "a"          # relative: to the file's folder
    assert models["a"].policy == VersionPolicy("latest", 2) and dict(models["a"].labels) == {
        "stable": 1, "canary": 3}
    assert models["b"].policy == VersionPolicy("all")
    assert models["c"].policy == VersionPolicy("specific", versions=frozenset({1, 3}))
    assert models["d"].policy == VersionPolicy("latest", 1)     # TF Serving's default
    as_json = {"model_config_list": {"config": [
        {"name": "a", "base_path": "a", "model_platform": "softnpu",
         "model_version_policy": {"latest": {"num_versions": 2}},
         "version_labels": {"stable": 1, "canary": 3}},
        {"name": "b", "base_path": str(tmp_path / "b"), "model_version_policy": {"all": {}}},
        {"name": "c", "base_path": "c", "model_version_policy": {"specific": {"versions": [1, 3]}},
         "version_labels": {"stable": 3}},
        {"name": "d", "base_path": "a"}]}}
    assert load_model_config(write(tmp_path / "models.json", json.dumps(as_json))) == models


@pytest.mark.parametrize("text, fragment", [
    ("model_config_list { config { name: 'a' base_path: 'a' } ", "1:"),            # unclosed: line named
    ("model_config_list { config { name: 'a' bogus: 1 } }", 'no field named "bogus"'),
    ("", "no model_config_list"),
    ("model_config_list { config { name: 'a' } }", "base_path is required"),
    ("model_config_list { config { name: 'a' base_path: 'nowhere' } }",
     "base_path 'nowhere' is not a folder"),
    ("model_config_list { config { name: 'a' base_path: 'a' } config { name: 'a' base_path: 'a' } }",
     "configured twice"),
    ("model_config_list { config { name: '-a' base_path: 'a' } }", "name '-a'"),
    ("model_config_list { config { name: 'a' base_path: 'a' model_platform: 'pytorch' } }", "'pytorch'"),
    ("model_config_list { config { name: 'a' base_path: 'a' model_version_policy { specific {} } } }",
     "lists no versions"),
    ("model_config_list { config { name: 'a' base_path: 'a' model_version_policy { specific { versions: 1 } }"
     " version_labels { key: 'stable' value: 2 } } }", "never serves version 2"),
    ("model_config_list { config { name: 'a' base_path: 'a' version_labels { key: 'x/y' value: 1 } } }",
     "version label 'x/y'"),
])
def test_a_bad_file_is_a_clear_error(tmp_path, bundle_path, text, fragment):
    layout(tmp_path, bundle_path, versions=(1,), name="a")
    path = write(tmp_path / "models.config", text)
    with pytest.raises(ConfigError) as info:
        load_model_config(path)
    assert str(path) in str(info.value) and fragment in str(info.value), str(info.value)


# ----------------------------------------------------------------------------------------------
# Version policies and labels in the store
# ----------------------------------------------------------------------------------------------
def store_of(tmp_path, *models, poll_s=0.0) -> ModelStore:
    return ModelStore.from_config_file(write(tmp_path / "models.config", config_text(*models)), poll_s)


def test_version_policies_decide_what_is_servable(tmp_path, bundle_path):
    layout(tmp_path, bundle_path, versions=(1, 2, 3, 4))
    cases = {"latest { num_versions: 2 }": [3, 4], "all {}": [1, 2, 3, 4],
             "specific { versions: 1 versions: 3 versions: 9 }": [1, 3], "": [4]}
    for policy, servable in cases.items():
        store = store_of(tmp_path, ("sample", "sample", policy, {}))
        assert [v for v, error in store.status("sample")] == servable, policy
        assert sorted(m.version for m in store.loaded()) == servable, policy
        assert store.get("sample").version == servable[-1]
        for v in (1, 2, 3, 4, 9):
            if v in servable:
                assert store.get("sample", v).version == v
            else:
                with pytest.raises(ModelNotFound, match=re.escape(f"Specific(sample, {v})")):
                    store.get("sample", v)
                with pytest.raises(ModelNotFound, match=f"Could not find version {v} of model sample"):
                    store.status("sample", v)
        assert sorted(m.version for m in store.loaded()) == servable, f"{policy}: nothing else loaded"


def test_latest_n_counts_good_versions_and_reports_the_bad_ones(tmp_path, bundle_path, caplog):
    layout(tmp_path, bundle_path, versions=(1, 2, 3, 4), data={4: b"PK\x03\x04 truncated"})
    store = store_of(tmp_path, ("sample", "sample", "latest { num_versions: 2 }", {}))
    status = store.status("sample")
    assert [v for v, _ in status] == [2, 3, 4]
    assert status[0][1] is None and status[1][1] is None and status[2][1].startswith("sample/4/model.npu: ")
    assert str(tmp_path) not in status[2][1]
    assert store.get("sample").version == 3
    with pytest.raises(ModelNotFound, match="failed to load"):
        store.get("sample", 4)


def test_labels_resolve_to_their_version(tmp_path, bundle_path):
    layout(tmp_path, bundle_path, versions=(1, 2, 3))
    store = store_of(tmp_path, ("sample", "sample", "latest { num_versions: 2 }",
                                {"stable": 2, "canary": 3, "old": 1}))
    assert store.get("sample", label="stable").version == 2
    assert store.get("sample", label="canary").version == 3
    assert store.status("sample", label="canary") == [(3, None)]
    with pytest.raises(UnknownLabel, match="Unrecognized servable version label: beta"):
        store.get("sample", label="beta")
    with pytest.raises(UnknownLabel):                # a label of a model that does not exist
        store.get("other", label="stable")
    # a label whose version the policy does not serve (not loaded): NOT_FOUND naming the label
    with pytest.raises(ModelNotFound, match=re.escape("Specific(sample, 1) (version label 'old')")):
        store.get("sample", label="old")


def test_a_version_leaving_the_policy_is_unloaded(tmp_path, bundle_path):
    layout(tmp_path, bundle_path, versions=(1, 2, 3))
    path = tmp_path / "models.config"
    store = store_of(tmp_path, ("sample", "sample", "all {}", {}))
    unloaded = []
    store.on_unload.append(lambda m: unloaded.append(m.version))
    held = [weakref.ref(store.get("sample", v)) for v in (1, 2, 3)]
    write(path, config_text(("sample", "sample", "latest { num_versions: 1 }", {})))
    assert store.reload_config()
    assert sorted(unloaded) == [1, 2] and [m.version for m in store.loaded()] == [3]
    gc.collect()
    assert held[0]() is None and held[1]() is None and held[2]() is not None
    with pytest.raises(ModelNotFound):
        store.get("sample", 1)
    # a new version under latest 1: the old one leaves memory at the next refresh
    layout(tmp_path, bundle_path, versions=(4,))
    store.refresh()
    assert store.get("sample").version == 4 and [m.version for m in store.loaded()] == [4]
    assert sorted(unloaded) == [1, 2, 3]


def test_loaded_versions_share_a_memory_budget_least_recently_used_first(tmp_path, bundle_path):
    """--max-loaded-mb: loading a version beyond the budget unloads the one asked for longest ago (it
    loads again when asked for); a version larger than the whole budget is not servable and says so."""
    from softnpu.compiler.bundle import Bundle

    layout(tmp_path, bundle_path, versions=(1, 2, 3))
    b = Bundle.load(bundle_path)
    one = len(b.program) + len(b.weights) + len(b.tflite or b"")
    store = ModelStore(ModelRepository(tmp_path), max_loaded_bytes=2 * one + one // 2)
    unloaded = []
    store.on_unload.append(lambda m: unloaded.append(m.version))
    for v in (1, 2):
        store.get("sample", v)
    store.get("sample", 1)                       # 2 is now the least recently asked for
    assert store.get("sample", 3).version == 3
    assert unloaded == [2] and sorted(m.version for m in store.loaded()) == [1, 3]
    assert store.get("sample", 2).version == 2   # loads again, unloading 1
    assert unloaded == [2, 1] and sorted(m.version for m in store.loaded()) == [2, 3]
    small = ModelStore(ModelRepository(tmp_path), max_loaded_bytes=one // 2)
    with pytest.raises(ModelNotFound, match=r"more than the loaded-model memory budget of"):
        small.get("sample", 1)
    assert small.loaded() == []
    with pytest.raises(ValueError, match="must be positive"):
        ModelStore(ModelRepository(tmp_path), max_loaded_bytes=0)


def test_a_bad_file_while_serving_is_logged_once_and_a_write_in_progress_never(tmp_path, bundle_path, caplog):
    layout(tmp_path, bundle_path, versions=(1, 2))
    path = tmp_path / "models.config"
    store = store_of(tmp_path, ("sample", "sample", "", {}))
    good = config_text(("sample", "sample", "all {}", {"stable": 1}))
    with caplog.at_level(logging.ERROR, logger="softnpu.serve"):
        write(path, good[:len(good) // 2])          # a poll that reads a file half written...
        assert not store.reload_config()
        write(path, good)                           # ...and the next one, the whole file
        assert store.reload_config() and store.get("sample", label="stable").version == 1
        assert not caplog.records
        write(path, good.replace("all {}", "all {} bogus: 1"))
        assert [store.reload_config() for _ in range(4)] == [False] * 4
    errors = [r.getMessage() for r in caplog.records]
    assert len(errors) == 1 and 'no field named "bogus"' in errors[0] and str(path) in errors[0], errors
    assert "keeping the model config in force (1 model(s))" in errors[0]
    assert store.get("sample", label="stable").version == 1 and store.get("sample").version == 2


# ----------------------------------------------------------------------------------------------
# Served: gRPC and REST, reloaded while serving
# ----------------------------------------------------------------------------------------------
def predict(address, sample, name="sample", version=None, label=None):
    with grpc.insecure_channel(address) as channel:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = name
        if version is not None:
            request.model_spec.version.value = version
        if label is not None:
            request.model_spec.version_label = label
        request.inputs["input"].CopyFrom(to_proto(x_int8(sample)))
        request.output_filter.append("classes")
        try:
            response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request,
                                                                                         timeout=TIMEOUT)
        except grpc.RpcError as err:
            return err.code(), err.details()
        return SC.OK, response.model_spec.version.value


def model_status(address, name, label=None):
    with grpc.insecure_channel(address) as channel:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = name
        if label:
            request.model_spec.version_label = label
        response = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=TIMEOUT)
    State = get_model_status_pb2.ModelVersionStatus.State
    return [(s.version, State.Name(s.state)) for s in response.model_version_status]


def rest_call(server, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://{server.rest.address}{path}", data=data)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def wait_until(predicate, timeout=TIMEOUT, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_served_labels_policies_and_a_reloaded_config(serve, tmp_path, bundle_path, sample, caplog):
    layout(tmp_path, bundle_path, versions=(1, 2, 3))
    layout(tmp_path, bundle_path, versions=(1,), name="extra")
    path = tmp_path / "models.config"
    store = store_of(tmp_path, ("sample", "sample", "specific { versions: 1 versions: 3 }",
                                {"stable": 1, "canary": 3}), poll_s=0.05)
    server = serve(root=store, rest_port=0)
    a = server.address
    assert predict(a, sample, label="stable") == (SC.OK, 1)
    assert predict(a, sample, label="canary") == (SC.OK, 3)
    assert predict(a, sample) == (SC.OK, 3)
    first = store.get("sample", 1).key
    assert any(first in w.runtimes for w in server.pool._all)        # placed on the device
    code, message = predict(a, sample, label="beta")
    assert code == SC.INVALID_ARGUMENT and "Unrecognized servable version label: beta" in message
    code, message = predict(a, sample, version=2)                   # outside the policy
    assert code == SC.NOT_FOUND and "Specific(sample, 2)" in message and str(tmp_path) not in message
    assert model_status(a, "sample") == [(1, "AVAILABLE"), (3, "AVAILABLE")]
    assert model_status(a, "sample", label="stable") == [(1, "AVAILABLE")]
    # REST: /labels/{l}
    status, body = rest_call(server, "/v1/models/sample/labels/stable:predict",
                             {"instances": x_int8(sample).tolist()})
    assert status == 200 and len(body["predictions"]) == 1
    status, body = rest_call(server, "/v1/models/sample/labels/canary/metadata")
    assert status == 200 and body["model_spec"]["version"] == "3"
    status, body = rest_call(server, "/v1/models/sample/labels/canary")
    assert status == 200 and [s["version"] for s in body["model_version_status"]] == ["3"]
    status, body = rest_call(server, "/v1/models/sample/labels/beta:predict",
                             {"instances": x_int8(sample).tolist()})
    assert status == 400 and "Unrecognized servable version label: beta" in body["error"]
    assert predict(a, sample, name="extra")[0] == SC.NOT_FOUND

    # the file changes: a model added, the policy and a label changed; applied within a poll
    write(path, config_text(("sample", "sample", "latest { num_versions: 2 }", {"stable": 2, "canary": 3}),
                            ("extra", "extra", "", {})))
    wait_until(lambda: predict(a, sample, label="stable") == (SC.OK, 2), what="the reloaded config")
    assert predict(a, sample, name="extra") == (SC.OK, 1)
    assert model_status(a, "sample") == [(2, "AVAILABLE"), (3, "AVAILABLE")]
    assert predict(a, sample, version=1)[0] == SC.NOT_FOUND
    wait_until(lambda: sorted((m.name, m.version) for m in store.loaded()) == [
        ("extra", 1), ("sample", 2), ("sample", 3)], what="sample:1 unloaded")
    wait_until(lambda: not any(first in w.runtimes for w in server.pool._all),   # weights dropped
               what="sample:1's runtime dropped")

    # a bad file: logged once, the config in force kept, the server keeps serving
    with caplog.at_level(logging.ERROR, logger="softnpu.serve"):
        write(path, "model_config_list { config { name: 'sample' base_path: 'nowhere' } }")
        wait_until(lambda: any("keeping the model config in force" in r.getMessage() for r in caplog.records),
                   what="the bad config logged")
        time.sleep(0.2)                                             # several polls
    errors = [r.getMessage() for r in caplog.records if "keeping the model config" in r.getMessage()]
    assert len(errors) == 1 and str(path) in errors[0] and "'nowhere' is not a folder" in errors[0]
    assert predict(a, sample, label="stable") == (SC.OK, 2) and predict(a, sample, name="extra") == (SC.OK, 1)

    # a model removed: NOT_FOUND, unloaded
    write(path, config_text(("sample", "sample", "", {})))
    wait_until(lambda: predict(a, sample, name="extra")[0] == SC.NOT_FOUND, what="extra removed")
    assert predict(a, sample) == (SC.OK, 3)
    wait_until(lambda: sorted((m.name, m.version) for m in store.loaded()) == [("sample", 3)],
               what="only sample:3 loaded")


# ----------------------------------------------------------------------------------------------
# `softnpu serve --model-config-file`
# ----------------------------------------------------------------------------------------------
def test_serve_refuses_a_bad_config_at_startup(tmp_path, bundle_path):
    from softnpu.host.cli.commands import main

    path = write(tmp_path / "models.config", "model_config_list { config { name: 'a' base_path: 'gone' } }")
    with pytest.raises(SystemExit) as info:
        main(["serve", "--model-config-file", str(path), "--port", "0"])
    assert str(info.value) == f"softnpu serve: model config file {path}, config 1 ('a'): base_path 'gone' " \
                              "is not a folder"
    layout(tmp_path, bundle_path, versions=(1,), name="a")
    write(path, "model_config_list { config { name: 'a' base_path: 'a' } }")
    with pytest.raises(SystemExit, match="not both"):
        main(["serve", "--model-config-file", str(path), "--model-dir", str(tmp_path), "--port", "0"])


def test_serve_command_with_a_config_file(tmp_path, bundle_path, sample):
    layout(tmp_path, bundle_path, versions=(1, 2))
    path = write(tmp_path / "models.config", config_text(("sample", "sample", "all {}", {"stable": 1})))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "softnpu", "serve", "--model_config_file", str(path),
                             "--model-config-file-poll-wait-seconds", "0.1", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines = []
    try:
        address = None
        while address is None:
            line = proc.stdout.readline()
            assert line, f"softnpu serve did not start: {''.join(lines)}"
            lines.append(line)
            match = re.search(r"gRPC on (\S+),", line)
            address = match.group(1) if match else None
        reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
        reader.start()
        assert any("1 model(s) from" in line and "re-read every 0.1 s" in line for line in lines), lines
        assert any("sample: versions all, stable -> 1" in line for line in lines), lines
        assert predict(address, sample, label="stable") == (SC.OK, 1)
        write(path, config_text(("sample", "sample", "all {}", {"stable": 2})))
        wait_until(lambda: predict(address, sample, label="stable") == (SC.OK, 2), what="the label moved")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    reader.join(5)
    assert any("model config file" in line and "changed: applying it" in line for line in lines), lines
