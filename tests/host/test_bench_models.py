"""host/bench/models.py, the driver of `nox -s models` (the networks themselves run in that session)."""

from softnpu.host.bench import models


def test_networks_are_dealt_longest_first_round_robin():
    assert models._deal(list(models.NETWORKS), 2) == [["resnet152", "densenet121"], ["vgg16", "resnet50"]]
    assert models._deal(["a", "b", "c"], 4) == [["a"], ["b"], ["c"]]


def test_a_network_that_fails_is_named_and_the_others_still_run(tmp_path, capsys):
    assert models.run(["no_such_network", "also_missing"], "32", 1, str(tmp_path / "out")) == 1
    out = capsys.readouterr().out
    assert "$ softnpu compile no_such_network" in out and "$ softnpu compile also_missing" in out
    assert "no_such_network: no such file" in out
    assert "not bit-exact or failed: no_such_network (compile: exit 2), also_missing (compile: exit 2)" in out
    assert "$ softnpu verify" not in out
