"""`nox -s models`: the four ImageNet networks compiled (`softnpu compile`) and verified bit-exact on
the ISS against the reference interpreter (`softnpu verify`), in `--lanes` processes side by side.

    python -m softnpu.host.bench.models [--size 224] [--lanes 2] [NETWORK ...]

Each lane is one process that runs the CLI's own commands (host/cli/commands.py `main`) for its
networks in turn, compile then verify: the same code and output as typing them, without a new
interpreter, its imports and the ISS's compiled kernels loaded again for each step.  The networks
are dealt to the lanes longest first, so that the lanes end together.  Prints each lane's output
whole, then the time of each step; exits 1 naming any network that failed or was not bit-exact.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import subprocess
import sys
import time

NETWORKS = ("resnet152", "vgg16", "densenet121", "resnet50")      # longest first

_STEP = "@@ step "          # how a lane reports a step's time: '@@ step NETWORK COMMAND SECONDS CODE'


def _steps(network: str, size: str, bundle: str) -> list[list[str]]:
    return [["compile", network, "--input-size", size, "-o", bundle, "-q"], ["verify", bundle]]


def run_lane(networks: list[str], size: str, out_dir: str) -> int:
    """Compile and verify `networks` in this process; a network whose compile fails is not verified.
    Returns 1 if any step failed."""
    from softnpu import progress
    from softnpu.host.cli.commands import main

    failed = False
    for network in networks:
        for step in _steps(network, size, f"{out_dir}/{network}-{size}.npu"):
            print(f"$ softnpu {' '.join(step)}", flush=True)
            progress.set_enabled(True)          # each command as a fresh process starts it
            start = time.perf_counter()
            try:
                code = main(step)
            except SystemExit as exc:           # how the commands report their errors, as Python would
                if isinstance(exc.code, str):
                    print(exc.code, file=sys.stderr)
                code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
            sys.stdout.flush()
            sys.stderr.flush()
            print(f"{_STEP}{network} {step[0]} {time.perf_counter() - start:.2f} {code}", flush=True)
            if code:
                failed = True
                break
    return int(failed)


def _deal(networks: list[str], lanes: int) -> list[list[str]]:
    """Round-robin in the given order (longest first): lane k gets networks k, k + lanes, ..."""
    return [networks[k::lanes] for k in range(lanes) if networks[k::lanes]]


def run(networks: list[str], size: str, lanes: int, out_dir: str) -> int:
    os.makedirs(out_dir, exist_ok=True)

    def lane(names: list[str]) -> tuple[int, str]:
        done = subprocess.run([sys.executable, "-m", "softnpu.host.bench.models", "--lane", "--size", size,
                               "--out", out_dir, *names], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
        return done.returncode, done.stdout

    dealt = _deal(networks, lanes)
    with concurrent.futures.ThreadPoolExecutor(lanes) as pool:
        results = list(pool.map(lane, dealt))
    times: dict[str, list[str]] = {}
    failed: list[str] = []
    for names, (code, output) in zip(dealt, results, strict=True):
        steps_failed = len(failed)
        for line in output.splitlines(keepends=True):
            if not line.startswith(_STEP):
                print(line, end="")
                continue
            network, command, seconds, step_code = line[len(_STEP):].split()
            times.setdefault(network, []).append(f"{command} {float(seconds):.1f} s")
            if step_code != "0":
                failed.append(f"{network} ({command}: exit {step_code})")
        if code and len(failed) == steps_failed:          # it died outside a step
            failed.append(f"the lane of {', '.join(names)} (exit {code})")
    for network in networks:
        print(f"{network}@{size}: {', '.join(times.get(network, ['not run']))} (compile includes conversion "
              "unless cached; verify: ISS + reference interpreter)")
    if failed:
        print(f"not bit-exact or failed: {', '.join(failed)}")
        return 1
    print(f"all {len(networks)} networks compiled and bit-exact")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m softnpu.host.bench.models", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("networks", nargs="*", metavar="NETWORK",
                        help=f"zoo networks, longest first (default: {' '.join(NETWORKS)})")
    parser.add_argument("--size", default="224", help="input side (default 224)")
    parser.add_argument("--lanes", type=int, default=2, help="processes side by side (default 2)")
    parser.add_argument("--out", default="build/models", help="where the bundles go (default build/models)")
    parser.add_argument("--lane", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    networks = args.networks or list(NETWORKS)
    if args.lane:
        return run_lane(networks, args.size, args.out)
    if args.lanes < 1:
        parser.error("--lanes must be at least 1")
    return run(networks, args.size, args.lanes, args.out)


if __name__ == "__main__":
    sys.exit(main())
