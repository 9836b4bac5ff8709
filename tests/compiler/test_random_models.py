"""Seeded random Keras CNNs (tests/compiler/random_models.py) compiled for `tiny`, bit-exact on the
ISS against the TFLite interpreter.  CI runs a dozen seeds; `nox -s fuzz_models -- N` runs N."""

from __future__ import annotations

import pytest

from tests.compiler import random_models

CI_SEEDS = range(12)


@pytest.mark.parametrize("seed", CI_SEEDS)
def test_random_model_bit_exact_on_iss(seed):
    result = random_models.check_seed(seed, "tiny")
    assert result.ok, f"seed {seed} ({' '.join(result.kinds)}):\n{result.error}"


def test_generator_is_deterministic_and_varied():
    first, kinds = random_models.random_tflite(5)
    again, _ = random_models.random_tflite(5)
    assert first == again
    assert random_models.random_tflite(6)[0] != first
    drawn = {k for seed in range(40) for k in random_models.random_model(seed)[1]}
    assert {name for name, *_ in random_models.BLOCKS} <= drawn


def test_a_wrong_result_fails_the_seed(monkeypatch):
    """The check is live: a bundle with corrupted weights is reported, not passed."""
    from softnpu.compiler import compile as compile_module

    real = compile_module.compile_tflite

    def corrupted(*args, **kwargs):
        bundle = real(*args, **kwargs)
        bundle.weights = bytes(len(bundle.weights))
        return bundle
    monkeypatch.setattr(compile_module, "compile_tflite", corrupted)
    result = random_models.check_seed(1, "tiny")
    assert not result.ok and "outputs differ" in result.error


def test_fuzz_run_prints_the_seed_and_saves_the_failing_model(monkeypatch, tmp_path, capsys):
    def fake(seed, config):
        return random_models.SeedResult(seed, ["conv"], seed != 7, "" if seed != 7 else "boom",
                                        tflite=b"TFL3-model-of-seed-%d" % seed)
    monkeypatch.setattr(random_models, "check_seed", fake)
    assert random_models.main(["3", "--first", "6", "--out", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "seed 7 failed" in out and "failing seeds: [7]" in out
    assert (tmp_path / "random7.tflite").read_bytes() == b"TFL3-model-of-seed-7"
    assert not (tmp_path / "random6.tflite").exists()


@pytest.mark.parametrize("seed", range(6))
def test_reference_executor_matches_the_interpreter_on_random_models(seed):
    """compiler/reference.py (dilation, SAME average pooling, standalone activations, ...) against
    the interpreter on every output of a random model."""
    import numpy as np

    from softnpu.compiler import reference
    from softnpu.compiler.tflite_import import load_tflite
    from softnpu.host.verify import reference_interpreter

    tflite, _ = random_models.random_tflite(seed)
    graph = load_tflite(tflite)
    interp = reference_interpreter(tflite)
    (d,) = interp.get_input_details()
    t = graph.tensors[graph.inputs[0]]
    q = np.random.default_rng(seed).integers(-128, 128, d["shape"]).astype(np.int8)
    if d["dtype"] == np.float32:        # a QUANTIZE stage: floats it maps back to q exactly
        scale, zero_point = d["quantization"]
        x = ((q.astype(np.float32) - zero_point) * np.float32(scale)).astype(np.float32)
    else:
        x = q
    assert t.dtype == np.dtype(d["dtype"]).name
    interp.set_tensor(d["index"], x)
    interp.invoke()
    got = reference.run(graph, [x])
    outputs = interp.get_output_details()
    assert len(got) == len(outputs) >= 1
    for value, out in zip(got, outputs, strict=True):
        np.testing.assert_array_equal(value.reshape(out["shape"]), interp.get_tensor(out["index"]))
