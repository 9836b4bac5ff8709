"""The model repository (ROOT/MODEL/VERSION/model.npu) and `softnpu models`."""

import pytest

from softnpu.compiler.bundle import BundleError
from softnpu.host.cli.commands import main
from softnpu.host.serving.repository import BUNDLE_FILE, ModelRepository, RepositoryError


def test_register_list_latest_and_remove(tmp_path, bundle_path):
    repo = ModelRepository(tmp_path)
    assert repo.models() == {}
    assert repo.register(bundle_path, "resnet") == tmp_path / "resnet" / "1" / BUNDLE_FILE
    repo.register(bundle_path, "resnet")
    repo.register(bundle_path, "resnet", version=7)
    repo.register(bundle_path)                                   # name from the manifest
    assert repo.models() == {"resnet": [1, 2, 7], "sample": [1]}
    assert repo.latest("resnet") == 7
    assert repo.path("resnet") == tmp_path / "resnet" / "7" / BUNDLE_FILE
    assert repo.load("resnet", 2).manifest.model == "sample"
    with pytest.raises(RepositoryError, match="already exists"):
        repo.register(bundle_path, "resnet", version=2)
    repo.register(bundle_path, "resnet", version=2, force=True)
    with pytest.raises(RepositoryError, match="no version 3"):
        repo.path("resnet", 3)
    with pytest.raises(RepositoryError, match="'vgg' is not in the repository"):
        repo.path("vgg")
    assert repo.remove("resnet", 7) == [7]
    assert repo.latest("resnet") == 2
    assert repo.remove("resnet") == [1, 2]
    assert repo.models() == {"sample": [1]}


def test_register_refuses_bad_bundles_and_names(tmp_path, bundle_path):
    repo = ModelRepository(tmp_path / "r")
    junk = tmp_path / "junk.npu"
    junk.write_bytes(b"not a zip")
    with pytest.raises(BundleError, match="not a zip"):
        repo.register(junk, "x")
    for name in ("../evil", "a/b", "", ".hidden"):
        with pytest.raises(RepositoryError, match="model name"):
            repo.register(bundle_path, name)
    with pytest.raises(RepositoryError, match="positive integer"):
        repo.register(bundle_path, "x", version=0)
    assert repo.models() == {}


def test_directories_without_a_bundle_are_not_versions(tmp_path, bundle_path):
    repo = ModelRepository(tmp_path)
    repo.register(bundle_path, "m")
    (tmp_path / "m" / "5").mkdir()
    (tmp_path / "m" / "notaversion").mkdir()
    (tmp_path / "stray.txt").write_text("x")
    assert repo.models() == {"m": [1]}


def test_models_cli(tmp_path, bundle_path, capsys):
    root = str(tmp_path / "repo")
    assert main(["models", "register", str(bundle_path), "--name", "net", "--model-dir", root]) == 0
    assert main(["models", "register", str(bundle_path), "--name", "net", "--version", "4",
                 "--model-dir", root]) == 0
    assert main(["models", "list", "--model-dir", root]) == 0
    out = capsys.readouterr().out
    assert "registered net:1" in out and "net: versions 1, 4 (serving 4; sample, config tiny" in out
    assert main(["models", "remove", "net", "--version", "1", "--model-dir", root]) == 0
    with pytest.raises(SystemExit, match="no version 1"):
        main(["models", "remove", "net", "--version", "1", "--model-dir", root])
    with pytest.raises(SystemExit, match="no such file"):
        main(["models", "register", str(tmp_path / "missing.npu"), "--name", "x", "--model-dir", root])
