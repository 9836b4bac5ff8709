"""The built wheel is the product: installed into a fresh venv, outside the repository, it carries
the `softnpu` namespace (and nothing else at the top level), `python -m softnpu`, `--version`, and
the RTL harness sources, so that `softnpu verify --backend rtl` of a tiny bundle works from it."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

import softnpu

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(out), str(ROOT)], check=True)
    (path,) = out.glob("softnpu-*.whl")
    return path


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory, wheel) -> Path:
    """A new venv with the wheel installed; its dependencies are this interpreter's (a .pth file
    points at our site-packages, whose own .pth files, the editable install's among them, are not
    run), so nothing is downloaded."""
    root = tmp_path_factory.mktemp("venv")
    venv.create(root, with_pip=True)
    python = root / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(site, "softnpu_test_deps.pth").write_text("\n".join(sorted(ours)) + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True)
    return root


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def test_wheel_holds_one_namespace_and_the_harness_sources(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert tops == {"softnpu"}, tops
    for member in ("softnpu/__main__.py", "softnpu/hdl/isa.py", "softnpu/sim/rtl/axi_mem.sv",
                   "softnpu/sim/rtl/dpi_mem.sv", "softnpu/sim/rtl/dpi_mem.cpp",
                   "softnpu/sim/rtl/dpi_trace.cpp",
                   "softnpu/host/serving/tfs_api.desc"):
        assert member in names, member


def test_installed_wheel_runs_tiny_rtl_verify_outside_the_repository(fresh_venv, tmp_path):
    python = fresh_venv / "bin" / "python"
    run = subprocess.run([str(python), "-m", "softnpu", "--version"], cwd=tmp_path, env=_env(),
                         capture_output=True, text=True, check=True)
    assert run.stdout.strip() == f"softnpu {softnpu.__version__}"
    where = subprocess.run([str(python), "-c", "import softnpu.sim; print(softnpu.sim.__file__)"],
                           cwd=tmp_path, env=_env(), capture_output=True, text=True, check=True)
    assert str(fresh_venv) in where.stdout and str(ROOT) not in where.stdout, where.stdout

    keras_file = tmp_path / "tiny.keras"
    subprocess.run([str(python), "-c",
                    "import keras, sys\n"
                    "keras.utils.set_random_seed(0)\n"
                    "x = keras.Input((8, 8, 3), batch_size=1)\n"
                    "y = keras.layers.Conv2D(8, 3, padding='same', activation='relu')(x)\n"
                    "y = keras.layers.GlobalAveragePooling2D()(y)\n"
                    "keras.Model(x, keras.layers.Dense(4)(y)).save(sys.argv[1])\n", str(keras_file)],
                   cwd=tmp_path, env=_env(), check=True, capture_output=True)
    softnpu_cli = fresh_venv / "bin" / "softnpu"
    bundle = tmp_path / "tiny.npu"
    subprocess.run([str(softnpu_cli), "compile", str(keras_file), "-o", str(bundle), "--config", "tiny",
                    "-q"], cwd=tmp_path, env=_env(), check=True)
    verify = subprocess.run([str(softnpu_cli), "verify", str(bundle), "--backend", "rtl"], cwd=tmp_path,
                            env=_env(), capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "PASS" in verify.stdout, verify.stdout
